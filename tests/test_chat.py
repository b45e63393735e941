"""The chat over Socket.IO: round trip, storage, bad input, reviewed answers, reloads."""
import os
import re

import pytest
import sqlalchemy as sa

from chatbot import morph, versions
from chatbot.database import (QUESTION_KEY_LENGTH, REVIEWED, ROUTE_FALLBACK, ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_MODEL,
                              UNREVIEWED, Exchange)
from chatbot.extensions import db, socketio
from helpers import ask, connect, rows, tiny_model


def test_chat_page(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "socket.io.min.js" in html and "chat.js" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)  # every script is served here
    assert client.get("/static/vendor/socket.io.min.js").status_code == 200


def test_round_trip_stores_the_exchange(app):
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    assert sock.is_connected()
    name, reply = ask(sock, {"text": "  안녕하세요  "})
    assert name == "reply"
    assert reply["question"] == "안녕하세요"
    assert (reply["answer"], reply["route"]) == ("안녕하세요! 반가워요.", ROUTE_KNOWN)  # a training pair's answer
    version = versions.current_dir(app.config["MODEL_DIR"]).name
    assert reply["model_version"] == version
    [row] = rows(app)
    assert (row.id, row.question, row.answer) == (reply["id"], "안녕하세요", reply["answer"])
    assert sock.token.split(".")[0] == row.session_id  # the token names the chat session it opened
    assert row.model_version == version and row.route == ROUTE_KNOWN
    assert row.status == UNREVIEWED and row.created_at is not None
    assert row.corrected_answer is None and row.reviewer is None
    # A question that shares no word with the training pairs: the network writes the reply.
    name, written = ask(sock, {"text": "양자역학"})
    assert name == "reply" and written["answer"] and written["route"] == ROUTE_MODEL
    assert rows(app)[-1].route == ROUTE_MODEL


def test_without_a_model_the_bot_says_so(app):
    sock = connect(app)
    name, reply = ask(sock, "안녕")
    assert name == "reply" and reply["route"] == ROUTE_FALLBACK and reply["model_version"] is None
    assert len(rows(app)) == 1


@pytest.mark.parametrize("data, code", [
    ({"text": ""}, "empty"),
    ({"text": "   \n\t "}, "empty"),
    ("", "empty"),
    ({"text": "가" * 501}, "too_long"),
    ({"text": 42}, "bad_type"),
    ({"text": None}, "bad_type"),
    ({"text": ["안녕"]}, "bad_type"),
    ({"wrong": "안녕"}, "bad_type"),
    (12.5, "bad_type"),
    ({"text": "안녕\ud800"}, "bad_encoding"),
    ({"text": "안\x00녕"}, "bad_encoding"),
])
def test_bad_messages_get_an_error_and_store_nothing(app, data, code):
    sock = connect(app)
    name, error = ask(sock, data)
    assert name == "error"
    assert error["code"] == code and error["message"]
    assert sock.is_connected()
    assert rows(app) == []
    name, _ = ask(sock, {"text": "안녕"})  # the connection still works
    assert name == "reply"


def test_max_length_is_configurable(app):
    app.config["MAX_MESSAGE_CHARS"] = 5
    sock = connect(app)
    assert ask(sock, {"text": "가나다라마바"})[1]["code"] == "too_long"
    assert ask(sock, {"text": "가나다라마"})[0] == "reply"


def test_reviewed_answer_sticks_at_once(app):
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    _, first = ask(sock, {"text": "춘천에는 비가 와요?"})
    with app.app_context():
        row = db.session.get(Exchange, first["id"])
        row.corrected_answer = "춘천은 오늘 맑아요."
        row.mark(REVIEWED, "minji")
        db.session.commit()
    for variant in ("춘천에는 비가 와요?", "춘천에 비가 와요", "춘천 비 와요!!", "춘천에는비가와요?"):
        name, reply = ask(sock, {"text": variant})
        assert (name, reply["answer"], reply["route"]) == ("reply", "춘천은 오늘 맑아요.", ROUTE_MEMORY), variant
    # Not the reviewed answer.  (서울에는 비가 와요? would be, by meaning:
    # test_corrections.py's test_a_correction_answers_a_differently_worded_question_at_once.)
    name, other = ask(sock, {"text": "비행기 표 예매해 줘"})
    assert other["route"] in (ROUTE_MODEL, ROUTE_KNOWN)


def test_reviewed_answer_sticks_for_a_question_longer_than_the_stored_key(make_app):
    """MAX_MESSAGE_CHARS raised past the key column's length: the lookup cuts
    the key as storing does, so the long question still finds its answer."""
    app = make_app(MAX_MESSAGE_CHARS=3000)
    tiny_model(app.config["MODEL_DIR"])
    question = " ".join(f"춘천{i}번지에 비가 와요" for i in range(150))
    assert len(morph.question_key(question)) > QUESTION_KEY_LENGTH
    sock = connect(app)
    _, first = ask(sock, {"text": question})
    with app.app_context():
        row = db.session.get(Exchange, first["id"])
        assert len(row.question_key) == QUESTION_KEY_LENGTH
        row.corrected_answer = "긴 질문에도 답해요."
        row.mark(REVIEWED, "minji")
        db.session.commit()
    name, reply = ask(sock, {"text": question})
    assert (name, reply["answer"], reply["route"]) == ("reply", "긴 질문에도 답해요.", ROUTE_MEMORY)


def test_server_picks_up_a_new_model_without_restart(app):
    models = app.config["MODEL_DIR"]
    first = tiny_model(models)
    sock = connect(app)
    assert ask(sock, "안녕")[1]["model_version"] == first.name
    second = tiny_model(models, seed=7)
    assert second.name != first.name
    assert ask(sock, "안녕")[1]["model_version"] == second.name
    assert sock.is_connected()


def test_in_flight_reply_finishes_on_the_old_model(app):
    models = app.config["MODEL_DIR"]
    tiny_model(models)
    responder = app.extensions["chatbot.responder"]
    old = responder.model()
    tiny_model(models, seed=7)
    assert old.reply("안녕")  # a reply holding the old model still completes
    assert responder.model().version != old.version


def test_a_corrupt_model_does_not_replace_the_serving_one(app):
    models = app.config["MODEL_DIR"]
    good = tiny_model(models)
    sock = connect(app)
    assert ask(sock, "안녕")[1]["model_version"] == good.name
    broken = tiny_model(models, seed=7)
    (broken / "weights.npz").write_bytes(b"not a model")  # what the server reads (chatbot/inference.py)
    name, reply = ask(sock, "안녕")
    assert name == "reply" and reply["model_version"] == good.name
    assert os.readlink(os.path.join(models, "current")) == broken.name


# -- history, feedback, rate limit, malformed packets ---------------------------

def raw(sock, encoded):
    """Feed the server a raw Socket.IO packet, as if it came off the wire."""
    socketio.server._handle_eio_message(sock.eio_sid, encoded)
    return sock.get_received()


def error_codes(received):
    return [m["args"][0]["code"] for m in received if m["name"] == "error"]


def test_history_returns_only_this_sessions_exchanges_oldest_first(app):
    mine = connect(app)
    ask(mine, "안녕")
    ask(mine, "배고파")
    other = connect(app)
    ask(other, "비밀 질문")

    again = connect(app, mine.token)  # the same tab after a reload
    assert again.token == mine.token
    again.emit("history")
    [received] = again.get_received()
    assert received["name"] == "history"
    exchanges = received["args"][0]["exchanges"]
    assert [x["question"] for x in exchanges] == ["안녕", "배고파"]
    assert all(set(x) == {"id", "question", "answer", "route", "model_version", "feedback"} for x in exchanges)

    fresh = connect(app)
    assert fresh.token not in (mine.token, other.token)
    fresh.emit("history")
    assert fresh.get_received()[0]["args"][0]["exchanges"] == []


def test_a_connection_without_auth_starts_a_new_chat(app):
    first = socketio.test_client(app)  # no auth at all
    first.get_received()  # its token
    ask(first, "안녕")
    second = socketio.test_client(app)
    second.get_received()
    second.emit("history")
    assert second.get_received()[0]["args"][0]["exchanges"] == []


@pytest.mark.parametrize("token", ["short", "x" * 65, "../../etc", "a b c d e f g h", "x" * 5000, "\ud800",
                                   12345678, ["a"], {"a": 1}, True])
def test_bad_tokens_start_a_new_chat(app, token):
    sock = connect(app, token)
    ask(sock, "안녕")
    [row] = rows(app)
    assert row.session_id != token and sock.token.split(".")[0] == row.session_id


def test_feedback_is_stored_for_the_own_session_only(app):
    sock = connect(app)
    _, reply = ask(sock, "안녕")
    assert reply["feedback"] is None
    sock.emit("feedback", {"id": reply["id"], "value": "down"})
    assert sock.get_received() == [{"name": "feedback", "args": [{"id": reply["id"], "value": "down"}],
                                    "namespace": "/"}]
    assert rows(app)[0].feedback == "down"
    sock.emit("feedback", {"id": reply["id"], "value": "up"})
    sock.get_received()
    assert rows(app)[0].feedback == "up"
    sock.emit("feedback", {"id": reply["id"], "value": None})  # taken back
    sock.get_received()
    assert rows(app)[0].feedback is None

    stranger = connect(app)
    stranger.emit("feedback", {"id": reply["id"], "value": "down"})
    [received] = stranger.get_received()
    assert received["name"] == "error" and received["args"][0]["code"] == "not_found"
    stranger.emit("feedback", {"id": 999999, "value": "down"})
    assert error_codes(stranger.get_received()) == ["not_found"]  # same answer: nothing revealed
    assert rows(app)[0].feedback is None

    # history carries the feedback
    sock.emit("feedback", {"id": reply["id"], "value": "down"})
    sock.get_received()
    sock.emit("history")
    assert sock.get_received()[0]["args"][0]["exchanges"][0]["feedback"] == "down"


@pytest.mark.parametrize("args", [
    (), ("down",), ({"id": "1", "value": "down"},), ({"id": True, "value": "down"},),
    ({"id": 1.0, "value": "down"},), ({"id": -1, "value": "down"},), ({"id": 2**70, "value": "down"},),
    ({"id": 1, "value": "meh"},), ({"id": 1, "value": ["down"]},), ({"id": 1},), ({"value": "down"},),
    ({"id": 1, "value": "down"}, "extra"), (None,), ([1, "down"],),
])
def test_bad_feedback_gets_an_error(app, args):
    sock = connect(app)
    _, reply = ask(sock, "안녕")
    sock.emit("feedback", *args)
    received = sock.get_received()
    assert len(received) == 1 and received[0]["name"] == "error"
    error = received[0]["args"][0]
    assert error["code"] in {"bad_feedback", "not_found"} and error["event"] == "feedback"
    assert rows(app)[0].feedback is None


def test_feedback_down_puts_the_exchange_first_in_the_review_queue(app):
    from chatbot.database import review_queue_order
    sock = connect(app)
    _, first = ask(sock, "첫 질문")
    ask(sock, "둘째 질문")
    ask(sock, "셋째 질문")
    sock.emit("feedback", {"id": first["id"], "value": "down"})
    sock.get_received()
    with app.app_context():
        order = db.session.execute(sa.select(Exchange.question).order_by(*review_queue_order())).scalars().all()
    assert order == ["첫 질문", "셋째 질문", "둘째 질문"]


def test_message_rate_limit(make_app):
    app = make_app(MESSAGE_RATE=1.0, MESSAGE_BURST=3)
    sock = connect(app)
    names = [ask(sock, {"text": f"질문 {i}"})[0] for i in range(3)]
    assert names == ["reply"] * 3
    name, error = ask(sock, {"text": "하나 더"})
    assert name == "error" and error["code"] == "rate_limited" and error["event"] == "message"
    assert 0 < error["retry_after"] <= 1.0 and "초 뒤에" in error["message"]
    assert len(rows(app)) == 3
    assert sock.is_connected()
    other = connect(app)  # another chat session has its own count
    assert ask(other, {"text": "안녕"})[0] == "reply"


def test_rate_limit_can_be_turned_off(make_app):
    app = make_app(MESSAGE_RATE=0, MESSAGE_BURST=1)
    sock = connect(app)
    codes = [ask(sock, {"text": ""})[1]["code"] for _ in range(30)]
    assert codes == ["empty"] * 30


def test_unknown_events_get_an_error(app):
    sock = connect(app)
    sock.emit("hack", {"text": "안녕"})
    sock.emit("reply", {"id": 1})
    assert error_codes(sock.get_received()) == ["unknown_event", "unknown_event"]
    assert rows(app) == []


# Socket.IO packets as the server sees them after Engine.IO: "2" is an event,
# "5" a binary event, "3" an acknowledgement.
@pytest.mark.parametrize("packet, code", [
    ('2["message",{"text":', "bad_packet"),                  # JSON cut short
    ("2" + "[" * 5000 + "]" * 5000, "bad_packet"),            # nested past the recursion limit
    ('2{"text":"안녕"}', "bad_packet"),                       # not a list
    ("2[]", "bad_packet"),                                    # no event name
    ('2[123,"안녕"]', "bad_packet"),                          # event name not a string
    ("2[null]", "bad_packet"),
    ('2"message"', "bad_packet"),
    ('2["connect",{},{"session":"someone-elses"}]', "reserved_event"),
    ('2["disconnect","client"]', "reserved_event"),
    ('2["\\u0000malformed",{"a":1}]', "reserved_event"),     # the server's own malformed-packet event
    ('2["\\u0000malformed","too_many_attachments"]', "reserved_event"),
    ("2" + "9" * 101 + '["message","x"]', "bad_packet"),     # absurd ack id
    ('52-["message",{"_placeholder":true,"num":0}]', None),   # waits for 2 attachments: nothing yet
    ('599999-["message"]', "too_many_attachments"),
    ('4{"message":"x"}', "bad_packet"),                      # CONNECT_ERROR is server-to-client only
    ("9garbage", "bad_packet"),
    ("x", "bad_packet"),
    ("", "bad_packet"),
])
def test_malformed_packets_get_an_error_and_change_nothing(app, packet, code):
    sock = connect(app)
    received = raw(sock, packet)
    assert error_codes(received) == ([code] if code else [])
    assert sock.is_connected()
    assert rows(app) == []
    if code is None:
        return
    assert ask(sock, {"text": "안녕"})[0] == "reply"
    assert [row.session_id for row in rows(app)] == [sock.token.split(".")[0]]  # a fake connect changed nothing


def test_binary_attachment_that_points_nowhere(app):
    sock = connect(app)
    assert raw(sock, '51-["message",{"_placeholder":true,"num":5}]') == []
    assert error_codes(raw(sock, b"\x00\x01")) == ["bad_packet"]
    assert rows(app) == []


def test_binary_message_is_the_wrong_type(app):
    sock = connect(app)
    name, error = ask(sock, b"\xff\xfe")
    assert (name, error["code"]) == ("error", "bad_type")


@pytest.mark.parametrize("args", [("a", "b"), ({"text": "안녕"}, {"text": "또"})])
def test_message_with_several_arguments_is_refused(app, args):
    sock = connect(app)
    sock.emit("message", *args)
    assert error_codes(sock.get_received()) == ["bad_type"]
    assert rows(app) == []


def test_errors_say_which_event_they_answer(app):
    sock = connect(app)
    _, error = ask(sock, {"text": ""})
    assert error["event"] == "message"
    sock.emit("nope")
    assert sock.get_received()[0]["args"][0]["event"] is None


def test_a_failing_handler_answers_server_error(app, monkeypatch):
    sock = connect(app)
    responder = app.extensions["chatbot.responder"]
    monkeypatch.setattr(responder, "answer", lambda *a, **k: 1 / 0)
    name, error = ask(sock, {"text": "안녕"})
    assert (name, error["code"]) == ("error", "server_error")
    assert rows(app) == [] and sock.is_connected()


def test_an_event_named_star_is_unknown(app):
    # Flask-SocketIO keeps its catch-all handler under "*"
    sock = connect(app)
    sock.emit("*", {"text": "안녕"})
    assert error_codes(sock.get_received()) == ["unknown_event"]


def polling_session(client):
    import json
    opened = client.get("/socket.io/?EIO=4&transport=polling")
    assert opened.status_code == 200
    return "/socket.io/?EIO=4&transport=polling&sid=" + json.loads(opened.get_data(as_text=True)[1:])["sid"]


@pytest.mark.parametrize("body, status", [
    (b"4" + b"a" * 20000, 413),            # over max_http_buffer_size
    (b"\xff\xfe garbage", 400),             # not UTF-8
    (b"4" + b"[" * 3000, 400),              # JSON nested past the recursion limit
])
def test_long_polling_bodies_the_server_cannot_take_are_refused_at_once(app, body, status):
    client = app.test_client()
    url = polling_session(client)
    assert client.post(url, data=body, content_type="text/plain;charset=UTF-8").status_code == status
    # the session was left alone: it can still connect
    assert client.post(url, data=b"40", content_type="text/plain;charset=UTF-8").status_code == 200


def test_long_polling_post_to_a_closed_session_is_a_400(app):
    client = app.test_client()
    url = polling_session(client)
    sid = url.rsplit("=", 1)[1]
    socketio.server.eio.sockets[sid].closed = True
    assert client.post(url, data=b"40", content_type="text/plain;charset=UTF-8").status_code == 400


def test_engineio_frames_that_would_raise_are_recognised():
    from chatbot.guard import _engineio_decodable
    for good in ["4", "40", '42["message","x"]', "2", "3", '4{"a":1}', "4x", "6"]:
        assert _engineio_decodable(good), good
    for bad in ["", "x", "hello", "b%%%", "9", "4" + "[" * 5000, "4" + '{"a":' * 5000]:
        assert not _engineio_decodable(bad), bad
