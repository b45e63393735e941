"""The REST API at /api/v1: another channel onto chatbot/conversation.py, for
programs that hold an API key (made in the admin's "API 키" page or with
``flask api-key create``).

- ``POST /api/v1/messages`` ``{"text": "...", "session": "optional"}`` →
  the conversation payload plus ``session``.
- ``POST /api/v1/messages/<id>/feedback`` ``{"value": "up"|"down"|null}`` →
  ``{id, value}``; only the key's own exchanges, else ``not_found``.
- ``GET /api/v1/openapi.json``: the OpenAPI document (chatbot/openapi.py).

Every answer is JSON; an error is ``{"code", "message"}`` with the codes of
the Socket.IO ``error`` event (conversation.MESSAGES) plus the few that only
HTTP has (``API_MESSAGES``).

Keys: ``Authorization: Bearer <key>``; only the key's SHA-256 is stored.  Each
process keeps the live keys it has seen for ``API_KEY_CACHE_SECONDS`` (a
request then skips the database); a revoked key is refused at once by the
process that revoked it and within that time by the others.
Rate limits (Flask-Limiter, in ``RATELIMIT_STORAGE_URI``): ``API_RATE_LIMIT``
per key over both endpoints, instead of the per-address ``HTTP_LIMIT`` (many
API clients may share an address, and one client may use several); and
``API_AUTH_FAILURE_LIMIT`` failed authentications per address, after which
that address gets 429 whatever key it sends, so keys cannot be guessed
quickly.  A refused key is counted and checked in one step (``limits``'
``hit``), so parallel guesses get exactly that many 401s, not one each
that passed a check before the others were counted.  The CSRF token is not
needed: the API authenticates every request with a header, never a cookie.
"""
import hashlib
import json
import logging
import re
import secrets
import time
from datetime import timedelta

import sqlalchemy as sa
from flask import Blueprint, current_app, g, jsonify, request
from flask_limiter import RateLimitExceeded
from flask_limiter.util import get_remote_address
from limits import parse_many
from werkzeug.exceptions import HTTPException

from . import conversation, openapi
from .conversation import MESSAGES, MessageError
from .database import CHANNEL_API, ApiKey, ReviewAudit, utcnow
from .extensions import csrf, db
from .limits import http_limiter

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=PREFIX)

KEY_START = "hm_"           # 한마디: tells a leaked key apart from other secrets
PREFIX_CHARS = 11           # what the admin shows of a key: "hm_" and 8 more
MAX_NAME_CHARS = 80         # ApiKey.name
MAX_KEY_CHARS = 200         # a longer Authorization header is not worth hashing
LAST_USED_EVERY = timedelta(minutes=1)  # last_used_at is written at most this often
SESSION = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

API_MESSAGES = {
    "bad_json": '요청 본문은 {"text": "..."} 형식의 JSON이어야 합니다.',
    "bad_session": "session은 영문자, 숫자, _ . : - 로 된 1~64자여야 합니다.",
    "unauthorized": "API 키가 없거나 올바르지 않습니다. Authorization: Bearer <키> 헤더로 보내 주세요.",
    "too_large": "요청 본문이 너무 큽니다 (최대 {max_bytes}바이트).",
    "no_such_path": "없는 API 주소입니다.",
    "method_not_allowed": "이 API 주소에서 쓸 수 없는 메서드입니다.",
    "bad_request": "요청을 읽을 수 없습니다.",
}
STATUS = {"unauthorized": 401, "not_found": 404, "too_long": 413, "rate_limited": 429,
          "server_error": 500, "busy": 503}  # every other code is 400


# -- keys ------------------------------------------------------------------------------

def hash_key(secret: str) -> str:
    """What the database holds of a key: a random key needs no slow hash."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_key(name: str, created_by: str | None = None) -> tuple[ApiKey, str]:
    """A new key (committed) and its secret, which is never stored or shown again."""
    secret = KEY_START + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=secret[:PREFIX_CHARS], key_hash=hash_key(secret), created_by=created_by)
    db.session.add(key)
    db.session.add(_audit(key, "key_create", created_by))
    db.session.commit()
    log.info("API key %s (%s) created by %s", key.id, key.prefix, created_by or "the CLI")
    return key, secret


def _audit(key: ApiKey, action: str, who: str | None) -> ReviewAudit:
    """The audit row (검토 기록) of a change to ``key``; the CLI is "CLI"."""
    return ReviewAudit(reviewer=who or "CLI", action=action, question=f"API 키 {key.name} ({key.prefix}…)")


def revoke_key(key_id: int, revoked_by: str | None = None) -> ApiKey | None:
    """Revoke a key: refused at once in this process, within
    ``API_KEY_CACHE_SECONDS`` in the others (``live_keys``); None if there is none."""
    key = db.session.get(ApiKey, key_id)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.add(_audit(key, "key_revoke", revoked_by))
        db.session.commit()
        log.info("API key %s (%s) revoked", key.id, key.prefix)
    current_app.extensions["chatbot.api_keys"].clear()
    return key


def live_keys() -> dict:
    """This process's recently seen live keys: SHA-256 → (key id, when looked
    up).  Only keys found live in the database get in, so their number is
    bounded by the keys reviewers made; a request with one skips the
    database for ``API_KEY_CACHE_SECONDS``."""
    return current_app.extensions["chatbot.api_keys"]


def bearer_key_id() -> int | None:
    """The id of the live key in this request's ``Authorization`` header, or None
    (looked up once a request: the limiter asks first, then the view)."""
    if "api_key_id" not in g:
        g.api_key_id = None
        scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
        secret = secret.strip()
        if scheme.lower() == "bearer" and secret and len(secret) <= MAX_KEY_CHARS:
            g.api_key_id = _look_up(hash_key(secret))
    return g.api_key_id


def _look_up(key_hash: str) -> int | None:
    """The live key's id from this process's cache, else from the database."""
    cache, now = live_keys(), time.monotonic()
    cached = cache.get(key_hash)
    if cached is not None and now - cached[1] < current_app.config["API_KEY_CACHE_SECONDS"]:
        return cached[0]
    row = db.session.execute(sa.select(ApiKey.id, ApiKey.last_used_at).where(
        ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))).first()
    if row is None:
        cache.pop(key_hash, None)
        return None
    cache[key_hash] = (row.id, now)
    _touch(row.id, row.last_used_at)
    return row.id


def _touch(key_id, last_used_at):
    """Record that the key is in use, but write at most once a minute per key
    (and look at most once per API_KEY_CACHE_SECONDS)."""
    now = utcnow()
    if last_used_at is None or now - last_used_at >= LAST_USED_EVERY:
        db.session.execute(sa.update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
        db.session.commit()


def _rate_key() -> str:
    return f"api-key:{bearer_key_id()}"


# -- errors ----------------------------------------------------------------------------

def error(code: str, message: str | None = None, status: int | None = None):
    response = jsonify({"code": code, "message": message or MESSAGES.get(code) or API_MESSAGES[code]})
    response.status_code = status or STATUS.get(code, 400)
    if response.status_code == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


@bp.errorhandler(MessageError)
def _message_error(exc):
    response = error(exc.code, exc.message)
    if exc.code == "busy":
        response.headers["Retry-After"] = "1"
    return response


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(exc):
    limit = http_limiter(current_app).current_limit
    return rate_limited(limit.reset_at if limit is not None else time.time())


def rate_limited(reset_at: float):
    wait = max(1, int(reset_at - time.time()))
    response = error("rate_limited", MESSAGES["rate_limited"].format(wait=wait))
    response.headers["Retry-After"] = str(wait)
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc):
    return http_error(exc)


@bp.errorhandler(Exception)
def _unexpected(exc):
    db.session.rollback()
    log.exception("API request %s %s failed", request.method, request.path)
    return error("server_error")


def http_error(exc: HTTPException):
    """werkzeug's errors as the API's JSON, never an HTML page."""
    if exc.code == 413:
        return error("too_long", API_MESSAGES["too_large"].format(
            max_bytes=current_app.config["MAX_REQUEST_BYTES"]), 413)
    if exc.code == 404:
        return error("not_found", API_MESSAGES["no_such_path"], 404)
    if exc.code == 405:
        response = error("method_not_allowed", status=405)
        response.headers["Allow"] = ", ".join(getattr(exc, "valid_methods", None) or [])
        return response
    if exc.code == 401:
        return error("unauthorized")
    if exc.code is not None and exc.code < 500:
        return error("bad_request", status=exc.code)
    return error("server_error", status=exc.code or 500)


def _outside_blueprint_error(exc):
    """404 and 405 under /api/v1 match no view, so the blueprint's handlers do not run."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        return http_error(exc)
    return exc


# -- the endpoints ---------------------------------------------------------------------

@bp.before_request
def _authenticate():
    """401 for a missing or wrong key while the address is within
    API_AUTH_FAILURE_LIMIT; past it 429, for a right key too, so a guess is
    never told right or wrong."""
    if request.endpoint == "api.openapi_document":
        return None
    failures = AuthFailures(current_app)
    if bearer_key_id() is None:
        refused = failures.count()
        if refused is None:
            return error("unauthorized")
    else:
        refused = failures.over()
    return None if refused is None else rate_limited(refused)


class AuthFailures:
    """API_AUTH_FAILURE_LIMIT for this request's address, in the app's
    Flask-Limiter storage (``RATELIMIT_STORAGE_URI``), through ``limits``'
    strategy directly: Flask-Limiter's ``deduct_when`` tests before the view
    and counts after it, and under gevent parallel requests all pass the
    test in between."""

    SCOPE = "api-auth"

    def __init__(self, app):
        self.strategy = http_limiter(app).limiter
        self.items = app.extensions["chatbot.api_auth_limits"]
        self.address = get_remote_address()

    def over(self) -> float | None:
        """When the address may try again if it is over the limit now, else None."""
        for item in self.items:
            if not self.strategy.test(item, self.SCOPE, self.address):
                return self.strategy.get_window_stats(item, self.SCOPE, self.address).reset_time
        return None

    def count(self) -> float | None:
        """Count one refused key, checking in the same step (``hit``); like ``over``."""
        refused = None
        for item in self.items:  # every item counts, even past one that refuses
            if not self.strategy.hit(item, self.SCOPE, self.address) and refused is None:
                refused = self.strategy.get_window_stats(item, self.SCOPE, self.address).reset_time
        return refused


def json_body():
    """The request's JSON, whatever its Content-Type; ``bad_json`` if it is not JSON."""
    raw = request.get_data(cache=False)  # 413 past MAX_REQUEST_BYTES, before reading
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise MessageError("bad_json", API_MESSAGES["bad_json"]) from None


@bp.post("/messages")
def post_message():
    data = json_body()
    if not isinstance(data, dict):
        raise MessageError("bad_type")
    key_id = bearer_key_id()
    session_id = data.get("session")
    if session_id is None:
        session_id = f"api-{key_id}"
    elif not isinstance(session_id, str) or not SESSION.fullmatch(session_id):
        raise MessageError("bad_session", API_MESSAGES["bad_session"])
    reply = conversation.ask(data, session_id, CHANNEL_API, api_key_id=key_id)
    return jsonify({**reply, "session": session_id})


@bp.post("/messages/<int:row_id>/feedback")
def post_feedback(row_id):
    data = json_body()
    if not isinstance(data, dict) or "value" not in data:
        raise MessageError("bad_feedback")
    return jsonify(conversation.give_feedback(row_id, data["value"], CHANNEL_API, api_key_id=bearer_key_id()))


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document(current_app.config))


def init_app(app):
    """Register the API; after limits.init_app, whose limiter it uses."""
    app.extensions["chatbot.api_keys"] = {}
    limiter = http_limiter(app)
    # Per key, shared by both endpoints.  It replaces HTTP_LIMIT for the
    # whole blueprint (override_defaults) ...
    limiter.shared_limit(app.config["API_RATE_LIMIT"], scope="api-key", key_func=_rate_key,
                         exempt_when=lambda: bearer_key_id() is None, override_defaults=True)(bp)
    # ... but openapi.json needs no key: HTTP_LIMIT per address, as a page.
    if app.config["HTTP_LIMIT"]:
        limiter.limit(app.config["HTTP_LIMIT"], key_func=get_remote_address, override_defaults=True,
                      exempt_when=lambda: request.endpoint != "api.openapi_document")(bp)
    # Per address, counting only the requests that refused a key (_authenticate).
    app.extensions["chatbot.api_auth_limits"] = parse_many(app.config["API_AUTH_FAILURE_LIMIT"])
    csrf.exempt(bp)
    app.register_blueprint(bp)
    app.register_error_handler(404, _outside_blueprint_error)
    app.register_error_handler(405, _outside_blueprint_error)
