"""A chat session belongs to the connections it was issued to (chatbot/chat.py):
a client continues only a conversation whose token the server sent it; any
other id it names, picked, copied from the admin, forged or signed for
another channel or key, opens a new, empty chat session.  Flask-SocketIO's
test client on a real SQLite file; the same attack through a real browser is
in tests/test_browser_widget.py."""
import hashlib
import secrets

import pytest
from itsdangerous import Signer

from chatbot.database import CHANNEL_WIDGET
from chatbot.extensions import socketio
from helpers import ask, connect, rows

SECRET = "제 전화번호는 010-2345-6789예요"


def raw_connect(app, auth):
    """A Socket.IO test client with any ``auth``; the token the server sent it, if any."""
    sock = socketio.test_client(app, flask_test_client=app.test_client(), auth=auth)
    tokens = [event["args"][0]["token"] for event in sock.get_received() if event["name"] == "session"]
    return sock, (tokens[0] if tokens else None)


def history_of(sock):
    sock.emit("history")
    [event] = sock.get_received()
    assert event["name"] == "history", event
    return [x["question"] for x in event["args"][0]["exchanges"]]


def test_a_picked_id_does_not_fix_a_visitors_chat_session(app):
    """The attack: an attacker picks an id S and gets a visitor to open
    /embed#session=S; the visitor's page connects with S and chats; the
    attacker connects with S and reads the history."""
    picked = secrets.token_hex(16)
    visitor, _ = raw_connect(app, {"session": picked, "channel": CHANNEL_WIDGET})
    ask(visitor, SECRET)
    attacker, _ = raw_connect(app, {"session": picked, "channel": CHANNEL_WIDGET})
    assert history_of(attacker) == []
    [row] = rows(app)
    assert row.question == SECRET and row.session_id != picked


def forged(kind, session_id, token):
    """What an attacker may name instead of the visitor's token."""
    signature = token.split(".")[1] if token else "A" * 43
    if kind == "the bare id":  # as reviewers see it in the review list and the exports
        return session_id
    if kind == "another signature":
        return session_id + "." + signature[::-1]
    if kind == "signed with another key":
        return Signer("not-the-secret-key", salt=f"chatbot.chat-session.{CHANNEL_WIDGET}",
                      digest_method=hashlib.sha256).sign(session_id).decode()
    if kind == "signed for the chat page":
        return Signer("test-secret", salt="chatbot.chat-session.web",
                      digest_method=hashlib.sha256).sign(session_id).decode()
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["the bare id", "another signature", "signed with another key",
                                  "signed for the chat page"])
def test_an_id_the_server_did_not_issue_gets_a_fresh_session_that_sees_nothing(app, kind):
    visitor, token = raw_connect(app, {"channel": CHANNEL_WIDGET})
    _, reply = ask(visitor, SECRET)
    [row] = rows(app)
    named = forged(kind, row.session_id, token)

    attacker, attacker_token = raw_connect(app, {"session": named, "channel": CHANNEL_WIDGET})
    assert history_of(attacker) == []
    attacker.emit("feedback", {"id": reply["id"], "value": "down"})
    [error] = attacker.get_received()
    assert error["args"][0]["code"] == "not_found"
    ask(attacker, "내 질문")
    assert [r.session_id == row.session_id for r in rows(app)] == [True, False]
    assert attacker_token is not None and attacker_token != token
    assert rows(app)[0].feedback is None


def test_a_chat_page_token_opens_a_fresh_widget_session_and_the_other_way(app):
    page = connect(app)
    ask(page, "페이지 질문")
    widget = connect(app, page.token, channel=CHANNEL_WIDGET)
    assert widget.token != page.token and history_of(widget) == []
    back = connect(app, widget.token)
    assert back.token not in (page.token, widget.token) and history_of(back) == []


def test_the_visitor_keeps_their_chat_with_the_token_they_were_sent(app):
    visitor = connect(app, channel=CHANNEL_WIDGET)
    ask(visitor, SECRET)
    reload = connect(app, visitor.token, channel=CHANNEL_WIDGET)
    assert reload.token == visitor.token
    assert history_of(reload) == [SECRET]
    ask(reload, "또 물어볼게요")
    assert len({row.session_id for row in rows(app)}) == 1


def test_a_new_server_secret_starts_every_chat_afresh(make_app):
    app = make_app()
    visitor = connect(app)
    ask(visitor, SECRET)
    other = make_app(SECRET_KEY=secrets.token_hex(16))  # a new secret, the same database file
    again = connect(other, visitor.token)
    assert again.token != visitor.token and history_of(again) == []
