"""The statistics page (/admin/analytics): its counts against hand-counted
rows on SQLite and on PostgreSQL, per day and per week, the range's bounds,
who may see it, its CSV files and what it does with bad parameters."""
import csv
import io
import json
import os
import re
from datetime import date, datetime, timedelta
from html import unescape

import flask_migrate
import pytest

from chatbot import analytics, charts, create_app
from chatbot.database import Exchange
from chatbot.extensions import db

# Two weeks, Monday 2024-04-29 to Sunday 2024-05-12.
RANGE = {"from": "2024-04-29", "to": "2024-05-12"}
# (created_at, route, feedback, status, corrected_answer, channel, model_version, question_key); answer is "답".
ROWS = [
    ("2024-04-28 23:59:59", "model", "down", "unreviewed", None, "web", "v1", "a"),      # before the range
    ("2024-04-29 00:00:00", "model", "up", "reviewed", "새 답", "web", "v1", "a"),       # corrected
    ("2024-04-29 12:00:00", "known", "down", "unreviewed", None, "web", "v1", "a"),
    ("2024-04-30 08:00:00", "memory", None, "reviewed", "답", "kakao", "v1", "b"),       # same answer: not corrected
    ("2024-05-01 09:00:00", "unsure", "down", "unreviewed", None, "api", "v1", "c"),
    ("2024-05-01 10:00:00", "fallback", None, "unreviewed", None, "web", None, "c"),
    ("2024-05-02 10:00:00", "import", None, "reviewed", "x", "web", None, "a"),          # imported: never counted
    ("2024-05-06 00:00:00", "model", "up", "reviewed", None, "widget", "v2", "d"),
    ("2024-05-07 15:00:00", "known", "down", "reviewed", "고친 답", "web", "v2", "a"),   # corrected
    ("2024-05-12 23:59:59.999", "known", None, "needs_deletion", None, "web", "v2", "e"),
    ("2024-05-13 00:00:00", "model", "down", "unreviewed", None, "web", "v2", "a"),      # after the range
]
COUNTS = ("exchanges", "model", "known", "memory", "unsure", "up", "down", "reviewed", "corrected")


def counts(stats):
    return {s.key: tuple(getattr(s, name) for name in COUNTS) for s in stats}


def add_rows(app, rows=ROWS):
    with app.app_context():
        for at, route, feedback, status, corrected, channel, version, key in rows:
            db.session.add(Exchange(question=f"{key} 질문", question_key=key, answer="답", route=route,
                                    feedback=feedback, status=status, corrected_answer=corrected, channel=channel,
                                    model_version=version, created_at=datetime.fromisoformat(at)))
        db.session.commit()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path, make_app):
    """An app with ROWS on SQLite, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        app = make_app(MODEL_DIR=str(tmp_path / "models"))
    else:
        url = request.getfixturevalue("postgres").create_database(f"analytics_{os.getpid()}_{id(request)}")
        app = create_app({"TESTING": True, "SECRET_KEY": "x", "SQLALCHEMY_DATABASE_URI": url,
                          "MODEL_DIR": str(tmp_path / "models")})
        with app.app_context():
            flask_migrate.upgrade()
    add_rows(app)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def span(start="2024-04-29", end="2024-05-12", period="day"):
    return analytics.Span(date.fromisoformat(start), date.fromisoformat(end), period)


def test_per_day(any_db):
    with any_db.app_context():
        days = counts(analytics.by_period(span()))
    assert len(days) == 14
    #                          exch model known memory unsure up down reviewed corrected
    assert days["2024-04-29"] == (2, 1, 1, 0, 0, 1, 1, 1, 1)
    assert days["2024-04-30"] == (1, 0, 0, 1, 0, 0, 0, 1, 0)
    assert days["2024-05-01"] == (2, 0, 0, 0, 2, 0, 1, 0, 0)
    assert days["2024-05-02"] == (0,) * 9  # only an imported pair
    assert days["2024-05-06"] == (1, 1, 0, 0, 0, 1, 0, 1, 0)
    assert days["2024-05-07"] == (1, 0, 1, 0, 0, 0, 1, 1, 1)
    assert days["2024-05-12"] == (1, 0, 1, 0, 0, 0, 0, 0, 0)
    assert sum(d[0] for d in days.values()) == 8


def test_per_week_and_a_range_that_starts_midweek(any_db):
    with any_db.app_context():
        weeks = counts(analytics.by_period(span(period="week")))
        midweek = counts(analytics.by_period(span("2024-05-01", "2024-05-07", "week")))
        total = analytics.total(analytics.by_period(span(period="week")))
    assert weeks == {"2024-04-29": (5, 1, 1, 1, 2, 1, 2, 2, 1), "2024-05-06": (3, 1, 2, 0, 0, 1, 1, 2, 1)}
    # the weeks are Monday's; only the range's days count
    assert midweek == {"2024-04-29": (2, 0, 0, 0, 2, 0, 1, 0, 0), "2024-05-06": (2, 1, 1, 0, 0, 1, 1, 2, 1)}
    assert total.rates == {"model": 2 / 8, "known": 3 / 8, "memory": 1 / 8, "unsure": 2 / 8, "up": 2 / 8,
                           "down": 3 / 8, "reviewed": 4 / 8, "corrected": 2 / 4}


def test_range_bounds_are_whole_days(any_db):
    with any_db.app_context():
        first = counts(analytics.by_period(span("2024-04-28", "2024-04-28")))
        last = counts(analytics.by_period(span("2024-05-12", "2024-05-13")))
    assert first == {"2024-04-28": (1, 1, 0, 0, 0, 0, 1, 0, 0)}
    assert last == {"2024-05-12": (1, 0, 1, 0, 0, 0, 0, 0, 0), "2024-05-13": (1, 1, 0, 0, 0, 0, 1, 0, 0)}


def test_per_channel_and_per_version(any_db, tmp_path):
    models = tmp_path / "models"
    for name, chrf in (("v1", 20.5), ("v2", 24.0), ("v3", 26.0)):
        (models / name).mkdir(parents=True)
        (models / name / "metrics.json").write_text(json.dumps({"dev_chrf": chrf}), encoding="utf-8")
    (models / "current").symlink_to("v2")
    with any_db.app_context():
        channels = counts(analytics.by_channel(span()))
        order = [c.key for c in analytics.by_channel(span())]
        by_version = analytics.by_version(span(), models)
    assert channels == {"web": (5, 1, 3, 0, 1, 1, 2, 2, 2), "kakao": (1, 0, 0, 1, 0, 0, 0, 1, 0),
                        "api": (1, 0, 0, 0, 1, 0, 1, 0, 0), "widget": (1, 1, 0, 0, 0, 1, 0, 1, 0)}
    assert order == ["web", "api", "kakao", "widget"]  # busiest first, then by name
    assert [v.key for v in by_version] == ["v3", "v2", "v1", None]  # newest first; no model last
    assert counts(by_version) == {"v3": (0,) * 9, "v2": (3, 1, 2, 0, 0, 1, 1, 2, 1),
                                  "v1": (4, 1, 1, 1, 1, 1, 2, 2, 1), None: (1, 0, 0, 0, 1, 0, 0, 0, 0)}
    assert [(v.extra["metrics"].get("dev_chrf"), v.extra["current"]) for v in by_version[:3]] == \
        [(26.0, False), (24.0, True), (20.5, False)]


def test_top_groups(any_db):
    with any_db.app_context():
        groups = analytics.top_groups(span())
    assert [(g["question_key"], g["wrong"], g["down"], g["unsure"], g["corrected"]) for g in groups] == \
        [("a", 3, 2, 0, 2), ("c", 2, 1, 2, 0)]


def many_rows(count=400):
    """Rows with every combination the counts tell apart, by a hash of the row
    number: routes (imports too), feedback, review states, corrections equal
    to the answer or not (with and without feedback), channels, versions (and
    none), question groups, at any time of the days around RANGE."""
    routes, feedbacks = ("model", "known", "memory", "unsure", "fallback", "import"), ("up", "down", None)
    statuses, channels = ("unreviewed", "reviewed", "needs_deletion"), ("web", "widget", "api", "kakao")
    corrections, versions = (None, "답", "고친 답"), ("v1", "v2", None)
    rows = []
    for i in range(count):
        h = i * 2654435761 % 1000003
        at = datetime(2024, 4, 27) + timedelta(seconds=h * 17 % (18 * 86400))  # 2024-04-27 .. 2024-05-14
        rows.append((at.isoformat(sep=" "), routes[h % 6], feedbacks[h // 7 % 3], statuses[h // 21 % 3],
                     corrections[h // 63 % 3], channels[h // 189 % 4], versions[h // 757 % 3], f"k{h // 11 % 9}"))
    return rows


def expected(rows, start, end, key):
    """The counts of ``rows`` in the days start..end per ``key(row)``, one row at a time."""
    found = {}
    for at, route, feedback, status, corrected, channel, version, group in rows:
        if route == "import" or not start <= at[:10] <= end:
            continue
        fixed = status == "reviewed" and corrected is not None and corrected != "답"
        counts = found.setdefault(key(at, channel, version), [0] * 9)
        for n, flag in enumerate((True, route == "model", route == "known", route == "memory",
                                  route in ("unsure", "fallback"), feedback == "up", feedback == "down",
                                  status == "reviewed", fixed)):
            counts[n] += flag
    return {k: tuple(v) for k, v in found.items()}


def test_every_count_matches_the_rows_one_by_one(any_db, tmp_path):
    """The grouped-in-the-database numbers against a plain count of each row."""
    rows = many_rows()
    add_rows(any_db, rows)
    rows = ROWS + rows
    monday = lambda at: (date.fromisoformat(at[:10]) - timedelta(days=date.fromisoformat(at[:10]).weekday()))
    with any_db.app_context():
        for start, end in (("2024-04-29", "2024-05-12"), ("2024-05-01", "2024-05-07"), ("2024-04-27", "2024-05-14")):
            days = counts(analytics.by_period(span(start, end)))
            assert {k: v for k, v in days.items() if any(v)} == expected(rows, start, end, lambda at, c, v: at[:10])
            weeks = counts(analytics.by_period(span(start, end, "week")))
            assert weeks == expected(rows, start, end, lambda at, c, v: monday(at).isoformat())
            assert counts(analytics.by_channel(span(start, end))) == expected(rows, start, end, lambda at, c, v: c)
            versions = counts(analytics.by_version(span(start, end), tmp_path / "models"))
            assert versions == expected(rows, start, end, lambda at, c, v: v)


def daily_recount(exchanges):
    """What exchange_daily must hold, counted in Python from the exchanges one
    by one: {(day, channel, model_version, imported): {count: n}}."""
    from collections import Counter, defaultdict

    found = defaultdict(Counter)
    for e in exchanges:
        fixed = e.status == "reviewed" and e.corrected_answer is not None and e.corrected_answer != e.answer
        meets = {"exchanges": True, "model": e.route == "model", "known": e.route == "known",
                 "memory": e.route == "memory", "unsure": e.route in ("fallback", "unsure"),
                 "up": e.feedback == "up", "down": e.feedback == "down",
                 "unreviewed": e.status == "unreviewed", "reviewed": e.status == "reviewed",
                 "needs_deletion": e.status == "needs_deletion", "corrected": fixed,
                 "waiting_down": e.status == "unreviewed" and e.feedback == "down",
                 "waiting_unsure": e.status == "unreviewed" and e.route == "unsure"}
        counts = found[(e.created_at.date().isoformat(), e.channel, e.model_version or "", int(e.route == "import"))]
        counts.update({name: int(flag) for name, flag in meets.items()})
    return {key: dict(counts) for key, counts in found.items()}


def daily_rows():
    import sqlalchemy as sa

    from chatbot.database import DAILY_COUNTS, ExchangeDaily
    return {(d.day, d.channel, d.model_version, d.imported): {name: getattr(d, name) for name in DAILY_COUNTS}
            for d in db.session.scalars(sa.select(ExchangeDaily))}


def test_the_daily_counts_follow_every_insert_update_and_delete(any_db):
    """exchange_daily, kept by the database's triggers, against a count of
    the exchanges one by one after each kind of change a reviewer, an asker
    or the CLI makes, through the ORM and in bulk."""
    import sqlalchemy as sa

    from chatbot.database import DAILY_COUNTS, ExchangeDaily

    assert set(DAILY_COUNTS) == {c.name for c in ExchangeDaily.__table__.columns} - {
        "day", "channel", "model_version", "imported"}

    def recount():
        return daily_recount(db.session.scalars(sa.select(Exchange)))

    with any_db.app_context():
        assert daily_rows() == recount()
        assert sum(counts["exchanges"] for counts in daily_rows().values()) == len(ROWS)
        changes = [
            lambda e: setattr(e, "feedback", "down"),
            lambda e: (setattr(e, "status", "reviewed"), setattr(e, "corrected_answer", "고친 답")),
            lambda e: setattr(e, "corrected_answer", e.answer),  # no longer a correction
            lambda e: setattr(e, "created_at", e.created_at + timedelta(days=1)),
            lambda e: setattr(e, "route", "unsure"),
            lambda e: (setattr(e, "status", "unreviewed"), setattr(e, "channel", "kakao")),
            lambda e: setattr(e, "question", "다른 질문"),  # not counted: no change at all
            db.session.delete,
        ]
        for change in changes:
            for exchange in db.session.scalars(sa.select(Exchange).order_by(Exchange.id).limit(4)):
                change(exchange)
            db.session.commit()
            assert daily_rows() == recount(), change
        db.session.execute(sa.update(Exchange).values(status="needs_deletion"))
        db.session.commit()
        rows = daily_rows()
        assert rows == recount()
        assert {counts["needs_deletion"] == counts["exchanges"] > 0 for counts in rows.values()} == {True}
        db.session.execute(sa.delete(Exchange))
        db.session.commit()
        assert daily_rows() == {}  # a day at zero exchanges leaves no row


def test_top_groups_count_each_wrong_exchange_once(any_db):
    """A corrected exchange that also had a 👎 or no answer counts once; one
    without feedback (NULL) counts too; the question shown is the group's
    greatest among its wrong exchanges of the span."""
    rows = many_rows()
    add_rows(any_db, rows)
    rows = ROWS + rows
    with any_db.app_context():
        groups = analytics.top_groups(span("2024-04-29", "2024-05-12"), limit=100)
    found = {}
    for at, route, feedback, status, corrected, channel, version, group in rows:
        fixed = status == "reviewed" and corrected is not None and corrected != "답"
        down, unsure = feedback == "down", route in ("unsure", "fallback")
        if route == "import" or not "2024-04-29" <= at[:10] <= "2024-05-12" or not (down or unsure or fixed):
            continue
        counts_ = found.setdefault(group, [0, 0, 0, 0])
        for n, flag in enumerate((True, down, unsure, fixed)):
            counts_[n] += flag
    assert any(c[3] for c in found.values())
    worst = sorted(found.items(), key=lambda item: (-item[1][0], item[0]))
    assert [(g["question_key"], g["wrong"], g["down"], g["unsure"], g["corrected"]) for g in groups] == \
        [(key, *c) for key, c in worst]
    assert all(g["question"] == f"{g['question_key']} 질문" for g in groups)


def statements(app, call):
    """The SQL statements ``call`` runs, with their parameters."""
    import sqlalchemy as sa
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            call()
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        plans = []
        for statement, parameters in seen:
            plan = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plans.append([row[-1] for row in plan])
    return plans


def test_sqlite_groups_in_index_order_and_reads_no_row(app):
    """The plans on SQLite: the counts come from exchange_daily by a range of
    its key, and never from ``exchange``; the groups
    that went wrong come from two indexes alone (COVERING, or a partial
    index whose WHERE the query says), both in question_key order, so no
    GROUP BY sorts those rows; only the few groups are sorted afterwards."""
    add_rows(app, many_rows())
    year = span("2023-05-13", "2024-05-12", "week")
    [overview] = statements(app, lambda: analytics.overview(year))
    [groups] = statements(app, lambda: analytics.top_groups(year))
    assert not [line for line in overview if " exchange " in f"{line} "], overview
    reads = [line for line in overview if "exchange_daily" in line]
    assert reads and set(reads) == {"SEARCH exchange_daily USING PRIMARY KEY (day>? AND day<?)"}, overview
    reads = ("SCAN exchange USING COVERING INDEX ix_exchange_wrong",
             "SEARCH exchange USING INDEX ix_exchange_corrected (status=?)")  # every entry is 'reviewed'; by key
    searches = [line for line in groups if line.startswith(("SEARCH exchange ", "SCAN exchange "))]
    # A group (by meaning) whose own key went right shows a question of its
    # own key: one row by that key's index.
    own = "SEARCH exchange USING INDEX ix_exchange_key_status_created (question_key=?)"
    assert searches.count(own) == 1
    searches.remove(own)
    assert searches == list(reads), groups
    for read in searches:  # each grouped as it is read: no sort of the range's rows
        assert "TEMP B-TREE" not in groups[groups.index(read) + 1], groups
    # The question shown, for the top groups only: each by its question_key and the range.
    shown = [line for line in groups if line.startswith("SEARCH same")]
    assert shown == ["SEARCH same USING INDEX ix_exchange_wrong (question_key=? AND created_at>? AND created_at<?)",
                     "SEARCH same USING INDEX ix_exchange_corrected (status=? AND question_key=? AND created_at>? "
                     "AND created_at<?)"], shown
    # The corrected rows' partial index's WHERE is the query's, so SQLite reads
    # no row to check it (a deferred seek).


def test_the_bucket_function_per_dialect(app):
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite

    column = sa.column("created_at")
    assert "date_trunc" in str(analytics.bucket(column, "week", "postgresql").compile(dialect=postgresql.dialect()))
    assert "strftime" in str(analytics.bucket(column, "day", "sqlite").compile(dialect=sqlite.dialect()))
    with app.app_context():  # Sunday belongs to the week of the Monday before, Monday to its own
        for at, monday in (("2024-05-05 23:00:00", "2024-04-29"), ("2024-05-06 00:00:00", "2024-05-06"),
                           ("2024-05-08 12:00:00", "2024-05-06")):
            value = db.session.scalar(sa.select(analytics.bucket(sa.literal(at), "week", "sqlite")))
            assert value == monday, at


# -- the page --------------------------------------------------------------------------------

def test_only_reviewers_see_the_page_and_its_files(client):
    for url in ("/admin/analytics/", "/admin/analytics/periods.csv", "/admin/analytics/groups.csv"):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/login?next=")


def test_the_page_shows_the_counts_and_links_each_group_to_the_review_list(app, logged_in):
    add_rows(app)
    html = logged_in.get("/admin/analytics/", query_string=RANGE).get_data(as_text=True)
    assert "2024-04-29 ~ 2024-05-12</strong>: 대화 8건" in html
    assert "수정 비율 50.0%" in html
    assert html.count('<svg class="chart"') == 4
    assert 'href="/admin/analytics/periods.csv?from=2024-04-29&amp;to=2024-05-12&amp;period=day"' in html
    links = re.findall(r'<a href="(/admin/exchange/\?flt0_\d+=[^"]+)" class="review-text">([^<]+)</a>', html)
    assert [text for _, text in links] == ["a 질문", "c 질문"]
    listing = logged_in.get(links[0][0].replace("&amp;", "&")).get_data(as_text=True)
    # every row of group "a", whatever its date or route, and nothing else
    assert listing.count('name="rowid"') == 6
    assert "c 질문" not in listing and "b 질문" not in listing


def test_the_menu_and_the_home_page_link_to_it(logged_in):
    html = logged_in.get("/admin/").get_data(as_text=True)
    assert html.count('href="/admin/analytics/"') == 2


def test_per_week_on_the_page(app, logged_in):
    add_rows(app)
    html = logged_in.get("/admin/analytics/", query_string={**RANGE, "period": "week"}).get_data(as_text=True)
    assert "2024-04-29 주" in html and "2024-05-06 주" in html and "2024-05-01</td>" not in html


def read_csv(response):
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    text = response.get_data(as_text=True)
    assert text.startswith("\ufeff")
    return list(csv.reader(io.StringIO(text[1:])))


def test_csv_downloads(app, logged_in):
    add_rows(app)
    periods = read_csv(logged_in.get("/admin/analytics/periods.csv", query_string={**RANGE, "period": "week"}))
    assert periods[0][:3] == ["주 (월요일부터)", "대화", "모델 작성 (%)"]
    assert periods[1:] == [["2024-04-29 주", "5", "20.0", "20.0", "20.0", "40.0", "20.0", "40.0", "40.0", "50.0"],
                           ["2024-05-06 주", "3", "33.3", "66.7", "0.0", "0.0", "33.3", "33.3", "66.7", "50.0"],
                           ["합계", "8", "25.0", "37.5", "12.5", "25.0", "25.0", "37.5", "50.0", "50.0"]]
    response = logged_in.get("/admin/analytics/groups.csv", query_string=RANGE)
    assert 'filename="analytics-groups-day-2024-04-29_2024-05-12.csv"' in response.headers["Content-Disposition"]
    assert read_csv(response) == [["질문 묶음", "질문 키", "문제", "👎", "모름·기본 응답", "수정"],
                                  ["a 질문", "a", "3", "2", "0", "2"], ["c 질문", "c", "2", "1", "2", "0"]]
    channels = read_csv(logged_in.get("/admin/analytics/channels.csv", query_string=RANGE))
    assert [row[:2] for row in channels[1:]] == [["채팅 페이지", "5"], ["REST API", "1"], ["카카오톡", "1"], ["위젯", "1"]]
    versions = read_csv(logged_in.get("/admin/analytics/versions.csv", query_string=RANGE))
    assert [row[:5] for row in versions[1:]] == [["v2", "", "", "", "3"], ["v1", "", "", "", "4"],
                                                 ["(모델 없음)", "", "", "", "1"]]
    assert logged_in.get("/admin/analytics/nope.csv").status_code == 404


def test_csv_cells_never_start_a_formula(app, logged_in):
    add_rows(app, [("2024-05-01 09:00:00", "unsure", "down", "unreviewed", None, "web", "=cmd|' /C calc'!A0",
                    "=HYPERLINK(\"http://x\")")])
    rows = read_csv(logged_in.get("/admin/analytics/groups.csv", query_string=RANGE))
    assert rows[1][:2] == ["'=HYPERLINK(\"http://x\") 질문", "'=HYPERLINK(\"http://x\")"]
    versions = read_csv(logged_in.get("/admin/analytics/versions.csv", query_string=RANGE))
    assert versions[1][0] == "'=cmd|' /C calc'!A0"


@pytest.mark.parametrize("query, message", [
    ({"from": "2024-13-01", "to": "2024-05-12"}, "날짜 '2024-13-01'을(를) 쓸 수 없습니다"),
    ({"from": "어제", "to": "2024-05-12"}, "날짜 '어제'을(를) 쓸 수 없습니다"),
    ({"from": "0001-01-01", "to": "9999-12-31"}, "날짜 '0001-01-01'을(를) 쓸 수 없습니다"),
    ({"from": "2024-05-12", "to": "2024-04-29"}, "시작일 2024-05-12이 종료일 2024-04-29보다 늦어"),
    ({"from": "2000-01-01", "to": "2024-05-12"}, "기간은 최대 366일입니다: 2023-05-13부터 보여 줍니다."),
    ({"period": "year", **RANGE}, "집계 단위 'year'은(는) 쓸 수 없어"),
])
def test_bad_parameters_are_explained_never_a_500(app, logged_in, query, message):
    add_rows(app)
    response = logged_in.get("/admin/analytics/", query_string=query)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert message in unescape(html)
    assert 'class="alert alert-warning"' in html
    download = logged_in.get("/admin/analytics/periods.csv", query_string=query)
    assert download.status_code == 400 and message in download.get_data(as_text=True)


def test_parse_span_defaults_and_clamps():
    today = date(2024, 5, 12)
    assert analytics.parse_span({}, today) == (analytics.Span(date(2024, 4, 13), today, "day"), [])
    long, errors = analytics.parse_span({"from": "2020-01-01", "to": "2024-05-12", "period": "week"}, today)
    assert (long.end - long.start).days + 1 == analytics.MAX_DAYS and long.period == "week" and len(errors) == 1
    assert len(long.buckets()) == 53


def test_charts_scale_to_the_screen():
    assert [charts.nice_step(x) for x in (0, 3, 7, 40, 999, 0.37)] == pytest.approx([1, 1, 2, 10, 500, 0.1])
    chart = charts.stacked_columns(["a", "b"], [("x", "s-model", [3, 0]), ("y", "s-known", [1, 2])])
    assert [b["title"] for b in chart["bars"]] == ["a x: 3", "a y: 1", "b y: 2"]
    assert chart["bars"][0]["h"] + chart["bars"][1]["h"] == pytest.approx(chart["bottom"] - chart["ticks"][-1]["y"])
    line = charts.lines(["a", "b", "c"], [("x", "s-up", [0.5, None, 0.25])])
    assert len(line["lines"]) == 2 and len(line["dots"]) == 2  # the None breaks the line
