"""A real server for end-to-end tests: gunicorn with the project's
gunicorn.conf.py (its gevent worker), as ``make run`` starts it, on a free
127.0.0.1 port, with its own SQLite file and model dir.

It can be stopped and started again on the same port (a server restart).
"""
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process, timeout):
    """SIGTERM, then SIGKILL if it is still running after timeout seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def prepare(workdir: Path, with_model=True, reviewer=None, **config):
    """Create the database (migrated), a reviewer if one is given as
    (name, password), and, if asked, a tiny trained model."""
    import flask_migrate

    from chatbot import create_app
    from chatbot.database import Reviewer
    from chatbot.extensions import db

    from helpers import migrated_sqlite

    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "chatbot.db"
    copied = "SQLALCHEMY_DATABASE_URI" not in config and not database.exists()
    if copied:  # a new database: a copy of a migrated one (tests/helpers.py)
        migrated_sqlite(database)
    app = create_app({"SECRET_KEY": "live-test", "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(database),
                      "MODEL_DIR": str(workdir / "models"), **config})
    with app.app_context():
        if not copied:
            flask_migrate.upgrade()
        if reviewer is not None:
            account = Reviewer(username=reviewer[0])
            account.set_password(reviewer[1])
            db.session.add(account)
            db.session.commit()
        db.engine.dispose()
    if with_model:
        from helpers import tiny_model

        tiny_model(workdir / "models")
    return app


class LiveServer:
    def __init__(self, workdir: Path, port=None, env=None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "server.log"
        # The allocator settings of `make serve` (Makefile: why).
        self.env = {**os.environ, "PYTHONMALLOC": "malloc", "MALLOC_ARENA_MAX": "2", "SECRET_KEY": "live-test",
                    "DATABASE_URL": "sqlite:///" + str(self.workdir / "chatbot.db"),
                    "MODEL_DIR": str(self.workdir / "models"), "MORPH_BACKEND": os.environ.get("MORPH_BACKEND", "mecab"),
                    **(env or {})}
        self.process = None

    def start(self, timeout=60, ready_status=200):
        """Start, and wait until GET / answers ``ready_status``."""
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "2",
             "app:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == ready_status:
                        return self
            except urllib.error.HTTPError as error:
                if error.code == ready_status:
                    return self
                time.sleep(0.2)
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(self.url + "/", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self):
        stop_process(self.process, 15)
        self.process = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""
