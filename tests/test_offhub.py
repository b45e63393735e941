"""A reviewer's heavy work never holds up the chats (chatbot/heavy.py): the
export, the admin pages that count or search every exchange, the reviewed
pairs, the retrain's pairs and the corrections' refresh run on OS threads,
not on the gevent event loop; a reviewer, and all of them together, run a
bounded number at once; the export reads page by page, holding no read
transaction between pages, and sends every row; the pages read indexes in
order (their plans on SQLite) and their migration goes up and down.

No test here times a page: the live one compares the server's answers to
GET / with the length of the export they overlap.
"""
import csv
import io
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import flask_migrate
import pytest
import requests
import sqlalchemy as sa

from bench.analytics import fill
from chatbot import export, queue_admin, review
from chatbot.database import Exchange, Reviewer, review_queue_order
from chatbot.extensions import db
from helpers import PASSWORD, token_in
from live_server import ROOT, LiveServer, prepare


def add_reviewer(app, name, password=PASSWORD):
    with app.app_context():
        account = Reviewer(username=name)
        account.set_password(password)
        db.session.add(account)
        db.session.commit()


def insert_rows(app, count):
    """``count`` plain exchanges, ids 1..count, in one statement."""
    with app.app_context():
        db.session.execute(sa.text(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count})
            INSERT INTO exchange (question, question_key, answer, created_at, session_id, route, status, channel)
            SELECT '질문 ' || i, '질문 ' || (i % 97), '답변 ' || i, datetime('2024-05-01', '+' || i || ' seconds'),
                   'session-' || (i % 997), 'model', 'unreviewed', 'web'
            FROM n"""))
        db.session.commit()


def login(client, name):
    token = token_in(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"csrf_token": token, "username": name,
                                       "password": PASSWORD}).status_code == 302
    return client


def download(client, **fields):
    token = token_in(client.get("/admin/export/").get_data(as_text=True))
    return client.post("/admin/export/", data={"csrf_token": token, "file_format": "jsonl", **fields})


def jsonl_ids(data: bytes):
    return [json.loads(line)["id"] for line in data.decode("utf-8").splitlines()]


# -- off the event loop -----------------------------------------------------------------

def test_heavy_admin_work_runs_on_threads_other_than_the_event_loops(tmp_path):
    """In a process patched by gevent, as the server's worker is: every SQL
    statement on ``exchange`` of each heavy request (and the retrain's pairs
    file) runs on a thread other than the event loop's, so the loop goes on
    serving the chats meanwhile; and a page rendered there still carries
    the CSP nonce its response allows."""
    app = prepare(tmp_path, with_model=False, reviewer=("probe", "probe-password"))
    fill(app, 3000, 30)
    with app.app_context():
        db.engine.dispose()
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "offhub_probe.py"), str(tmp_path / "chatbot.db"),
                          str(tmp_path / "models")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert set(results) == {"home", "queue", "queue_next", "queue_group", "reviewed_pairs_csv", "analytics",
                            "analytics_csv", "list", "search", "export_csv", "export_jsonl", "retrain",
                            "corrections_refresh"}
    for name, result in results.items():
        assert result["status"] in (200, 302), (name, result)
        assert result["threads"], (name, "no statement on exchange seen")
        assert report["hub"] not in result["threads"], (name, result, "ran on the event loop")
    assert results["export_csv"]["bytes"] > 3000 * 50 and results["export_jsonl"]["bytes"] > 3000 * 100
    # g is the request's on the thread: the CSP nonce of the scripts it rendered is the response's.
    for name in ("home", "queue", "analytics", "list"):
        assert results[name]["script_nonces"] and results[name]["nonces_allowed"], (name, results[name])
    assert results["retrain"]["write_threads"] and report["hub"] not in results["retrain"]["write_threads"]


def test_get_answers_at_once_while_a_reviewer_downloads_100000_exchanges(tmp_path):
    """A real server (gunicorn's gevent worker): while a reviewer downloads
    100,000 exchanges as CSV and as JSON Lines, GET / from another client
    keeps being answered, each in a small part of the download's time; and
    the download holds every exchange, in order."""
    rows = 100_000
    app = prepare(tmp_path, with_model=False, reviewer=("kim", PASSWORD))
    fill(app, rows, 30)
    with app.app_context():
        db.engine.dispose()
    server = LiveServer(tmp_path, env={"HTTP_LIMIT": ""}).start()
    try:
        session = requests.Session()
        token = token_in(session.get(server.url + "/login").text)
        assert session.post(server.url + "/login", data={"csrf_token": token, "username": "kim",
                                                          "password": PASSWORD}, allow_redirects=False).status_code == 302
        for file_format in ("csv", "jsonl"):
            token = token_in(session.get(server.url + "/admin/export/").text)
            probes, done = [], threading.Event()

            def probe():
                while not done.is_set():
                    sent = time.monotonic()
                    status = requests.get(server.url + "/", timeout=120).status_code
                    probes.append((sent, time.monotonic() - sent, status))
                    time.sleep(0.05)

            started = time.monotonic()
            body = io.BytesIO()
            with session.post(server.url + "/admin/export/", stream=True, timeout=300,
                              data={"csrf_token": token, "file_format": file_format}) as response:
                assert response.status_code == 200
                prober = threading.Thread(target=probe)
                prober.start()
                for chunk in response.iter_content(1 << 16):
                    body.write(chunk)
            seconds = time.monotonic() - started
            done.set()
            prober.join()
            data = body.getvalue()
            if file_format == "csv":
                records = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
                assert records[0] == list(export.FIELDS)
                ids = [int(record[0]) for record in records[1:]]
            else:
                ids = jsonl_ids(data)
            assert ids == list(range(1, rows + 1)), file_format
            during = [(latency, status) for sent, latency, status in probes if sent < started + seconds]
            print(f"\n{file_format}: {seconds:.1f} s, {len(during)} GET / meanwhile, the slowest "
                  f"{max(latency for latency, _ in during):.3f} s")
            assert len(during) >= 3, (file_format, seconds, during)
            assert all(status == 200 for _, status in during)
            assert max(latency for latency, _ in during) < seconds / 4, (file_format, seconds, during)
        assert "WORKER TIMEOUT" not in server.log()
    finally:
        server.stop()


# -- bounds -----------------------------------------------------------------------------

class Held:
    """A download started on a thread of its own (so that its streamed
    body's contexts stay there, as they do on the server's greenlets), and
    left open until ``finish``."""

    def __init__(self, client):
        self.started, self.release = threading.Event(), threading.Event()
        self.status, self.ids = None, None
        self.thread = threading.Thread(target=self._run, args=(client,))
        self.thread.start()
        assert self.started.wait(60)

    def _run(self, client):
        response = download(client)
        self.status = response.status_code
        self.started.set()
        self.release.wait(60)
        self.ids = jsonl_ids(response.get_data())
        response.close()

    def finish(self):
        self.release.set()
        self.thread.join(60)
        return self.ids


def test_heavy_work_is_bounded_per_reviewer_and_in_total(make_app):
    """An open download holds one of its reviewer's slots until it is
    closed; past ADMIN_HEAVY_JOBS_PER_REVIEWER the reviewer gets 429, past
    ADMIN_HEAVY_JOBS everyone 503, at once, with Retry-After."""
    app = make_app(ADMIN_HEAVY_JOBS=2, ADMIN_HEAVY_JOBS_PER_REVIEWER=1)
    slots = app.extensions["chatbot.heavy"].slots
    insert_rows(app, 3000)
    for name in ("kim", "lee", "park"):
        add_reviewer(app, name)
    kim, lee, park = (login(app.test_client(), name) for name in ("kim", "lee", "park"))

    held = Held(kim)
    assert held.status == 200 and slots.running == 1
    for busy in (kim.get("/admin/queue/"), download(kim), kim.get("/admin/exchange/?search=x")):
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "5", busy
    assert lee.get("/admin/queue/").status_code == 200  # a page takes a slot and gives it back
    held_too = Held(lee)
    assert held_too.status == 200 and slots.running == 2
    full = park.get("/admin/")
    assert full.status_code == 503 and full.headers["Retry-After"] == "5"
    assert held.finish() == list(range(1, 3001))
    assert slots.running == 1
    assert park.get("/admin/").status_code == 200
    assert kim.get("/admin/queue/").status_code == 200
    assert held_too.finish() == list(range(1, 3001))
    assert slots.running == 0 and slots.by_reviewer == {}


def test_a_refused_retrain_writes_nothing(make_app):
    app = make_app(ADMIN_HEAVY_JOBS=1, ADMIN_HEAVY_JOBS_PER_REVIEWER=1)
    insert_rows(app, 3000)
    add_reviewer(app, "kim")
    kim = login(app.test_client(), "kim")
    held = Held(kim)
    token = token_in(kim.get("/admin/export/").get_data(as_text=True))
    response = kim.post("/admin/models/retrain", data={"csrf_token": token})
    assert response.status_code == 429
    assert not (Path(app.config["MODEL_DIR"]) / ".retrain" / "pairs.csv").exists()
    assert held.finish() == list(range(1, 3001))


# -- the export ----------------------------------------------------------------------------

def test_a_long_export_holds_no_read_transaction_between_pages(app, logged_in):
    """While 100,000 exchanges stream, a row is written and the WAL is
    checkpointed to the end (no reader on an older snapshot); the file
    holds exactly the rows that existed when it began."""
    rows = 100_000
    insert_rows(app, rows)
    response = download(logged_in)
    body = iter(response.response)
    first = next(body) + next(body)
    assert first.count(b"\n") == 2 * export.BATCH
    path = app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///")
    with sqlite3.connect(path, timeout=0) as other:
        other.execute("INSERT INTO exchange (question, question_key, answer, created_at, route, status, channel) "
                      "VALUES ('새 질문', '새 질문', '답', '2024-06-01', 'model', 'unreviewed', 'web')")
        other.commit()
        busy, _log, _done = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    data = first + b"".join(body)
    response.close()
    assert jsonl_ids(data) == list(range(1, rows + 1))


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_export_reads_page_by_page_by_id(make_app, request, dialect):
    """Each page is its own statement, after the last page's id, up to the
    greatest id when the export began (and a short page is the last): no
    cursor kept open."""
    if dialect == "sqlite":
        app = make_app()
    else:
        app = make_app(SQLALCHEMY_DATABASE_URI=request.getfixturevalue("postgres").create_database("offhub_pages"))
    with app.app_context():
        db.session.add_all(Exchange(question=f"q{i}", question_key="q", answer="a", status=status, channel=channel)
                           for i in range(2500) for status, channel in [(("reviewed", "unreviewed")[i % 2],
                                                                         ("web", "kakao")[i % 3 == 0])])
        db.session.commit()
        expected = db.session.scalars(sa.select(Exchange.id).where(Exchange.status == "reviewed")
                                      .order_by(Exchange.id)).all()
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(" ".join(statement.split()))

    with app.app_context():
        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            ids = [row.id for row in export.rows(export.Filters(status="reviewed"))]
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        db.engine.dispose()
    assert ids == expected and len(ids) == 1250
    pages = [s for s in seen if "FROM exchange WHERE" in s and "LIMIT" in s]
    assert len(pages) == 2 and all("exchange.id >" in s and "ORDER BY exchange.id LIMIT" in s for s in pages), seen


# -- the pages at a million rows: their plans on SQLite ------------------------------------

def plans(app, call):
    """EXPLAIN QUERY PLAN of each SQL statement ``call`` runs."""
    seen = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    with app.test_request_context():
        sa.event.listen(db.engine, "before_cursor_execute", record)
        try:
            call()
        finally:
            sa.event.remove(db.engine, "before_cursor_execute", record)
        return [[row[-1] for row in db.session.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN " + statement, parameters).all()] for statement, parameters in seen]


def test_the_heavy_pages_read_indexes_in_order(app):
    """Nothing that grows with the table is sorted: the home page's counts
    come from exchange_daily, not from the exchanges; a page of the review list walks
    its order's index; the queue reads its window by id; a group's rows by
    their keys' index; an export page by id."""
    insert_rows(app, 2000)
    [home] = plans(app, review.home_counts)
    assert home == ["SCAN exchange_daily", "USE TEMP B-TREE FOR GROUP BY"]  # a few rows a day, by channel

    def page():
        db.session.execute(sa.select(Exchange).order_by(*review_queue_order()).limit(50).offset(500)).all()

    [listing] = plans(app, page)
    assert listing == ["SCAN exchange USING INDEX ix_exchange_queue_rank"]

    [queue] = plans(app, lambda: queue_admin.unreviewed_groups())
    window = [line for line in queue if line.startswith(("SEARCH exchange", "SCAN exchange"))]
    assert window == ["SEARCH exchange USING INDEX ix_exchange_status (status=? AND rowid>?)",
                      "SEARCH exchange USING COVERING INDEX ix_exchange_status (status=?)"], queue
    [group] = plans(app, lambda: queue_admin.group_rows("질문 1", limit=3))
    # Each of the group's keys (question_group, by its group_key index) by
    # its index: only the group's own rows are sorted.
    assert group[0] == "SEARCH exchange USING INDEX ix_exchange_key_status_created (question_key=? AND status=?)"
    assert "SEARCH question_group USING INDEX ix_question_group_group_key (group_key=?)" in group
    assert not [line for line in group if line.startswith("SCAN") and "CONSTANT ROW" not in line], group

    for filters in (export.Filters(), export.Filters(status="reviewed", channel="kakao", route="model"),
                    export.Filters(first_day=date(2024, 5, 1), last_day=date(2024, 5, 2))):
        found = plans(app, lambda: list(export.rows(filters)))
        for plan in found[1:]:  # after the greatest id: each page
            assert len(plan) == 1 and "rowid>? AND rowid<?" in plan[0] and "TEMP B-TREE" not in plan[0], found


def test_the_admin_pages_migration_goes_up_and_down(app):
    """c5d9e1f3a7b2: the review list's order, the home page's counts and a
    group's newest rows as indexes; undone, none of them."""
    names = ("ix_exchange_queue_rank", "ix_exchange_tally", "ix_exchange_key_status_created")

    def indexes():
        with app.app_context():
            return {name: sql for name, sql in db.session.execute(sa.text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'")) if name in names}

    with app.app_context():
        flask_migrate.downgrade(revision="c5d9e1f3a7b2")  # d2a7c4e9f150 drops ix_exchange_tally
    new = indexes()
    assert set(new) == set(names)
    assert "created_at DESC, id DESC" in new["ix_exchange_queue_rank"]
    assert new["ix_exchange_tally"].endswith("(feedback, route, channel, status)")
    with app.app_context():
        flask_migrate.downgrade(revision="c5d2e8f4a711")
    assert indexes() == {}
    with app.app_context():
        flask_migrate.upgrade(revision="c5d9e1f3a7b2")
    assert indexes() == new


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_the_heavy_pages_count_what_they_should(make_app, request, dialect):
    """On SQLite and on PostgreSQL: the home page's counts, the queue (its
    MATERIALIZED window), the review list in its order, a search among the
    newest ADMIN_SEARCH_ROWS that the filters pick."""
    url = (request.getfixturevalue("postgres").create_database("offhub_counts") if dialect == "postgresql"
           else None)
    app = make_app(ADMIN_SEARCH_ROWS=3, **({"SQLALCHEMY_DATABASE_URI": url} if url else {}))
    with app.app_context():
        db.session.add_all([
            Exchange(question="오래된 날씨 질문", question_key="날씨", answer="a", status="unreviewed"),
            Exchange(question="날씨 어때요", question_key="날씨", answer="a", status="unreviewed", feedback="down"),
            Exchange(question="검토한 날씨", question_key="날씨", answer="a", status="reviewed", channel="kakao"),
            Exchange(question="안녕", question_key="안녕", answer="b", status="unreviewed", route="unsure"),
            Exchange(question="새 날씨 질문", question_key="날씨", answer="c", status="unreviewed")])
        db.session.commit()
    add_reviewer(app, "kim")
    kim = login(app.test_client(), "kim")
    home = kim.get("/admin/").get_data(as_text=True)
    assert kim.get("/admin/").status_code == 200 and "카카오톡" in home
    with app.app_context():
        assert review.home_counts() == ({"unreviewed": 4, "reviewed": 1}, 1, 1, {"web": 4, "kakao": 1})
        assert [group[:4] for group in queue_admin.unreviewed_groups()] == [("날씨", 3, 1, 0), ("안녕", 1, 0, 1)]
        assert [g[:2] for g in queue_admin.unreviewed_groups(window=2)] == [("안녕", 1), ("날씨", 1)]
        ordered = db.session.scalars(sa.select(Exchange.question).order_by(*review_queue_order())).all()
    assert ordered == ["날씨 어때요", "안녕", "새 날씨 질문", "오래된 날씨 질문", "검토한 날씨"]
    assert kim.get("/admin/queue/").status_code == 200
    # The newest 3 exchanges only: the oldest 날씨 question is not searched.
    found = kim.get("/admin/exchange/?search=%EB%82%A0%EC%94%A8").get_data(as_text=True)
    assert "새 날씨 질문" in found and "검토한 날씨" in found and "오래된 날씨 질문" not in found
    # Within the filters: the newest 3 unreviewed ones.
    found = kim.get("/admin/exchange/?flt0_0=unreviewed&search=%EB%82%A0%EC%94%A8").get_data(as_text=True)
    assert "새 날씨 질문" in found and "날씨 어때요" in found and "검토한 날씨" not in found
    with app.app_context():
        db.engine.dispose()


def test_malloc_is_asked_to_give_memory_back_when_the_last_heavy_job_ends():
    """Heavy.give: a trim on a pool thread once no heavy job runs, not while
    another one still does (it would fill the pages again)."""
    from chatbot.heavy import Heavy

    class Pool:
        def __init__(self):
            self.spawned = []

        def spawn(self, fn):
            self.spawned.append(fn)

    jobs = Heavy(total=2, per_reviewer=2)
    trims = []
    jobs.malloc_trim, jobs._pool = trims.append, Pool()
    jobs.slots.take("kim")
    jobs.slots.take("lee")
    jobs.give("kim")
    assert jobs._pool.spawned == []  # lee's job still runs
    jobs.give("lee")
    assert len(jobs._pool.spawned) == 1
    jobs.slots.take("kim")  # a job started before the trim ran: no trim
    jobs._pool.spawned.pop()()
    assert trims == []
    jobs.give("kim")
    jobs._pool.spawned.pop()()
    assert trims == [0] and jobs.trims == 1
