"""The KakaoTalk channel (chatbot/kakao.py): Kakao i Open Builder's SkillPayload
in, SkillResponse 2.0 out, on the one conversation path."""
import hashlib
import json
import logging
import re
import threading
import time

import pytest

from chatbot import kakao
from chatbot.conversation import MESSAGES
from chatbot.database import CHANNEL_KAKAO, CHANNEL_WEB, FEEDBACK_DOWN, FEEDBACK_UP, ROUTE_FALLBACK, ROUTE_MODEL
from chatbot.responder import FALLBACK_ANSWER, Answer
from helpers import BLOCK_ID, BOT_ID, add_exchange, get_row, rows, skill_payload

def skill_url(app):
    with app.app_context():
        return "/kakao/skill/" + kakao.skill_secret()


def post(client, url, payload):
    return client.post(url, data=json.dumps(payload), content_type="application/json")


def texts(response):
    """The simpleText texts of a SkillResponse 2.0 (and checks that it is one)."""
    assert response.status_code == 200
    body = response.get_json()
    assert body["version"] == "2.0"
    outputs = body["template"]["outputs"]
    assert all(set(output) == {"simpleText"} for output in outputs)
    return [output["simpleText"]["text"] for output in outputs]


def expected_session(user_id, bot_id=BOT_ID):
    return "kakao-" + hashlib.sha256(f"{bot_id}\n{user_id}".encode()).hexdigest()[:40]


def test_a_message_is_answered_stored_and_offered_feedback(app, client):
    response = post(client, skill_url(app), skill_payload("  안녕하세요 ", user_id="user-raw-id-42"))
    assert texts(response) == [FALLBACK_ANSWER]  # no model in this app yet
    (row,) = rows(app)
    assert (row.question, row.answer, row.route, row.channel) == ("안녕하세요", FALLBACK_ANSWER, ROUTE_FALLBACK,
                                                                  CHANNEL_KAKAO)
    assert row.session_id == expected_session("user-raw-id-42")
    assert "user-raw-id-42" not in row.session_id and len(row.session_id) <= 64
    assert response.get_json()["template"]["quickReplies"] == [
        {"label": "👍", "action": "block", "blockId": BLOCK_ID, "messageText": "👍",
         "extra": {"feedback": "up", "exchange": row.id}},
        {"label": "👎", "action": "block", "blockId": BLOCK_ID, "messageText": "👎",
         "extra": {"feedback": "down", "exchange": row.id}},
    ]


def test_each_kakao_user_is_a_session_of_their_own(app, client):
    url = skill_url(app)
    for user_id in ("user-a", "user-b", "user-a"):
        texts(post(client, url, skill_payload("배고파", user_id=user_id)))
    sessions = [row.session_id for row in rows(app)]
    assert sessions == [expected_session("user-a"), expected_session("user-b"), expected_session("user-a")]
    assert sessions[0] != sessions[1]
    # the same user id of another bot is another person
    texts(post(client, url, skill_payload("배고파", user_id="user-a", bot_id="another-bot")))
    assert rows(app)[-1].session_id not in sessions


def test_without_a_block_id_there_are_no_feedback_buttons(app, client):
    payload = skill_payload("안녕")
    del payload["userRequest"]["block"]
    response = post(client, skill_url(app), payload)
    assert texts(response) == [FALLBACK_ANSWER]
    assert "quickReplies" not in response.get_json()["template"]
    assert len(rows(app)) == 1


@pytest.mark.parametrize("url", ["/kakao/skill/wrong-secret", "/kakao/skill/", "/kakao/skill/x%00y"])
def test_a_wrong_secret_is_not_found_and_stores_nothing(app, client, url):
    response = post(client, url, skill_payload("안녕"))
    assert response.status_code == 404
    assert rows(app) == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"])
def test_another_method_is_not_found_with_the_right_secret_or_a_wrong_one(app, client, method):
    for url in (skill_url(app), "/kakao/skill/wrong-secret"):
        assert client.open(url, method=method, json=skill_payload("안녕")).status_code == 404
    assert rows(app) == []


def test_a_secret_one_character_short_is_not_found(app, client):
    assert client.post(skill_url(app)[:-1], json=skill_payload("안녕")).status_code == 404


def _without(path):
    payload = skill_payload("안녕")
    *parents, last = path
    node = payload
    for key in parents:
        node = node[key]
    del node[last]
    return json.dumps(payload)


def _with(path, value):
    payload = skill_payload("안녕")
    *parents, last = path
    node = payload
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(payload)


@pytest.mark.parametrize("body", [
    b"{not json", b"", "안녕".encode("utf-16"), b"\xff\xfe\x00", b"[]", b'"hello"', b"5", b"null",
    b"[" * 30000 + b"]" * 30000,  # nested deeper than the JSON parser recurses
    _without(["userRequest"]), _without(["userRequest", "utterance"]), _without(["userRequest", "user"]),
    _without(["userRequest", "user", "id"]), _with(["userRequest"], "안녕"), _with(["userRequest", "utterance"], 5),
    _with(["userRequest", "utterance"], None), _with(["userRequest", "user", "id"], 12345),
    _with(["userRequest", "user", "id"], ""), _with(["userRequest", "user", "id"], "x" * 300),
    _with(["userRequest", "user", "id"], "\ud800"), _with(["userRequest", "user"], ["id"]),
    # The block id goes back in the 👍/👎 quick replies: a lone surrogate (JSON's
    # "\ud800" escape) cannot be sent, so it is refused before anything is stored.
    _with(["userRequest", "block", "id"], "\ud800"), _with(["userRequest", "block", "id"], "block-\udc00"),
    _with(["userRequest", "block", "id"], "b" * 300), _with(["bot", "id"], "\udfff"),
])
def test_a_payload_that_cannot_be_read_gets_a_skill_response_and_stores_nothing(app, client, body):
    response = client.post(skill_url(app), data=body, content_type="application/json")
    assert texts(response) == [kakao.TEXTS["unreadable"]]
    assert "quickReplies" not in response.get_json()["template"]
    assert rows(app) == []


@pytest.mark.parametrize("utterance", ["", "   ", "\n\t "])
def test_an_empty_message_is_asked_for_politely_and_not_stored(app, client, utterance):
    assert texts(post(client, skill_url(app), skill_payload(utterance))) == ["메시지를 입력해 주세요."]
    assert rows(app) == []


def test_a_10_kb_message_gets_the_too_long_text_and_is_not_stored(app, client):
    response = post(client, skill_url(app), skill_payload("가" * 10_000))
    assert texts(response) == [MESSAGES["too_long"].format(max_chars=500, chars=10_000)]
    assert rows(app) == []


def test_a_message_with_control_characters_gets_conversations_text(app, client):
    assert texts(post(client, skill_url(app), skill_payload("안\x00녕"))) == [MESSAGES["control_characters"]]
    assert rows(app) == []


def test_a_reply_over_1000_characters_is_cut_but_stored_whole(app, client, monkeypatch):
    long_answer = "가나다라마바사" * 200  # 1,400 characters
    monkeypatch.setattr(app.extensions["chatbot.responder"], "answer",
                        lambda text, key=None: Answer(long_answer, ROUTE_MODEL, "v1", 0.9))
    (text,) = texts(post(client, skill_url(app), skill_payload("길게 말해 줘")))
    assert len(text) == 1000
    assert text == long_answer[:999] + "…"
    assert rows(app)[0].answer == long_answer


def test_feedback_quick_replies_rate_that_users_exchange_and_no_one_elses(app, client):
    url = skill_url(app)
    response = post(client, url, skill_payload("배고파", user_id="alice"))
    up, down = response.get_json()["template"]["quickReplies"]
    row_id = up["extra"]["exchange"]

    # Pressing 👎 sends the quick reply's messageText as the utterance and its extra as clientExtra.
    assert texts(post(client, url, skill_payload(down["messageText"], user_id="alice",
                                                 client_extra=down["extra"]))) == [kakao.TEXTS[FEEDBACK_DOWN]]
    assert get_row(app, row_id).feedback == FEEDBACK_DOWN
    # Bob cannot rate Alice's answer, by any id.
    for extra in (up["extra"], {"feedback": "up", "exchange": row_id + 1}):
        assert texts(post(client, url, skill_payload("👍", user_id="bob", client_extra=extra))) == \
            [MESSAGES["not_found"]]
    assert get_row(app, row_id).feedback == FEEDBACK_DOWN
    assert texts(post(client, url, skill_payload("👍", user_id="alice", client_extra=up["extra"]))) == \
        [kakao.TEXTS[FEEDBACK_UP]]
    assert get_row(app, row_id).feedback == FEEDBACK_UP
    assert len(rows(app)) == 1  # the presses were not asked as questions


def test_feedback_rates_only_kakao_exchanges_whatever_else_uses_the_users_session(app, client):
    """The REST API (and a browser) may name any session id, a KakaoTalk user's too."""
    from chatbot import api

    url = skill_url(app)
    session_id = expected_session("alice")
    with app.app_context():
        _, secret = api.create_key("planter", created_by="test")
    planted = client.post("/api/v1/messages", json={"text": "심어 둔 질문", "session": session_id},
                          headers={"Authorization": f"Bearer {secret}"}).get_json()
    assert planted["session"] == session_id
    web_row = add_exchange(app, "웹 질문", session_id=session_id, channel=CHANNEL_WEB)
    for row_id in (planted["id"], web_row):
        extra = {"feedback": FEEDBACK_DOWN, "exchange": row_id}
        assert texts(post(client, url, skill_payload("👎", user_id="alice", client_extra=extra))) == \
            [MESSAGES["not_found"]]
        assert get_row(app, row_id).feedback is None
    own = post(client, url, skill_payload("배고파", user_id="alice")).get_json()["template"]["quickReplies"][1]
    assert texts(post(client, url, skill_payload("👎", user_id="alice", client_extra=own["extra"]))) == \
        [kakao.TEXTS[FEEDBACK_DOWN]]
    assert get_row(app, own["extra"]["exchange"]).feedback == FEEDBACK_DOWN


@pytest.mark.parametrize("extra", [{"feedback": "meh", "exchange": 1}, {"feedback": None, "exchange": 1},
                                   {"feedback": "up", "exchange": "1"}, {"feedback": "up", "exchange": True},
                                   {"feedback": "up"}])
def test_forged_feedback_extras_change_nothing(app, client, extra):
    url = skill_url(app)
    texts(post(client, url, skill_payload("배고파")))
    assert texts(post(client, url, skill_payload("👍", client_extra=extra))) == [MESSAGES["bad_feedback"]]
    assert [(row.id, row.feedback) for row in rows(app)] == [(1, None)]


def test_a_client_extra_without_feedback_is_an_ordinary_message(app, client):
    texts(post(client, skill_url(app), skill_payload("배고파", client_extra={"from": "button"})))
    assert [row.question for row in rows(app)] == ["배고파"]


def _slow_for(app, monkeypatch, question, seconds):
    """The responder takes ``seconds`` to answer ``question``, at once for anything else."""
    responder = app.extensions["chatbot.responder"]
    answer = responder.answer

    def slow(text, key=None):
        if text == question:
            time.sleep(seconds)
        return answer(text, key)
    monkeypatch.setattr(responder, "answer", slow)


def wait_for_rows(app, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = rows(app)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} rows after {timeout} s: {rows(app)}")


def test_a_late_answer_says_wait_is_stored_and_comes_with_the_next_message(make_app, monkeypatch):
    app = make_app(KAKAO_REPLY_BUDGET=0.2)
    client = app.test_client()
    url = skill_url(app)
    _slow_for(app, monkeypatch, "천천히 생각해 봐", 1.5)
    started = time.monotonic()
    response = post(client, url, skill_payload("천천히 생각해 봐", user_id="patient"))
    elapsed = time.monotonic() - started
    assert texts(response) == [kakao.TEXTS["wait"]]
    assert "quickReplies" not in response.get_json()["template"]
    assert elapsed < 1.0  # the budget (0.2 s) and some slack, well short of the 1.5 s answer
    assert rows(app) == []  # still being answered
    (late,) = wait_for_rows(app, 1)
    assert (late.question, late.answer, late.channel, late.session_id) == (
        "천천히 생각해 봐", FALLBACK_ANSWER, CHANNEL_KAKAO, expected_session("patient"))

    # Another user's next message does not get it; the patient user's does, before the new answer.
    assert texts(post(client, url, skill_payload("안녕", user_id="someone-else"))) == [FALLBACK_ANSWER]
    response = post(client, url, skill_payload("고마워", user_id="patient"))
    assert texts(response) == [
        kakao.TEXTS["late"].format(question="천천히 생각해 봐", answer=FALLBACK_ANSWER), FALLBACK_ANSWER]
    # its buttons rate the new answer
    assert response.get_json()["template"]["quickReplies"][0]["extra"]["exchange"] == rows(app)[-1].id
    assert texts(post(client, url, skill_payload("또 안녕", user_id="patient"))) == [FALLBACK_ANSWER]  # once


def test_an_answer_within_the_budget_is_sent_at_once(make_app, monkeypatch):
    app = make_app(KAKAO_REPLY_BUDGET=2.0)
    _slow_for(app, monkeypatch, "잠깐 생각", 0.3)
    response = post(app.test_client(), skill_url(app), skill_payload("잠깐 생각"))
    assert texts(response) == [FALLBACK_ANSWER]
    assert len(rows(app)) == 1


def test_the_per_user_limit_answers_in_kakaotalk_and_spares_other_users(make_app):
    # HTTP_LIMIT (per address) would stop the second request: Kakao's users share its addresses.
    app = make_app(KAKAO_USER_RATE_LIMIT="2/minute", HTTP_LIMIT="1/minute")
    client = app.test_client()
    url = skill_url(app)
    for _ in range(2):
        assert texts(post(client, url, skill_payload("안녕", user_id="chatty"))) == [FALLBACK_ANSWER]
    (text,) = texts(post(client, url, skill_payload("안녕", user_id="chatty")))
    assert re.fullmatch(MESSAGES["rate_limited"].replace("{wait}", r"\d+").replace(".", r"\."), text), text
    assert texts(post(client, url, skill_payload("안녕", user_id="quiet"))) == [FALLBACK_ANSWER]
    assert len(rows(app)) == 3
    # ... while the per-address limit still holds everywhere else
    assert client.get("/").status_code == 200
    assert client.get("/").status_code == 429


def test_wrong_secrets_and_unreadable_payloads_do_not_use_up_a_users_limit(make_app):
    app = make_app(KAKAO_USER_RATE_LIMIT="1/minute")
    client = app.test_client()
    for _ in range(3):
        assert post(client, "/kakao/skill/wrong", skill_payload("안녕")).status_code == 404
        texts(client.post(skill_url(app), data=b"{", content_type="application/json"))
    assert texts(post(client, skill_url(app), skill_payload("안녕"))) == [FALLBACK_ANSWER]


def test_requests_that_are_not_kakaos_fall_under_the_per_address_limit_and_not_the_total(make_app):
    """A wrong secret, or the right one with another method than POST, is not
    Kakao: a 404 under HTTP_LIMIT per address, the same whatever the secret,
    and no part of KAKAO_TOTAL_RATE_LIMIT."""
    app = make_app(HTTP_LIMIT="3/minute", KAKAO_USER_RATE_LIMIT="", KAKAO_TOTAL_RATE_LIMIT="2/minute")
    client = app.test_client()
    url = skill_url(app)
    codes = [post(client, "/kakao/skill/wrong-secret", skill_payload("안녕")).status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    assert client.get(url).status_code == 429  # the right secret, not a POST: the same address's limit

    elsewhere = {"REMOTE_ADDR": "10.0.0.2"}
    right, wrong = client.get(url, environ_base=elsewhere), client.get("/kakao/skill/wrong-secret", environ_base=elsewhere)
    assert right.status_code == wrong.status_code == 404
    assert right.get_data() == wrong.get_data()
    assert sorted(right.headers.keys()) == sorted(wrong.headers.keys())
    assert right.headers["X-RateLimit-Limit"] == wrong.headers["X-RateLimit-Limit"] == "3"
    assert client.delete(url, environ_base=elsewhere).status_code == 404

    # Kakao's own POSTs are not limited per address (its users share a few), and the
    # requests above did not use up their total.
    for n in range(2):
        assert texts(post(client, url, skill_payload("안녕", user_id=f"user-{n}"))) == [FALLBACK_ANSWER]
    assert len(rows(app)) == 2


def test_all_kakao_users_together_have_a_bound(make_app):
    app = make_app(KAKAO_USER_RATE_LIMIT="", KAKAO_TOTAL_RATE_LIMIT="3/minute")
    client = app.test_client()
    for n in range(3):
        assert texts(post(client, skill_url(app), skill_payload("안녕", user_id=f"user-{n}"))) == [FALLBACK_ANSWER]
    (text,) = texts(post(client, skill_url(app), skill_payload("안녕", user_id="user-4")))
    assert text.startswith("메시지를 너무 빨리 보내고 있어요.")
    assert len(rows(app)) == 3


def test_the_secret_comes_from_secret_key_or_from_kakao_skill_secret(make_app):
    app = make_app()
    derived = skill_url(app).rsplit("/", 1)[1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", derived)
    other = make_app(**{"SECRET_KEY": "another-install"})
    assert skill_url(other).rsplit("/", 1)[1] != derived
    own = make_app(KAKAO_SKILL_SECRET="my-own-kakao-secret-0123")
    assert skill_url(own) == "/kakao/skill/my-own-kakao-secret-0123"
    client = own.test_client()
    assert post(client, "/kakao/skill/" + derived, skill_payload("안녕")).status_code == 404
    assert texts(post(client, "/kakao/skill/my-own-kakao-secret-0123", skill_payload("안녕"))) == [FALLBACK_ANSWER]


@pytest.mark.parametrize("secret", ["short", "has spaces in it 0123456789", "슬래시/있는/비밀-0123456789"])
def test_a_weak_or_unsafe_kakao_skill_secret_is_refused_at_start(make_app, secret):
    with pytest.raises(RuntimeError, match="KAKAO_SKILL_SECRET"):
        make_app(KAKAO_SKILL_SECRET=secret)


def test_reviewers_see_the_url_to_paste_into_open_builder(app, logged_in):
    page = logged_in.get("/admin/kakao/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f'value="http://localhost{skill_url(app)}"' in html
    assert "폴백 블록" in html and "스킬데이터 사용" in html
    assert page.headers["Cache-Control"] == "no-store"


def test_the_url_is_not_shown_to_anyone_else(app, client):
    page = client.get("/admin/kakao/")
    assert page.status_code == 302
    assert page.headers["Location"] == "/login?next=/admin/kakao/"
    with app.app_context():
        secret = kakao.skill_secret()
    assert secret not in page.get_data(as_text=True)


def test_late_answers_keep_the_latest_per_user_and_a_bounded_number_of_users(make_app):
    app = make_app(KAKAO_LATE_ROWS=2)
    ids = [add_exchange(app, f"질문 {n}", answer=f"답 {n}") for n in range(4)]
    with app.app_context():
        late = app.extensions["chatbot.kakao_late"]
        late.put("a", ids[0])
        late.put("a", ids[1])
        late.put("b", ids[2])
        late.put("c", ids[3])  # a's, the oldest, goes
        assert (late.take("a"), late.take("b"), late.take("c"), late.take("c")) == (
            None, ("질문 2", "답 2"), ("질문 3", "답 3"), None)


def test_a_late_answer_is_kept_for_kakao_late_hours_only(make_app):
    app = make_app(KAKAO_LATE_HOURS=0.3 / 3600)  # 0.3 s
    row = add_exchange(app, "질문", answer="답")
    with app.app_context():
        late = app.extensions["chatbot.kakao_late"]
        late.put("a", row)
        late.put("b", row)
        assert late.take("a") == ("질문", "답")
        time.sleep(0.5)
        assert late.take("b") is None


def test_a_late_answer_survives_a_restart_and_reaches_the_user_through_another_process(make_app, monkeypatch):
    """Two apps on one database: the first stores the late answer and says
    wait; the second (another server process, or the first restarted)
    sends it with the user's next message, and neither sends it again."""
    first = make_app(KAKAO_REPLY_BUDGET=0.2)
    url = skill_url(first)
    _slow_for(first, monkeypatch, "천천히 생각해 봐", 1.0)
    assert texts(post(first.test_client(), url, skill_payload("천천히 생각해 봐", user_id="patient"))) == [
        kakao.TEXTS["wait"]]
    wait_for_rows(first, 1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _late_rows(first) == 0:
        time.sleep(0.05)
    # From here on no answer is meant to be late: both take the default
    # budget (3.5 s), not 0.2 s, which a busy machine's fresh app can miss.
    second = make_app()
    first.config["KAKAO_REPLY_BUDGET"] = second.config["KAKAO_REPLY_BUDGET"]
    assert texts(post(second.test_client(), url, skill_payload("고마워", user_id="patient"))) == [
        kakao.TEXTS["late"].format(question="천천히 생각해 봐", answer=FALLBACK_ANSWER), FALLBACK_ANSWER]
    for app in (first, second):
        assert texts(post(app.test_client(), url, skill_payload("또 안녕", user_id="patient"))) == [FALLBACK_ANSWER]


def _late_rows(app):
    import sqlalchemy as sa

    from chatbot.database import KakaoLateAnswer
    from chatbot.extensions import db

    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count()).select_from(KakaoLateAnswer))


def test_many_users_at_once_each_get_their_own_answer(make_app):
    app = make_app()
    url = skill_url(app)
    results = {}

    def ask(n):
        response = post(app.test_client(), url, skill_payload(f"질문 {n}", user_id=f"user-{n}"))
        results[n] = response.get_json()["template"]["quickReplies"][0]["extra"]["exchange"]

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, row_id in results.items():
        row = get_row(app, row_id)
        assert (row.question, row.session_id) == (f"질문 {n}", expected_session(f"user-{n}"))
    assert len(rows(app)) == 8


# -- Open Builder's callback -------------------------------------------------------

class FakeCallback:
    """A local stand-in for Kakao's callback endpoint: records each POSTed
    body; ``mode`` "ok" answers 200, "error" 500, "hang" waits 1.5 s first."""

    def __init__(self, mode="ok"):
        import http.server

        fake = self
        self.mode, self.bodies, self.tries = mode, [], 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.tries += 1
                if fake.mode == "hang":
                    time.sleep(1.5)
                status = 500 if fake.mode == "error" else 200
                if status == 200:
                    fake.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/v1/bots/bot1/callback/one-time-token"):
        return self.origin + path

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_callback():
    made = []

    def make(mode="ok"):
        made.append(FakeCallback(mode))
        return made[-1]
    yield make
    for fake in made:
        fake.close()


def with_callback(payload, url):
    payload["userRequest"]["callbackUrl"] = url
    return payload


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_callback_request_is_answered_at_once_and_the_answer_is_posted_to_the_callback(make_app, fake_callback):
    fake = fake_callback()
    app = make_app(KAKAO_CALLBACK_HOSTS=fake.origin, KAKAO_CALLBACK_TIMEOUT=2.0)
    response = post(app.test_client(), skill_url(app), with_callback(skill_payload("배고파"), fake.url()))
    assert response.status_code == 200
    assert response.get_json() == {"version": "2.0", "useCallback": True,
                                   "data": {"text": kakao.TEXTS["callback_wait"]}}
    wait_until(lambda: fake.bodies)
    (body,) = fake.bodies
    assert body["version"] == "2.0" and [o["simpleText"]["text"] for o in body["template"]["outputs"]] == [
        FALLBACK_ANSWER]
    (row,) = rows(app)
    assert body["template"]["quickReplies"][0]["extra"]["exchange"] == row.id
    assert fake.tries == 1 and _late_rows(app) == 0


@pytest.mark.parametrize("hosts, url", [
    ("", "{origin}/callback"),  # the default: no host is trusted
    ("https://bot-api.example.com", "{origin}/callback"),  # not this one
    ("{origin}", "http://127.0.0.1:1@evil.example/callback"),  # the host is evil.example
    ("{origin}", "http://user:pw@127.0.0.1:{port}/callback"),  # credentials in the URL
    ("{origin}", "file:///etc/passwd"),
])
def test_a_callback_url_outside_kakao_callback_hosts_is_never_requested(make_app, fake_callback, hosts, url):
    fake = fake_callback()
    port = fake.origin.rsplit(":", 1)[1]
    app = make_app(KAKAO_CALLBACK_HOSTS=hosts.format(origin=fake.origin))
    logged = logging.Handler(logging.WARNING)
    logged.emit = lambda record: warnings.append(record.getMessage())
    warnings = []
    logging.getLogger("chatbot.kakao").addHandler(logged)
    try:
        response = post(app.test_client(), skill_url(app),
                        with_callback(skill_payload("배고파"), url.format(origin=fake.origin, port=port)))
    finally:
        logging.getLogger("chatbot.kakao").removeHandler(logged)
    assert texts(response) == [FALLBACK_ANSWER]  # answered as without a callback
    assert "useCallback" not in response.get_json()
    time.sleep(0.2)
    assert fake.tries == 0
    assert len(warnings) == 1 and "refused: not in KAKAO_CALLBACK_HOSTS" in warnings[0]


@pytest.mark.parametrize("mode", ["hang", "error"])
def test_a_callback_that_fails_twice_leaves_the_answer_for_the_next_message(make_app, fake_callback, mode):
    fake = fake_callback(mode)
    app = make_app(KAKAO_CALLBACK_HOSTS=fake.origin, KAKAO_CALLBACK_TIMEOUT=0.3)
    client, url = app.test_client(), skill_url(app)
    started = time.monotonic()
    post(client, url, with_callback(skill_payload("배고파", user_id="unlucky"), fake.url()))
    wait_until(lambda: _late_rows(app) == 1)
    # One retry, then no more.  (Not ``fake.bodies``: the fake keeps no body
    # it answers 500, and keeps a hanging one's body once it wakes, 1.5 s
    # later, long after the bot gave up on it, which on a busy machine can
    # come before this line.)
    assert fake.tries == 2
    assert time.monotonic() - started < 5  # bounded: two tries of 0.3 s (the hanging one answers too late)
    assert texts(post(client, url, skill_payload("고마워", user_id="unlucky"))) == [
        kakao.TEXTS["late"].format(question="배고파", answer=FALLBACK_ANSWER), FALLBACK_ANSWER]


def test_callbacks_waiting_at_once_are_bounded(make_app, fake_callback):
    fake = fake_callback("hang")
    app = make_app(KAKAO_CALLBACK_HOSTS=fake.origin, KAKAO_CALLBACK_TIMEOUT=1.0, KAKAO_CALLBACKS_AT_ONCE=1)
    client, url = app.test_client(), skill_url(app)
    first = post(client, url, with_callback(skill_payload("배고파", user_id="one"), fake.url()))
    second = post(client, url, with_callback(skill_payload("심심해", user_id="two"), fake.url()))
    assert first.get_json()["useCallback"] is True
    assert texts(second) == [FALLBACK_ANSWER]  # the one slot is taken: answered within the budget instead
    wait_until(lambda: _late_rows(app) == 1)  # the first one's two tries failed
    third = post(client, url, with_callback(skill_payload("안녕", user_id="three"), fake.url()))
    assert third.get_json()["useCallback"] is True  # its slot is free again
