"""Reviewers' corrections, used for differently worded questions at once.

A reviewed exchange (status REVIEWED: marked by a reviewer, or an imported
pair) answers its own question_key exactly, and any question whose
morphemes are alike enough: TF-IDF cosine (retrieval.AnswerIndex) of at
least CORRECTION_MIN_SIMILARITY.  This bridges the time until the next
retrain teaches the model the correction.

The terms are the question_key's morphemes (morph.question_key: particles
and punctuation left out, lower case), the ones the exact match already
uses.  With all morphemes, 서울에는 비가 와요? would be closer to a
corrected 춘천에는 비가 와요? than 오늘 춘천에 비 와요? is: the particles
and the ? outweigh the place.

Freshness.  Each server process keeps its own index and rebuilds it (on a
model thread: ``run``, reading the rows too, so that a million reviewed rows
never hold up the event loop) when
- this process committed a change to a reviewed row (``_note_change`` /
  ``_nudge``, SQLAlchemy session hooks): the next message sees it;
- the database's ``signature`` changed, checked at most every
  CORRECTION_REFRESH_SECONDS: another process's (or the CLI's) change.
A change of this process's own (or no index yet) is rebuilt before the
lookup that finds it due; another process's, in the background, while the
chats answer from the index there is.
"""
import itertools
import threading
import time

import sqlalchemy as sa
from flask import current_app, has_app_context
from sqlalchemy import event

from . import morph
from .database import REVIEWED, Exchange, ReviewAudit, stored_key
from .extensions import db

# A change to any of these on an Exchange can change what the index holds.
_INDEXED_FIELDS = ("status", "question_key", "answer", "corrected_answer", "reviewed_at")
_CHANGED = "chatbot.corrections.changed"  # a session.info flag, set by a flush, read at commit


def signature(connection):
    """What changes whenever the reviewed answers change, cheaply.

    New reviewed rows (imports) change the count and the newest id; every
    reviewer's change (mark, edit, group, purge) writes a ReviewAudit row.
    """
    count, newest = connection.execute(
        sa.select(sa.func.count(), sa.func.max(Exchange.id)).where(Exchange.status == REVIEWED)).one()
    return count, newest, connection.scalar(sa.select(sa.func.max(ReviewAudit.id)))


def reviewed_rows(connection):
    """(question_key, final answer) of every reviewed row, oldest review first
    (never-stamped rows before all), so the newest one per key is last."""
    rows = connection.execute(
        sa.select(Exchange.question_key, Exchange.answer, Exchange.corrected_answer)
        .where(Exchange.status == REVIEWED)
        .order_by(Exchange.reviewed_at.asc().nulls_first(), Exchange.id.asc())).all()
    return [(key, corrected or answer) for key, answer, corrected in rows]


class _Built:
    """One build: the newest answer per question key, and their TF-IDF index."""

    def __init__(self, rows):
        # Later rows (newer reviews) overwrite earlier ones.  The empty key
        # (nothing visible, or a row stored before morph.question_key kept
        # symbols) would stand for unrelated messages: it answers nothing.
        self.by_key = {key: answer for key, answer in rows if key}
        keys = list(self.by_key)
        self.index = None
        if keys:
            # Imported only here: retrieval needs NumPy (about 15 MB), which
            # the app's command-line processes (flask retrain's runner,
            # import-pairs, db upgrade) have no use for.
            from .retrieval import AnswerIndex

            self.index = AnswerIndex([key.split() for key in keys], [self.by_key[k] for k in keys])

    def most_similar(self, key, min_similarity):
        """(answer, cosine) of the reviewed question most like ``key``, if it reaches min_similarity."""
        terms = key.split()
        if self.index is None or not terms:
            return None
        similarities = self.index.similarities([terms])[0]
        best = int(similarities.argmax())
        similarity = float(similarities[best])
        return (self.index.answers[best], similarity) if similarity >= min_similarity else None


class Corrections:
    """The reviewed answers of one app, for ``Responder.answer``.

    ``run(fn, *args)`` calls fn on a model thread (ReplyBatcher.run): building
    and searching the index is CPU work that must not hold up the gevent hub.
    """

    def __init__(self, run, min_similarity, refresh_seconds):
        self._run = run
        self.min_similarity = min_similarity
        self.refresh_seconds = refresh_seconds
        self._built = _Built([])
        self._signature = None
        self._checked = float("-inf")  # time.monotonic() of the last signature check
        self._changed = True  # nothing built yet
        self._lock = threading.Lock()

    def changed(self):
        """This process committed a change: rebuild before the next lookup."""
        self._changed = True

    def lookup(self, question, key=None, min_similarity=None):
        """(answer, similarity) for ``question``, or None.

        ``key`` is its morph.question_key if known.  The same key is certain
        (1.0); else the most similar reviewed question, at ``min_similarity``
        (default: this index's) or more.
        """
        key = stored_key(key if key is not None else morph.question_key(question))
        if not key:  # nothing to match on (morph.question_key)
            return None
        built = self._current()
        answer = built.by_key.get(key)
        if answer is not None:
            return answer, 1.0
        if built.index is None:
            return None
        return self._run(built.most_similar, key, self.min_similarity if min_similarity is None else min_similarity)

    def _due(self):
        return self._changed or time.monotonic() - self._checked >= self.refresh_seconds

    def _current(self):
        wait = self._changed or self._signature is None
        if self._due() and self._lock.acquire(blocking=wait):
            app = current_app._get_current_object()
            if wait:
                self._refresh_and_release(app)
            else:
                threading.Thread(target=self._refresh_and_release, args=(app,), daemon=True,
                                 name="corrections-refresh").start()
        return self._built

    def _refresh_and_release(self, app):
        try:
            if self._due():
                self._refresh(app)
        finally:
            self._lock.release()

    def _refresh(self, app):
        forced = self._changed
        self._changed = False  # a change committed from here on is seen by the next refresh
        try:
            current, built = self._run(self._load, app, forced, self._signature)
            if built is not None:
                self._built = built
                self._signature = current
            self._checked = time.monotonic()
        except BaseException:
            self._changed = self._changed or forced  # try again next time
            raise

    @staticmethod
    def _load(app, forced, known):
        """On a model thread: the database's signature, and a new build when
        it is not ``known`` (or ``forced``), else None.  A connection of its
        own, given back before the build."""
        with app.app_context():
            with db.engine.connect() as connection:
                current = signature(connection)
                rows = reviewed_rows(connection) if forced or current != known else None
        return current, (_Built(rows) if rows is not None else None)


@event.listens_for(db.session, "after_flush")
def _note_change(session, _flush_context):
    """Remember, until the commit, that this flush touched a reviewed answer
    (new chat exchanges and 👍/👎 do not)."""
    for row in itertools.chain(session.new, session.deleted):
        if isinstance(row, Exchange) and row.status == REVIEWED:
            session.info[_CHANGED] = True
            return
    for row in session.dirty:
        if isinstance(row, Exchange):
            attrs = sa.inspect(row).attrs
            if any(attrs[name].history.has_changes() for name in _INDEXED_FIELDS):
                session.info[_CHANGED] = True
                return


@event.listens_for(db.session, "after_commit")
def _nudge(session):
    """The change is in the database: this process's index is stale now."""
    if session.info.pop(_CHANGED, False) and has_app_context():
        responder = current_app.extensions.get("chatbot.responder")
        if responder is not None:
            responder.corrections.changed()


@event.listens_for(db.session, "after_rollback")
def _forget_change(session):
    session.info.pop(_CHANGED, None)
