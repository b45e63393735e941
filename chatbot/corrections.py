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

Meaning vectors, when the model in use matches by meaning: a build embeds
at most EMBED_AT_ONCE new reviewed questions itself (the newest), about a
second of a model thread.  An import of thousands of pairs would otherwise
hold the next chat for minutes on a small VM.  The rest are embedded in the
background, EMBED_AT_ONCE at a time on a thread of the lowest CPU priority
(chats and admin pages first), then built in; until then they answer their
own question exactly and are matched by nothing else.
"""
import itertools
import logging
import threading
import time

import sqlalchemy as sa
from flask import current_app, has_app_context
from sqlalchemy import event

from . import meaning, meaning_store, morph
from .batching import BACKGROUND_STEP
from .config import Config
from .database import REVIEWED, Exchange, ReviewAudit, stored_key
from .extensions import db

log = logging.getLogger(__name__)

# A change to any of these on an Exchange can change what the index holds.
_INDEXED_FIELDS = ("status", "question_key", "answer", "corrected_answer", "reviewed_at")
_CHANGED = "chatbot.corrections.changed"  # a session.info flag, set by a flush, read at commit
EMBED_AT_ONCE = 32  # questions embedded in one step (the module docstring)


def signature(connection):
    """What changes whenever the reviewed answers change, cheaply.

    New reviewed rows (imports) change the count and the newest id; every
    reviewer's change (mark, edit, group, purge) writes a ReviewAudit row.
    """
    count, newest = connection.execute(
        sa.select(sa.func.count(), sa.func.max(Exchange.id)).where(Exchange.status == REVIEWED)).one()
    return count, newest, connection.scalar(sa.select(sa.func.max(ReviewAudit.id)))


def reviewed_rows(connection):
    """(question_key, question, final answer) of every reviewed row, oldest
    review first (never-stamped rows before all), so the newest one per key
    is last."""
    rows = connection.execute(
        sa.select(Exchange.question_key, Exchange.question, Exchange.answer, Exchange.corrected_answer)
        .where(Exchange.status == REVIEWED)
        .order_by(Exchange.reviewed_at.asc().nulls_first(), Exchange.id.asc())).all()
    return [(key, question, corrected or answer) for key, question, answer, corrected in rows]


def has_word(key: str) -> bool:
    """Whether a question_key has a letter or a digit: one of symbols alone
    (?!, ..., 😀) means too little to be near another question."""
    return any(ch.isalnum() for ch in key)


class _Built:
    """One build: the newest answer per question key, their TF-IDF index,
    and (``vectors``) the meaning vectors of the newest ``meaning_limit``
    keys' questions, when the model in use matches by meaning.

    ``vectors_for(questions)`` gives the vectors it has, by normalised
    question; a question without one is left out of ``meaning_rows``."""

    def __init__(self, rows, min_similarity=Config.CORRECTION_MIN_SIMILARITY,
                 unsure_similarity=Config.CORRECTION_UNSURE_SIMILARITY,
                 meaning_similarity=Config.CORRECTION_MEANING_SIMILARITY, vectors_for=None,
                 meaning_limit=Config.CORRECTION_MEANING_LIMIT):
        self.min_similarity = min_similarity
        self.unsure_similarity = min(unsure_similarity, min_similarity)
        self.meaning_similarity = meaning_similarity
        self.meaning_limit = meaning_limit
        # Later rows (newer reviews) replace earlier ones and move to the end.
        # The empty key (nothing visible, or a row stored before
        # morph.question_key kept symbols) would stand for unrelated
        # messages: it answers nothing.
        newest: dict[str, tuple[str, str]] = {}
        for key, question, answer in rows:
            if key:
                newest.pop(key, None)
                newest[key] = (question, answer)
        self.newest = newest  # key -> (question, answer), the newest review last
        self.by_key = {key: answer for key, (_, answer) in newest.items()}
        keys = list(newest)
        self.asked = {}  # row of ``index`` -> the question as asked, for the rows of ``meaning_rows``
        self.index = None
        self.vectors = None  # (len(meaning_rows), meaning.DIM), or None: words only
        self.meaning_rows = []  # the rows of ``index`` that have a vector
        self.known_vectors = {}  # normalised question -> vector, for the next build
        if keys:
            # Imported only here: retrieval needs NumPy (about 15 MB), which
            # the app's command-line processes (flask retrain's runner,
            # import-pairs, db upgrade) have no use for.
            from .retrieval import AnswerIndex

            self.index = AnswerIndex([key.split() for key in keys], [self.by_key[k] for k in keys])
            if vectors_for is not None:
                import numpy as np

                worded = [r for r, key in enumerate(keys) if has_word(key)]
                newest_worded = worded[max(0, len(worded) - meaning_limit):]
                wanted = {r: meaning.normalise(newest[keys[r]][0]) for r in newest_worded}
                self.known_vectors = vectors_for(list(wanted.values()))
                self.meaning_rows = [r for r, question in wanted.items() if question in self.known_vectors]
                self.asked = {r: newest[keys[r]][0] for r in self.meaning_rows}
                self.vectors = np.zeros((len(self.meaning_rows), meaning.DIM), dtype=np.float32)
                for i, r in enumerate(self.meaning_rows):
                    self.vectors[i] = self.known_vectors[wanted[r]]

    @property
    def by_meaning(self) -> bool:
        return self.vectors is not None

    def adding(self, rows, vectors=None):
        """A build as this one would be with ``rows`` ((key, question,
        answer)) reviewed too, the newest (chatbot/reach.py).  ``vectors``:
        their questions' meaning vectors by normalised question, for a build
        by meaning (with this one's), or None: by words."""
        known = {**self.known_vectors, **vectors} if vectors is not None else {}
        return _Built([(key, question, answer) for key, (question, answer) in self.newest.items()] + list(rows),
                      self.min_similarity, self.unsure_similarity, self.meaning_similarity,
                      (lambda questions: {q: known[q] for q in questions if q in known}) if vectors is not None
                      else None, self.meaning_limit)

    def most_similar(self, key, min_similarity):
        """(answer, cosine) of the reviewed question most like ``key``, if it reaches min_similarity."""
        terms = key.split()
        if self.index is None or not terms:
            return None
        similarities = self.index.similarities([terms])[0]
        best = int(similarities.argmax())
        similarity = float(similarities[best])
        return (self.index.answers[best], similarity) if similarity >= min_similarity else None

    def scores(self, keys, vectors=None, word_weight=0.0):
        """``(todo, score, rows)``: the questions (their question_keys, and
        meaning vectors if this build has them) that have a word, their
        scores against the reviewed questions (len(todo), len(rows)), and
        those questions' rows in ``index``; score None when there are none.
        By meaning the score is the bot's own (bot.Chatbot.known_matches):
        ``word_weight`` x the TF-IDF cosine of the keys + the rest x the
        meaning similarity, over the questions with a vector.  Else the
        TF-IDF cosine.  A key without a word (empty, or symbols only: ?!,
        😀) matches nothing; its exact key still does (Responder.answer)."""
        todo = [i for i, key in enumerate(keys) if has_word(key)]
        if self.index is None or not todo:
            return todo, None, []
        words = self.index.similarities([keys[i].split() for i in todo])
        if vectors is not None and self.vectors is not None:
            if not self.meaning_rows:
                return todo, None, []
            near = meaning.similarity(vectors[todo], self.vectors)
            return todo, word_weight * words[:, self.meaning_rows] + (1 - word_weight) * near, self.meaning_rows
        return todo, words, range(words.shape[1])

    def nearest(self, keys, vectors=None, word_weight=0.0):
        """For each question the nearest reviewed question's ``(answer,
        score)`` by ``scores``, or None."""
        out = [None] * len(keys)
        todo, score, rows = self.scores(keys, vectors, word_weight)
        if score is None:
            return out
        best = score.argmax(axis=1)
        for i, column, value in zip(todo, best.tolist(), score[range(len(todo)), best].tolist()):
            out[i] = (self.index.answers[rows[column]], min(1.0, max(0.0, value)))
        return out


class Corrections:
    """The reviewed answers of one app, for ``Responder.answer``.

    ``run(fn, *args)`` calls fn on a model thread (ReplyBatcher.run): building
    and searching the index is CPU work that must not hold up the gevent hub.
    ``run_in_background`` (ReplyBatcher.run_in_background): the same on a
    thread of the lowest CPU priority, for the embedding no chat waits for.
    In ``models_root`` is the trainer's file of question vectors
    (meaning.cache_file): a reviewed question a retrain embedded is not
    embedded again.
    """

    def __init__(self, run, min_similarity=Config.CORRECTION_MIN_SIMILARITY,
                 refresh_seconds=Config.CORRECTION_REFRESH_SECONDS,
                 unsure_similarity=Config.CORRECTION_UNSURE_SIMILARITY,
                 meaning_similarity=Config.CORRECTION_MEANING_SIMILARITY,
                 meaning_limit=Config.CORRECTION_MEANING_LIMIT, models_root=None, run_in_background=None):
        self._run = run
        self._run_in_background = run_in_background or run
        self.min_similarity = min_similarity
        self.unsure_similarity = unsure_similarity  # capped at min_similarity by _Built
        self.meaning_similarity = meaning_similarity
        self.meaning_limit = meaning_limit
        self.models_root = models_root
        self.refresh_seconds = refresh_seconds
        self._built = self._build([])
        self._signature = None
        self._checked = float("-inf")  # time.monotonic() of the last signature check
        self._changed = True  # nothing built yet
        self._by_meaning = False  # what the last current() asked for
        self._unembedded = []  # questions the last build wanted a vector for and had none, oldest first
        self._embedded = {}  # their vectors, embedded since, for the next build
        self._lock = threading.Lock()

    def changed(self):
        """This process committed a change: rebuild before the next lookup."""
        self._changed = True

    def current(self, by_meaning=False):
        """The build to answer from (refreshed first when due; see the
        module docstring).  ``by_meaning``: the model in use matches by
        meaning, so the build needs the reviewed questions' vectors too,
        if this process's encoder is loaded (else the model answers by words:
        a build without vectors is the right one, not one to redo)."""
        by_meaning = by_meaning and _encoder_loaded()
        if by_meaning and not self._built.by_meaning and self._built.index is not None:
            self._changed = True
        self._by_meaning = by_meaning
        return self._current()

    def lookup(self, question, key=None, min_similarity=None):
        """(answer, similarity) for ``question`` by words alone, or None (no
        model to answer with: Responder.answer).

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

    def _build(self, rows, vectors_for=None):
        return _Built(rows, self.min_similarity, self.unsure_similarity, self.meaning_similarity, vectors_for,
                      self.meaning_limit)

    def _due(self):
        return (self._changed or bool(self._unembedded)
                or time.monotonic() - self._checked >= self.refresh_seconds)

    def _current(self):
        wait = self._changed or self._signature is None
        if self._due() and self._lock.acquire(blocking=wait):
            app = current_app._get_current_object()
            if wait:
                self._refresh_and_release(app, False)
            else:
                threading.Thread(target=self._refresh_and_release, args=(app, True), daemon=True,
                                 name="corrections-refresh").start()
        return self._built

    def _refresh_and_release(self, app, background):
        try:
            if self._due():
                self._refresh(app, background)
        finally:
            self._lock.release()

    def _refresh(self, app, background=False):
        """``background``: no chat waits for this refresh, so it may embed
        what the last build left unembedded (a chat that waited for the
        lock while another refresh ran finds only that work left: not its
        to do)."""
        if background and self._unembedded and not self._changed:
            if self._by_meaning:
                self._embed_unembedded()
            self._changed = True  # build them in (or, now by words, build without them)
        forced = self._changed
        self._changed = False  # a change committed from here on is seen by the next refresh
        try:
            current, built = self._run(self._load, app, forced, self._signature, self._by_meaning)
            if built is not None:
                self._built = built
                self._signature = current
            self._checked = time.monotonic()
        except BaseException:
            self._changed = self._changed or forced  # try again next time
            raise

    def _load(self, app, forced, known, by_meaning):
        """On a model thread: the database's signature, and a new build when
        it is not ``known`` (or ``forced``), else None.  A connection of its
        own, given back before the build."""
        with app.app_context():
            with db.engine.connect() as connection:
                current = signature(connection)
                rows = reviewed_rows(connection) if forced or current != known else None
            if rows is None:
                return current, None
            if not by_meaning:
                self._unembedded = []
            return current, self._build(rows, self._vectors_for if by_meaning else None)

    def _embed_unembedded(self):
        """Embed the questions the last build had no vector for, newest
        first, a few at a time on the background thread (each after a pause
        of the chats and pages: batching.wait_for_pause); stop early
        when a change of this process's own waits to be built (a chat waits
        for that)."""
        todo = self._unembedded[::-1]
        step = min(EMBED_AT_ONCE, BACKGROUND_STEP)  # each step waits for a pause of the chats and pages
        for start in range(0, len(todo), step):
            if self._changed:
                return
            chunk = todo[start:start + step]
            try:
                vectors = self._run_in_background(meaning.encoder().embed_uncached, chunk)
            except Exception as exc:  # the build below says it again, and words answer meanwhile
                log.warning("could not embed reviewed questions: %s", exc)
                return
            self._embedded.update(zip(chunk, vectors))

    def _vectors_for(self, questions):
        """Meaning vectors of (normalised) ``questions``, by question: the
        last build's and those embedded since, then the trainer's cache
        file's, then the database's (meaning_store), then the encoder's for
        the newest EMBED_AT_ONCE of the rest (the others wait for
        ``_embed_unembedded``).  What the encoder gave goes to the database."""
        known = self._built.known_vectors | self._embedded
        fresh = dict(self._embedded)
        missing = [q for q in questions if q not in known]
        if missing and self.models_root is not None:
            known |= _cached(meaning.cache_file(self.models_root, meaning.encoder().name), set(missing))
            missing = [q for q in questions if q not in known]
        if missing:
            known |= self._stored(missing)
            missing = [q for q in questions if q not in known]
        now = missing[-EMBED_AT_ONCE:]
        if now:
            fresh |= zip(now, meaning.encoder().embed_uncached(now))
            known |= fresh
        self._unembedded, self._embedded = missing[:len(missing) - len(now)], {}
        self._store(fresh)
        return {q: known[q].astype("float32", copy=False) for q in questions if q in known}

    def _stored(self, questions) -> dict:
        """meaning_store.load, or nothing when the database cannot say (logged)."""
        try:
            with db.engine.connect() as connection:
                return meaning_store.load(connection, meaning.encoder().name, questions)
        except Exception as exc:  # the encoder embeds them instead
            log.warning("could not read stored meaning vectors: %s", exc)
            return {}

    def _store(self, vectors):
        """meaning_store.save; a failure costs only embedding them again later (logged)."""
        if not vectors:
            return
        try:
            with db.engine.connect() as connection:
                # Never fewer rows than a build wants, or each build would evict its own.
                meaning_store.save(connection, meaning.encoder().name, vectors,
                                   max(current_app.config["MEANING_STORE_ROWS"], self.meaning_limit))
        except Exception as exc:
            log.warning("could not store meaning vectors: %s", exc)


def _encoder_loaded() -> bool:
    """Whether the process's encoder is loaded (the responder prepares it,
    on the event loop, for a model that matches by meaning)."""
    return meaning.encoder().status()["loaded"]


def _cached(cache_file, wanted: set) -> dict:
    """The vectors of ``wanted`` questions in a trainer's cache file (none if
    it is missing, unreadable or another encoder's)."""
    import numpy as np

    try:
        with np.load(cache_file, allow_pickle=False) as data:
            if str(data["encoder"]) != meaning.encoder().name or data["vectors"].shape[1:] != (meaning.DIM,):
                return {}
            texts = data["texts"].tolist()
            rows = [i for i, text in enumerate(texts) if text in wanted]
            return dict(zip((texts[i] for i in rows), data["vectors"][rows]))
    except (OSError, ValueError, KeyError):
        return {}


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
