"""The REST API (chatbot/api.py): keys, messages, feedback, errors as JSON,
limits; and its keys' admin page and CLI (chatbot/api_keys_admin.py)."""
import hashlib
import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chatbot import api, conversation
from chatbot.conversation import MessageError
from chatbot.database import CHANNEL_API, CHANNEL_WEB, ROUTE_FALLBACK, ApiKey, utcnow
from chatbot.extensions import db
from helpers import add_exchange, get_row, rows, token_in

MESSAGES = "/api/v1/messages"


def make_key(app, name="script"):
    """(key id, secret) of a new key."""
    with app.app_context():
        key, secret = api.create_key(name, created_by="test")
        return key.id, secret


def bearer(secret):
    return {"Authorization": f"Bearer {secret}"}


def get_key(app, key_id):
    with app.app_context():
        return db.session.get(ApiKey, key_id)


def keys(app):
    with app.app_context():
        return db.session.execute(sa.select(ApiKey).order_by(ApiKey.id)).scalars().all()


def assert_error(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"code", "message"}
    assert body["code"] == code
    assert body["message"]


# -- messages ----------------------------------------------------------------------

def test_a_message_is_answered_and_stored_as_the_keys_api_exchange(app):
    key_id, secret = make_key(app)
    response = app.test_client().post(MESSAGES, json={"text": "  배고파 "}, headers=bearer(secret))
    assert response.status_code == 200
    reply = response.get_json()
    assert set(reply) == {"id", "question", "answer", "route", "model_version", "feedback", "session"}
    assert (reply["question"], reply["route"], reply["feedback"]) == ("배고파", ROUTE_FALLBACK, None)
    assert reply["session"] == f"api-{key_id}"
    row = get_row(app, reply["id"])
    assert (row.channel, row.api_key_id, row.session_id, row.answer) == (
        CHANNEL_API, key_id, f"api-{key_id}", reply["answer"])


def test_the_callers_session_is_stored_with_the_exchange(app):
    _, secret = make_key(app)
    response = app.test_client().post(MESSAGES, json={"text": "안녕", "session": "user-42.chat:7"},
                                      headers=bearer(secret))
    assert response.get_json()["session"] == "user-42.chat:7"
    assert get_row(app, response.get_json()["id"]).session_id == "user-42.chat:7"


@pytest.mark.parametrize("session", ["", "x" * 65, "세션", "a b", 5, ["a"]])
def test_a_bad_session_is_refused(app, session):
    _, secret = make_key(app)
    response = app.test_client().post(MESSAGES, json={"text": "안녕", "session": session}, headers=bearer(secret))
    assert_error(response, 400, "bad_session")
    assert rows(app) == []


@pytest.mark.parametrize("body, status, code", [
    (b"{not json", 400, "bad_json"),
    (b"", 400, "bad_json"),
    (b'{"text": "\xc3\x28"}', 400, "bad_json"),  # not UTF-8
    (b"[" * 5000 + b"]" * 5000, 400, "bad_json"),  # nested too deep to parse
    (b'["hello"]', 400, "bad_type"),
    (b'"hello"', 400, "bad_type"),
    (b'{"text": 5}', 400, "bad_type"),
    (b'{"message": "hello"}', 400, "bad_type"),
    (b'{"text": "   "}', 400, "empty"),
    (b'{"text": "a\\u0000b"}', 400, "bad_encoding"),
    (b'{"text": "\\ud800"}', 400, "bad_encoding"),
    (json.dumps({"text": "가" * 501}).encode(), 413, "too_long"),
])
def test_bad_messages_are_refused_with_the_socketio_codes(app, body, status, code):
    _, secret = make_key(app)
    response = app.test_client().post(MESSAGES, data=body, content_type="application/json",
                                      headers=bearer(secret))
    assert_error(response, status, code)
    assert rows(app) == []


def test_a_body_over_the_request_limit_is_refused_as_json(make_app):
    app = make_app(MAX_REQUEST_BYTES=1024)
    _, secret = make_key(app)
    body = json.dumps({"text": "a" * 400, "padding": "x" * 1000})
    response = app.test_client().post(MESSAGES, data=body, content_type="application/json", headers=bearer(secret))
    assert_error(response, 413, "too_long")
    assert "1024" in response.get_json()["message"]
    # Past the upload limit the middleware refuses it before Flask, as JSON too.
    huge = b"x" * (app.config["MAX_UPLOAD_BYTES"] + 64 * 1024 + 1)
    response = app.test_client().post(MESSAGES, data=huge, content_type="application/json", headers=bearer(secret))
    assert_error(response, 413, "too_long")
    assert rows(app) == []


def test_busy_and_unexpected_failures_are_json(app, monkeypatch):
    _, secret = make_key(app)
    client = app.test_client()

    def busy(*args, **kwargs):
        raise MessageError("busy")
    monkeypatch.setattr(conversation, "ask", busy)
    response = client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret))
    assert_error(response, 503, "busy")
    assert response.headers["Retry-After"] == "1"

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is on fire")
    monkeypatch.setattr(conversation, "ask", broken)
    response = client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret))
    assert_error(response, 500, "server_error")
    assert "fire" not in response.get_data(as_text=True)


def test_unknown_paths_and_methods_under_the_api_are_json(app):
    client = app.test_client()
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/api/v1"), 404, "not_found")
    response = client.get(MESSAGES)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    # The rest of the site keeps its HTML pages.
    assert client.get("/nothing-here").mimetype == "text/html"


# -- keys --------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer hm_not-a-key"},
    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer " + "x" * 300},
])
def test_a_request_without_a_good_key_is_401_json(app, headers):
    make_key(app)
    client = app.test_client()
    for response in (client.post(MESSAGES, json={"text": "안녕"}, headers=headers),
                     client.post(f"{MESSAGES}/1/feedback", json={"value": "up"}, headers=headers)):
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert rows(app) == []


def test_a_revoked_key_is_refused_at_once(app):
    key_id, secret = make_key(app)
    client = app.test_client()
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200
    with app.app_context():
        assert api.revoke_key(key_id).revoked_at is not None
    assert_error(client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)), 401, "unauthorized")
    assert len(rows(app)) == 1


def test_a_key_revoked_by_another_process_is_refused_once_the_cache_expires(make_app):
    import time

    app = make_app(API_KEY_CACHE_SECONDS=0.5)
    key_id, secret = make_key(app)
    client = app.test_client()
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200
    with app.app_context():  # what the CLI's revoke does, from its own process
        db.session.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=utcnow()))
        db.session.commit()
        db.engine.dispose()
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200  # cached
    time.sleep(0.6)
    assert_error(client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)), 401, "unauthorized")
    assert len(rows(app)) == 2


def test_only_the_keys_hash_is_stored(app):
    key_id, secret = make_key(app)
    key = get_key(app, key_id)
    assert secret.startswith("hm_") and len(secret) > 40
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert key.prefix == secret[:11]
    assert secret not in (key.name, key.prefix, key.key_hash, key.created_by)


def test_last_used_is_written_at_most_once_a_minute(make_app):
    app = make_app(API_KEY_CACHE_SECONDS=0)  # every request looks the key up
    key_id, secret = make_key(app)
    client = app.test_client()
    assert get_key(app, key_id).last_used_at is None
    client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret))
    first = get_key(app, key_id).last_used_at
    assert first is not None
    recent = utcnow() - timedelta(seconds=30)
    stale = utcnow() - timedelta(minutes=2)
    for stamp, expect_new in ((recent, False), (stale, True)):
        with app.app_context():
            db.session.get(ApiKey, key_id).last_used_at = stamp
            db.session.commit()
        client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret))
        used = get_key(app, key_id).last_used_at
        assert (used > stamp) if expect_new else (used == stamp)


# -- feedback ----------------------------------------------------------------------

def test_feedback_on_the_keys_own_exchange(app):
    _, secret = make_key(app)
    client = app.test_client()
    row_id = client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).get_json()["id"]
    response = client.post(f"{MESSAGES}/{row_id}/feedback", json={"value": "down"}, headers=bearer(secret))
    assert response.status_code == 200
    assert response.get_json() == {"id": row_id, "value": "down"}
    assert get_row(app, row_id).feedback == "down"
    response = client.post(f"{MESSAGES}/{row_id}/feedback", json={"value": None}, headers=bearer(secret))
    assert response.get_json() == {"id": row_id, "value": None}
    assert get_row(app, row_id).feedback is None


def test_feedback_on_another_keys_or_a_chat_exchange_is_not_found_like_a_missing_one(app):
    _, mine = make_key(app, "mine")
    theirs_id, theirs = make_key(app, "theirs")
    client = app.test_client()
    their_row = client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(theirs)).get_json()["id"]
    web_row = add_exchange(app, "웹 질문", session_id=f"api-{theirs_id}", channel=CHANNEL_WEB)
    missing = client.post(f"{MESSAGES}/999/feedback", json={"value": "down"}, headers=bearer(mine))
    assert_error(missing, 404, "not_found")
    for row_id in (their_row, web_row):
        response = client.post(f"{MESSAGES}/{row_id}/feedback", json={"value": "down"}, headers=bearer(mine))
        assert_error(response, 404, "not_found")
        assert response.get_json() == missing.get_json()
        assert get_row(app, row_id).feedback is None


@pytest.mark.parametrize("path_id, body, status, code", [
    ("1", b'{"value": "meh"}', 400, "bad_feedback"),
    ("1", b'{"value": 1}', 400, "bad_feedback"),
    ("1", b"{}", 400, "bad_feedback"),
    ("1", b'["up"]', 400, "bad_feedback"),
    ("1", b"up", 400, "bad_json"),
    ("0", b'{"value": "up"}', 400, "bad_feedback"),
    (str(2**70), b'{"value": "up"}', 400, "bad_feedback"),
    ("-1", b'{"value": "up"}', 404, "not_found"),
])
def test_bad_feedback_is_refused(app, path_id, body, status, code):
    _, secret = make_key(app)
    client = app.test_client()
    client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret))
    response = client.post(f"{MESSAGES}/{path_id}/feedback", data=body, content_type="application/json",
                           headers=bearer(secret))
    assert_error(response, status, code)
    assert get_row(app, 1).feedback is None


# -- limits and CSRF ---------------------------------------------------------------

def test_each_key_has_its_own_rate_limit_and_the_address_limit_is_not_spent(make_app):
    app = make_app(API_RATE_LIMIT="2/minute", HTTP_LIMIT="1/minute")
    _, first = make_key(app, "first")
    _, second = make_key(app, "second")
    client = app.test_client()
    codes = [client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(first)).status_code for _ in range(2)]
    assert codes == [200, 200]
    # Feedback counts against the same key's limit.
    response = client.post(f"{MESSAGES}/1/feedback", json={"value": "up"}, headers=bearer(first))
    assert_error(response, 429, "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert response.headers["Retry-After"] in response.get_json()["message"]
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(second)).status_code == 200
    assert len(rows(app)) == 3
    # The API's requests did not count against the address's HTTP_LIMIT...
    assert client.get("/").status_code == 200
    # ... which still holds for the pages.
    assert client.get("/").status_code == 429


def test_refused_keys_are_limited_per_address(make_app):
    app = make_app(API_AUTH_FAILURE_LIMIT="2/minute")
    _, secret = make_key(app)
    client = app.test_client()
    # Good keys do not count.
    assert [client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code
            for _ in range(3)] == [200, 200, 200]
    wrong = bearer("hm_guessed")
    assert [client.post(MESSAGES, json={"text": "안녕"}, headers=wrong).status_code for _ in range(2)] == [401, 401]
    # Now the address is refused whatever it sends, so a guess cannot be told right or wrong.
    assert_error(client.post(MESSAGES, json={"text": "안녕"}, headers=wrong), 429, "rate_limited")
    assert_error(client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)), 429, "rate_limited")
    other = app.test_client()
    response = other.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret),
                          environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert response.status_code == 200


def test_the_auth_failure_limit_holds_against_parallel_guesses_on_the_real_server(tmp_path):
    """32 connections guess at once against gunicorn's gevent worker: exactly
    API_AUTH_FAILURE_LIMIT guesses get an answer (401), every other one 429."""
    import http.client
    import threading
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from live_server import LiveServer, prepare

    connections, rounds = 32, 3
    prepare(tmp_path, with_model=False)
    server = LiveServer(tmp_path, env={"API_AUTH_FAILURE_LIMIT": "20/minute",
                                       "MAX_CONNECTIONS_PER_ADDRESS": "100"}).start()
    barrier = threading.Barrier(connections)

    def guess(n):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.connect()
        barrier.wait()
        codes = []
        for i in range(rounds):
            connection.request("POST", MESSAGES, body=b'{"text": "x"}',
                               headers={"Authorization": f"Bearer hm_guess-{n}-{i}",
                                        "Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            codes.append(response.status)
        connection.close()
        return codes

    try:
        with ThreadPoolExecutor(connections) as pool:
            codes = Counter(code for per_connection in pool.map(guess, range(connections)) for code in per_connection)
    finally:
        server.stop()
    assert codes == {401: 20, 429: connections * rounds - 20}, codes


def test_the_api_needs_no_csrf_token_but_the_admin_forms_still_do(app, logged_in):
    assert app.config.get("WTF_CSRF_ENABLED", True) is True
    _, secret = make_key(app)
    # The API's POST carried no token (the session cookie of a reviewer is even there).
    assert logged_in.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200
    before = len(keys(app))
    response = logged_in.post("/admin/api-keys/create", data={"name": "no token"})
    assert response.status_code == 400
    response = logged_in.post("/admin/api-keys/revoke", data={"id": "1"})
    assert response.status_code == 400
    assert len(keys(app)) == before
    assert get_key(app, 1).revoked_at is None


# -- the OpenAPI document ----------------------------------------------------------

def test_the_openapi_document_is_limited_per_address(make_app):
    app = make_app(HTTP_LIMIT="3/minute")
    client = app.test_client()
    assert [client.get("/api/v1/openapi.json").status_code for _ in range(3)] == [200, 200, 200]
    response = client.get("/api/v1/openapi.json")
    assert_error(response, 429, "rate_limited")
    assert 0 < int(response.headers["Retry-After"]) <= 60
    other = client.get("/api/v1/openapi.json", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200


def test_the_openapi_document_describes_both_endpoints_without_a_key(app):
    response = app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = json.loads(response.get_data(as_text=True))
    assert document["openapi"] == "3.1.0"
    assert {"/messages", "/messages/{id}/feedback"} <= set(document["paths"])
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["paths"]["/openapi.json"]["get"]["security"] == []
    codes = set(document["components"]["schemas"]["Error"]["properties"]["code"]["enum"])
    assert {"bad_json", "bad_type", "empty", "bad_encoding", "bad_feedback", "bad_session", "unauthorized",
            "not_found", "too_long", "rate_limited", "busy", "server_error"} <= codes
    # Every code the API answers with has a message.
    assert codes <= set(conversation.MESSAGES) | set(api.API_MESSAGES)
    assert str(app.config["MAX_MESSAGE_CHARS"]) in json.dumps(document["paths"]["/messages"])


# -- the admin page and the CLI ----------------------------------------------------

def test_a_reviewer_makes_a_key_that_is_shown_once(app, logged_in):
    page = logged_in.get("/admin/api-keys/")
    assert page.status_code == 200
    assert "아직 API 키가 없습니다" in page.get_data(as_text=True)
    response = logged_in.post("/admin/api-keys/create",
                              data={"name": " 사내 봇 ", "csrf_token": token_in(page.get_data(as_text=True))})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    (key,) = keys(app)
    assert (key.name, key.created_by) == ("사내 봇", "kim")
    html = response.get_data(as_text=True)
    secrets_shown = [word for word in html.replace("<", " ").replace(">", " ").split() if word.startswith("hm_")
                     and len(word) > 20]
    assert len(secrets_shown) == 1
    secret = secrets_shown[0]
    assert key.key_hash == hashlib.sha256(secret.encode()).hexdigest()
    listing = logged_in.get("/admin/api-keys/").get_data(as_text=True)
    assert secret not in listing
    assert key.prefix in listing and "사내 봇" in listing
    # The key works.
    client = app.test_client()
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200
    assert secret not in logged_in.get("/admin/api-keys/").get_data(as_text=True)


def test_a_key_needs_a_name(app, logged_in):
    page = logged_in.get("/admin/api-keys/").get_data(as_text=True)
    for name in ("", "   ", "x" * 81):
        response = logged_in.post("/admin/api-keys/create", data={"name": name, "csrf_token": token_in(page)})
        assert response.status_code == 400
    assert keys(app) == []


def test_a_reviewer_revokes_a_key(app, logged_in):
    key_id, secret = make_key(app)
    page = logged_in.get("/admin/api-keys/").get_data(as_text=True)
    response = logged_in.post("/admin/api-keys/revoke", data={"id": str(key_id), "csrf_token": token_in(page)})
    assert response.status_code == 302
    assert get_key(app, key_id).revoked_at is not None
    assert "폐기됨" in logged_in.get("/admin/api-keys/").get_data(as_text=True)
    assert_error(app.test_client().post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)), 401, "unauthorized")
    # Made (by make_key's "test") and revoked (by kim), both in 검토 기록; revoked again, nothing more.
    logged_in.post("/admin/api-keys/revoke", data={"id": str(key_id), "csrf_token": token_in(page)})
    assert key_audit(app) == [("test", "key_create"), ("kim", "key_revoke")]
    log = logged_in.get("/admin/audit/").get_data(as_text=True)
    assert "API 키 만듦" in log and "API 키 폐기" in log and f"API 키 {get_key(app, key_id).name}" in log


def key_audit(app):
    from chatbot.database import ReviewAudit

    with app.app_context():
        return [(a.reviewer, a.action) for a in db.session.scalars(sa.select(ReviewAudit).order_by(ReviewAudit.id))]


def test_the_cli_makes_and_revokes_keys(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["api-key", "create", "nightly job"])
    assert result.exit_code == 0, result.output
    secret = result.stdout.strip()
    assert secret.startswith("hm_")
    (key,) = keys(app)
    assert (key.name, key.created_by, key.key_hash) == (
        "nightly job", None, hashlib.sha256(secret.encode()).hexdigest())
    client = app.test_client()
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 200
    result = runner.invoke(args=["api-key", "revoke", str(key.id)])
    assert result.exit_code == 0, result.output
    assert client.post(MESSAGES, json={"text": "안녕"}, headers=bearer(secret)).status_code == 401
    assert runner.invoke(args=["api-key", "revoke", "999"]).exit_code == 1
    assert runner.invoke(args=["api-key", "create", " "]).exit_code == 1
    assert len(keys(app)) == 1
    assert key_audit(app) == [("CLI", "key_create"), ("CLI", "key_revoke")]



def test_answers_are_json_in_readable_utf8(app):
    _, secret = make_key(app)
    response = app.test_client().post(MESSAGES, json={"text": "안녕하세요"}, headers=bearer(secret))
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert '"question": "안녕하세요"'.replace(" ", "") in response.get_data(as_text=True).replace(" ", "")
