"""Database tables: every chat exchange, and the reviewers who correct them."""
import importlib
import secrets
from datetime import datetime, timezone

import sqlalchemy as sa
from flask_login import UserMixin
from sqlalchemy import event
from sqlalchemy.orm import validates
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

UNREVIEWED = "unreviewed"
REVIEWED = "reviewed"
NEEDS_DELETION = "needs_deletion"
STATUS_LABELS = {UNREVIEWED: "미검토", REVIEWED: "검토 완료", NEEDS_DELETION: "삭제 필요"}

ROUTE_MODEL = "model"      # written by the seq2seq model
ROUTE_KNOWN = "known"      # a training pair's answer, chosen by the model (chatbot/retrieval.py)
ROUTE_MEMORY = "memory"    # a reviewed answer to the same or a similar question (chatbot/corrections.py)
ROUTE_FALLBACK = "fallback"  # no model loaded yet
ROUTE_IMPORT = "import"    # a pair imported from CSV, never asked in a chat
ROUTE_UNSURE = "unsure"    # the model's confidence was below its threshold: "잘 모르겠어요"
ROUTES = (ROUTE_MODEL, ROUTE_MEMORY, ROUTE_FALLBACK, ROUTE_IMPORT, ROUTE_KNOWN, ROUTE_UNSURE)
# The admin's words for them (review list, export form).
ROUTE_LABELS = {
    ROUTE_MODEL: "모델이 작성",
    ROUTE_KNOWN: "학습 데이터 답변",
    ROUTE_MEMORY: "검토된 답변",
    ROUTE_FALLBACK: "기본 응답",
    ROUTE_IMPORT: "가져온 쌍",
    ROUTE_UNSURE: "모른다고 답함",
}

CHANNEL_WEB = "web"        # the chat page (chatbot/chat.py)
CHANNEL_WIDGET = "widget"  # the chat widget on another web site (/embed)
CHANNEL_API = "api"        # the REST API, with a key (ApiKey)
CHANNEL_KAKAO = "kakao"    # a KakaoTalk channel, through a Kakao i Open Builder skill
CHANNELS = (CHANNEL_WEB, CHANNEL_WIDGET, CHANNEL_API, CHANNEL_KAKAO)
CHANNEL_LABELS = {
    CHANNEL_WEB: "채팅 페이지",
    CHANNEL_WIDGET: "위젯",
    CHANNEL_API: "REST API",
    CHANNEL_KAKAO: "카카오톡",
}

FEEDBACK_UP = "up"      # 👍 from the person who asked
FEEDBACK_DOWN = "down"  # 👎: the exchange goes first in the review list
FEEDBACK_LABELS = {FEEDBACK_UP: "👍", FEEDBACK_DOWN: "👎"}


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


QUESTION_KEY_LENGTH = 1000


def insert_new(connection, table, values) -> None:
    """Insert the rows ``values`` into ``table``, keeping the row of a key
    another process stored first (no error): INSERT ... ON CONFLICT DO
    NOTHING on SQLite and PostgreSQL, a savepoint per row elsewhere."""
    if not values:
        return
    if connection.dialect.name in ("sqlite", "postgresql"):
        dialect = importlib.import_module(f"sqlalchemy.dialects.{connection.dialect.name}")
        connection.execute(dialect.insert(table).on_conflict_do_nothing(), values)
        return
    for row in values:
        try:
            with connection.begin_nested():
                connection.execute(table.insert().values(**row))
        except sa.exc.IntegrityError:
            pass


def stored_key(key: str) -> str:
    """A question key as the database holds it: both storing and looking up
    go through here, so a long question finds its own reviewed answer."""
    return key[:QUESTION_KEY_LENGTH]


# A reviewed exchange whose answer had to be changed (the correction rate);
# chatbot/analytics.py queries it with these words, so the partial index
# ix_exchange_corrected is used.
CORRECTED_SQL = "status = 'reviewed' AND corrected_answer IS NOT NULL AND corrected_answer <> answer"
# A 👎 or no answer (the fallback, "잘 모르겠어요"): with the corrected ones, the
# exchanges that went wrong (analytics.top_groups, partial index ix_exchange_wrong).
WRONG_SQL = "feedback = 'down' OR route IN ('fallback', 'unsure')"
CORRECTED_COLUMNS = ("status", "question_key", "created_at", "feedback", "route")
WRONG_COLUMNS = ("question_key", "created_at", "feedback", "route")
# The review list's order (review_queue_order), in the words of the
# expression index ix_exchange_queue_rank: a database matches an indexed
# expression only to the very same one, with its values as literals.
QUEUE_RANK_SQL = ("CASE WHEN status = 'unreviewed' AND feedback = 'down' THEN 0 "
                  "WHEN status = 'unreviewed' AND route = 'unsure' THEN 1 "
                  "WHEN status = 'unreviewed' THEN 2 ELSE 3 END")


def compared_objects(obj, name, type_, reflected, compare_to):
    """Alembic's include_object for comparing the tables with the database
    (migrations/env.py, the migration tests): leaves out, on both sides, the
    indexes marked ``info["rewritten"]``: an expression each database stores
    in its own words (PostgreSQL adds casts and line breaks), so its text
    never compares equal; the migration tests check those indexes'
    definitions themselves."""
    return type_ != "index" or name not in _rewritten_indexes()


def _rewritten_indexes() -> set[str]:
    return {index.name for index in Exchange.__table__.indexes if index.info.get("rewritten")}


class Exchange(db.Model):
    """One question and the answer the bot gave, with its review state."""

    id = db.Column(db.Integer, primary_key=True)
    question = db.Column(db.Text, nullable=False)
    # question_key ignores spacing, punctuation and particles (morph.question_key),
    # so a reviewed answer is found again for the same question asked differently
    # (chatbot/corrections.py, which also matches similar keys).
    # Stored and looked up cut to QUESTION_KEY_LENGTH (stored_key), whatever
    # MAX_MESSAGE_CHARS allows.
    question_key = db.Column(db.String(QUESTION_KEY_LENGTH), nullable=False)
    answer = db.Column(db.Text, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    session_id = db.Column(db.String(64), nullable=True, index=True)
    model_version = db.Column(db.String(64), nullable=True)
    route = db.Column(db.Enum(*ROUTES, name="exchange_route", native_enum=False, create_constraint=True),
                      nullable=False, default=ROUTE_MODEL)
    # How sure the model was of its reply, 0..1 (bot.Chatbot); None where no
    # model answered (a reviewed answer, an import, no model loaded).
    confidence = db.Column(db.Float, nullable=True, index=True)
    status = db.Column(db.Enum(*STATUS_LABELS, name="exchange_status", native_enum=False, create_constraint=True),
                       nullable=False, default=UNREVIEWED, index=True)
    corrected_answer = db.Column(db.Text, nullable=True)
    reviewer = db.Column(db.String(80), nullable=True)
    reviewed_at = db.Column(db.DateTime, nullable=True)
    # The asker's 👍/👎 on the reply (None: no opinion given).
    feedback = db.Column(db.Enum(*FEEDBACK_LABELS, name="exchange_feedback", native_enum=False, create_constraint=True),
                         nullable=True)
    # Where the question came from (chatbot/conversation.py); rows from
    # before channels were recorded came from the chat page.
    channel = db.Column(db.Enum(*CHANNELS, name="exchange_channel", native_enum=False, create_constraint=True),
                        nullable=False, default=CHANNEL_WEB, server_default=CHANNEL_WEB, index=True)
    # The REST API key that asked (channel "api"); its feedback may touch only these rows.
    api_key_id = db.Column(db.Integer, db.ForeignKey("api_key.id"), nullable=True, index=True)

    @property
    def final_answer(self) -> str:
        """The answer to learn from: the correction if there is one."""
        return self.corrected_answer or self.answer

    def mark(self, status, reviewer_name, action="status", old_status=None):
        """Set the review status, recording who did it and when (and in the audit).

        ``old_status``: the status before, when the row was already changed (a form).
        """
        old = old_status or self.status
        self.status = status
        self.reviewer = reviewer_name
        self.reviewed_at = utcnow()
        audit(self, action, reviewer_name, old_status=old)

    __table_args__ = (
        # The statistics read the few corrected rows by a partial index (their
        # answer and correction would otherwise mean reading every row of the
        # range: a query that says the index's WHERE needs no row to check it,
        # and SQLite reads a row only for a column the index lacks), by
        # question group like the next one, so they are counted without a sort ...
        db.Index("ix_exchange_corrected", *CORRECTED_COLUMNS,
                 sqlite_where=sa.text(CORRECTED_SQL), postgresql_where=sa.text(CORRECTED_SQL)),
        # ... and the 👎 and unanswered ones, by question group (the groups
        # that went wrong most often, counted in this order without sorting).
        db.Index("ix_exchange_wrong", *WRONG_COLUMNS,
                 sqlite_where=sa.text(WRONG_SQL), postgresql_where=sa.text(WRONG_SQL)),
        # The review list, unsorted, a page at a time without sorting every row.
        db.Index("ix_exchange_queue_rank", sa.text(f"({QUEUE_RANK_SQL})"), sa.text("created_at DESC"),
                 sa.text("id DESC"), info={"rewritten": True}),
        # A key's rows: a queue group's newest (queue_admin.group_rows), a
        # statistics group's question; every lookup by key.
        db.Index("ix_exchange_key_status_created", "question_key", "status", "created_at"),
    )

    @validates("question_key")
    def _cut_question_key(self, _name, key):
        return stored_key(key)

    def __repr__(self):
        return f"<Exchange {self.id} {self.status}>"


# What exchange_daily counts per row (its columns), each as the condition an
# exchange meets to count there ({row}: NEW, OLD or the table): the
# statistics page's numbers (chatbot/analytics.py) and the admin home page's
# (chatbot/review.py).  The migration that made the table keeps its own copy.
DAILY_COUNTS = {
    "exchanges": "1 = 1",
    "model": "{row}.route = 'model'",
    "known": "{row}.route = 'known'",
    "memory": "{row}.route = 'memory'",
    "unsure": "{row}.route IN ('fallback', 'unsure')",
    "up": "{row}.feedback = 'up'",
    "down": "{row}.feedback = 'down'",
    "unreviewed": "{row}.status = 'unreviewed'",
    "reviewed": "{row}.status = 'reviewed'",
    "needs_deletion": "{row}.status = 'needs_deletion'",
    "corrected": "{row}.status = 'reviewed' AND {row}.corrected_answer IS NOT NULL "
                 "AND {row}.corrected_answer <> {row}.answer",
    "waiting_down": "{row}.status = 'unreviewed' AND {row}.feedback = 'down'",
    "waiting_unsure": "{row}.status = 'unreviewed' AND {row}.route = 'unsure'",
}


class ExchangeDaily(db.Model):
    """How many exchanges there are per UTC day (YYYY-MM-DD), channel and
    model version, and how many of them meet each of DAILY_COUNTS: the
    statistics page (chatbot/analytics.py) and the admin home page add these
    rows up, a few a day, instead of counting the exchanges.

    Written by the database alone: triggers on ``exchange`` (migration
    e4c7b2f9a1d6) count each row in and out, in the same transaction as its
    insert, update or delete, whatever code makes it.  ``model_version`` is
    '' for none (a key column cannot be NULL); ``imported`` is 1 for the
    pairs imported from CSV (route 'import'), which the statistics leave out."""

    __tablename__ = "exchange_daily"
    day = db.Column(db.String(10), nullable=False)
    channel = db.Column(db.String(20), nullable=False)
    model_version = db.Column(db.String(64), nullable=False)
    imported = db.Column(db.Integer, nullable=False)
    exchanges = db.Column(db.Integer, nullable=False)
    model = db.Column(db.Integer, nullable=False)
    known = db.Column(db.Integer, nullable=False)
    memory = db.Column(db.Integer, nullable=False)
    unsure = db.Column(db.Integer, nullable=False)
    up = db.Column(db.Integer, nullable=False)
    down = db.Column(db.Integer, nullable=False)
    unreviewed = db.Column(db.Integer, nullable=False)
    reviewed = db.Column(db.Integer, nullable=False)
    needs_deletion = db.Column(db.Integer, nullable=False)
    corrected = db.Column(db.Integer, nullable=False)
    waiting_down = db.Column(db.Integer, nullable=False)
    waiting_unsure = db.Column(db.Integer, nullable=False)

    __table_args__ = (
        # A range of days is read in order.
        sa.PrimaryKeyConstraint("day", "channel", "model_version", "imported", name="pk_exchange_daily"),
        {"sqlite_with_rowid": False},
    )


class QuestionMeaning(db.Model):
    """A question's meaning vector (chatbot/meaning.py), kept in the
    database so that a restarted server, or another process, does not embed
    it again (chatbot/meaning_store.py).

    ``question_hash`` is the SHA-256 of the normalised question
    (meaning.normalise): a key of one length on every database."""

    __tablename__ = "question_meaning"
    encoder = db.Column(db.String(40), primary_key=True)
    question_hash = db.Column(db.String(64), primary_key=True)
    vector = db.Column(db.LargeBinary, nullable=False)  # meaning.DIM float16, little-endian
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)


class QuestionGroup(db.Model):
    """A question key's group in the review queue (chatbot/grouping.py):
    questions alike in meaning share a ``group_key``, the key of the first
    of them (the group's leader, whose own ``group_key`` is itself).

    ``vector`` is the key's meaning vector (from the first question asked
    with it), so that another process can take a leader as it is.  ``id``
    rises with every row, so a process reads only the leaders added since
    it last looked."""

    __tablename__ = "question_group"
    id = db.Column(db.Integer, primary_key=True)
    question_key = db.Column(db.String(QUESTION_KEY_LENGTH), nullable=False, unique=True)
    group_key = db.Column(db.String(QUESTION_KEY_LENGTH), nullable=False, index=True)
    encoder = db.Column(db.String(40), nullable=False)
    vector = db.Column(db.LargeBinary, nullable=False)  # meaning.DIM float16, little-endian
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)


class KakaoLateAnswer(db.Model):
    """A KakaoTalk answer that was ready only after Kakao stopped waiting
    (chatbot/kakao.py): the exchange to send with that user's next message,
    the latest per chat session, until ``delivered_at``.  In the database,
    so a restart or another server process still delivers it, once."""

    __tablename__ = "kakao_late_answer"
    session_id = db.Column(db.String(64), primary_key=True)
    exchange_id = db.Column(db.Integer, nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    delivered_at = db.Column(db.DateTime, nullable=True)


AUDIT_ACTIONS = {"status": "상태 변경", "edit": "답변 수정", "group": "묶음 수정", "split": "묶음에서 분리",
                 "purge": "영구 삭제", "key_create": "API 키 만듦", "key_revoke": "API 키 폐기"}


class ReviewAudit(db.Model):
    """Who reviewed what, and when: one row per change a reviewer made.

    exchange_id is a plain number, not a foreign key, so the history of a
    purged exchange is kept.
    """

    __tablename__ = "review_audit"
    id = db.Column(db.Integer, primary_key=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    reviewer = db.Column(db.String(80), nullable=False, index=True)
    action = db.Column(db.String(20), nullable=False)
    exchange_id = db.Column(db.Integer, nullable=True, index=True)
    question = db.Column(db.Text, nullable=True)
    old_status = db.Column(db.String(20), nullable=True)
    new_status = db.Column(db.String(20), nullable=True)
    corrected_answer = db.Column(db.Text, nullable=True)


def audit(row, action, reviewer_name, old_status=None):
    """Add an audit row for a change to ``row`` (committed with the change)."""
    db.session.add(ReviewAudit(reviewer=reviewer_name or "-", action=action, exchange_id=row.id,
                               question=row.question, old_status=old_status, new_status=row.status,
                               corrected_answer=row.corrected_answer))


class ApiKey(db.Model):
    """A key for the REST API, made and revoked by reviewers.

    The key is shown once, when it is made; only its SHA-256 is stored (a
    random key needs no slow hash) and looked up.  ``prefix`` is its first
    characters, so people can tell their keys apart.
    """

    __tablename__ = "api_key"
    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(80), nullable=False)
    prefix = db.Column(db.String(16), nullable=False)
    key_hash = db.Column(db.String(64), nullable=False, unique=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    created_by = db.Column(db.String(80), nullable=True)
    revoked_at = db.Column(db.DateTime, nullable=True)
    last_used_at = db.Column(db.DateTime, nullable=True)

    def __repr__(self):
        return f"<ApiKey {self.id} {self.prefix}>"


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


class Reviewer(UserMixin, db.Model):
    """A person allowed into /admin. Passwords are stored only as hashes.

    A login holds the reviewer's ``session_token``, not the id (Flask-Login's
    "alternative tokens": ``get_id``, and chatbot/auth.py's user loader looks
    it up): a new token ends every session of that reviewer at once, on
    logout and on a password change, and a removed reviewer's token, or a
    new reviewer given the same id, matches no old cookie.
    """

    id = db.Column(db.Integer, primary_key=True)
    username = db.Column(db.String(80), unique=True, nullable=False)
    password_hash = db.Column(db.String(256), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    session_token = db.Column(db.String(64), nullable=False, unique=True, index=True, default=new_session_token)

    def get_id(self):
        return self.session_token

    def end_sessions(self):
        """Log this reviewer out everywhere (committed with the caller's change)."""
        self.session_token = new_session_token()

    def set_password(self, password: str):
        self.password_hash = generate_password_hash(password)
        self.end_sessions()

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def __repr__(self):
        return f"<Reviewer {self.username}>"


def review_queue_order():
    """The review list's order: 👎 not yet reviewed first, then the questions
    the bot was unsure of (what it most needs to learn), then the rest not yet
    reviewed, then everything else; newest first within each group.

    A 👎 leaves the top once reviewed, so handled rows never bury new ones.
    In the words of ix_exchange_queue_rank, so a page of the list reads the
    index in order instead of sorting every exchange.
    """
    return [sa.text(QUEUE_RANK_SQL), Exchange.created_at.desc(), Exchange.id.desc()]


def _tune_sqlite(dbapi_connection, _record):
    """WAL lets readers and the writer work at once, and synchronous=NORMAL
    syncs the log at checkpoints instead of on every commit: a power cut can
    lose the last few exchanges, never corrupt the file.  busy_timeout makes
    concurrent writers wait their turn instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def init_app(app):
    """Per-connection settings for SQLite; other databases need none."""
    with app.app_context():
        if db.engine.dialect.name == "sqlite":
            event.listen(db.engine, "connect", _tune_sqlite)
