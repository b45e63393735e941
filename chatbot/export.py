"""Every exchange with all its fields, as CSV or JSON Lines, for a filter:
the one query and the two writers behind ``flask export-exchanges`` (cli.py)
and the admin's 대화 내보내기 page (export_admin.py).

Streamed, in pages: the rows are read in id order, BATCH at a time, each
page by its own short statement (``id`` after the last page's, on the
primary key: no OFFSET, no sort), as plain rows, not ORM objects, and the
writers turn each page into one text chunk.  So an export holds about one
page in memory, however many exchanges there are, and no read transaction
stays open between two pages: a download that takes minutes keeps no
snapshot (PostgreSQL) and no WAL checkpoint (SQLite) waiting.  The export
holds the exchanges that existed when it began (ids up to the greatest one
then); a row changed meanwhile comes as it is when its page is read.  The
admin's download produces each chunk on a thread (chatbot/heavy.py).

CSV: UTF-8 with a BOM (Excel then reads the Korean as UTF-8; Python reads
it with ``encoding="utf-8-sig"``), a header row of the field names, CRLF
line ends, every cell formula-safe by ``pairs_csv.escape_cell`` (as
``write_pairs_csv`` writes: a ``'`` before a cell starting with
``= + - @``, a tab, a CR or a ``'``; ``unescape_cell`` takes it off).
An empty cell is a missing value (NULL).

JSON Lines: one object a line (LF), every field, ``null`` for a missing
value, non-ASCII as it is (``ensure_ascii=False``); nothing is escaped
against formulas, since no spreadsheet runs JSON.

Both: times are ISO 8601 in UTC with the offset (``2024-05-01T12:00:00+00:00``),
as stored; ``confidence`` keeps every digit.
"""
import csv
import io
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa

from .database import CHANNELS, ROUTES, STATUS_LABELS, Exchange
from .extensions import db
from .pairs_csv import escape_cell

# Every column of Exchange, in the order of the file's columns
# (tests/test_export.py checks that none is missing).
FIELDS = ("id", "created_at", "session_id", "channel", "route", "question", "question_key", "answer",
          "corrected_answer", "confidence", "feedback", "status", "reviewer", "reviewed_at",
          "model_version", "api_key_id")
FORMATS = ("csv", "jsonl")
# Whole Content-Type values: a Response takes them as content_type=, since
# mimetype= would append Werkzeug's charset to the one already there.
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
# Rows fetched from the database, and written into one text chunk, at a time.
BATCH = 1000


@dataclass(frozen=True)
class Filters:
    """Which exchanges to export; None: any.  ``first_day``/``last_day``:
    days of ``created_at`` (UTC), both included."""

    first_day: date | None = None
    last_day: date | None = None
    status: str | None = None
    route: str | None = None
    channel: str | None = None

    def __post_init__(self):
        # The CLI and the form check these first, with their own words; this
        # is what keeps a caller from exporting the wrong rows silently.
        for name, allowed in (("status", tuple(STATUS_LABELS)), ("route", ROUTES), ("channel", CHANNELS)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; one of {', '.join(allowed)}")
        if self.first_day and self.last_day and self.first_day > self.last_day:
            raise ValueError(f"the first day {self.first_day} is after the last day {self.last_day}")


def query(filters: Filters):
    """The SELECT of FIELDS for ``filters``, in id order."""
    statement = sa.select(*(getattr(Exchange, name) for name in FIELDS)).order_by(Exchange.id)
    if filters.first_day:
        statement = statement.where(Exchange.created_at >= datetime.combine(filters.first_day, time.min))
    if filters.last_day:
        statement = statement.where(
            Exchange.created_at < datetime.combine(filters.last_day + timedelta(days=1), time.min))
    for name in ("status", "route", "channel"):
        if getattr(filters, name) is not None:
            statement = statement.where(getattr(Exchange, name) == getattr(filters, name))
    return statement


def pages(filters: Filters):
    """The exchanges' rows (tuples in FIELDS order), a list of up to BATCH
    at a time, each list read in a transaction of its own."""
    with db.engine.connect() as connection:
        last = connection.scalar(sa.select(sa.func.max(Exchange.id)))
    after = 0
    while last is not None and after < last:
        with db.engine.connect() as connection:
            page = connection.execute(
                query(filters).where(Exchange.id > after, Exchange.id <= last).limit(BATCH)).all()
        if page:
            yield page
        if len(page) < BATCH:  # the last one
            return
        after = page[-1].id


def rows(filters: Filters):
    """The exchanges' rows (tuples in FIELDS order), page by page (``pages``)."""
    for page in pages(filters):
        yield from page


def _utc(value: datetime) -> str:
    return value.replace(tzinfo=timezone.utc).isoformat()


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _utc(value)
    return escape_cell(str(value))  # str(float) is the shortest text that reads back the same


def _json_value(value):
    return _utc(value) if isinstance(value, datetime) else value


def csv_chunks(rows):
    """The CSV text of ``rows``: the BOM and header, then a chunk per BATCH rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    buffer.write("\ufeff")
    writer.writerow(FIELDS)
    for count, row in enumerate(rows, 1):
        writer.writerow([_csv_cell(value) for value in row])
        if count % BATCH == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# One encoder for every line: json.dumps with options makes a new one each call.
_JSON = json.JSONEncoder(ensure_ascii=False)


def jsonl_chunks(rows):
    """The JSON Lines text of ``rows``, a chunk per BATCH rows."""
    lines = []
    for row in rows:
        lines.append(_JSON.encode(dict(zip(FIELDS, map(_json_value, row)))) + "\n")
        if len(lines) == BATCH:
            yield "".join(lines)
            lines = []
    if lines:
        yield "".join(lines)


WRITERS = {"csv": csv_chunks, "jsonl": jsonl_chunks}


def stream(file_format: str, filters: Filters):
    """The export's text, chunk by chunk (for a streamed response)."""
    return WRITERS[file_format](rows(filters))


def write(out, file_format: str, filters: Filters) -> int:
    """Write the export to ``out`` (``write(str)``); returns the number of exchanges."""
    count = 0

    def counted():
        nonlocal count
        for row in rows(filters):
            count += 1
            yield row

    for chunk in WRITERS[file_format](counted()):
        out.write(chunk)
    return count


def format_of(path: str) -> str | None:
    """The format a file name asks for by its extension, or None."""
    name = path.lower()
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return None


def file_name(file_format: str, now: datetime | None = None) -> str:
    """A dated name for a download."""
    return f"exchanges-{(now or datetime.now()):%Y%m%d-%H%M%S}.{file_format}"
