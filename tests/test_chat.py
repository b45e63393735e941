"""The chat over Socket.IO: round trip, storage, bad input, reviewed answers, reloads."""
import os

import pytest
import sqlalchemy as sa

from chatbot import versions
from chatbot.database import REVIEWED, ROUTE_FALLBACK, ROUTE_MEMORY, ROUTE_MODEL, UNREVIEWED, Exchange
from chatbot.extensions import db, socketio

TINY_PAIRS = [
    ("안녕하세요", "안녕하세요! 반가워요."),
    ("안녕", "안녕하세요! 반가워요."),
    ("배고파", "맛있는 거 드세요."),
    ("뭐 먹지", "김치찌개 어때요?"),
    ("날씨 어때", "맑고 따뜻해요."),
    ("비 와", "우산 챙기세요."),
    ("심심해", "산책 어때요?"),
    ("피곤해", "푹 쉬세요."),
    ("너 누구야", "저는 한마디예요."),
    ("고마워", "천만에요."),
]
TINY = dict(max_steps=3, embed_dim=16, hidden_dim=16, quiet=True)


def tiny_model(models_root, **overrides):
    from chatbot.train import run_training

    return run_training(TINY_PAIRS, models_root, **{**TINY, **overrides})


def connect(app, session_id="browser-session-1"):
    return socketio.test_client(app, flask_test_client=app.test_client(), auth={"session": session_id})


def ask(sock, data):
    sock.emit("message", data)
    received = sock.get_received()
    assert len(received) == 1, received
    return received[0]["name"], received[0]["args"][0]


def rows(app):
    with app.app_context():
        return db.session.execute(sa.select(Exchange).order_by(Exchange.id)).scalars().all()


def test_chat_page(client):
    page = client.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "socket.io.min.js" in html and "chat.js" in html
    assert "cdn" not in html.lower()
    assert client.get("/static/vendor/socket.io.min.js").status_code == 200


def test_round_trip_stores_the_exchange(app):
    tiny_model(app.config["MODEL_DIR"])
    sock = connect(app)
    assert sock.is_connected()
    name, reply = ask(sock, {"text": "  안녕하세요  "})
    assert name == "reply"
    assert reply["question"] == "안녕하세요"
    assert reply["answer"]
    assert reply["route"] == ROUTE_MODEL
    version = versions.current_dir(app.config["MODEL_DIR"]).name
    assert reply["model_version"] == version
    [row] = rows(app)
    assert (row.id, row.question, row.answer) == (reply["id"], "안녕하세요", reply["answer"])
    assert row.session_id == "browser-session-1"
    assert row.model_version == version and row.route == ROUTE_MODEL
    assert row.status == UNREVIEWED and row.created_at is not None
    assert row.corrected_answer is None and row.reviewer is None


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
    name, other = ask(sock, {"text": "서울에는 비가 와요?"})
    assert other["route"] == ROUTE_MODEL


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
    first = tiny_model(models)
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
    (broken / "model.pt").write_bytes(b"not a model")
    name, reply = ask(sock, "안녕")
    assert name == "reply" and reply["model_version"] == good.name
    assert os.readlink(os.path.join(models, "current")) == broken.name
