"""Answers questions: a reviewed answer for the very question (its
question_key), else the model's reply, weighed with the reviewed answers in
the same step on a model thread (bot.Chatbot.known_replies): a reviewed
question nearer than any training question gives its answer (route
memory), else a training pair's answer the model picked, or a reply it
wrote; unless the model is less sure of it than its threshold: then a
weaker match to a reviewed answer, or an honest "잘 모르겠어요" (route
unsure).

The model in use is whatever ``<MODEL_DIR>/current`` points at.  Before each
reply the responder checks where the link points (one readlink) and loads the
new model when it changed, so a retrain reaches a running server without a
restart.  A reply already being computed keeps its reference to the old
model and finishes on it.
"""
import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from . import meaning, morph, reach, suggest
from .batching import Busy, ReplyBatcher
from .config import Config
from .corrections import Corrections
from .database import ROUTE_FALLBACK, ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_MODEL, ROUTE_UNSURE, stored_key
from .extensions import db
from .model_dir import MEANING_FILE

log = logging.getLogger(__name__)

FALLBACK_ANSWER = "아직 대답을 배우는 중이에요. 조금만 기다려 주세요."


@dataclass
class Answer:
    text: str
    route: str
    model_version: str | None
    confidence: float | None = None  # the model's, 0..1; None where no model answered


class Responder:
    """Holds the current model and reloads it when ``current`` moves."""

    def __init__(self, models_root, workers=1, batch_max=8, window_ms=0.0, model_threads=1, queue_max=256,
                 min_confidence=None, unsure_replies=("잘 모르겠어요.",),
                 correction_min_similarity=Config.CORRECTION_MIN_SIMILARITY,
                 correction_refresh_seconds=Config.CORRECTION_REFRESH_SECONDS,
                 correction_unsure_similarity=Config.CORRECTION_UNSURE_SIMILARITY,
                 correction_meaning_similarity=Config.CORRECTION_MEANING_SIMILARITY,
                 correction_meaning_limit=Config.CORRECTION_MEANING_LIMIT):
        self.models_root = Path(models_root)
        self.model_threads = model_threads
        # None: each model's own calibrated threshold (Chatbot.threshold).
        self.min_confidence = min_confidence
        self.unsure_replies = list(unsure_replies)
        # `workers` OS threads compute the replies, several questions per
        # model call when chats arrive together; the chats just wait.
        self._batcher = ReplyBatcher(workers, batch_max, window_ms, queue_max)
        self.corrections = Corrections(
            self._batcher.run, correction_min_similarity, correction_refresh_seconds, correction_unsure_similarity,
            correction_meaning_similarity, correction_meaning_limit, self.models_root,
            self._batcher.run_in_background)
        # Work no chat waits for (chatbot/grouping.py), at the lowest CPU priority.
        self.run_in_background = self._batcher.run_in_background
        self._lock = threading.Lock()
        # Reviewers' suggestions (suggestions()) take at most one model thread
        # each and never queue: past `workers` at once, Busy.
        self._suggesting = threading.BoundedSemaphore(max(1, workers))
        self._bot = None
        self._target = None  # the link target the loaded model came from
        self._failed_target = None  # a target that failed to load; not retried

    def _current_target(self):
        try:
            return os.readlink(self.models_root / "current")
        except OSError:
            return None

    def model(self):
        """The model to answer with, reloading it if ``current`` moved.

        A directory that fails to load is logged and skipped: the model that
        was serving keeps serving.
        """
        target = self._current_target()
        if target is None or target in (self._target, self._failed_target):
            return self._bot
        with self._lock:
            if target in (self._target, self._failed_target):
                return self._bot
            from .inference import limit_threads
            from .model_dir import ModelLoadError

            # Here, not on the model thread: threadpoolctl looks up libc with
            # a subprocess, which gevent runs only from its main loop; so
            # does the sentence encoder's check of its file (chatbot/meaning.py).
            limit_threads(self.model_threads)
            if (self.models_root / target / MEANING_FILE).exists():
                meaning.encoder().prepare()
            try:  # on a model thread: loading and encoding the known questions take CPU
                bot = self._batcher.run(self._load, self.models_root / target)
            except ModelLoadError as exc:
                log.error("not switching to model %s: %s", target, exc)
                self._failed_target = target
                return self._bot
            log.info("loaded model %s", bot.version)
            self._bot, self._target, self._failed_target = bot, target, None
            return bot

    def warm_up(self, app):
        """Load the model, its sentence encoder and the reviewed answers now,
        when the server starts, not on the first chat, which would wait for
        them: seconds, and tens beside a retrain on a small VM."""
        try:
            bot = self.model()
            with app.app_context():
                self.corrections.current(by_meaning=bot is not None and bot.meanings is not None)
                db.session.remove()
        except Exception:  # the first chat tries again, and says what fails
            log.exception("could not load the model and the reviewed answers before the first chat")

    def _load(self, path):
        from .bot import Chatbot

        return Chatbot.load(path)

    def suggestions(self, question: str, exclude=(), limit: int = suggest.SUGGESTIONS) -> list:
        """The answers a reviewer correcting ``question`` may take
        (suggest.nearest_answers; ``exclude``: answers not to offer),
        computed on a model thread like a chat's.

        Raises batching.Busy when as many suggestions as there are model
        threads are being computed already: a reviewer's page never queues
        behind the chats.
        """
        if not self._suggesting.acquire(blocking=False):
            raise Busy()
        try:
            bot = self.model()
            reviewed = self.corrections.current(by_meaning=bot is not None and bot.meanings is not None)
            key = stored_key(morph.question_key(question))
            return self._batcher.run(suggest.nearest_answers, bot, reviewed, question, key, limit, set(exclude))
        finally:
            self._suggesting.release()

    def reach(self, corrected, found) -> tuple:
        """What correcting ``corrected`` ([(key, question)]) would change for
        the past questions ``found`` (reach.reached), on a model thread.
        Raises batching.Busy like ``suggestions`` (they share its slots)."""
        if not self._suggesting.acquire(blocking=False):
            raise Busy()
        try:
            bot = self.model()
            reviewed = self.corrections.current(by_meaning=bot is not None and bot.meanings is not None)
            return self._batcher.run(reach.reached, bot, reviewed, corrected, found)
        finally:
            self._suggesting.release()

    def answer(self, question: str, key: str | None = None) -> Answer:
        """Answer ``question``; ``key`` is its morph.question_key if known.

        Raises batching.Busy when too many questions are already waiting for the model.
        """
        bot = self.model()
        version = bot.version if bot else None
        key = stored_key(key if key is not None else morph.question_key(question))
        reviewed = self.corrections.current(by_meaning=bot is not None and bot.meanings is not None)
        # Give the database connection back before waiting for the model: a
        # pool of a few connections then serves any number of waiting chats.
        db.session.close()
        exact = reviewed.by_key.get(key) if key else None
        if exact is not None:
            return Answer(exact, ROUTE_MEMORY, version)
        if bot is None:
            found = self.corrections.lookup(question, key)
            if found is not None:
                return Answer(found[0], ROUTE_MEMORY, None)
            return Answer(FALLBACK_ANSWER, ROUTE_FALLBACK, None)
        reply = self._batcher.answer(bot, question, reviewed, key)
        threshold = self.min_confidence if self.min_confidence is not None else bot.threshold
        if reply.confidence >= threshold:  # always at 0: confidence is at least 0
            route = ROUTE_MEMORY if reply.reviewed else ROUTE_KNOWN if reply.known else ROUTE_MODEL
            return Answer(reply.text or FALLBACK_ANSWER, route, version, reply.confidence)
        if reply.correction is not None:  # a weaker match to a correction beats "잘 모르겠어요"
            return Answer(reply.correction[0], ROUTE_MEMORY, version, reply.confidence)
        return Answer(random.choice(self.unsure_replies), ROUTE_UNSURE, version, reply.confidence)
