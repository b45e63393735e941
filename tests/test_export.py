"""Exporting exchanges (chatbot/export.py): ``flask export-exchanges`` and the
admin's 내보내기 page.

Every field of awkward rows comes back exactly from both formats, on SQLite
and on a throwaway PostgreSQL (tests/services.py); the filters pick exactly
the rows they should; a failed command leaves no file; the export streams
(memory stays flat over 200,000 rows, and the admin's response is a
generator); the admin page is for reviewers only.  Reading page by page,
off the event loop and within bounds: tests/test_offhub.py.
"""
import csv
import io
import json
import os
import re
import time
import tracemalloc
import uuid
from datetime import datetime

import pytest
import sqlalchemy as sa

from chatbot import export
from chatbot.database import ApiKey, Exchange
from chatbot.extensions import db
from chatbot.pairs_csv import unescape_cell
from helpers import token_in

# Cells a spreadsheet would run, CSV's own characters, line breaks, Korean and emoji.
AWKWARD = ["안녕하세요 😀 👩‍👩‍👧", "=1+1", "+82 10-1234", "-답", "@SUM(A1)", "\t탭으로 시작", "\rCR로 시작",
           "줄\n바꿈", "가운데\rCR", "끝에 CRLF\r\n", 'say "hi", then go', "'quoted", "''=x", "'=x", "'",
           "=cmd|' /C calc'!A0", " 앞뒤 공백 ", "쉼표,하나", "-", "=", "\u2028줄 구분\u2029"]
INT_FIELDS = {"id", "api_key_id"}
TIME_FIELDS = {"created_at", "reviewed_at"}


# -- the databases ---------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def any_app(request, make_app):
    """The app on SQLite, then on PostgreSQL."""
    if request.param == "sqlite":
        return make_app()
    server = request.getfixturevalue("postgres")
    return make_app(SQLALCHEMY_DATABASE_URI=server.create_database("export_" + uuid.uuid4().hex[:12]))


def fill_awkward(app):
    """One row per AWKWARD text, in every text field it fits, with None and
    set values in the others by turns; their ids."""
    with app.app_context():
        key = ApiKey(name="=키, \"이름\"", prefix="hm_abc", key_hash="0" * 64)
        db.session.add(key)
        db.session.flush()
        for n, text in enumerate(AWKWARD):
            odd = n % 2 == 1
            db.session.add(Exchange(
                question=text, question_key=text[::-1], answer=f"{text} 답",
                created_at=datetime(2024, 5, 1, 12, 0, n, 123456 * odd),
                session_id=text[:64] if odd else None, model_version=text[:64] if not odd else None,
                route=("model", "known", "memory", "fallback", "import", "unsure")[n % 6],
                confidence=(0.1 + 0.2, None, 1.0, 0.0, 1 / 3)[n % 5],
                status=("unreviewed", "reviewed", "needs_deletion")[n % 3],
                corrected_answer=text if odd else None,
                reviewer=text[:80] if n % 3 else None,
                reviewed_at=datetime(2024, 5, 2, 0, 0, n, 999999) if n % 3 else None,
                feedback=("up", "down", None)[n % 3],
                channel=("web", "widget", "api", "kakao")[n % 4],
                api_key_id=key.id if n % 4 == 2 else None))
        db.session.commit()


def db_rows(app):
    """Every exchange as {field: value}, in id order."""
    with app.app_context():
        return [{name: getattr(row, name) for name in export.FIELDS}
                for row in db.session.scalars(sa.select(Exchange).order_by(Exchange.id))]


# -- reading the files back ------------------------------------------------------------

def read_time(text):
    value = datetime.fromisoformat(text)
    assert value.utcoffset().total_seconds() == 0, text
    return value.replace(tzinfo=None)


def from_csv(name, cell):
    if cell == "":
        return None
    if name in INT_FIELDS:
        return int(cell)
    if name == "confidence":
        return float(cell)
    if name in TIME_FIELDS:
        return read_time(cell)
    return unescape_cell(cell)


def read_csv(data: bytes):
    assert data.startswith("\ufeff".encode())
    text = data.decode("utf-8-sig")
    assert text.endswith("\r\n") and text.split("\n", 1)[0].endswith("\r")
    header, *records = list(csv.reader(io.StringIO(text, newline="")))
    assert header == list(export.FIELDS)
    return [{name: from_csv(name, cell) for name, cell in zip(header, record, strict=True)} for record in records]


def read_jsonl(data: bytes):
    result = []
    for line in data.decode("utf-8").split("\n")[:-1]:
        item = json.loads(line)
        assert list(item) == list(export.FIELDS)
        result.append({name: read_time(value) if name in TIME_FIELDS and value is not None else value
                       for name, value in item.items()})
    assert data == b"" or data.endswith(b"\n")
    return result


def written(folder):
    """The files an export wrote in ``folder`` (which also holds the test's database)."""
    return sorted(name for name in os.listdir(folder) if not name.startswith(("chatbot.db", "models")))


def run_export(app, *args):
    return app.test_cli_runner().invoke(args=["export-exchanges", *args])


def exported_ids(app, tmp_path, *filters):
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    result = run_export(app, str(path), *filters)
    assert result.exit_code == 0, result.output
    return [item["id"] for item in read_jsonl(path.read_bytes())]


# -- what is written ---------------------------------------------------------------------

def test_every_column_of_exchange_is_exported():
    assert sorted(export.FIELDS) == sorted(column.name for column in Exchange.__table__.columns)


def test_awkward_rows_come_back_field_by_field_from_csv_and_jsonl(any_app, tmp_path):
    fill_awkward(any_app)
    expected = db_rows(any_app)
    assert len(expected) == len(AWKWARD)
    for name in ("all.csv", "all.jsonl"):
        result = run_export(any_app, str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert result.output == f"exported {len(AWKWARD)} exchanges to {tmp_path / name}\n"
    csv_data, jsonl_data = (tmp_path / "all.csv").read_bytes(), (tmp_path / "all.jsonl").read_bytes()
    assert read_csv(csv_data) == expected
    assert read_jsonl(jsonl_data) == expected
    # no CSV cell starts a formula; JSON keeps the text as it is
    for record in list(csv.reader(io.StringIO(csv_data.decode("utf-8-sig"), newline="")))[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in record), record
    assert '"question": "=1+1"' in jsonl_data.decode() and "😀" in jsonl_data.decode()
    first = json.loads(jsonl_data.decode().split("\n")[0])
    assert first["confidence"] == 0.1 + 0.2 and first["corrected_answer"] is None
    assert first["created_at"] == "2024-05-01T12:00:00+00:00"


def test_filters_pick_exactly_their_rows(any_app, tmp_path):
    def add(when, **fields):
        with any_app.app_context():
            row = Exchange(question="q", question_key="q", answer="a", created_at=when, **fields)
            db.session.add(row)
            db.session.commit()
            return row.id

    before = add(datetime(2024, 4, 30, 23, 59, 59, 999999))
    first = add(datetime(2024, 5, 1, 0, 0), status="reviewed", route="known")
    middle = add(datetime(2024, 5, 1, 13, 0), channel="kakao", route="unsure")
    last = add(datetime(2024, 5, 2, 23, 59, 59, 999999), channel="kakao", status="reviewed", route="unsure")
    after = add(datetime(2024, 5, 3, 0, 0), channel="api", status="needs_deletion")

    assert exported_ids(any_app, tmp_path) == [before, first, middle, last, after]
    assert exported_ids(any_app, tmp_path, "--from", "2024-05-01", "--to", "2024-05-02") == [first, middle, last]
    assert exported_ids(any_app, tmp_path, "--from", "2024-05-02") == [last, after]
    assert exported_ids(any_app, tmp_path, "--to", "2024-05-01") == [before, first, middle]
    assert exported_ids(any_app, tmp_path, "--from", "2024-05-01", "--to", "2024-05-01") == [first, middle]
    assert exported_ids(any_app, tmp_path, "--status", "reviewed") == [first, last]
    assert exported_ids(any_app, tmp_path, "--route", "unsure") == [middle, last]
    assert exported_ids(any_app, tmp_path, "--channel", "kakao") == [middle, last]
    assert exported_ids(any_app, tmp_path, "--channel", "web") == [before, first]
    assert exported_ids(any_app, tmp_path, "--channel", "kakao", "--status", "reviewed", "--to", "2024-05-02") == [last]
    assert exported_ids(any_app, tmp_path, "--status", "needs_deletion", "--channel", "web") == []


# -- the command's errors and outputs --------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--from", "2024-02-30"], "Invalid value for '--from': '2024-02-30'"),
    (["--to", "2024-5-1x"], "Invalid value for '--to'"),
    (["--status", "done"], "Invalid value for '--status': 'done' is not one of"),
    (["--route", "guess"], "Invalid value for '--route'"),
    (["--channel", "email"], "Invalid value for '--channel'"),
    (["--format", "xlsx"], "Invalid value for '--format'"),
    (["--from", "2024-05-03", "--to", "2024-05-01"], "the first day 2024-05-03 is after the last day 2024-05-01"),
])
def test_bad_filters_exit_non_zero_and_write_nothing(app, tmp_path, args, message):
    target = tmp_path / "out.csv"
    result = run_export(app, str(target), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert written(tmp_path) == []


def test_a_file_name_without_a_known_extension_needs_format(app, tmp_path):
    result = run_export(app, str(tmp_path / "out.txt"))
    assert result.exit_code == 2 and "give --format csv or --format jsonl" in result.output
    assert not (tmp_path / "out.txt").exists()
    assert run_export(app, str(tmp_path / "out.txt"), "--format", "jsonl").exit_code == 0
    assert run_export(app, str(tmp_path / "out.NDJSON")).exit_code == 0
    assert (tmp_path / "out.txt").read_bytes() == b""  # no exchanges: an empty JSON Lines file
    assert run_export(app, str(tmp_path / "missing" / "out.csv")).exit_code == 1


def test_a_failure_midway_leaves_no_partial_file_and_the_old_one_untouched(app, tmp_path, monkeypatch):
    fill_awkward(app)
    target = tmp_path / "out.csv"
    target.write_text("the previous export")
    real_rows = export.rows

    def failing(filters):
        rows = real_rows(filters)
        yield next(rows)
        raise RuntimeError("database gone")

    monkeypatch.setattr(export, "rows", failing)
    result = run_export(app, str(target))
    assert result.exit_code != 0 and isinstance(result.exception, RuntimeError)
    assert target.read_text() == "the previous export"
    assert written(tmp_path) == ["out.csv"]  # no temp file left


def test_the_file_is_readable_by_its_owner_only(app, tmp_path):
    assert run_export(app, str(tmp_path / "out.csv")).exit_code == 0
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o600


def test_dash_writes_to_stdout_and_the_count_to_stderr(app, tmp_path):
    fill_awkward(app)
    result = run_export(app, "-", "--format", "csv", "--status", "reviewed")
    assert result.exit_code == 0, result.output
    assert result.stderr == "exported 7 exchanges\n"
    assert [row["id"] for row in read_csv(result.stdout_bytes)] == \
        [row["id"] for row in db_rows(app) if row["status"] == "reviewed"]
    assert run_export(app, "-").exit_code == 2  # no extension to tell the format


# -- streaming ------------------------------------------------------------------------------

ROWS = 200_000
MEMORY_BOUND = 20 * 1024 * 1024  # .all() on these rows: over 200 MB


def test_200000_exchanges_are_exported_in_flat_memory(app, tmp_path):
    """The export's peak of Python memory over 200,000 exchanges stays far
    below what holding them takes (README "Exporting conversations")."""
    with app.app_context():
        db.session.execute(sa.text(f"""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
            INSERT INTO exchange (question, question_key, answer, created_at, session_id, route, status,
                                  channel, confidence, model_version)
            SELECT '오늘 날씨 어때요? 질문 ' || i, '오늘 날씨 어때 질문 ' || i,
                   '맑고 따뜻해요. 우산은 필요 없어요. 답변 ' || i, datetime('2024-05-01', '+' || i || ' seconds'),
                   'session-' || (i % 997), 'model', 'unreviewed', 'web', 0.5, '20240501-000000'
            FROM n"""))
        db.session.commit()
    target = tmp_path / "all.csv"
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        result = run_export(app, str(target))
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert result.output == f"exported {ROWS} exchanges to {target}\n"
    print(f"\n{ROWS} exchanges: peak {peak / 2**20:.1f} MiB, {seconds:.1f} s under tracemalloc")
    assert peak < MEMORY_BOUND
    with open(target, encoding="utf-8-sig", newline="") as f:
        assert sum(1 for _ in csv.reader(f)) == ROWS + 1


# -- the admin page ----------------------------------------------------------------------------

def download(client, **fields):
    token = token_in(client.get("/admin/export/").get_data(as_text=True))
    return client.post("/admin/export/", data={"csrf_token": token, **fields})


@pytest.mark.parametrize("file_format", export.FORMATS)
def test_the_admin_download_streams_the_same_file_as_the_command(app, logged_in, tmp_path, file_format):
    fill_awkward(app)
    fields = {"first_day": "2024-05-01", "last_day": "2024-05-01", "status": "reviewed", "route": "",
              "channel": "", "file_format": file_format}
    response = download(logged_in, **fields)
    assert response.status_code == 200
    assert response.is_streamed
    assert re.fullmatch(rf'attachment; filename="exchanges-\d{{8}}-\d{{6}}\.{file_format}"',
                        response.headers["Content-Disposition"])
    assert response.headers["Content-Type"] == {"csv": "text/csv; charset=utf-8",
                                                "jsonl": "application/x-ndjson; charset=utf-8"}[file_format]
    assert response.headers["Cache-Control"] == "no-store"
    target = tmp_path / f"cli.{file_format}"
    assert run_export(app, str(target), "--from", "2024-05-01", "--to", "2024-05-01",
                      "--status", "reviewed").exit_code == 0
    assert response.get_data() == target.read_bytes()
    assert len(read_csv(response.get_data()) if file_format == "csv" else read_jsonl(response.get_data())) == 7


def test_the_admin_form_shows_its_mistakes(logged_in):
    page = logged_in.get("/admin/export/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "내려받기" in html and 'type="date"' in html and "카카오톡" in html and "모른다고 답함" in html
    response = download(logged_in, first_day="2024-05-03", last_day="2024-05-01", file_format="csv")
    assert response.status_code == 400
    assert "종료일이 시작일보다 앞섭니다." in response.get_data(as_text=True)
    assert "Content-Disposition" not in response.headers
    response = download(logged_in, channel="email", file_format="csv")
    assert response.status_code == 400 and "Content-Disposition" not in response.headers


def test_the_admin_download_needs_the_csrf_token(logged_in):
    response = logged_in.post("/admin/export/", data={"file_format": "csv"})
    assert response.status_code == 400
    assert "Content-Disposition" not in response.headers


def test_the_home_page_links_to_the_export(logged_in):
    assert 'href="/admin/export/"' in logged_in.get("/admin/").get_data(as_text=True)


def test_a_visitor_is_sent_to_the_login_page(make_app):
    # CSRF off, so that the POST reaches the view's own check (as in tests/test_access.py)
    client = make_app(WTF_CSRF_ENABLED=False).test_client()
    for method in ("GET", "POST"):
        response = client.open("/admin/export/", method=method, data={"file_format": "csv"})
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")
