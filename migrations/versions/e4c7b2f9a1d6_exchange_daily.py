"""exchange_daily: the exchanges counted per day, channel and model version, one column per number the pages show, kept by triggers; it replaces exchange_tally

Why: exchange_tally had one row per day and per combination of route,
status, feedback and correction (about 120 rows a day at a million
exchanges a year), and the statistics page and the admin home page added
them up with a CASE per number: 44,000 rows for a year, most of the
statistics page's overview and all of the home page's counts.  Here each of
those numbers is a column, counted by the triggers as a row comes in, goes
or changes: a few rows a day (one per channel and model version), ten
times fewer to read.

On SQLite a later migration that rebuilds ``exchange`` (batch mode) drops
its triggers with the old table: it must create them again.

Revision ID: e4c7b2f9a1d6
Revises: c8f3a5d1e9b4
Create Date: 2026-12-02 18:00:00

"""
import importlib.util
from pathlib import Path

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e4c7b2f9a1d6'
down_revision = 'c8f3a5d1e9b4'
branch_labels = None
depends_on = None

# The same words as chatbot.database.DAILY_COUNTS (a migration keeps its own copy).
COUNTS = {
    "exchanges": "1 = 1",
    "model": "{row}.route = 'model'",
    "known": "{row}.route = 'known'",
    "memory": "{row}.route = 'memory'",
    "unsure": "{row}.route IN ('fallback', 'unsure')",
    "up": "{row}.feedback = 'up'",
    "down": "{row}.feedback = 'down'",
    "unreviewed": "{row}.status = 'unreviewed'",
    "reviewed": "{row}.status = 'reviewed'",
    "needs_deletion": "{row}.status = 'needs_deletion'",
    "corrected": "{row}.status = 'reviewed' AND {row}.corrected_answer IS NOT NULL "
                 "AND {row}.corrected_answer <> {row}.answer",
    "waiting_down": "{row}.status = 'unreviewed' AND {row}.feedback = 'down'",
    "waiting_unsure": "{row}.status = 'unreviewed' AND {row}.route = 'unsure'",
}
KEY = ("day", "channel", "model_version", "imported")
TRACKED = ("created_at", "channel", "model_version", "route", "status", "feedback", "answer", "corrected_answer")


def _key(row, dialect):
    """The key of ``row`` (NEW, OLD or the table's name), in KEY's order."""
    day = (f"substr({row}.created_at, 1, 10)" if dialect == "sqlite"
           else f"to_char({row}.created_at, 'YYYY-MM-DD')")
    return (day, f"{row}.channel", f"coalesce({row}.model_version, '')",
            f"CASE WHEN {row}.route = 'import' THEN 1 ELSE 0 END")


def _counts(row):
    """Each count's 1 or 0 for ``row``, in COUNTS' order (a NULL is not a match)."""
    return [f"CASE WHEN {condition.format(row=row)} THEN 1 ELSE 0 END" for condition in COUNTS.values()]


def _add(row, dialect):
    """SQL that counts ``row`` in: its day's row made, or its counts added."""
    columns = ", ".join((*KEY, *COUNTS))
    update = ", ".join(f"{name} = exchange_daily.{name} + excluded.{name}" for name in COUNTS)
    return (f"INSERT INTO exchange_daily ({columns}) VALUES ({', '.join((*_key(row, dialect), *_counts(row)))}) "
            f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {update}")


def _remove(row, dialect):
    """SQL that counts ``row`` out (a day's row at zero exchanges is deleted)."""
    where = " AND ".join(f"{name} = {value}" for name, value in zip(KEY, _key(row, dialect)))
    update = ", ".join(f"{name} = {name} - ({value})" for name, value in zip(COUNTS, _counts(row)))
    return (f"UPDATE exchange_daily SET {update} WHERE {where}; "
            f"DELETE FROM exchange_daily WHERE exchanges <= 0 AND {where}")


def create_triggers(dialect):
    if dialect == "sqlite":
        changed = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in TRACKED)
        op.execute(f"CREATE TRIGGER exchange_daily_insert AFTER INSERT ON exchange "
                   f"BEGIN {_add('NEW', dialect)}; END")
        op.execute(f"CREATE TRIGGER exchange_daily_delete AFTER DELETE ON exchange "
                   f"BEGIN {_remove('OLD', dialect)}; END")
        op.execute(f"CREATE TRIGGER exchange_daily_update AFTER UPDATE OF {', '.join(TRACKED)} ON exchange "
                   f"WHEN {changed} BEGIN {_remove('OLD', dialect)}; {_add('NEW', dialect)}; END")
        return
    old = ", ".join(f"OLD.{name}" for name in TRACKED)
    new = ", ".join(f"NEW.{name}" for name in TRACKED)
    op.execute(f"""CREATE FUNCTION exchange_daily_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NOT (({old}) IS DISTINCT FROM ({new})) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        {_remove('OLD', dialect)};
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        {_add('NEW', dialect)};
    END IF;
    RETURN NULL;
END
$$""")
    op.execute(f"CREATE TRIGGER exchange_daily AFTER INSERT OR DELETE OR UPDATE OF {', '.join(TRACKED)} "
               f"ON exchange FOR EACH ROW EXECUTE FUNCTION exchange_daily_count()")


def drop_triggers(dialect):
    if dialect == "sqlite":
        for name in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS exchange_daily_{name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS exchange_daily ON exchange")
        op.execute("DROP FUNCTION IF EXISTS exchange_daily_count()")


def _tally_migration():
    """d2a7c4e9f150, which made exchange_tally: the downgrade makes it again the same way."""
    path = Path(__file__).with_name("d2a7c4e9f150_exchange_tally.py")
    spec = importlib.util.spec_from_file_location("exchange_tally_migration", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade():
    dialect = op.get_bind().dialect.name
    options = {"sqlite_with_rowid": False} if dialect == "sqlite" else {}
    op.create_table(
        'exchange_daily',
        sa.Column('day', sa.String(length=10), nullable=False),
        sa.Column('channel', sa.String(length=20), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('imported', sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in COUNTS),
        sa.PrimaryKeyConstraint(*KEY, name='pk_exchange_daily'),
        **options,
    )
    # The exchanges already there, counted once; from here on the triggers count.
    key = ", ".join(_key("exchange", dialect))
    sums = ", ".join(f"sum({value})" for value in _counts("exchange"))
    op.execute(f"INSERT INTO exchange_daily ({', '.join((*KEY, *COUNTS))}) "
               f"SELECT {key}, {sums} FROM exchange GROUP BY {key}")
    create_triggers(dialect)
    _tally_migration().drop_triggers(dialect)
    op.drop_table('exchange_tally')


def downgrade():
    dialect = op.get_bind().dialect.name
    drop_triggers(dialect)
    op.drop_table('exchange_daily')
    _tally_migration().make_tally(dialect)
