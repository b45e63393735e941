"""``flask --app app`` commands: reviewers (add, reset, remove), CSV import/export, retraining, API keys."""
import io
import os
import sys
import tempfile

import click
import sqlalchemy as sa
from flask import current_app
from flask.cli import with_appcontext

from . import api, export, retrain
from .database import CHANNELS, ROUTES, STATUS_LABELS, Reviewer
from .extensions import db
from .pairs import add_imported_pairs, reviewed_pairs, training_pairs
from .pairs_csv import PairsFileError, read_pairs_csv, write_pairs_csv

PASSWORD_ENV = "CHATBOT_ADMIN_PASSWORD"
MIN_PASSWORD_CHARS = 8


@click.command("create-admin")
@click.argument("name")
@with_appcontext
def create_admin(name):
    """Create a reviewer NAME, or reset their password (which logs them out everywhere).

    The password is prompted for, or read from $CHATBOT_ADMIN_PASSWORD for scripts.
    """
    password = os.environ.get(PASSWORD_ENV) or click.prompt(
        "Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD_CHARS:
        raise click.ClickException(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    reviewer = db.session.execute(sa.select(Reviewer).filter_by(username=name)).scalar_one_or_none()
    created = reviewer is None
    if created:
        reviewer = Reviewer(username=name)
        db.session.add(reviewer)
    reviewer.set_password(password)
    db.session.commit()
    click.echo(f"created reviewer {name!r}" if created else
               f"updated password of reviewer {name!r}; their sessions have ended")


@click.command("remove-admin")
@click.argument("name")
@with_appcontext
def remove_admin(name):
    """Remove the reviewer NAME: their sessions end at once.

    Their name stays on the reviews and audit rows and API keys they made.
    """
    reviewer = db.session.execute(sa.select(Reviewer).filter_by(username=name)).scalar_one_or_none()
    if reviewer is None:
        raise click.ClickException(f"no reviewer {name!r}")
    db.session.delete(reviewer)
    db.session.commit()
    click.echo(f"removed reviewer {name!r}; their sessions have ended")


@click.command("import-pairs")
@click.argument("path", type=click.Path(dir_okay=False))
@with_appcontext
def import_pairs(path):
    """Import a Q,A[,label] CSV as reviewed training pairs.

    Bad rows are reported with their line numbers and skipped; pairs already
    in the database are not added twice.  A file that cannot be read imports
    nothing.
    """
    try:
        pairs, errors = read_pairs_csv(path, max_chars=current_app.config["MAX_MESSAGE_CHARS"])
    except PairsFileError as exc:
        raise click.ClickException(f"{exc}; nothing was imported") from exc
    for line, reason in errors:
        click.echo(f"line {line}: skipped: {reason}", err=True)

    added, duplicates = add_imported_pairs(pairs)
    click.echo(f"imported {added} pairs from {path}; {len(errors)} bad rows skipped; "
               f"{duplicates} already present")


@click.command("export-pairs")
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@with_appcontext
def export_pairs(path):
    """Write the reviewed pairs (corrections applied) to a Q,A,label CSV."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        count = write_pairs_csv(f, reviewed_pairs())
    click.echo(f"exported {count} reviewed pairs to {path}")


@click.command("export-exchanges")
@click.argument("path", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--from", "first_day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="first day (UTC, YYYY-MM-DD), included")
@click.option("--to", "last_day", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="last day (UTC, YYYY-MM-DD), included")
@click.option("--status", type=click.Choice(tuple(STATUS_LABELS)), default=None)
@click.option("--route", type=click.Choice(ROUTES), default=None)
@click.option("--channel", type=click.Choice(CHANNELS), default=None)
@click.option("--format", "file_format", type=click.Choice(export.FORMATS), default=None,
              help="default: from PATH's extension (.csv, .jsonl or .ndjson)")
@with_appcontext
def export_exchanges(path, first_day, last_day, status, route, channel, file_format):
    """Write every exchange with all its fields to PATH (- for stdout), as CSV or JSON Lines.

    The file appears only when the whole export is written (a temp file
    beside it is renamed), readable by its owner only: it holds what users
    typed.
    """
    file_format = file_format or export.format_of(path)
    if file_format is None:
        raise click.UsageError(f"cannot tell the format from {path!r}: give --format csv or --format jsonl")
    try:
        filters = export.Filters(first_day=first_day and first_day.date(), last_day=last_day and last_day.date(),
                                 status=status, route=route, channel=channel)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    if path == "-":
        out = io.TextIOWrapper(sys.stdout.buffer, encoding="utf-8", newline="", write_through=True)
        try:
            count = export.write(out, file_format, filters)
        finally:
            out.detach()  # leave stdout open
        click.echo(f"exported {count} exchanges", err=True)
        return
    target = os.path.abspath(path)
    try:
        fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.",
                                    suffix=".tmp")
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            count = export.write(f, file_format, filters)
        os.replace(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    click.echo(f"exported {count} exchanges to {path}")


@click.command("retrain", context_settings={"ignore_unknown_options": True})
@click.option("--force", is_flag=True, help="activate the new model even if the quality gate refuses it")
@click.option("--margin", type=float, default=None,
              help="dev chrF points the new model may lose to current (default: QUALITY_GATE_MARGIN)")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@with_appcontext
def retrain_command(force, margin, train_args):
    """Train a new model on the app's pairs, one run at a time, with the quality gate.

    Extra arguments after -- go to `python -m chatbot.train` (after RETRAIN_ARGS).
    Exit status: 0 activated or kept back by the gate, 1 failed, 75 another retrain is running.
    """
    try:
        status = retrain.start(current_app.config, training_pairs(), force=force, margin=margin,
                               extra_train_args=train_args, on_line=click.echo)
    except retrain.RetrainBusy:
        click.echo("error: another retrain is running", err=True)
        raise SystemExit(retrain.BUSY_EXIT) from None
    click.echo(f"{status['state']}: {status['message']}")
    if status["state"] not in (retrain.ACTIVATED, retrain.REFUSED):
        raise SystemExit(1)


@click.group("api-key")
def api_key():
    """Make and revoke REST API keys (as the admin's "API 키" page does)."""


@api_key.command("create")
@click.argument("name")
@with_appcontext
def api_key_create(name):
    """Make a key called NAME and print it: this is the only time it is shown."""
    name = name.strip()
    if not 1 <= len(name) <= api.MAX_NAME_CHARS:
        raise click.ClickException(f"the name needs 1 to {api.MAX_NAME_CHARS} characters")
    key, secret = api.create_key(name)
    click.echo(f"created API key {key.id} ({name}); it is shown only now:", err=True)
    click.echo(secret)


@api_key.command("revoke")
@click.argument("key_id", type=int)
@with_appcontext
def api_key_revoke(key_id):
    """Revoke the key with id KEY_ID: requests with it are refused (401) at once."""
    key = api.revoke_key(key_id)
    if key is None:
        raise click.ClickException(f"no API key {key_id}")
    click.echo(f"revoked API key {key.id} ({key.name}, {key.prefix}…)")


def init_app(app):
    for command in (create_admin, remove_admin, import_pairs, export_pairs, export_exchanges, retrain_command, api_key):
        app.cli.add_command(command)
