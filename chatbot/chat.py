"""The chat page and its Socket.IO events.

Protocol (client → server, then what the server answers the sender with):

- ``message`` ``{"text": "..."}`` (a bare string works too) → ``reply``
  ``{id, question, answer, route, model_version, feedback}``; the exchange is
  stored under the connection's chat session.
- ``history`` → ``history`` ``{"exchanges": [...]}``: this chat session's
  latest exchanges, oldest first, in the ``reply`` format.  The chat session
  is the id the browser sent as ``auth: {session}`` when connecting (kept in
  the tab's sessionStorage, so it survives a reload); nobody else's rows.
- ``feedback`` ``{"id": 12, "value": "up" | "down" | null}`` → ``feedback``
  ``{id, value}``; only for exchanges of the same chat session.

Unprompted, the server sends ``model`` ``{"version": ...}`` when the process
has loaded a newly activated model (chatbot/model_watch.py).

Anything refused (bad input, another session's exchange, too many events,
an unknown event, a packet that does not decode) is answered with ``error``
``{code, message, event}`` and changes nothing; the connection stays open.
Every event counts against the chat session's and the client address's
token buckets (chatbot/limits.py), which outlive the connection; over one,
the code is ``rate_limited`` with ``retry_after`` seconds.  When too many
questions are already waiting for the model the code is ``busy``: ask again
in a moment.  A connect over the address's connect limit is refused
(``connect_error`` with the same ``rate_limited`` data).
"""
import functools
import logging
import re

import sqlalchemy as sa
from flask import Blueprint, current_app, render_template, request, send_from_directory, session
from flask_socketio import emit

from . import guard, morph
from .config import gevent_patched
from .database import FEEDBACK_LABELS, Exchange
from .extensions import db, socketio
from .model_watch import ModelWatcher
from .batching import Busy
from .responder import Responder

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
HISTORY_LIMIT = 100  # exchanges sent back after a reload
_MAX_ROW_ID = 2**63 - 1

MESSAGES = {
    "rate_limited": "메시지를 너무 빨리 보내고 있어요. {wait}초 뒤에 다시 보내 주세요.",
    "unknown_event": "알 수 없는 요청입니다.",
    "bad_packet": "요청을 읽을 수 없습니다.",
    "reserved_event": "알 수 없는 요청입니다.",
    "too_many_attachments": "요청을 읽을 수 없습니다.",
    "bad_feedback": '평가는 {"id": 번호, "value": "up" 또는 "down"} 형식이어야 합니다.',
    "not_found": "이 대화에서 찾을 수 없는 답변입니다.",
    "server_error": "답변을 만들지 못했습니다. 잠시 후 다시 시도해 주세요.",
    "busy": "지금은 질문이 너무 많이 밀려 있어요. 잠시 후 다시 보내 주세요.",
}


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


def validate_feedback(args):
    """``(id, value)`` from a ``feedback`` event's arguments, or raise MessageError."""
    data = args[0] if len(args) == 1 else None
    if not isinstance(data, dict) or "value" not in data:
        raise MessageError("bad_feedback", MESSAGES["bad_feedback"])
    row_id, value = data.get("id"), data.get("value")
    if isinstance(row_id, bool) or not isinstance(row_id, int) or not 0 < row_id <= _MAX_ROW_ID:
        raise MessageError("bad_feedback", MESSAGES["bad_feedback"])
    if value is not None and (not isinstance(value, str) or value not in FEEDBACK_LABELS):
        raise MessageError("bad_feedback", MESSAGES["bad_feedback"])
    return row_id, value


def responder() -> Responder:
    return current_app.extensions["chatbot.responder"]


def chat_session_id() -> str:
    return session.get("chat_session") or request.sid


def send_error(code, message=None, **extra):
    event = request.event["message"]
    payload = {"code": code, "message": message or MESSAGES[code], "event": None if event == "*" else event}
    payload.update(extra)
    emit("error", payload)


def exchange_payload(row: Exchange) -> dict:
    return {"id": row.id, "question": row.question, "answer": row.answer, "route": row.route,
            "model_version": row.model_version, "feedback": row.feedback}


def client_limits():
    return current_app.extensions["chatbot.limits"]


def rate_limited(wait: float) -> dict:
    """The ``rate_limited`` error's data, beside its code."""
    seconds = max(1, round(wait + 0.49))
    return {"message": MESSAGES["rate_limited"].format(wait=seconds), "retry_after": round(wait, 2)}


def client_event(handler, history=False):
    """A Socket.IO event handler behind the session's and the address's rate
    limits, that answers any unexpected failure with an ``error`` event."""

    @functools.wraps(handler)
    def wrapper(*args):
        wait = client_limits().event(chat_session_id(), request.remote_addr, history=history)
        if wait:
            send_error("rate_limited", **rate_limited(wait))
            return None
        try:
            return handler(*args)
        except Exception:
            db.session.rollback()
            log.exception("failed to handle a %r event", request.event["message"])
            send_error("server_error")
            return None

    return wrapper


@bp.route("/")
def index():
    return render_template("chat.html", max_chars=current_app.config["MAX_MESSAGE_CHARS"])


@bp.route("/favicon.ico")
def favicon():
    return send_from_directory(current_app.static_folder, "favicon.ico", mimetype="image/vnd.microsoft.icon",
                               max_age=7 * 24 * 3600)


@socketio.on("connect")
def on_connect(auth=None):
    """Remember the browser's chat session id (kept across reloads), else the socket id."""
    wanted = auth.get("session") if isinstance(auth, dict) else None
    wait = client_limits().connect.take(request.remote_addr)
    if wait:
        raise ConnectionRefusedError({"code": "rate_limited", **rate_limited(wait)})
    session["chat_session"] = wanted if isinstance(wanted, str) and _SESSION_ID.match(wanted) else request.sid
    watcher = current_app.extensions.get("chatbot.model_watch")
    if watcher is not None:
        watcher.ensure_started()


@socketio.on("message")
@client_event
def on_message(*args):
    try:
        if len(args) != 1:
            raise MessageError("bad_type", '메시지는 {"text": "..."} 형식의 문자열 하나여야 합니다.')
        text = validate_message(args[0], current_app.config["MAX_MESSAGE_CHARS"])
    except MessageError as exc:
        send_error(exc.code, exc.message)
        return
    key = morph.question_key(text)
    try:
        answer = responder().answer(text, key)
    except Busy:
        send_error("busy")
        return
    row = Exchange(question=text, question_key=key, answer=answer.text, session_id=chat_session_id(),
                   model_version=answer.model_version, route=answer.route, confidence=answer.confidence)
    db.session.add(row)
    db.session.flush()  # the id, without reading the row back after the commit
    payload = exchange_payload(row)
    db.session.commit()
    emit("reply", payload)


@socketio.on("history")
@functools.partial(client_event, history=True)
def on_history(*args):
    """This chat session's latest exchanges, oldest first (after a reload)."""
    rows = db.session.execute(
        sa.select(Exchange).where(Exchange.session_id == chat_session_id())
        .order_by(Exchange.id.desc()).limit(HISTORY_LIMIT)
    ).scalars().all()
    emit("history", {"exchanges": [exchange_payload(row) for row in reversed(rows)]})


@socketio.on("feedback")
@client_event
def on_feedback(*args):
    """👍/👎 on a reply of this chat session; 👎 puts it first in the review list."""
    try:
        row_id, value = validate_feedback(args)
    except MessageError as exc:
        send_error(exc.code, exc.message)
        return
    row = db.session.get(Exchange, row_id)
    if row is None or row.session_id != chat_session_id():
        send_error("not_found")  # the same answer for others' rows as for missing ones
        return
    row.feedback = value
    db.session.commit()
    emit("feedback", {"id": row.id, "value": row.feedback})


@socketio.on("*")
@client_event
def on_other_event(event, *args):
    """Unknown event names, and packets that did not decode (guard.MALFORMED_EVENT)."""
    if event == guard.MALFORMED_EVENT:
        reason = args[0] if args and isinstance(args[0], str) and args[0] in MESSAGES else "bad_packet"
        send_error(reason)
    else:
        send_error("unknown_event")


def init_app(app):
    app.register_blueprint(bp)
    app.extensions["chatbot.responder"] = Responder(
        app.config["MODEL_DIR"], workers=app.config["REPLY_WORKERS"], batch_max=app.config["REPLY_BATCH_MAX"],
        window_ms=app.config["REPLY_BATCH_WINDOW_MS"], torch_threads=app.config["TORCH_THREADS"],
        queue_max=app.config["REPLY_QUEUE_MAX"], min_confidence=app.config["MIN_CONFIDENCE"],
        unsure_replies=app.config["UNSURE_REPLIES"],
        correction_min_similarity=app.config["CORRECTION_MIN_SIMILARITY"],
        correction_refresh_seconds=app.config["CORRECTION_REFRESH_SECONDS"],
        correction_unsure_similarity=app.config["CORRECTION_UNSURE_SIMILARITY"])
    if not app.testing:  # one thread per server process, from its first chat on
        app.extensions["chatbot.model_watch"] = ModelWatcher(
            app, app.extensions["chatbot.responder"], app.config["MODEL_WATCH_SECONDS"])
    if gevent_patched():  # the server: load the model now, so that the first chat need not wait
        socketio.start_background_task(app.extensions["chatbot.responder"].model)
    guard.harden(socketio)
    app.wsgi_app = guard.SocketIOShield(app.wsgi_app, socketio.server.eio.max_http_buffer_size)
