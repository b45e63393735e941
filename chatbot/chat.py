"""The chat page and its Socket.IO events.

Protocol: the client emits ``message`` with ``{"text": "..."}`` (a bare
string works too).  The server answers the sender with ``reply``
``{id, question, answer, route, model_version}``, or with ``error``
``{code, message}`` when the message is refused; a refused message is not
stored and the connection stays open.
"""
import logging
import re

from flask import Blueprint, current_app, render_template, request, session
from flask_socketio import emit

from . import morph
from .database import Exchange
from .extensions import db, socketio
from .responder import Responder

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class MessageError(ValueError):
    """A chat message that cannot be answered; ``code`` is for clients."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def validate_message(data, max_chars: int) -> str:
    """Return the message text, or raise MessageError saying what is wrong."""
    text = data.get("text") if isinstance(data, dict) else data
    if not isinstance(text, str):
        raise MessageError("bad_type", '메시지는 {"text": "..."} 형식의 문자열이어야 합니다.')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("bad_encoding", "메시지에 올바르지 않은 문자가 있습니다.") from None
    if _CONTROL.search(text):
        raise MessageError("bad_encoding", "메시지에 제어 문자가 있습니다.")
    text = text.strip()
    if not text:
        raise MessageError("empty", "빈 메시지는 보낼 수 없습니다.")
    if len(text) > max_chars:
        raise MessageError("too_long", f"메시지가 너무 깁니다 (최대 {max_chars}자, 보낸 글자 {len(text)}자).")
    return text


def responder() -> Responder:
    return current_app.extensions["chatbot.responder"]


@bp.route("/")
def index():
    return render_template("chat.html", max_chars=current_app.config["MAX_MESSAGE_CHARS"])


@socketio.on("connect")
def on_connect(auth=None):
    """Remember the browser's chat session id (kept across reloads), else the socket id."""
    wanted = auth.get("session") if isinstance(auth, dict) else None
    session["chat_session"] = wanted if isinstance(wanted, str) and _SESSION_ID.match(wanted) else request.sid


@socketio.on("message")
def on_message(data):
    try:
        text = validate_message(data, current_app.config["MAX_MESSAGE_CHARS"])
    except MessageError as exc:
        emit("error", {"code": exc.code, "message": exc.message})
        return
    try:
        key = morph.question_key(text)
        answer = responder().answer(text, key)
        row = Exchange(question=text, question_key=key[:1000], answer=answer.text,
                       session_id=session.get("chat_session", request.sid),
                       model_version=answer.model_version, route=answer.route)
        db.session.add(row)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("failed to answer a message")
        emit("error", {"code": "server_error", "message": "답변을 만들지 못했습니다. 잠시 후 다시 시도해 주세요."})
        return
    emit("reply", {"id": row.id, "question": row.question, "answer": row.answer,
                   "route": row.route, "model_version": row.model_version})


def init_app(app):
    app.register_blueprint(bp)
    app.extensions["chatbot.responder"] = Responder(app.config["MODEL_DIR"])
