"""The review queue's groups by meaning: 배고파, 밥 먹고 싶어 and 너무
배고프다 are one group and one correction, not three.

Leader clustering, incremental: a new unreviewed question key joins the
group of the nearest leader (a group's first key) whose meaning vector has a
cosine of QUEUE_GROUP_SIMILARITY or more with its own, or leads a new group.
A key's group is decided once, when it first comes, and kept in the table
question_group; the queue (chatbot/queue_admin.py) counts its window of rows
by key and adds the keys up by group, so a page never clusters anything.
The exact key stays the finest level inside a group.  A reviewer's
``split`` makes a key lead a group of its own.

The work: ``Grouper.nudge`` after each stored exchange and on each queue
page.  One job at a time per process, then a pause of PAUSE_SECONDS, on the
responder's background thread (the lowest CPU priority: chats and pages
first).  A job reads the unreviewed rows newer than the last it read (at
first: the queue's window), BATCH at a time, embeds the first question of
each key not grouped yet (a chat's question is in the encoder's cache
already: no second embedding), groups them and stores the rows.

Several processes: each groups the rows it reads; the unique key keeps one
row per key (the first process's), and before each batch a process reads
the leaders the others added.

Bounded: QUEUE_GROUP_ROWS rows (past it the oldest go; their keys then
count as groups of their own), and the newest QUEUE_GROUP_LEADERS leaders
in memory (an older group takes no new questions).

Without the encoder (MEANING_ENCODER=off, or it could not load) or with
QUEUE_MEANING_GROUPS off, nothing is grouped and the queue groups by exact
key.
"""
import logging
import threading
import time

import sqlalchemy as sa

from . import meaning, meaning_store
from .batching import BACKGROUND_STEP, wait_for_pause
from .config import gevent_patched
from .corrections import has_word
from .database import UNREVIEWED, Exchange, QuestionGroup, ReviewAudit, insert_new, utcnow
from .extensions import db

log = logging.getLogger(__name__)

TABLE = QuestionGroup.__table__
BATCH = 256  # unreviewed rows read (and at most as many keys embedded) in one step
CHUNK = 500  # keys per SELECT ... IN (...)
PAUSE_SECONDS = 1.0  # between jobs: a flood of chats makes one job a second, not one each


def window_start(window: int):
    """The id of the oldest of the newest ``window`` unreviewed rows, or 0
    (an SQL expression: a read of ``window`` ids on ix_exchange_status)."""
    oldest = (sa.select(Exchange.id).where(Exchange.status == UNREVIEWED).order_by(Exchange.id.desc())
              .offset(window - 1).limit(1).scalar_subquery())
    return sa.func.coalesce(oldest, 0)


def members(group_key: str):
    """The question keys of group ``group_key`` (a subquery): its own, and
    those that joined it."""
    return sa.union(sa.select(sa.literal(group_key)),
                    sa.select(TABLE.c.question_key).where(TABLE.c.group_key == group_key))


def in_group(group_key: str):
    """The exchanges of group ``group_key``; the empty key is no group."""
    return sa.and_(Exchange.question_key.in_(members(group_key)), Exchange.question_key != "")


def split(member: str, group_key: str, reviewer_name: str):
    """Take the key ``member`` out of group ``group_key``: it leads a group
    of its own.  When it led the group, the oldest of the others leads the
    rest.  Returns the key the rest of the group now has, or None when
    ``member`` was not in the group with others.  Written to the audit (the
    newest unreviewed exchange of ``member`` names it); commits."""
    row = db.session.scalar(sa.select(QuestionGroup).where(QuestionGroup.question_key == member))
    if row is None or row.group_key != group_key:
        return None
    if member == group_key:
        others = db.session.scalars(sa.select(QuestionGroup).where(
            QuestionGroup.group_key == group_key, QuestionGroup.question_key != member)
            .order_by(QuestionGroup.id)).all()
        if not others:
            return None
        rest = others[0].question_key
        for other in others:
            other.group_key = rest
        _renew(others[0])
    else:
        rest = group_key
        row.group_key = member
        _renew(row)
    newest = db.session.execute(sa.select(Exchange.id, Exchange.question).where(
        Exchange.question_key == member, Exchange.status == UNREVIEWED)
        .order_by(Exchange.created_at.desc(), Exchange.id.desc()).limit(1)).first()
    db.session.add(ReviewAudit(reviewer=reviewer_name or "-", action="split",
                               exchange_id=newest.id if newest else None,
                               question=newest.question if newest else member))
    db.session.commit()
    return rest


def _renew(row):
    """Store ``row`` again under a new id: a key that now leads a group is
    then read as a leader by the processes that have read its old row."""
    copy = {name: getattr(row, name) for name in ("question_key", "group_key", "encoder", "vector", "created_at")}
    db.session.delete(row)
    db.session.flush()
    db.session.add(QuestionGroup(**copy))


class Leaders:
    """The leaders' keys and unit vectors in the order they were stored,
    at most ``limit`` (the newest)."""

    def __init__(self, limit: int):
        import numpy as np

        self.limit = max(1, limit)
        self.keys: list[str] = []
        self.vectors = np.zeros((0, meaning.DIM), dtype=np.float32)

    def add(self, keys, vectors):
        import numpy as np

        self.keys = (self.keys + list(keys))[-self.limit:]
        self.vectors = np.vstack([self.vectors, np.asarray(vectors, dtype=np.float32)])[-self.limit:]

    def assign(self, keys, vectors, cut: float) -> list[str]:
        """Each key's group, in order: the nearest leader's at ``cut`` or
        more, where a key of this call that leads a new group counts as a
        leader for the ones after it (it joins ``keys`` once it is stored)."""
        import numpy as np

        near = vectors @ self.vectors.T
        groups, new_keys, new_vectors = [], [], []
        for i, key in enumerate(keys):
            best, score = None, cut
            if near.shape[1]:
                j = int(near[i].argmax())
                if near[i, j] >= score:
                    best, score = self.keys[j], float(near[i, j])
            if new_vectors:
                mine = np.asarray(new_vectors) @ vectors[i]
                j = int(mine.argmax())
                if mine[j] >= score:
                    best = new_keys[j]
            if best is None:
                best = key
                new_keys.append(key)
                new_vectors.append(vectors[i])
            groups.append(best)
        return groups


class Grouper:
    """One app's grouping of the queue's questions (the module docstring).
    ``run_in_background(fn)`` calls fn on the lowest-priority thread
    (ReplyBatcher.run_in_background)."""

    def __init__(self, app, run_in_background):
        self.app = app
        self._run = run_in_background
        config = app.config
        self.enabled = bool(config["QUEUE_MEANING_GROUPS"]) and config["MEANING_ENCODER"] != meaning.OFF
        self.similarity = config["QUEUE_GROUP_SIMILARITY"]
        self.max_rows = config["QUEUE_GROUP_ROWS"]
        self.window = config["ADMIN_QUEUE_ROWS"]
        self.leaders = Leaders(config["QUEUE_GROUP_LEADERS"])
        self._seen = None  # the greatest exchange id read; None: none yet
        self._read_up_to = 0  # the greatest question_group id read
        self._pending = False
        self._worker = None
        self._running = threading.Lock()
        # The server's event loop (gevent), where the worker greenlet must
        # start: a nudge from a heavy-work thread (the queue page) is passed there.
        self._hub = None
        if gevent_patched():
            import gevent

            self._hub = gevent.get_hub()

    def nudge(self):
        """Group what came since the last job, soon, in the background."""
        if not self.enabled:
            return
        if self._hub is not None and not meaning.on_event_loop():
            import gevent

            # A loop callback must not block (a thread's start waits): a greenlet nudges.
            self._hub.loop.run_callback_threadsafe(gevent.spawn, self.nudge)
            return
        self._pending = True
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True, name="queue-grouping")
            self._worker.start()

    def _work(self):
        while self._pending:
            self._pending = False
            with self._running:
                try:
                    while self._run(self.group_new) >= BATCH:
                        pass
                except Exception as exc:  # the next nudge tries again
                    log.warning("could not group the review queue's questions: %s", exc)
            time.sleep(PAUSE_SECONDS)
        self._worker = None
        if self._pending:  # nudged as it stopped
            self.nudge()

    def catch_up(self) -> int:
        """Group every unreviewed row waiting now, on this thread (tests,
        benchmarks); returns the rows read."""
        read = 0
        with self._running:
            while True:
                step = self.group_new()
                read += step
                if step < BATCH:
                    return read

    def group_new(self) -> int:
        """One step: group the keys of the next BATCH unreviewed rows not
        read yet; returns how many rows it read (0: none left, or no encoder)."""
        if not self.enabled:
            return 0
        encoder = meaning.encoder()
        if not encoder.available():
            return 0
        with self.app.app_context(), db.engine.connect() as connection:
            self._read_leaders(connection, encoder.name)
            if self._seen is None:
                self._seen = connection.scalar(sa.select(window_start(self.window))) - 1
            rows = connection.execute(
                sa.select(Exchange.id, Exchange.question_key, Exchange.question)
                .where(Exchange.status == UNREVIEWED, Exchange.id > self._seen, Exchange.question_key != "")
                .order_by(Exchange.id).limit(BATCH)).all()
            first = {}  # key -> the first question asked with it
            for _, key, question in rows:
                if has_word(key):
                    first.setdefault(key, question)
            keys = list(first)
            for start in range(0, len(keys), CHUNK):
                for (known,) in connection.execute(sa.select(TABLE.c.question_key).where(
                        TABLE.c.question_key.in_(keys[start:start + CHUNK]))):
                    first.pop(known, None)
            if first:
                import numpy as np

                # No read transaction stays open while the questions are embedded.
                connection.rollback()
                keys = list(first)
                vectors = np.concatenate([self._embed(encoder, [first[key] for key in keys[i:i + BACKGROUND_STEP]])
                                          for i in range(0, len(keys), BACKGROUND_STEP)])
                groups = self.leaders.assign(keys, vectors, self.similarity)
                now = utcnow()
                insert_new(connection, TABLE, [
                    {"question_key": key, "group_key": group, "encoder": encoder.name,
                     "vector": meaning_store.to_blob(vector), "created_at": now}
                    for key, group, vector in zip(keys, groups, vectors)])
                self._prune(connection)
                connection.commit()
                self._read_leaders(connection, encoder.name)  # the new ones, as stored
            if rows:
                self._seen = rows[-1].id
            return len(rows)

    @staticmethod
    def _embed(encoder, questions):
        """A few questions' vectors, once the chats and pages pause (the
        background's turn: batching.wait_for_pause) if the encoder has to
        work for them; a chat's question is in its cache already."""
        if not encoder.all_cached(questions):
            wait_for_pause()
        return encoder.embed(questions)

    def _read_leaders(self, connection, encoder_name):
        """Add the leaders stored since the last read (by this process or
        another), in the order they were stored: the database decides, so a
        key another process grouped first is led as that process stored it."""
        import numpy as np

        # The newest ones only: a restarted process does not read every
        # leader the table holds (QUEUE_GROUP_ROWS) to keep QUEUE_GROUP_LEADERS.
        found = connection.execute(
            sa.select(TABLE.c.id, TABLE.c.question_key, TABLE.c.vector)
            .where(TABLE.c.id > self._read_up_to, TABLE.c.encoder == encoder_name,
                   TABLE.c.group_key == TABLE.c.question_key)
            .order_by(TABLE.c.id.desc()).limit(self.leaders.limit)).all()[::-1]
        whole = [(key, vector) for key, vector in ((key, meaning_store.from_blob(blob)) for _, key, blob in found)
                 if vector is not None]
        if whole:
            self.leaders.add([key for key, _ in whole], np.stack([vector for _, vector in whole]))
        self._read_up_to = max([self._read_up_to] + [row.id for row in found])

    def _prune(self, connection):
        """Drop the oldest rows past QUEUE_GROUP_ROWS."""
        excess = connection.scalar(sa.select(sa.func.count()).select_from(TABLE)) - self.max_rows
        if excess > 0:
            last = connection.scalar(sa.select(TABLE.c.id).order_by(TABLE.c.id).offset(excess - 1).limit(1))
            connection.execute(TABLE.delete().where(TABLE.c.id <= last))


def init_app(app):
    """The app's Grouper (app.extensions["chatbot.grouper"]), after the responder."""
    responder = app.extensions["chatbot.responder"]
    app.extensions["chatbot.grouper"] = Grouper(app, responder.run_in_background)


def grouper():
    from flask import current_app

    return current_app.extensions["chatbot.grouper"]
