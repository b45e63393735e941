"""The admin's page of trained model versions (/admin/models, "모델"): the
versions on disk (chatbot/versions.py), rollback, delete, retrain.  Not about
database models, which Flask-Admin also calls "models".

Retraining from the page goes through ``retrain.start`` like ``flask
retrain``, in the background: the request takes the retrain lock itself and
hands the locked fd to a runner process, so "is one running?" and "start
one" are a single atomic step: a second request is told one is running,
never started twice.

Live progress: the runner writes ``.retrain/status.json``; while reviewers
are connected to the ``/admin`` Socket.IO namespace, one watcher thread per
server process reads that file every ``WATCH_SECONDS`` and emits ``retrain``
with its contents when it changes.  The file, not the process that launched
the run, is the source of truth, so it works with several server processes,
after a server restart mid-run, and for runs started by ``make retrain``.
"""
import logging
import subprocess
import threading
from pathlib import Path

from flask import abort, current_app, flash, jsonify, redirect, request, send_file, url_for
from flask_admin import BaseView, expose
from flask_login import current_user
from flask_socketio import disconnect, emit

from . import heavy, retrain, versions
from .admin_base import ReviewerOnly
from .extensions import socketio
from .pairs import training_pairs

log = logging.getLogger(__name__)

NAMESPACE = "/admin"
WATCH_SECONDS = 0.5


def _root() -> Path:
    return Path(current_app.config["MODEL_DIR"])


def start_retrain(force=False) -> subprocess.Popen:
    """Start a runner process; raises retrain.RetrainBusy if one is running.

    The pairs are read and written on a heavy-work thread (a million
    reviewed rows take seconds); the runner is started here, on the event
    loop: gevent's subprocess works only from there."""
    proc = retrain.start(current_app.config, heavy.run(training_pairs), force=force, background=True,
                         offload=heavy.run)
    log.info("retrain started by %s (pid %s, force=%s)", current_user.username, proc.pid, force)
    return proc


def version_rows(root):
    current = versions.current_dir(root)
    rows = []
    for name in reversed(versions.list_versions(root)):
        path = root / name
        metrics = retrain.read_metrics(path)
        rows.append({"name": name, "current": current is not None and path.resolve() == current,
                     "metrics": metrics, "has_plot": (path / "loss.png").is_file()})
    return rows


def status_payload(root):
    status = retrain.read_status(root)
    status["log_tail"] = retrain.read_log(root, status, max_lines=40)
    return status


class VersionsView(ReviewerOnly, BaseView):

    @expose("/")
    def index(self):
        root = _root()
        return self.render("admin/versions.html", rows=version_rows(root), status=status_payload(root),
                           margin=current_app.config["QUALITY_GATE_MARGIN"])

    @expose("/status.json")
    def status(self):
        return jsonify(status_payload(_root()))

    @expose("/<version>/loss.png")  # not <name>: Flask-Admin's _handle_view takes `name`
    def loss_plot(self, version):
        root = _root()
        if version not in versions.list_versions(root) or not (root / version / "loss.png").is_file():
            abort(404)
        return send_file(root / version / "loss.png", mimetype="image/png", max_age=0)

    @expose("/activate", methods=["POST"])
    def activate(self):
        name = request.form.get("name", "")
        try:
            with heavy.slot():  # an old version's weights.npz is made first, in a child process
                heavy.run(versions.add_numpy_weights, _root(), name)
            versions.activate(_root(), name)
        except heavy.Busy as busy:
            return heavy.refusal(busy)
        except (ValueError, OSError) as exc:
            flash(f"적용하지 못했습니다: {exc}", "danger")
        else:
            log.info("%s activated model %s", current_user.username, name)
            flash(f"{name}을(를) current로 적용했습니다. 서버가 다음 답변부터 이 모델을 씁니다.", "success")
        return redirect(url_for(".index"))

    @expose("/delete", methods=["POST"])
    def delete(self):
        name = request.form.get("name", "")
        try:
            versions.delete(_root(), name)
        except versions.VersionInUse:
            flash(f"{name}은(는) current라서 지울 수 없습니다. 다른 버전을 먼저 적용하세요.", "danger")
        except (ValueError, OSError) as exc:
            flash(f"지우지 못했습니다: {exc}", "danger")
        else:
            log.info("%s deleted model %s", current_user.username, name)
            flash(f"{name}을(를) 지웠습니다.", "success")
        return redirect(url_for(".index"))

    @expose("/retrain", methods=["POST"])
    def retrain(self):
        force = request.form.get("force") in ("1", "on", "true", "y")
        try:
            with heavy.slot():
                start_retrain(force=force)
        except heavy.Busy as busy:
            return heavy.refusal(busy)
        except retrain.RetrainBusy as exc:
            flash(str(exc), "warning")
        except OSError as exc:
            log.exception("could not start a retrain")
            flash(f"재학습을 시작하지 못했습니다: {exc}", "danger")
        else:
            flash("재학습을 시작했습니다." + (" (품질 기준과 관계없이 적용)" if force else ""), "info")
        return redirect(url_for(".index"))


# -- live progress over Socket.IO -------------------------------------------------------

class _Watcher:
    """One thread per app while reviewers are connected: status.json → ``retrain`` events."""

    def __init__(self, app):
        self.app = app
        self.clients = set()  # sids of connected reviewers
        self.lock = threading.Lock()
        self.running = False

    def connected(self, sid):
        with self.lock:
            self.clients.add(sid)
            if not self.running:
                self.running = True
                socketio.start_background_task(self._loop)

    def disconnected(self, sid):
        with self.lock:
            self.clients.discard(sid)

    def _loop(self):
        root = Path(self.app.config["MODEL_DIR"])
        path = retrain.state_dir(root) / retrain.STATUS_NAME
        last = None
        try:
            while True:
                with self.lock:
                    if not self.clients:
                        self.running = False
                        return
                try:
                    stamp = path.stat().st_mtime_ns
                except OSError:
                    stamp = None
                running = retrain.is_running(root)
                if (stamp, running) != last:
                    last = (stamp, running)
                    # Every process watches the same status file and tells its
                    # own reviewers; through a message queue they would hear it
                    # once per process.
                    socketio.emit("retrain", status_payload(root), namespace=NAMESPACE, ignore_queue=True)
                socketio.sleep(WATCH_SECONDS)
        except Exception:
            log.exception("retrain watcher stopped")
            with self.lock:
                self.running = False


def _watcher():
    return current_app.extensions["chatbot.retrain_watcher"]


@socketio.on("connect", namespace=NAMESPACE)
def on_admin_connect(auth=None):
    if not current_user.is_authenticated:
        return False  # refused: only logged-in reviewers get progress
    emit("retrain", status_payload(_root()))
    _watcher().connected(request.sid)
    return None


@socketio.on("disconnect", namespace=NAMESPACE)
def on_admin_disconnect(*args):
    _watcher().disconnected(request.sid)


@socketio.on("*", namespace=NAMESPACE)
def on_admin_other(event, *args):
    disconnect()


def init_app(app):
    app.extensions["chatbot.retrain_watcher"] = _Watcher(app)
