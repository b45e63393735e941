"""The KakaoTalk channel: a Kakao i Open Builder skill at ``POST /kakao/skill/<secret>``.

Open Builder sends a SkillPayload (JSON: ``intent``, ``userRequest``
{``utterance``, ``user`` {``id``, ...}, ``block``, ...}, ``bot``, ``action``
{``clientExtra``, ...}) and shows the user what we answer, a SkillResponse
2.0: ``{"version": "2.0", "template": {"outputs": [{"simpleText":
{"text": ...}}], "quickReplies": [...]}}``.  The work is
chatbot/conversation.py's, as on every channel.

Status codes: a wrong secret (and any method but POST) is 404, so the URL
alone says nothing.  Everything else is 200 with a SkillResponse, a payload we
cannot read and a user over the rate limit included: Kakao shows any other
status as a bare error, and a short Korean text tells the user what happened.
(A body over ``MAX_REQUEST_BYTES`` is refused with 413 by chatbot/limits.py
before it reaches us; Kakao never sends one.)

- The secret is an HMAC of SECRET_KEY (``skill_secret``), or
  ``KAKAO_SKILL_SECRET``; reviewers see the URL at /admin/kakao.
- The chat session is ``kakao-`` + SHA-256 of the bot id and the Kakao user
  id: history and feedback work per KakaoTalk user, and the raw id is never
  stored.
- Kakao waits 5 seconds for an answer.  The question is answered on a
  background task; if it is not ready within ``KAKAO_REPLY_BUDGET`` seconds
  the user gets "잠시만요…" at once, the task still stores the exchange, and
  the answer goes out before the reply to the user's next message.  Such a
  late answer is kept in the database (``LateAnswers``, table
  kakao_late_answer) and marked delivered when it goes out: a restart or
  another server process still delivers it, once.
- Open Builder's callback (an "AI chatbot" block with Callback API on): the
  request carries ``userRequest.callbackUrl``, valid for a minute and for
  one use.  We answer at once with ``useCallback`` and "잠시만요…", then
  POST the SkillResponse to that URL when it is ready (``call_back``), only
  if its origin is in ``KAKAO_CALLBACK_HOSTS``: no request goes anywhere a
  caller names (a callbackUrl elsewhere is logged and answered as without
  one).  Each try has ``KAKAO_CALLBACK_TIMEOUT`` seconds and follows no
  redirect; after two failed tries the answer is kept as a late answer.  At
  most ``KAKAO_CALLBACKS_AT_ONCE`` wait at once; past that, no callback.
- 👍/👎 are quick replies with action "block" back to the block that called
  us (``userRequest.block.id``, the fallback block) carrying ``extra``
  ``{"feedback": "up"|"down", "exchange": <id>}``; Open Builder sends it back
  to this skill as ``action.clientExtra``, and only that user's exchanges can
  be rated.
- Rate limits: KakaoTalk's requests all come from a few Kakao servers, so the
  per-address ``HTTP_LIMIT`` does not apply to them; instead
  ``KAKAO_USER_RATE_LIMIT`` per KakaoTalk user and ``KAKAO_TOTAL_RATE_LIMIT``
  for all of them together (Flask-Limiter).  Every other request to the skill
  (a wrong secret, another method than POST) is not Kakao's: the same 404,
  under ``HTTP_LIMIT`` per address, and none of the KakaoTalk limits.
"""
import base64
import hashlib
import hmac
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, g, jsonify, request
from flask_limiter import ExemptionScope
from flask_limiter.util import get_remote_address

from . import conversation
from .conversation import MESSAGES, MessageError
from .database import CHANNEL_KAKAO, FEEDBACK_DOWN, FEEDBACK_UP, Exchange, KakaoLateAnswer, utcnow
from .extensions import csrf, db, socketio
from .limits import http_limiter

log = logging.getLogger(__name__)
bp = Blueprint("kakao", __name__)

TEXT_LIMIT = 1000  # simpleText's text, in characters
MAX_ID_CHARS = 256  # Kakao's user and bot ids are a few dozen characters
MAX_URL_CHARS = 2048  # a callbackUrl
TEXTS = {
    "unreadable": "메시지를 읽지 못했어요. 다시 보내 주세요.",
    "empty": "메시지를 입력해 주세요.",
    "wait": "잠시만요… 답변을 준비하고 있어요. 다음 메시지를 보내 주시면 그때 함께 알려 드릴게요.",
    "callback_wait": "잠시만요… 답변을 준비하고 있어요.",
    "late": "아까 물어보신 \"{question}\"에 대한 답변이에요.\n{answer}",
    FEEDBACK_UP: "평가해 주셔서 고마워요! 👍",
    FEEDBACK_DOWN: "알려 주셔서 고마워요. 더 좋은 답을 배울게요.",
}
FEEDBACK_BUTTONS = {FEEDBACK_UP: "👍", FEEDBACK_DOWN: "👎"}


@dataclass
class SkillRequest:
    """What we use of a SkillPayload."""

    utterance: str
    session_id: str
    block_id: str | None  # the block that called the skill, for the 👍/👎 quick replies
    extra: dict | None  # action.clientExtra: a quick reply's extra
    callback_url: str | None = None  # userRequest.callbackUrl, when the block has Callback API on


def skill_secret(app=None) -> str:
    """The URL's secret: KAKAO_SKILL_SECRET, else derived from SECRET_KEY, so
    every install has its own without anything to set up."""
    config = (app or current_app).config
    if config.get("KAKAO_SKILL_SECRET"):
        return config["KAKAO_SKILL_SECRET"]
    key = config["SECRET_KEY"]
    key = key.encode("utf-8") if isinstance(key, str) else key
    digest = hmac.new(key, b"kakao-skill", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")[:32]


def secret_ok(secret) -> bool:
    return isinstance(secret, str) and hmac.compare_digest(secret.encode("utf-8", "replace"),
                                                           skill_secret().encode("utf-8", "replace"))


def session_for(bot_id: str, user_id: str) -> str:
    """The chat session of a KakaoTalk user (of one bot); the raw id is not kept."""
    digest = hashlib.sha256(f"{bot_id}\n{user_id}".encode("utf-8")).hexdigest()
    return "kakao-" + digest[:40]


def _field(mapping, name):
    return mapping.get(name) if isinstance(mapping, dict) else None


def parse_payload(body: bytes) -> SkillRequest | None:
    """The SkillRequest in a request body, or None when it is not a SkillPayload
    with a string utterance and a user id, or an id in it is too long or not
    UTF-8 text.  Checked here, before anything is stored: the block id goes
    back into the answer."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return None
    user_request = _field(data, "userRequest")
    utterance = _field(user_request, "utterance")
    user_id = _field(_field(user_request, "user"), "id")
    bot_id = _field(_field(data, "bot"), "id")
    bot_id = bot_id if isinstance(bot_id, str) else ""
    block_id = _field(_field(user_request, "block"), "id")
    block_id = block_id if isinstance(block_id, str) and block_id else None
    if not isinstance(utterance, str) or not isinstance(user_id, str) or not user_id \
            or not all(_id_ok(i) for i in (user_id, bot_id, block_id)):
        return None
    extra = _field(_field(data, "action"), "clientExtra")
    callback = _field(user_request, "callbackUrl")
    callback = callback if isinstance(callback, str) and 0 < len(callback) <= MAX_URL_CHARS else None
    return SkillRequest(utterance, session_for(bot_id, user_id), block_id, extra if isinstance(extra, dict) else None,
                        callback)


def _id_ok(value: str | None) -> bool:
    """An id we hash or send back (the block id, in the 👍/👎 quick replies):
    short, and text that UTF-8 can encode (JSON's escapes allow a lone
    surrogate, "\\ud800", which would fail only when the answer is sent)."""
    if value is None:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return len(value) <= MAX_ID_CHARS


def read_payload() -> SkillRequest | None:
    """This request's SkillRequest, parsed once: the rate limit's key needs it before the view."""
    if "kakao_request" not in g:
        g.kakao_request = parse_payload(request.get_data(cache=True))
    return g.kakao_request


def cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT - 1] + "…"


def skill_body(*texts, quick_replies=None) -> dict:
    """A SkillResponse 2.0 of simpleText outputs (at most 1000 characters each)."""
    template = {"outputs": [{"simpleText": {"text": cut(text)}} for text in texts]}
    if quick_replies:
        template["quickReplies"] = quick_replies
    return {"version": "2.0", "template": template}


def skill_response(*texts, quick_replies=None):
    """``skill_body`` as the HTTP 200 answer."""
    return jsonify(skill_body(*texts, quick_replies=quick_replies))


def feedback_buttons(exchange_id: int, block_id: str | None) -> list[dict]:
    """👍/👎 quick replies that call the same block (so this skill) again with the
    exchange in ``action.clientExtra``.  None without a block id to call."""
    if block_id is None:
        return []
    return [{"label": label, "action": "block", "blockId": block_id, "messageText": label,
             "extra": {"feedback": value, "exchange": exchange_id}}
            for value, label in FEEDBACK_BUTTONS.items()]


def error_text(exc: MessageError) -> str:
    return TEXTS["empty"] if exc.code == "empty" else exc.message


def answer_body(result, texts: list, block_id: str | None) -> dict:
    """The SkillResponse for ``conversation.ask``'s ``result`` (its payload,
    or a MessageError), after ``texts`` (an earlier late answer)."""
    if isinstance(result, MessageError):
        return skill_body(*texts, error_text(result))
    return skill_body(*texts, result["answer"], quick_replies=feedback_buttons(result["id"], block_id))


class LateAnswers:
    """Answers that were ready only after Kakao stopped waiting, by chat
    session (the latest each), until that user writes again: in the
    database, so that a restart or another server process still delivers
    them, and each once (``take`` marks it delivered in the same UPDATE that
    finds it).  Kept KAKAO_LATE_HOURS at most, for KAKAO_LATE_ROWS sessions
    at most (the oldest go)."""

    TABLE = KakaoLateAnswer.__table__

    def __init__(self, hours: float, max_rows: int):
        self.keep = timedelta(hours=hours)
        self.max_rows = max(1, max_rows)

    def put(self, session_id: str, exchange_id: int):
        table, now = self.TABLE, utcnow()
        with db.engine.begin() as connection:
            connection.execute(table.delete().where(table.c.session_id == session_id))
            connection.execute(table.insert().values(session_id=session_id, exchange_id=exchange_id, created_at=now))
            connection.execute(table.delete().where(sa.or_(table.c.delivered_at.is_not(None),
                                                           table.c.created_at < now - self.keep)))
            excess = connection.scalar(sa.select(sa.func.count()).select_from(table)) - self.max_rows
            if excess > 0:
                oldest = connection.execute(sa.select(table.c.session_id).order_by(table.c.created_at)
                                            .limit(excess)).scalars().all()
                connection.execute(table.delete().where(table.c.session_id.in_(oldest)))

    def take(self, session_id: str) -> tuple[str, str] | None:
        """(question, answer) of this session's late answer, marked delivered; None if there is none."""
        table, now = self.TABLE, utcnow()
        with db.engine.begin() as connection:
            found = connection.execute(table.update().where(
                table.c.session_id == session_id, table.c.delivered_at.is_(None),
                table.c.created_at >= now - self.keep).values(delivered_at=now))
            if found.rowcount != 1:
                return None
            row = connection.execute(sa.select(Exchange.question, Exchange.answer).join(
                table, table.c.exchange_id == Exchange.id).where(table.c.session_id == session_id)).first()
        return tuple(row) if row else None


def _answer(app, text: str, session_id: str):
    """``conversation.ask`` in an app context of its own: its payload, or a MessageError."""
    with app.app_context():
        try:
            return conversation.ask(text, session_id, CHANNEL_KAKAO)
        except MessageError as exc:
            return exc
        except Exception:
            db.session.rollback()
            log.exception("failed to answer a KakaoTalk message")
            return MessageError("server_error")


def ask_within_budget(text: str, session_id: str):
    """``conversation.ask`` on a background task with its own app context.

    Returns its payload, or its MessageError, or None when it was not ready
    within KAKAO_REPLY_BUDGET seconds: the task then still stores the exchange,
    and leaves the payload in LateAnswers for the user's next message.
    """
    app = current_app._get_current_object()
    lock = threading.Lock()
    box = {}

    def run():
        result = _answer(app, text, session_id)
        with lock:
            box["result"] = result
            late = box.get("late") and isinstance(result, dict)
        if late:
            with app.app_context():
                app.extensions["chatbot.kakao_late"].put(session_id, result["id"])

    # A greenlet in the server (the model runs on OS threads; chatbot/batching.py), a thread elsewhere.
    task = socketio.start_background_task(run)
    task.join(app.config["KAKAO_REPLY_BUDGET"])
    with lock:
        if "result" in box:
            return box["result"]
        box["late"] = True
        return None


# Every method is routed here, so that anything but a POST to the right secret
# is the same 404 (a 405 would say that /kakao/skill/... exists).
@bp.route("/kakao/skill/<secret>", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
          provide_automatic_options=False)
def skill(secret):
    if not from_kakao():
        abort(404)
    asked = read_payload()
    if asked is None:
        return skill_response(TEXTS["unreadable"])
    if asked.extra is not None and "feedback" in asked.extra:
        return feedback(asked)
    try:
        conversation.validate_message(asked.utterance, current_app.config["MAX_MESSAGE_CHARS"])
    except MessageError as exc:
        return skill_response(error_text(exc))
    earlier = current_app.extensions["chatbot.kakao_late"].take(asked.session_id)
    texts = [TEXTS["late"].format(question=earlier[0], answer=earlier[1])] if earlier else []
    if asked.callback_url is not None and callback_allowed(asked.callback_url) \
            and current_app.extensions["chatbot.kakao_callbacks"].acquire(blocking=False):
        socketio.start_background_task(call_back, current_app._get_current_object(), asked, texts)
        return jsonify({"version": "2.0", "useCallback": True, "data": {"text": TEXTS["callback_wait"]}})
    result = ask_within_budget(asked.utterance, asked.session_id)
    if result is None:
        return skill_response(*texts, TEXTS["wait"])
    return jsonify(answer_body(result, texts, asked.block_id))


def callback_origins(setting: str) -> set[str]:
    """KAKAO_CALLBACK_HOSTS as origins: "host" is https://host; "scheme://host[:port]" as it is."""
    return {entry if "://" in entry else f"https://{entry}"
            for entry in re.split(r"[\s,]+", setting.strip().lower()) if entry}


def callback_allowed(url: str) -> bool:
    """Whether ``url`` goes to an origin of KAKAO_CALLBACK_HOSTS (no user or
    password in it); a URL elsewhere is refused and logged."""
    try:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        parts, origin = None, None
    if parts is not None and parts.username is None and parts.password is None \
            and origin in callback_origins(current_app.config["KAKAO_CALLBACK_HOSTS"]):
        return True
    log.warning("KakaoTalk callbackUrl to %s refused: not in KAKAO_CALLBACK_HOSTS",
                origin if parts is not None else "an unreadable URL")
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer we do not follow: the try failed


_opener = urllib.request.build_opener(_NoRedirect)


def post_callback(url: str, body: dict, timeout: float) -> bool:
    """POST ``body`` (a SkillResponse) to ``url``; whether it answered 2xx in time."""
    request_ = urllib.request.Request(url, data=json.dumps(body, ensure_ascii=False).encode("utf-8"),
                                      headers={"Content-Type": "application/json"}, method="POST")
    try:
        with _opener.open(request_, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError) as exc:
        log.warning("KakaoTalk callback failed: %s", exc)
        return False


def call_back(app, asked: SkillRequest, texts: list):
    """Answer ``asked`` and POST the SkillResponse to its callbackUrl: two
    tries, then the answer is kept for the user's next message."""
    try:
        result = _answer(app, asked.utterance, asked.session_id)
        body = answer_body(result, texts, asked.block_id)
        timeout = app.config["KAKAO_CALLBACK_TIMEOUT"]
        if post_callback(asked.callback_url, body, timeout) or post_callback(asked.callback_url, body, timeout):
            return
        if isinstance(result, dict):
            with app.app_context():
                app.extensions["chatbot.kakao_late"].put(asked.session_id, result["id"])
    finally:
        app.extensions["chatbot.kakao_callbacks"].release()


def feedback(asked: SkillRequest):
    """A 👍/👎 quick reply: rate one of this user's exchanges."""
    value = asked.extra.get("feedback")
    try:
        if value not in FEEDBACK_BUTTONS:
            raise MessageError("bad_feedback")
        conversation.give_feedback(asked.extra.get("exchange"), value, CHANNEL_KAKAO, session_id=asked.session_id)
    except MessageError as exc:
        return skill_response(exc.message)
    return skill_response(TEXTS[value])


def rate_limited(limit):
    """Over a limit: a SkillResponse (200) that says so; Kakao would show a 429 as a bare error."""
    wait = max(1, round(limit.reset_at - time.time()))
    return skill_response(MESSAGES["rate_limited"].format(wait=wait))


def from_kakao() -> bool:
    """A POST to the right secret, as Open Builder sends.  Anything else (a
    wrong secret, another method) is the same 404, under the per-address
    HTTP_LIMIT and no part of the KakaoTalk limits."""
    return request.method == "POST" and secret_ok((request.view_args or {}).get("secret"))


def _user_not_known() -> bool:
    return not from_kakao() or read_payload() is None


def init_app(app):
    """Register the skill; after limits.init_app, whose limiter it sets its own limits on."""
    configured = app.config.get("KAKAO_SKILL_SECRET")
    if configured and not re.fullmatch(r"[A-Za-z0-9_-]{20,}", configured):
        raise RuntimeError("KAKAO_SKILL_SECRET must be at least 20 characters of A-Z, a-z, 0-9, _ and -")
    app.register_blueprint(bp)
    csrf.exempt(bp)  # Kakao's servers post JSON without a token; the secret URL stands in for one
    app.extensions["chatbot.kakao_late"] = LateAnswers(app.config["KAKAO_LATE_HOURS"], app.config["KAKAO_LATE_ROWS"])
    app.extensions["chatbot.kakao_callbacks"] = threading.BoundedSemaphore(max(1, app.config["KAKAO_CALLBACKS_AT_ONCE"]))
    limiter = http_limiter(app)
    # Not the per-address HTTP_LIMIT: every KakaoTalk user comes from Kakao's few
    # addresses.  (Exempting META too would drop the blueprint's own limits below.)
    limiter.exempt(bp, flags=ExemptionScope.DEFAULT | ExemptionScope.APPLICATION)
    if app.config["HTTP_LIMIT"]:
        limiter.limit(app.config["HTTP_LIMIT"], key_func=get_remote_address, exempt_when=from_kakao)(bp)
    if app.config["KAKAO_USER_RATE_LIMIT"]:
        limiter.limit(app.config["KAKAO_USER_RATE_LIMIT"], key_func=lambda: "kakao-user:" + read_payload().session_id,
                      exempt_when=_user_not_known, on_breach=rate_limited)(bp)
    if app.config["KAKAO_TOTAL_RATE_LIMIT"]:
        limiter.limit(app.config["KAKAO_TOTAL_RATE_LIMIT"], key_func=lambda: "kakao-all",
                      exempt_when=lambda: not from_kakao(), on_breach=rate_limited)(bp)
