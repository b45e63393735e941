"""The admin's statistics page, /admin/analytics (통계): how the chats went
per day or week, per model version (next to its dev metrics: did the last
retrain make things better?), per channel, and the question groups that went
wrong most often, each linked to the review list filtered to that group.

The numbers come from chatbot/analytics.py (SQL aggregates), the charts
from chatbot/charts.py (server-drawn SVG).  Every table can be downloaded
as CSV, with the same formula-safe cells as the pairs export.
"""
import csv
import io
from datetime import timedelta
from pathlib import Path

from flask import Response, abort, current_app, request, url_for
from flask_admin import BaseView, expose

from . import analytics, charts, heavy
from .admin_base import ReviewerOnly
from .database import CHANNEL_LABELS, utcnow
from .pairs_csv import escape_cell

TABLES = ("periods", "versions", "channels", "groups")

# The rates every Stats table shows, in this order: (key in Stats.rates, heading, css class for charts).
RATE_COLUMNS = (
    ("model", "모델 작성", "s-model"),
    ("known", "학습 데이터 답변", "s-known"),
    ("memory", "검토된 답변", "s-memory"),
    ("unsure", "모름·기본 응답", "s-unsure"),
    ("up", "👍", "s-up"),
    ("down", "👎", "s-down"),
    ("reviewed", "검토 완료", "s-reviewed"),
    ("corrected", "수정 비율", "s-corrected"),
)
ROUTE_RATES = RATE_COLUMNS[:4]
QUALITY_RATES = tuple(c for c in RATE_COLUMNS if c[0] in ("up", "down", "unsure", "corrected"))
TREND_RATES = tuple(c for c in RATE_COLUMNS if c[0] in ("up", "down", "reviewed", "corrected"))


def _stats_columns():
    return [("대화", "count")] + [(heading, "rate") for _, heading, _ in RATE_COLUMNS]


def _stats_cells(row: analytics.Stats):
    rates = row.rates
    return [row.exchanges] + [rates[key] for key, _, _ in RATE_COLUMNS]


def _period_label(key, period):
    return f"{key} 주" if period == analytics.WEEK else key


def _version_label(key):
    return key if key is not None else "(모델 없음)"


# Each table of the page is (columns, rows): columns are (heading, kind), a
# row is its cells' raw values.  Kinds: text, count, rate (a fraction, or
# None), number, link ((text, url)).  The page and the CSV show the same rows.

def periods_table(span, periods):
    first = ("주 (월요일부터)" if span.period == analytics.WEEK else "날짜", "text")
    return ([first] + _stats_columns(),
            [[_period_label(r.key, span.period)] + _stats_cells(r) for r in periods]
            + [["합계"] + _stats_cells(analytics.total(periods))])


def versions_table(versions):
    rows = []
    for r in versions:
        metrics = r.extra.get("metrics", {})
        name = _version_label(r.key) + (" (current)" if r.extra.get("current") else "")
        rows.append([name, metrics.get("dev_chrf"), metrics.get("dev_bleu"), metrics.get("train_pairs")]
                    + _stats_cells(r))
    return ([("모델 버전", "text"), ("dev chrF", "number"), ("dev BLEU", "number"), ("학습 쌍", "number")]
            + _stats_columns(), rows)


def channels_table(channels):
    return ([("채널", "text")] + _stats_columns(),
            [[CHANNEL_LABELS.get(r.key, r.key)] + _stats_cells(r) for r in channels])


def groups_table(groups, group_link):
    return ([("질문 묶음", "link"), ("질문 키", "text"), ("문제", "count"), ("👎", "count"),
             ("모름·기본 응답", "count"), ("수정", "count")],
            [[(g["question"], group_link(g["question_key"])), g["question_key"], g["wrong"], g["down"],
              g["unsure"], g["corrected"]] for g in groups])


def build_charts(span, periods, versions, channels):
    labels = [r.key[5:] for r in periods]  # MM-DD: the year is in the form above
    return {
        "periods": charts.stacked_columns(
            labels, [(heading, css, [getattr(r, key) for r in periods]) for key, heading, css in ROUTE_RATES]),
        "trend": charts.lines(
            labels, [(heading, css, [r.rates[key] for r in periods]) for key, heading, css in TREND_RATES]),
        "versions": charts.bar_rows(
            [_version_label(r.key) for r in versions],
            [(heading, css, [r.rates[key] for r in versions]) for key, heading, css in QUALITY_RATES]),
        "channels": charts.bar_rows(
            [CHANNEL_LABELS.get(r.key, r.key) for r in channels],
            [(heading, css, [r.rates[key] for r in channels]) for key, heading, css in QUALITY_RATES]),
    }


def csv_text(columns, rows) -> str:
    """A table as CSV: a BOM for Excel, CRLF ends, rates in percent, and no
    cell that a spreadsheet would run as a formula."""
    out = io.StringIO(newline="")
    out.write("\ufeff")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([escape_cell(f"{heading} (%)" if kind == "rate" else heading) for heading, kind in columns])
    for row in rows:
        writer.writerow([escape_cell(_csv_cell(value, kind)) for value, (_, kind) in zip(row, columns)])
    return out.getvalue()


def _csv_cell(value, kind):
    if value is None:
        return ""
    if kind == "rate":
        return f"{value * 100:.1f}"
    if kind == "link":
        return str(value[0])
    return str(value)


def _models_root():
    return Path(current_app.config["MODEL_DIR"])


class AnalyticsView(ReviewerOnly, BaseView):
    """/admin/analytics: reviewers only, like every admin view (admin_base)."""

    def __init__(self, *args, group_filter_arg, **kwargs):
        # The review list's URL argument that filters it to one question
        # group by meaning (review.ExchangeView's filter), e.g. "flt0_8".
        self.group_filter_arg = group_filter_arg
        super().__init__(*args, **kwargs)

    def _group_link(self, key):
        return url_for("exchange.index_view", **{self.group_filter_arg: key})

    @expose("/")
    @heavy.page
    def index(self):
        today = utcnow().date()
        span, errors = analytics.parse_span(request.args, today)
        found = analytics.overview(span)  # one query for the three tables
        periods = analytics.by_period(span, found)
        versions = analytics.by_version(span, _models_root(), found)
        channels = analytics.by_channel(span, found)
        groups = analytics.top_groups(span)
        ranges = [(label, {"from": (today - timedelta(days=days - 1)).isoformat(), "to": today.isoformat(),
                           "period": period})
                  for label, days, period in (("최근 7일", 7, "day"), ("최근 30일", 30, "day"),
                                              ("최근 90일", 90, "week"), ("최근 1년", 365, "week"))]
        query = {"from": span.start.isoformat(), "to": span.end.isoformat(), "period": span.period}
        return self.render("admin/analytics.html", span=span, errors=errors, query=query, ranges=ranges,
                           totals=analytics.total(periods), max_days=analytics.MAX_DAYS,
                           tables={"periods": periods_table(span, periods), "versions": versions_table(versions),
                                   "channels": channels_table(channels),
                                   "groups": groups_table(groups, self._group_link)},
                           charts=build_charts(span, periods, versions, channels))

    @expose("/<table>.csv")
    @heavy.page
    def download(self, table):
        if table not in TABLES:
            abort(404)
        span, errors = analytics.parse_span(request.args, utcnow().date())
        if errors:  # a file must hold what was asked for, or nothing
            return Response("\n".join(errors) + "\n", status=400, mimetype="text/plain")
        if table == "periods":
            columns, rows = periods_table(span, analytics.by_period(span))
        elif table == "versions":
            columns, rows = versions_table(analytics.by_version(span, _models_root()))
        elif table == "channels":
            columns, rows = channels_table(analytics.by_channel(span))
        else:
            columns, rows = groups_table(analytics.top_groups(span), self._group_link)
        filename = f"analytics-{table}-{span.period}-{span.start}_{span.end}.csv"
        return Response(csv_text(columns, rows), content_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
