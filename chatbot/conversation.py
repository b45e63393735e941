"""One conversation path for every channel: the chat page and the widget
(Socket.IO, chat.py), the REST API and KakaoTalk all call these functions,
so the limits, the errors, the reviewed answers and the "잘 모르겠어요"
fallback are the same everywhere.

A channel turns its protocol into ``ask`` / ``give_feedback`` / ``history``
calls, and their results (an ``Exchange``) or their ``MessageError`` back into
its protocol.  ``MessageError.code`` is the same on every channel: the
Socket.IO ``error`` event's ``code``, the REST API's JSON ``code``.
"""
import re

import sqlalchemy as sa
from flask import current_app

from . import morph
from .batching import Busy
from .database import CHANNELS, FEEDBACK_LABELS, Exchange
from .extensions import db

MESSAGES = {
    "rate_limited": "메시지를 너무 빨리 보내고 있어요. {wait}초 뒤에 다시 보내 주세요.",
    "unknown_event": "알 수 없는 요청입니다.",
    "bad_packet": "요청을 읽을 수 없습니다.",
    "reserved_event": "알 수 없는 요청입니다.",
    "too_many_attachments": "요청을 읽을 수 없습니다.",
    "bad_type": '메시지는 {"text": "..."} 형식의 문자열이어야 합니다.',
    "bad_encoding": "메시지에 올바르지 않은 문자가 있습니다.",
    "control_characters": "메시지에 제어 문자가 있습니다.",
    "empty": "빈 메시지는 보낼 수 없습니다.",
    "too_long": "메시지가 너무 깁니다 (최대 {max_chars}자, 보낸 글자 {chars}자).",
    "bad_feedback": '평가는 {"id": 번호, "value": "up" 또는 "down"} 형식이어야 합니다.',
    "not_found": "이 대화에서 찾을 수 없는 답변입니다.",
    "server_error": "답변을 만들지 못했습니다. 잠시 후 다시 시도해 주세요.",
    "busy": "지금은 질문이 너무 많이 밀려 있어요. 잠시 후 다시 보내 주세요.",
}

HISTORY_LIMIT = 100  # exchanges sent back after a reload
MAX_ROW_ID = 2**63 - 1
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class MessageError(ValueError):
    """A request that cannot be answered; ``code`` is for clients, ``message`` for people."""

    def __init__(self, code, message=None):
        message = message or MESSAGES[code]
        super().__init__(message)
        self.code = code
        self.message = message


def validate_message(data, max_chars: int) -> str:
    """The message text from ``{"text": ...}`` or a bare string, stripped;
    or MessageError saying what is wrong."""
    text = data.get("text") if isinstance(data, dict) else data
    if not isinstance(text, str):
        raise MessageError("bad_type")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise MessageError("bad_encoding") from None
    if _CONTROL.search(text):
        raise MessageError("bad_encoding", MESSAGES["control_characters"])
    text = text.strip()
    if not morph.visible(text).strip():  # nothing, or only zero-width spaces and Hangul fillers
        raise MessageError("empty")
    if len(text) > max_chars:
        raise MessageError("too_long", MESSAGES["too_long"].format(max_chars=max_chars, chars=len(text)))
    return text


def validate_feedback_value(value):
    """"up", "down" or None (no opinion); anything else is MessageError."""
    if value is not None and (not isinstance(value, str) or value not in FEEDBACK_LABELS):
        raise MessageError("bad_feedback")
    return value


def validate_row_id(row_id) -> int:
    if isinstance(row_id, bool) or not isinstance(row_id, int) or not 0 < row_id <= MAX_ROW_ID:
        raise MessageError("bad_feedback")
    return row_id


def payload(row: Exchange) -> dict:
    """What every channel tells the asker about an exchange."""
    return {"id": row.id, "question": row.question, "answer": row.answer, "route": row.route,
            "model_version": row.model_version, "feedback": row.feedback}


def ask(data, session_id: str | None, channel: str, api_key_id: int | None = None) -> dict:
    """Answer a message, store the exchange (committed) and return its ``payload``.

    ``data`` is what the client sent: ``{"text": ...}`` or a string.  Raises
    MessageError for a bad message, or ``busy`` when too many questions are
    already waiting for the model.
    """
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    text = validate_message(data, current_app.config["MAX_MESSAGE_CHARS"])
    key = morph.question_key(text)
    try:
        answer = current_app.extensions["chatbot.responder"].answer(text, key)
    except Busy:
        raise MessageError("busy") from None
    row = Exchange(question=text, question_key=key, answer=answer.text, session_id=session_id,
                   model_version=answer.model_version, route=answer.route, confidence=answer.confidence,
                   channel=channel, api_key_id=api_key_id)
    db.session.add(row)
    db.session.flush()  # the id, without reading the row back after the commit
    reply = payload(row)
    db.session.commit()
    current_app.extensions["chatbot.grouper"].nudge()  # the review queue's groups by meaning
    return reply


def give_feedback(row_id, value, channel: str, **owner) -> dict:
    """Set 👍/👎 (or no opinion) on an exchange of ``channel`` that belongs to
    ``owner``: column=value pairs such as ``session_id=...`` or ``api_key_id=...``.

    Another channel's or another owner's exchange is ``not_found``, as a
    missing one is: session ids come from clients, so a KakaoTalk user's
    ``kakao-…`` id may also name a web or API session.
    """
    row_id, value = validate_row_id(row_id), validate_feedback_value(value)
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if not owner:
        raise ValueError("give_feedback needs an owner")
    owner["channel"] = channel
    row = db.session.get(Exchange, row_id)
    if row is None or any(owned is None or getattr(row, column) != owned for column, owned in owner.items()):
        raise MessageError("not_found")
    row.feedback = value
    db.session.commit()
    return {"id": row_id, "value": value}


def history(session_id: str, channel: str, limit: int = HISTORY_LIMIT) -> list[dict]:
    """A chat session's latest exchanges' payloads on one channel, oldest
    first (after a reload).  Session ids come from clients, so an API caller
    who names a browser's session never shows up in that browser's history."""
    rows = db.session.execute(
        sa.select(Exchange).where(Exchange.session_id == session_id, Exchange.channel == channel)
        .order_by(Exchange.id.desc()).limit(limit)
    ).scalars().all()
    return [payload(row) for row in reversed(rows)]
