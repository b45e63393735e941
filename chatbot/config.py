"""Configuration from environment variables, with safe defaults.

Every setting can be overridden by an environment variable of the same name.
SECRET_KEY is never in the source: without the variable, one is generated
once into the instance folder (see ``load_secret_key``).
"""
import os
import secrets
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _number(name, default, kind, what):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be {what}, got {value!r}") from None


def _int(name, default):
    return _number(name, default, int, "an integer")


def _float(name, default):
    return _number(name, default, float, "a number")


def _bool(name, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


class Config:
    """Defaults for a single small self-hosted server."""

    SECRET_KEY = os.environ.get("SECRET_KEY") or None
    # Any SQLAlchemy URL; postgresql:// (and postgres://) means psycopg 3
    # (normalise_database_url).  Default, set in create_app: SQLite in instance/.
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL") or None
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    MODEL_DIR = os.environ.get("MODEL_DIR") or str(PROJECT_ROOT / "models")
    STARTER_PAIRS = os.environ.get("STARTER_PAIRS") or str(PROJECT_ROOT / "chatbot" / "data" / "starter_pairs.csv")
    MAX_MESSAGE_CHARS = _int("MAX_MESSAGE_CHARS", 500)
    # Reply workers (default: one per CPU core), each decoding up to
    # REPLY_BATCH_MAX questions that arrived together, waiting at most
    # REPLY_BATCH_WINDOW_MS for company, on TORCH_THREADS threads.  The models
    # are small: more threads per reply only fight each other under load.
    REPLY_WORKERS = _int("REPLY_WORKERS", os.cpu_count() or 1)
    REPLY_BATCH_MAX = _int("REPLY_BATCH_MAX", 8)
    REPLY_BATCH_WINDOW_MS = _float("REPLY_BATCH_WINDOW_MS", 0.0)
    TORCH_THREADS = _int("TORCH_THREADS", 1)
    # Per Socket.IO connection: events a second on average, and the burst
    # allowed at once (token bucket). MESSAGE_RATE=0 turns the limit off.
    MESSAGE_RATE = _float("MESSAGE_RATE", 5.0)
    MESSAGE_BURST = _int("MESSAGE_BURST", 10)
    # Failed logins: after LOGIN_MAX_FAILURES for one address and user name
    # (or 4x that for one address, any names) within LOGIN_WINDOW_SECONDS,
    # logins from there are refused (429) until the window has passed.
    LOGIN_MAX_FAILURES = _int("LOGIN_MAX_FAILURES", 5)
    LOGIN_WINDOW_SECONDS = _int("LOGIN_WINDOW_SECONDS", 300)
    # Behind a reverse proxy (nginx, Caddy): how many proxies set
    # X-Forwarded-For/-Proto, so the client's address is the real one (for the
    # login limit). 0: the address is the TCP peer's; never trust headers.
    PROXY_COUNT = _int("PROXY_COUNT", 0)
    # "threading" (the default, see README "Why threads"); another mode
    # ("eventlet", "gevent") needs a server of that kind.
    SOCKETIO_ASYNC_MODE = os.environ.get("SOCKETIO_ASYNC_MODE") or "threading"
    # Several server processes: a message queue (redis://host:6379/0) through
    # which they share Socket.IO events.  Unset: one process, no queue.
    SOCKETIO_MESSAGE_QUEUE = os.environ.get("SOCKETIO_MESSAGE_QUEUE") or None
    # Each server process checks <MODEL_DIR>/current this often (seconds) and,
    # when it moved, loads the new model and sends its chats a `model` event.
    # 0: no watcher (the model still reloads before the next reply).
    MODEL_WATCH_SECONDS = _float("MODEL_WATCH_SECONDS", 2.0)
    # Flask-Admin's look, and cookies that scripts cannot read or send cross-site.
    FLASK_ADMIN_SWATCH = "cerulean"
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    # Set SESSION_COOKIE_SECURE=1 when the site is served over HTTPS.
    SESSION_COOKIE_SECURE = _bool("SESSION_COOKIE_SECURE", False)
    REMEMBER_COOKIE_SECURE = SESSION_COOKIE_SECURE
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    WTF_CSRF_TIME_LIMIT = None  # a token lives as long as the login session
    # Retraining (chatbot/retrain.py): a new model whose dev chrF is more than
    # QUALITY_GATE_MARGIN points below current's is kept but not activated
    # unless forced; RETRAIN_ARGS are extra flags for `python -m chatbot.train`.
    QUALITY_GATE_MARGIN = _float("QUALITY_GATE_MARGIN", 2.0)
    RETRAIN_ARGS = os.environ.get("RETRAIN_ARGS") or ""


def normalise_database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs (the usual form) use psycopg 3:
    SQLAlchemy would otherwise pick psycopg2, which is not installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_secret_key(instance_path) -> str:
    """Read the instance folder's secret key, creating it (mode 600) on first run."""
    path = Path(instance_path) / "secret_key"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
    return key
