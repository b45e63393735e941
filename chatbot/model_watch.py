"""Tells each server process's chats when the model changed.

Whoever activates a model (the admin's 적용 or 재학습 in any process, ``make
retrain``, the training job on another host writing to a shared MODEL_DIR,
``versions.activate`` from a shell) only moves ``<MODEL_DIR>/current``.  Every
server process already loads the new model before its next reply
(responder.Responder.model); this watcher, one thread per process started by
its first chat, checks the link every MODEL_WATCH_SECONDS, loads the new model
at once (so no chat waits for the load) and sends that process's own chats a
``model`` event ``{"version": ...}``.

It emits with ``ignore_queue=True``: with a message queue every process
would otherwise relay every other process's event, and each chat would get it
once per process.  Each process announces only the model it has loaded itself.
"""
import logging
import os
import threading
import time
from pathlib import Path

from .extensions import socketio

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(self, app, responder, interval: float):
        self.app = app
        self.responder = responder
        self.interval = interval
        self.link = Path(responder.models_root) / "current"
        self._started = False
        self._lock = threading.Lock()

    def ensure_started(self):
        if self._started or self.interval <= 0:
            return
        with self._lock:
            if not self._started:
                self._started = True
                socketio.start_background_task(self._run)

    def _target(self):
        try:
            return os.readlink(self.link)
        except OSError:
            return None

    def _run(self):
        seen = self._target()
        while True:
            time.sleep(self.interval)
            try:
                target = self._target()
                if target == seen:
                    continue
                seen = target
                bot = self.responder.model()  # loads it, or keeps the old one if it fails
                if bot is not None and self.responder._target == target:
                    log.info("model %s is in use; telling this process's chats", bot.version)
                    with self.app.app_context():
                        socketio.emit("model", {"version": bot.version}, namespace="/", ignore_queue=True)
            except Exception:  # never let the watcher die
                log.exception("model watcher")
