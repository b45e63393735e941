"""The chat page and its Socket.IO events (the chat page's and the widget's
channel; the work behind each event is chatbot/conversation.py's).

Protocol (client → server, then what the server answers the sender with):

- ``message`` ``{"text": "..."}`` (a bare string works too) → ``reply``
  ``{id, question, answer, route, model_version, feedback}``; the exchange is
  stored under the connection's chat session.
- ``history`` → ``history`` ``{"exchanges": [...]}``: this chat session's
  latest exchanges, oldest first, in the ``reply`` format; nobody else's rows.
- ``feedback`` ``{"id": 12, "value": "up" | "down" | null}`` → ``feedback``
  ``{id, value}``; only for exchanges of the same chat session.

The chat session: on every connect the server sends ``session``
``{"token": "..."}``, the token of the connection's chat session (on the
wire just before the connect's acceptance, ``40``: python-socketio sends
what the connect handler emits first; Socket.IO clients hold it until they
are connected).  The
client keeps it (the chat page in the tab's sessionStorage, the widget in
the host site's localStorage through widget.js) and sends it back as
``auth: {session: token}`` when it connects again (a reload), to continue
that conversation.  The token is the session's random id signed with
SECRET_KEY for its channel (``auth: {channel: "widget"}`` records the
exchanges as the widget's): a token the server did not issue, an id
without its signature (as clients sent before) or another channel's token
opens a new, empty chat session.  So no client can read or continue a
conversation whose token it was not sent; a page must also never take a
token from a link (chat.js takes one only from widget.js, in a frame).

Unprompted, the server sends ``model`` ``{"version": ...}`` when the process
has loaded a newly activated model (chatbot/model_watch.py).

Anything refused (bad input, another session's exchange, too many events,
an unknown event, a packet that does not decode) is answered with ``error``
``{code, message, event}`` and changes nothing; the connection stays open.
Every event counts against the chat session's and the client address's
token buckets (chatbot/limits.py), which outlive the connection; over one,
the code is ``rate_limited`` with ``retry_after`` seconds.  An address that
goes on regardless cools down: each of its connections gets one last
``rate_limited`` (``retry_after``: the cool-down) and is closed, and its
connects are refused until the cool-down ends.  When too many
questions are already waiting for the model the code is ``busy``: ask again
in a moment.  A connect over the address's connect limit is refused
(``connect_error`` with the same ``rate_limited`` data).
"""
import functools
import hashlib
import logging
import re
import secrets

from flask import Blueprint, current_app, render_template, request, send_from_directory, session
from flask_socketio import disconnect, emit
from itsdangerous import BadSignature, Signer

from . import conversation, guard
from .config import gevent_patched
from .conversation import MESSAGES, MessageError
from .database import CHANNEL_WEB, CHANNEL_WIDGET
from .extensions import db, socketio
from .model_watch import ModelWatcher
from .responder import Responder

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)

# A chat session token: a random id (secrets.token_urlsafe(16)), ".", its signature.
_SESSION_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}\.[A-Za-z0-9_-]{20,100}$")


def validate_feedback(args):
    """``(id, value)`` from a ``feedback`` event's arguments, or raise MessageError."""
    data = args[0] if len(args) == 1 else None
    if not isinstance(data, dict) or "value" not in data:
        raise MessageError("bad_feedback")
    return conversation.validate_row_id(data.get("id")), conversation.validate_feedback_value(data.get("value"))


def chat_session_id() -> str:
    return session.get("chat_session") or request.sid


def chat_channel() -> str:
    """The chat page's or the widget's: what the connection said it was (on_connect)."""
    return session.get("chat_channel", CHANNEL_WEB)


def send_error(code, message=None, **extra):
    event = request.event["message"]
    payload = {"code": code, "message": message or MESSAGES[code], "event": None if event == "*" else event}
    payload.update(extra)
    emit("error", payload)


def client_limits():
    return current_app.extensions["chatbot.limits"]


def rate_limited(wait: float) -> dict:
    """The ``rate_limited`` error's data, beside its code."""
    seconds = max(1, round(wait + 0.49))
    return {"message": MESSAGES["rate_limited"].format(wait=seconds), "retry_after": round(wait, 2)}


def close_transport():
    """Close this client's Engine.IO connection (its WebSocket or long-polling
    session) once what was just sent has gone out: no more of its packets are
    read."""
    server = socketio.server
    eio_sid = server.manager.eio_sid_from_sid(request.sid, request.namespace or "/")
    if eio_sid is not None:
        socketio.start_background_task(server.eio.disconnect, eio_sid)


def drop_flooder(cooldown: float):
    """A connection of an address that is cooling down: one last
    ``rate_limited``, then it is closed (packets already on their way find it
    closed and are dropped unanswered)."""
    if not socketio.server.manager.is_connected(request.sid, request.namespace):
        return
    send_error("rate_limited", **rate_limited(cooldown))
    close_transport()  # before disconnect(), which forgets the Engine.IO sid
    disconnect()


def client_event(handler, history=False):
    """A Socket.IO event handler behind the session's and the address's rate
    limits, that answers any unexpected failure with an ``error`` event."""

    @functools.wraps(handler)
    def wrapper(*args):
        limits = client_limits()
        address = request.remote_addr
        cooldown = limits.cooldown.left(address)
        if cooldown:
            drop_flooder(cooldown)
            return None
        wait = limits.event(chat_session_id(), address, history=history)
        if wait:
            cooldown = limits.refused(address)
            if cooldown:
                drop_flooder(cooldown)
            else:
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


def _session_signer(channel: str) -> Signer:
    return Signer(current_app.secret_key, salt=f"chatbot.chat-session.{channel}", digest_method=hashlib.sha256)


def session_token(session_id: str, channel: str) -> str:
    """The token that lets a client come back to chat session ``session_id`` on ``channel``."""
    return _session_signer(channel).sign(session_id).decode()


def issued_session(token, channel: str) -> str | None:
    """The chat session id in ``token`` if this server issued it for ``channel``, else None."""
    if not isinstance(token, str) or not _SESSION_TOKEN.match(token):
        return None
    try:
        return _session_signer(channel).unsign(token).decode()
    except BadSignature:
        return None


@socketio.on("connect")
def on_connect(auth=None):
    """Continue the chat session whose token the client sent, if this server
    issued it for this channel, else start a new one; either way send the
    client its token (``session``)."""
    auth = auth if isinstance(auth, dict) else {}
    limits = client_limits()
    cooldown = limits.cooldown.left(request.remote_addr)
    wait = 0.0 if cooldown else limits.connect.take(request.remote_addr)
    if wait:
        cooldown = limits.refused(request.remote_addr)
    if cooldown:
        close_transport()  # after the connect error below
    if cooldown or wait:
        raise ConnectionRefusedError({"code": "rate_limited", **rate_limited(cooldown or wait)})
    # The widget's page (/embed) says so; anything else is the chat page.
    channel = CHANNEL_WIDGET if auth.get("channel") == CHANNEL_WIDGET else CHANNEL_WEB
    session_id = issued_session(auth.get("session"), channel) or secrets.token_urlsafe(16)
    session["chat_session"] = session_id
    session["chat_channel"] = channel
    emit("session", {"token": session_token(session_id, channel)})
    watcher = current_app.extensions.get("chatbot.model_watch")
    if watcher is not None:
        watcher.ensure_started()


@socketio.on("message")
@client_event
def on_message(*args):
    try:
        if len(args) != 1:
            raise MessageError("bad_type", '메시지는 {"text": "..."} 형식의 문자열 하나여야 합니다.')
        reply = conversation.ask(args[0], chat_session_id(), chat_channel())
    except MessageError as exc:
        send_error(exc.code, exc.message)
        return
    emit("reply", reply)


@socketio.on("history")
@functools.partial(client_event, history=True)
def on_history(*args):
    """This chat session's latest exchanges, oldest first (after a reload)."""
    emit("history", {"exchanges": conversation.history(chat_session_id(), chat_channel())})


@socketio.on("feedback")
@client_event
def on_feedback(*args):
    """👍/👎 on a reply of this chat session; 👎 puts it first in the review list."""
    try:
        row_id, value = validate_feedback(args)
        emit("feedback", conversation.give_feedback(row_id, value, session_id=chat_session_id(),
                                                    channel=chat_channel()))
    except MessageError as exc:
        send_error(exc.code, exc.message)


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
        window_ms=app.config["REPLY_BATCH_WINDOW_MS"], model_threads=app.config["MODEL_THREADS"],
        queue_max=app.config["REPLY_QUEUE_MAX"], min_confidence=app.config["MIN_CONFIDENCE"],
        unsure_replies=app.config["UNSURE_REPLIES"],
        correction_min_similarity=app.config["CORRECTION_MIN_SIMILARITY"],
        correction_refresh_seconds=app.config["CORRECTION_REFRESH_SECONDS"],
        correction_unsure_similarity=app.config["CORRECTION_UNSURE_SIMILARITY"],
        correction_meaning_similarity=app.config["CORRECTION_MEANING_SIMILARITY"],
        correction_meaning_limit=app.config["CORRECTION_MEANING_LIMIT"])
    if not app.testing:  # one thread per server process, from its first chat on
        app.extensions["chatbot.model_watch"] = ModelWatcher(
            app, app.extensions["chatbot.responder"], app.config["MODEL_WATCH_SECONDS"])
    if gevent_patched():  # the server: load what answers now, so that the first chat need not wait
        socketio.start_background_task(app.extensions["chatbot.responder"].warm_up, app)
    guard.harden(socketio)
    app.wsgi_app = guard.SocketIOShield(app.wsgi_app, socketio.server.eio.max_http_buffer_size)
