"""Configuration from environment variables, with safe defaults.

Every setting can be overridden by an environment variable of the same name.
SECRET_KEY is never in the source: without the variable, one is generated
once into the instance folder (see ``load_secret_key``).
"""
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

from .memory import connections_for, detected_memory_mb

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def env_number(name, default, kind, what):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be {what}, got {value!r}") from None


def env_int(name, default):
    return env_number(name, default, int, "an integer")


def env_float(name, default):
    return env_number(name, default, float, "a number")


def env_fraction(name):
    """A number from 0 to 1, or None when the variable is unset."""
    value = env_number(name, None, float, "a number from 0 to 1")
    if value is not None and not 0 <= value <= 1:
        raise RuntimeError(f"environment variable {name} must be a number from 0 to 1, got {value!r}")
    return value


_ORIGIN = re.compile(r"^https?://([a-z0-9-]+(\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")


def parse_origins(text, name="ALLOWED_ORIGINS"):
    """Origins (``https://shop.example.com``) separated by commas or spaces,
    lower-cased and without a trailing slash.  Anything else is refused at
    start-up: each one goes into a CSP header as it is."""
    origins = []
    for item in re.split(r"[\s,]+", text or ""):
        origin = item.strip().rstrip("/").lower()
        if not origin:
            continue
        if not _ORIGIN.match(origin):
            raise RuntimeError(f"{name}: {item!r} is not an origin like https://shop.example.com")
        if origin not in origins:
            origins.append(origin)
    return origins


def env_bool(name, default):
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
    # A database server may drop idle connections: test each one as it is
    # taken from the pool (create_app leaves this out for SQLite, a file).
    SQLALCHEMY_ENGINE_OPTIONS = {"pool_pre_ping": True}
    MODEL_DIR = os.environ.get("MODEL_DIR") or str(PROJECT_ROOT / "models")
    STARTER_PAIRS = os.environ.get("STARTER_PAIRS") or str(PROJECT_ROOT / "chatbot" / "data" / "starter_pairs.csv")
    MAX_MESSAGE_CHARS = env_int("MAX_MESSAGE_CHARS", 500)
    # Reply workers (default: one per CPU core), each decoding up to
    # REPLY_BATCH_MAX questions that arrived together, waiting at most
    # REPLY_BATCH_WINDOW_MS for company, on MODEL_THREADS BLAS threads.  The models
    # are small: more threads per reply only fight each other under load.
    REPLY_WORKERS = env_int("REPLY_WORKERS", os.cpu_count() or 1)
    REPLY_BATCH_MAX = env_int("REPLY_BATCH_MAX", 8)
    REPLY_BATCH_WINDOW_MS = env_float("REPLY_BATCH_WINDOW_MS", 0.0)
    # TORCH_THREADS: its name before the server answered with NumPy.
    MODEL_THREADS = env_int("MODEL_THREADS", env_int("TORCH_THREADS", 1))
    # What a question means (chatbot/meaning.py): the sentence encoder's name
    # ("e5-small", multilingual-e5-small 4-bit; "off": words only), another
    # model file for it if wanted, and how many questions' vectors are kept
    # (about 1.5 kB each).  It runs on MODEL_THREADS threads.
    MEANING_ENCODER = os.environ.get("MEANING_ENCODER") or "e5-small"
    MEANING_MODEL_FILE = os.environ.get("MEANING_MODEL_FILE") or None
    MEANING_CACHE_SIZE = env_int("MEANING_CACHE_SIZE", 4096)
    # What one client may use (chatbot/limits.py).  Token buckets: events a
    # second on average, and the burst allowed at once; a rate of 0 turns
    # one off.  They are kept per chat session and per client address, not
    # per connection, so neither a reconnect nor a new Socket.IO handshake
    # starts a fresh count.  Every chat event counts against MESSAGE_* (per
    # chat session) and ADDRESS_MESSAGE_* (per address); a `history` also
    # against HISTORY_* (it sends back many rows); Engine.IO handshakes and
    # Socket.IO connects against CONNECT_* (per address).
    MESSAGE_RATE = env_float("MESSAGE_RATE", 5.0)
    MESSAGE_BURST = env_int("MESSAGE_BURST", 10)
    ADDRESS_MESSAGE_RATE = env_float("ADDRESS_MESSAGE_RATE", 15.0)
    ADDRESS_MESSAGE_BURST = env_int("ADDRESS_MESSAGE_BURST", 30)
    HISTORY_RATE = env_float("HISTORY_RATE", 0.1)
    HISTORY_BURST = env_int("HISTORY_BURST", 3)
    CONNECT_RATE = env_float("CONNECT_RATE", 1.0)
    CONNECT_BURST = env_int("CONNECT_BURST", 20)
    # Engine.IO handshakes from all addresses together: a flood of new
    # connections from many addresses is slowed down, so that the chats
    # already open keep their replies fast.  40 a second: at 100, 5,000
    # sockets from 1,000 addresses took all of half a core (bench-attack's
    # CPU quota) and open chats waited up to 3.3 s for a reply (0.8 s at 40).
    HANDSHAKE_TOTAL_RATE = env_float("HANDSHAKE_TOTAL_RATE", 40.0)
    HANDSHAKE_TOTAL_BURST = env_int("HANDSHAKE_TOTAL_BURST", 80)
    # An address that keeps going over those limits: after FLOOD_REFUSAL_BURST
    # rate_limited answers (then FLOOD_REFUSAL_RATE a second), its connections
    # are closed and its handshakes and connects refused (rate_limited, with
    # retry_after) for FLOOD_COOLDOWN_SECONDS (0: never).
    FLOOD_REFUSAL_RATE = env_float("FLOOD_REFUSAL_RATE", 1.0)
    FLOOD_REFUSAL_BURST = env_int("FLOOD_REFUSAL_BURST", 20)
    FLOOD_COOLDOWN_SECONDS = env_float("FLOOD_COOLDOWN_SECONDS", 60.0)
    # Every other HTTP request, per address (Flask-Limiter's syntax; empty:
    # no limit), counted in memory:// (this process) or in Redis
    # (redis://host:6379/1), which several server processes share.
    HTTP_LIMIT = os.environ.get("HTTP_LIMIT", "300/minute")
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI") or "memory://"
    # The REST API (chatbot/api.py) is limited per key instead of per address
    # (HTTP_LIMIT does not apply to it); failed keys are limited per address.
    API_RATE_LIMIT = os.environ.get("API_RATE_LIMIT") or "60/minute;10/second"
    API_AUTH_FAILURE_LIMIT = os.environ.get("API_AUTH_FAILURE_LIMIT") or "20/minute"
    # Seconds a server process trusts a live API key it has seen without
    # asking the database again: how long a key revoked elsewhere (another
    # process, the CLI) may still be accepted here.
    API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 5.0)
    # Open connections per server process, in total and per client address
    # (chatbot/worker.py refuses the rest with 503 / 429; behind a proxy the
    # per-address count uses the forwarded address).
    # Unset, MAX_CONNECTIONS follows from the memory budget: MEMORY_LIMIT_MB
    # (default: the cgroup's limit, else the machine's memory) and the cost of
    # a connection (chatbot/memory.py).  Over MEMORY_HIGH_WATER of the budget
    # (RSS), new connections are refused (503) until memory falls back.
    MEMORY_LIMIT_MB = env_int("MEMORY_LIMIT_MB", 0) or detected_memory_mb()
    MEMORY_HIGH_WATER = env_float("MEMORY_HIGH_WATER", 0.85)
    MAX_CONNECTIONS = env_int("MAX_CONNECTIONS", 0) or connections_for(MEMORY_LIMIT_MB, MEMORY_HIGH_WATER)
    MAX_CONNECTIONS_PER_ADDRESS = env_int("MAX_CONNECTIONS_PER_ADDRESS", 32)
    # Seconds a client has to send a request's headers, and its body.
    HEADER_TIMEOUT = env_int("HEADER_TIMEOUT", 5)
    BODY_TIMEOUT = env_float("BODY_TIMEOUT", 10.0)
    # Request bodies: the admin's CSV import may send MAX_UPLOAD_BYTES (only
    # a logged-in reviewer); every other request MAX_REQUEST_BYTES.  A body
    # over the limit is refused (413) before any of it is read.
    MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 20 * 1024 * 1024)
    MAX_REQUEST_BYTES = env_int("MAX_REQUEST_BYTES", 64 * 1024)
    # Questions waiting for the model; past this the chat answers `busy` at
    # once instead of queueing more work than it can do.
    REPLY_QUEUE_MAX = env_int("REPLY_QUEUE_MAX", 256)
    # A reviewer's heavy work (chatbot/heavy.py: an export, the admin pages
    # that count or search every exchange, a retrain's pairs) runs on its own
    # OS threads, at most this many at once in a server process and this many
    # of one reviewer; past that the request is refused (503 / 429).
    ADMIN_HEAVY_JOBS = env_int("ADMIN_HEAVY_JOBS", 4)
    ADMIN_HEAVY_JOBS_PER_REVIEWER = env_int("ADMIN_HEAVY_JOBS_PER_REVIEWER", 2)
    # The review list's search looks through the newest ADMIN_SEARCH_ROWS
    # exchanges its filters pick, and the queue groups the newest
    # ADMIN_QUEUE_ROWS unreviewed ones: each page reads that many rows at
    # most, however large the database grows.
    ADMIN_SEARCH_ROWS = env_int("ADMIN_SEARCH_ROWS", 50_000)
    # 20,000: the queue page under half a core of a million exchanges took
    # 594 ms at 50,000 and 437 ms at 20,000 (bench/README.md, issue 26).
    ADMIN_QUEUE_ROWS = env_int("ADMIN_QUEUE_ROWS", 20_000)
    # Failed logins: after LOGIN_MAX_FAILURES for one address and user name
    # (or 4x that for one address, any names) within LOGIN_WINDOW_SECONDS,
    # logins from there are refused (429) until the window has passed.
    LOGIN_MAX_FAILURES = env_int("LOGIN_MAX_FAILURES", 5)
    LOGIN_WINDOW_SECONDS = env_int("LOGIN_WINDOW_SECONDS", 300)
    # A reviewer's login lasts this long at most, checked on the server
    # (chatbot/auth.py); "strong": a login whose cookie comes back from
    # another address or browser is dropped (Flask-Login's SESSION_PROTECTION;
    # "basic" only marks it not fresh).
    REVIEW_SESSION_HOURS = env_float("REVIEW_SESSION_HOURS", 12.0)
    SESSION_PROTECTION = os.environ.get("SESSION_PROTECTION") or "strong"
    # Behind a reverse proxy (nginx, Caddy): how many proxies set
    # X-Forwarded-For/-Proto, so the client's address is the real one (for the
    # login limit). 0: the address is the TCP peer's; never trust headers.
    PROXY_COUNT = env_int("PROXY_COUNT", 0)
    # Host names this server answers to (Flask's TRUSTED_HOSTS, Socket.IO
    # included: chatbot/security.py), against DNS rebinding; empty: any.
    ALLOWED_HOSTS = os.environ.get("ALLOWED_HOSTS", "")
    # Flask-SocketIO's async mode.  Unset: "gevent" in a process that gevent
    # has patched (the server: chatbot/worker.py), else "threading" (the
    # flask CLI, tests with Flask-SocketIO's test client).
    SOCKETIO_ASYNC_MODE = os.environ.get("SOCKETIO_ASYNC_MODE") or None
    # Several server processes: a message queue (redis://host:6379/0) through
    # which they share Socket.IO events.  Unset: one process, no queue.
    SOCKETIO_MESSAGE_QUEUE = os.environ.get("SOCKETIO_MESSAGE_QUEUE") or None
    # Each server process checks <MODEL_DIR>/current this often (seconds) and,
    # when it moved, loads the new model and sends its chats a `model` event.
    # 0: no watcher (the model still reloads before the next reply).
    MODEL_WATCH_SECONDS = env_float("MODEL_WATCH_SECONDS", 2.0)
    # Reviewed answers (chatbot/corrections.py) also answer questions whose
    # morphemes have a TF-IDF cosine of at least CORRECTION_MIN_SIMILARITY
    # with a reviewed question's; each process checks the database for other
    # processes' review changes at most every CORRECTION_REFRESH_SECONDS
    # (its own changes count at once).  0.65, until a benchmark tunes it: it
    # keeps 오늘 춘천에 비 와요? (0.72) for a corrected 춘천에는 비가 와요? but
    # not 서울에는 비가 와요? (0.52) or 춘천에는 눈이 와요? (up to 0.63); on
    # ChatbotData (one question per answer indexed, the others asked) the
    # share of matches giving the same answer rises steadily with the
    # threshold (0.29 at 0.6, 0.33 at 0.65, 0.37 at 0.7) while the
    # paraphrases matched fall (24%, 20%, 16%): no knee, a middle value.
    CORRECTION_MIN_SIMILARITY = env_float("CORRECTION_MIN_SIMILARITY", 0.65)
    CORRECTION_REFRESH_SECONDS = env_float("CORRECTION_REFRESH_SECONDS", 2.0)
    # A weaker match, down to CORRECTION_UNSURE_SIMILARITY, still answers a
    # question the bot would otherwise say it does not know: a reviewer's
    # answer to a similar question beats "잘 모르겠어요".
    CORRECTION_UNSURE_SIMILARITY = env_float("CORRECTION_UNSURE_SIMILARITY", 0.4)
    # With a model that matches by meaning (chatbot/meaning.py) the reviewed
    # questions join the training questions in one index: a question gets a
    # reviewer's answer when that reviewed question is the nearest of all
    # (by the model's own score) and the bot is sure enough of it.  Below its
    # threshold, a reviewed question at CORRECTION_MEANING_SIMILARITY or
    # more still beats "잘 모르겠어요".  Tuned on bench-learning's tune half
    # (150 corrections, 300 paraphrases, the starter model): at 0.4, 0.5 and
    # 0.6, 44%, 41% and 31% of paraphrases got their correction at once and
    # 16%, 8% and 3% another question's; 0.5 keeps the wrong ones rare.
    # The newest CORRECTION_MEANING_LIMIT
    # reviewed questions get a meaning vector (about 1.5 kB each, embedded
    # once); older ones then answer only their own question (its key).
    CORRECTION_MEANING_SIMILARITY = env_float("CORRECTION_MEANING_SIMILARITY", 0.5)
    CORRECTION_MEANING_LIMIT = env_int("CORRECTION_MEANING_LIMIT", 2000)
    # Questions' meaning vectors kept in the database (chatbot/meaning_store.py,
    # about 0.9 kB a row), so that a restart embeds nothing again; past this
    # many rows the oldest go.
    MEANING_STORE_ROWS = env_int("MEANING_STORE_ROWS", 20_000)
    # The review queue groups unreviewed questions alike in meaning
    # (chatbot/grouping.py, in the background): a question joins the group
    # whose first question is at a cosine of QUEUE_GROUP_SIMILARITY or more
    # (e5's raw cosine).  At 0.94, 91% of the questions of ChatbotData's
    # paraphrase clusters land in a group of their own answer
    # (bench/group_cut.py).  QUEUE_MEANING_GROUPS=0: the exact key only.
    # At most QUEUE_GROUP_ROWS keys are kept (about 1 kB each; past it the
    # oldest go) and the newest QUEUE_GROUP_LEADERS groups take new questions
    # (1.5 kB of memory each: 15 MB at the default).
    # Before a correction is saved, its page shows which of the past
    # unreviewed questions it would answer at once (chatbot/reach.py): the
    # questions of the newest CORRECTION_PREVIEW_ROWS unreviewed exchanges.
    CORRECTION_PREVIEW_ROWS = env_int("CORRECTION_PREVIEW_ROWS", 20_000)
    QUEUE_MEANING_GROUPS = env_bool("QUEUE_MEANING_GROUPS", True)
    QUEUE_GROUP_SIMILARITY = env_float("QUEUE_GROUP_SIMILARITY", 0.94)
    QUEUE_GROUP_ROWS = env_int("QUEUE_GROUP_ROWS", 200_000)
    QUEUE_GROUP_LEADERS = env_int("QUEUE_GROUP_LEADERS", 10_000)
    # KakaoTalk (chatbot/kakao.py).  The skill's URL secret: unset, an HMAC of
    # SECRET_KEY (so it changes with it); set it to keep a URL across a new
    # SECRET_KEY (URL-safe characters, at least 20).  Kakao waits 5 s for a
    # skill: past KAKAO_REPLY_BUDGET seconds the user gets "잠시만요…" and the
    # answer with their next message (kept in the database).  Rate limits (Flask-Limiter's syntax;
    # empty: none) per KakaoTalk user and for all of them together: they all
    # come from Kakao's few addresses, so HTTP_LIMIT does not apply.
    KAKAO_SKILL_SECRET = os.environ.get("KAKAO_SKILL_SECRET") or None
    KAKAO_REPLY_BUDGET = env_float("KAKAO_REPLY_BUDGET", 3.5)
    # Open Builder's AI chatbot callback (a block with "Callback API" on): a
    # request with a userRequest.callbackUrl is answered at once with
    # useCallback and "잠시만요…", and the answer is POSTed to that URL when
    # it is ready (KAKAO_CALLBACK_TIMEOUT seconds a try, one retry; if both
    # fail, it comes with the user's next message).  Only to the origins in
    # KAKAO_CALLBACK_HOSTS (space- or comma-separated; a bare host name means
    # https://host); any other callbackUrl is refused and logged, and at most
    # KAKAO_CALLBACKS_AT_ONCE wait at a time.  Empty, the default: Kakao's
    # guide does not name its callback host, so set the one your requests'
    # callbackUrl shows.
    KAKAO_CALLBACK_HOSTS = os.environ.get("KAKAO_CALLBACK_HOSTS", "")
    KAKAO_CALLBACK_TIMEOUT = env_float("KAKAO_CALLBACK_TIMEOUT", 10.0)
    KAKAO_CALLBACKS_AT_ONCE = env_int("KAKAO_CALLBACKS_AT_ONCE", 32)
    # Late answers are kept (table kakao_late_answer) this many hours at most,
    # and for this many chat sessions at most (the oldest go).
    KAKAO_LATE_HOURS = env_float("KAKAO_LATE_HOURS", 24.0)
    KAKAO_LATE_ROWS = env_int("KAKAO_LATE_ROWS", 10_000)
    KAKAO_USER_RATE_LIMIT = os.environ.get("KAKAO_USER_RATE_LIMIT", "20/minute")
    KAKAO_TOTAL_RATE_LIMIT = os.environ.get("KAKAO_TOTAL_RATE_LIMIT", "1200/minute")
    # Web sites that may show the chat widget (chatbot/widget.py): /embed's
    # CSP frame-ancestors, and origins whose pages may open a Socket.IO
    # connection (besides the bot's own).  Empty: the bot's own pages only.
    ALLOWED_ORIGINS = parse_origins(os.environ.get("ALLOWED_ORIGINS", ""))
    # Flask-Admin's look, and cookies that scripts cannot read or send cross-site.
    FLASK_ADMIN_SWATCH = "cerulean"
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    # Set SESSION_COOKIE_SECURE=1 when the site is served over HTTPS.
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
    REMEMBER_COOKIE_SECURE = SESSION_COOKIE_SECURE
    REMEMBER_COOKIE_HTTPONLY = True
    REMEMBER_COOKIE_SAMESITE = "Lax"
    WTF_CSRF_TIME_LIMIT = None  # a token lives as long as the login session
    # Below this confidence (0..1) the bot says it does not know instead of
    # answering (route "unsure").  Unset: the threshold the trainer calibrated
    # on its dev split (calibration.json in the model directory); 0 answers
    # everything.  UNSURE_REPLIES: what it says then, one picked at random,
    # separated by "|".
    MIN_CONFIDENCE = env_fraction("MIN_CONFIDENCE")
    UNSURE_REPLIES = [text.strip() for text in (os.environ.get("UNSURE_REPLIES") or
                      "잘 모르겠어요. 다르게 말해 줄래요?|음, 그건 아직 잘 몰라요. 조금 다르게 물어봐 줄래요?|"
                      "아직 배우지 못한 이야기예요. 다른 말로 물어봐 주세요.").split("|") if text.strip()]
    # Retraining (chatbot/retrain.py): a new model whose dev chrF is more than
    # QUALITY_GATE_MARGIN points below current's is kept but not activated
    # unless forced; RETRAIN_ARGS are extra flags for `python -m chatbot.train`.
    QUALITY_GATE_MARGIN = env_float("QUALITY_GATE_MARGIN", 2.0)
    RETRAIN_ARGS = os.environ.get("RETRAIN_ARGS") or ""


def gevent_patched() -> bool:
    """Whether gevent has patched this process's standard library (gunicorn's
    gevent worker does, before it loads the app)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


def normalise_database_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` URLs (the usual form) use psycopg 3:
    SQLAlchemy would otherwise pick psycopg2, which is not installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def load_secret_key(instance_path) -> str:
    """Read the instance folder's secret key, creating it (mode 600) on first run.

    Several server processes may start together on an empty folder: the key
    is written whole to a temporary file and then linked into place, which
    succeeds for exactly one of them; the others read the winner's key.
    """
    path = Path(instance_path) / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key.")  # mode 600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
            os.link(temporary, path)  # fails if another process got there first
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    key = path.read_text().strip()
    if not key:
        raise RuntimeError(f"{path} is empty: delete it and restart, and a new key is made "
                           "(everyone is logged out)")
    return key
