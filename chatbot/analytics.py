"""The numbers behind /admin/analytics (analytics_admin): how the chats went
per day or week, per model version, per channel, and which questions went
wrong most often.

Every number is a SQL aggregate, counted in the database: the counts per
day, version and channel from exchange_daily (the database's own running
counts, see overview), the groups that went wrong from the partial indexes
of ``exchange`` alone (no row is read, no GROUP BY sorts the range's rows:
see top_groups).  Python only divides the counts it gets back.  The page
makes two statements; bench/README.md has their times on a million rows.  Imported pairs (route ``import``) were
never asked in a chat and are left out of everything.

Days and weeks are UTC, like every time the admin shows; a week starts on
Monday.  A range is whole days, both ends included.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path

import sqlalchemy as sa

from . import retrain, versions
from .database import (CORRECTED_SQL, FEEDBACK_DOWN, ROUTE_FALLBACK, ROUTE_IMPORT, ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_MODEL,
                       ROUTE_UNSURE, WRONG_SQL, Exchange, ExchangeDaily, QuestionGroup)
from .extensions import db

DAY, WEEK = "day", "week"
PERIODS = (DAY, WEEK)
DEFAULT_DAYS = 30
MAX_DAYS = 366          # a longer range is cut to its last MAX_DAYS days
TOP_GROUPS = 20
EARLIEST, LATEST = date(2000, 1, 1), date(2999, 12, 31)  # far from date.min/max: no overflow

# The route groups the page shows: the bot wrote it, a training pair's answer,
# a reviewed answer, or it did not answer (no model yet / "잘 모르겠어요").
ROUTE_GROUPS = {
    "model": (ROUTE_MODEL,),
    "known": (ROUTE_KNOWN,),
    "memory": (ROUTE_MEMORY,),
    "unsure": (ROUTE_FALLBACK, ROUTE_UNSURE),
}


@dataclass(frozen=True)
class Span:
    """Whole UTC days ``start``..``end`` (both included), bucketed by ``period``."""

    start: date
    end: date
    period: str = DAY

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time.min)

    @property
    def until(self) -> datetime:
        """The first moment after the range (exclusive bound)."""
        return datetime.combine(self.end + timedelta(days=1), time.min)

    def buckets(self) -> list[date]:
        """Every day, or every Monday of a week that touches the range: the
        x axis, so a day without exchanges is a zero, not a gap."""
        first = self.start if self.period == DAY else self.start - timedelta(days=self.start.weekday())
        step = timedelta(days=1 if self.period == DAY else 7)
        result = []
        while first <= self.end:
            result.append(first)
            first += step
        return result


def parse_span(args, today: date) -> tuple[Span, list[str]]:
    """The span a request asks for (``from``, ``to`` as YYYY-MM-DD, ``period``)
    and the reasons, in Korean, for anything in it that could not be used.

    Never raises: a bad value falls back to the default (the last
    DEFAULT_DAYS days, per day), and a range longer than MAX_DAYS is cut to
    its last MAX_DAYS days.
    """
    errors = []
    period = args.get("period") or DAY
    if period not in PERIODS:
        errors.append(f"집계 단위 '{period}'은(는) 쓸 수 없어 일별로 보여 줍니다.")
        period = DAY

    def day(name, default):
        text = (args.get(name) or "").strip()
        if not text:
            return default
        try:
            value = date.fromisoformat(text)
        except ValueError:
            value = None
        if value is None or not EARLIEST <= value <= LATEST:
            errors.append(f"날짜 '{text[:20]}'을(를) 쓸 수 없습니다 ({EARLIEST}~{LATEST}, YYYY-MM-DD). 기본값을 씁니다.")
            return default
        return value

    end = day("to", today)
    start = day("from", end - timedelta(days=DEFAULT_DAYS - 1))
    if start > end:
        errors.append(f"시작일 {start}이 종료일 {end}보다 늦어 종료일까지 {DEFAULT_DAYS}일을 보여 줍니다.")
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    if (end - start).days + 1 > MAX_DAYS:
        start = end - timedelta(days=MAX_DAYS - 1)
        errors.append(f"기간은 최대 {MAX_DAYS}일입니다: {start}부터 보여 줍니다.")
    return Span(start, end, period), errors


@dataclass
class Stats:
    """Counts for one group of exchanges, and the rates the page shows."""

    key: object = None
    exchanges: int = 0
    model: int = 0
    known: int = 0
    memory: int = 0
    unsure: int = 0        # fallback and "잘 모르겠어요" together
    up: int = 0
    down: int = 0
    reviewed: int = 0
    corrected: int = 0     # reviewed, and the correction differs from the answer
    extra: dict = field(default_factory=dict)

    def share(self, count):
        return count / self.exchanges if self.exchanges else None

    @property
    def rates(self) -> dict:
        """Each rate as a fraction 0..1, or None where there is nothing to divide by."""
        return {
            "model": self.share(self.model), "known": self.share(self.known),
            "memory": self.share(self.memory), "unsure": self.share(self.unsure),
            "up": self.share(self.up), "down": self.share(self.down),
            "reviewed": self.share(self.reviewed),
            "corrected": self.corrected / self.reviewed if self.reviewed else None,
        }

    def add(self, other: "Stats"):
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


COUNTS = ("exchanges", "model", "known", "memory", "unsure", "up", "down", "reviewed", "corrected")


def _count(condition):
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def corrected_condition():
    """A reviewed exchange whose answer had to be changed, in the words of
    the partial index ix_exchange_corrected (a database uses a partial index
    only for a query that says the same)."""
    return sa.text(CORRECTED_SQL)


def wrong_condition():
    """A 👎 or no answer (fallback, "잘 모르겠어요"), in the words of the
    partial index ix_exchange_wrong."""
    return sa.text(f"({WRONG_SQL})")


def in_span(span: Span, by_index: bool = True):
    """The chat exchanges of the span (imported pairs are not chats).

    ``by_index`` False: the same rows, in words that SQLite cannot seek with
    an index on created_at (a unary +), so that it reads the partial index the
    query names instead of guessing, on a database never ANALYZEd, that the
    range on ix_exchange_created_at and a read of every row is cheaper."""
    return _in_span(Exchange.__table__, span, by_index)


def _in_span(table, span: Span, by_index: bool):
    created_at = table.c.created_at
    if not by_index and db.engine.dialect.name == "sqlite":
        created_at = sa.literal_column(f"+{table.name}.created_at", type_=created_at.type)
    return sa.and_(created_at >= span.since, created_at < span.until, table.c.route != ROUTE_IMPORT)


def bucket(column, period: str, dialect: str):
    """The day, or the Monday of the week, ``column`` falls in, as YYYY-MM-DD
    text: the one place that knows each database's date functions."""
    if dialect == "postgresql":
        return sa.func.to_char(sa.func.date_trunc(period, sa.cast(column, sa.Date)), "YYYY-MM-DD")
    if period == WEEK:  # SQLite: forward to Sunday (or stay), then back to its Monday
        return sa.func.strftime("%Y-%m-%d", column, "weekday 0", "-6 days")
    return sa.func.strftime("%Y-%m-%d", column)


PERIOD, VERSION, CHANNEL = "period", "version", "channel"


def overview(span: Span) -> dict[str, dict]:
    """Stats per day or week, per model version and per channel of the span,
    as {PERIOD: {key: Stats}, VERSION: ..., CHANNEL: ...}, from one statement.

    It reads exchange_daily, the counts the database keeps per day, channel
    and model version (a few rows a day, not every exchange), a range of
    its key, and adds them up three ways.
    """
    dialect = db.engine.dialect.name
    t = ExchangeDaily.__table__
    days = (sa.select(t.c.day, t.c.channel, sa.func.nullif(t.c.model_version, "").label("model_version"),
                      *(t.c[name] for name in COUNTS))
            .where(t.c.day >= span.start.isoformat(), t.c.day <= span.end.isoformat(), t.c.imported == 0)
            .cte("days"))
    sums = [sa.func.sum(days.c[name]).label(name) for name in COUNTS]
    period = bucket(days.c.day, span.period, dialect)
    query = sa.union_all(*(sa.select(sa.literal(kind).label("kind"), key.label("key"), *sums).group_by(key)
                           for kind, key in ((PERIOD, period), (VERSION, days.c.model_version),
                                             (CHANNEL, days.c.channel))))
    result = {PERIOD: {}, VERSION: {}, CHANNEL: {}}
    for row in db.session.execute(query):
        result[row.kind][row.key] = Stats(key=row.key, **{name: int(getattr(row, name)) for name in COUNTS})
    return result


def by_period(span: Span, found: dict | None = None) -> list[Stats]:
    """One Stats per day or week of the span, oldest first, zeros included.
    ``found``: the span's overview(), if already made."""
    rows = (found or overview(span))[PERIOD]
    return [rows.get(day.isoformat()) or Stats(key=day.isoformat()) for day in span.buckets()]


def by_channel(span: Span, found: dict | None = None) -> list[Stats]:
    """One Stats per channel that had exchanges, the busiest first."""
    return sorted((found or overview(span))[CHANNEL].values(), key=lambda s: (-s.exchanges, s.key))


def by_version(span: Span, models_root, found: dict | None = None) -> list[Stats]:
    """One Stats per model version, newest first: each version on disk (its
    dev metrics from metrics.json in ``extra``), and any version that answered
    in the span but is no longer on disk.  ``key`` None: no model answered
    (a fallback before the first model)."""
    found = dict((found or overview(span))[VERSION])
    root = Path(models_root)
    current = versions.current_dir(root)
    on_disk = versions.list_versions(root)
    names = list(reversed(on_disk)) + sorted((k for k in found if k is not None and k not in on_disk), reverse=True)
    rows = []
    for name in names:
        row = found.pop(name, None) or Stats(key=name)
        path = root / name
        row.extra = {"metrics": retrain.read_metrics(path) if name in on_disk else {},
                     "on_disk": name in on_disk,
                     "current": current is not None and name in on_disk and path.resolve() == current}
        rows.append(row)
    if None in found:
        rows.append(found[None])
    return rows


def top_groups(span: Span, limit: int = TOP_GROUPS) -> list[dict]:
    """The question groups (the review queue's, by meaning: question_group;
    a key in no group is one) with the most exchanges that went wrong: a 👎,
    no answer (fallback or "잘 모르겠어요"), or a corrected answer; the worst
    first.

    One statement from two partial indexes, reading no row for the counts:
    the 👎 and unanswered rows (ix_exchange_wrong) and the corrected rows
    (ix_exchange_corrected, each counted as wrong only where the first did
    not count it already), both in question_key order, so they are grouped
    as they are read, without sorting.  The question shown (the group's
    greatest among those rows) is then read for the top groups only.
    """
    # Null-safe "not counted yet": with a NULL feedback the condition is NULL, not false.
    not_counted = sa.case((wrong_condition(), 0), else_=1)
    flagged = (sa.select(Exchange.question_key, sa.func.count().label("wrong"),
                         _count(Exchange.feedback == FEEDBACK_DOWN).label("down"),
                         _count(Exchange.route.in_(ROUTE_GROUPS["unsure"])).label("unsure"),
                         sa.literal_column("0").label("corrected"))
               .where(in_span(span, by_index=False), wrong_condition()).group_by(Exchange.question_key))
    corrected = (sa.select(Exchange.question_key, sa.func.sum(not_counted), sa.literal_column("0"),
                           sa.literal_column("0"), sa.func.count())
                 .where(in_span(span, by_index=False), corrected_condition()).group_by(Exchange.question_key))
    both = sa.union_all(flagged, corrected).subquery("both")
    # The review queue's groups by meaning (chatbot/grouping.py): a key that
    # joined a group counts for it; a key not grouped is a group of its own.
    grouped = sa.func.coalesce(QuestionGroup.group_key, both.c.question_key)
    wrong = sa.func.sum(both.c.wrong)
    top = (sa.select(grouped.label("question_key"), wrong.label("wrong"), sa.func.sum(both.c.down).label("down"),
                     sa.func.sum(both.c.unsure).label("unsure"), sa.func.sum(both.c.corrected).label("corrected"))
           .select_from(both.outerjoin(QuestionGroup, QuestionGroup.question_key == both.c.question_key))
           .group_by(grouped)
           .order_by(wrong.desc(), grouped)
           .limit(limit)
           .cte("top"))

    def questions(condition, by_index):  # the group key's own rows of the span that ``condition`` picks
        same = Exchange.__table__.alias("same")
        return (sa.select(same.c.question.label("question"))
                .where(same.c.question_key == top.c.question_key, _in_span(same, span, by_index), condition)
                .correlate(top))

    # The 👎 and unanswered rows by ix_exchange_wrong, the corrected ones by ix_exchange_corrected:
    # both (question_key, created_at), a range of one key's rows, not of all groups' rows.
    shown = sa.union_all(questions(wrong_condition(), True),
                         questions(corrected_condition(), True)).subquery("shown")
    # A group whose own key went right (its wrong rows are its members'):
    # a question of its own key, whatever the span (one row by its index).
    own = (sa.select(Exchange.question).where(Exchange.question_key == top.c.question_key)
           .limit(1).correlate(top).scalar_subquery())
    question = sa.func.coalesce(sa.select(sa.func.max(shown.c.question)).scalar_subquery(), own)
    query = sa.select(*top.c, question.label("question")).order_by(top.c.wrong.desc(), top.c.question_key)
    return [{**row._asdict(), **{name: int(getattr(row, name)) for name in ("wrong", "down", "unsure", "corrected")}}
            for row in db.session.execute(query)]


def total(rows: list[Stats]) -> Stats:
    """The counts of several groups added up (the span's totals from its days)."""
    result = Stats(key="합계")
    for row in rows:
        result.add(row)
    return result
