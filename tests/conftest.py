"""Shared fixtures: an app on a real SQLite file with the real migrations, a
reviewer and a logged-in client, a throwaway PostgreSQL server, and for the
end-to-end tests a real browser (Debian's chromium via Playwright).  Plain helpers are in tests/helpers.py."""
import os
import shutil

import flask_migrate
import pytest

from chatbot import create_app
from chatbot.database import Reviewer
from chatbot.extensions import db
from helpers import COMPILED_TEMPLATES, PASSWORD, VIEWPORTS, WATCH, migrated_sqlite, password_hash, token_in
import services


@pytest.fixture
def make_app(tmp_path):
    """make_app(**config): an app on a migrated SQLite file and a model dir in
    tmp_path, config overriding the test defaults.  A new SQLite file is a
    copy of one migrated once (helpers.migrated_sqlite); another database
    (SQLALCHEMY_DATABASE_URI), or the file of an earlier call, is upgraded."""
    made = []

    def make(**config):
        database = tmp_path / "chatbot.db"
        copied = "SQLALCHEMY_DATABASE_URI" not in config and not database.exists()
        if copied:  # a new database: a copy of a migrated one
            migrated_sqlite(database)
        app = create_app({
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(database),
            "MODEL_DIR": str(tmp_path / "models"),
            # Every test client comes from 127.0.0.1: the per-address limits
            # are off unless a test is about them (tests/test_limits.py).
            "ADDRESS_MESSAGE_RATE": 0, "CONNECT_RATE": 0, "HANDSHAKE_TOTAL_RATE": 0, "HTTP_LIMIT": "",
            # Tiny test models calibrate a threshold on one or two dev
            # questions: answer everything unless a test is about the
            # fallback (tests/test_confidence.py).
            "MIN_CONFIDENCE": 0,
            # The queue's groups by meaning are made in the background after
            # each chat: off unless a test is about them (tests/test_grouping.py),
            # so that other tests' queues group by exact key, as they expect.
            "QUEUE_MEANING_GROUPS": False,
            **config,
        })
        if not copied:
            with app.app_context():
                flask_migrate.upgrade()
        app.jinja_env.bytecode_cache = COMPILED_TEMPLATES
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server (tests/services.py) for a test module;
    each test makes its own database on it (postgres.create_database)."""
    services.ensure_installed()
    server = services.Postgres(None)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_reviewer(app):
    def make(name="reviewer", password="correct horse battery"):
        with app.app_context():
            reviewer = Reviewer(username=name, password_hash=password_hash(password))
            db.session.add(reviewer)
            db.session.commit()
            return db.session.get(Reviewer, reviewer.id)
    return make


@pytest.fixture
def reviewer(make_reviewer):
    """The reviewer "kim", with helpers.PASSWORD."""
    return make_reviewer("kim", PASSWORD)


class AuthActions:
    """Logs ``client`` in and out (as in Flask's flaskr tutorial), by default as
    the ``reviewer`` fixture's "kim"."""

    def __init__(self, client):
        self._client = client

    def login(self, username="kim", password=PASSWORD, next_url=None):
        token = token_in(self._client.get("/login").get_data(as_text=True))
        data = {"csrf_token": token, "username": username, "password": password}
        if next_url is not None:
            data["next"] = next_url
        return self._client.post("/login", data=data)

    def logout(self):
        token = token_in(self._client.get("/logout").get_data(as_text=True))
        return self._client.post("/logout", data={"csrf_token": token})


@pytest.fixture
def auth(client):
    return AuthActions(client)


@pytest.fixture
def logged_in(client, reviewer, auth):
    """``client``, logged in as the reviewer."""
    response = auth.login()
    assert response.status_code == 302
    return client


# -- the browser -------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def pytest_configure(config):
    # One cache of meaning vectors for every model a test process trains (and
    # the servers it starts): each question is embedded once per process.
    # Each xdist worker has a cache of its own: a trainer reads back the file
    # its embedding child just wrote, which another worker's could replace.
    import tempfile
    cache = os.environ.get("MEANING_CACHE_DIR") or tempfile.mkdtemp(prefix="test-meaning-cache-")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker:
        cache = os.path.join(cache, worker)
        os.makedirs(cache, exist_ok=True)
    os.environ["MEANING_CACHE_DIR"] = cache
    config.addinivalue_line("markers", "browser: drives a real chromium against a real server")
    config.addinivalue_line("markers", "fuzz: sends malformed Socket.IO traffic to a real server")
    config.addinivalue_line("markers", "multiprocess: two servers on Redis and PostgreSQL (tests/services.py)")


def chromium_path():
    """Debian's chromium (``make test`` installs it), or $CHROMIUM."""
    for candidate in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _missing(reason):
    # In CI a missing browser is a broken set-up, not a reason to test less.
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: browser tests must run; `make test` installs chromium)", pytrace=False)
    pytest.skip(f"{reason}; run `make test` as root to install it, or set CHROMIUM=/path/to/chromium")


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    if executable is None:
        _missing("chromium not found")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (requirements-test.txt)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser):
    """context(kind="desktop"): a new browser context (a VIEWPORTS kind) that
    records CSP violations, dialogs and console errors; closed after the test."""
    contexts = []

    def make(kind="desktop"):
        ctx = browser.new_context(locale="ko-KR", **VIEWPORTS[kind])
        ctx.add_init_script(WATCH)
        ctx.dialogs = []
        ctx.accept_dialogs = False

        def on_dialog(dialog):
            ctx.dialogs.append(dialog.message)
            dialog.accept() if ctx.accept_dialogs else dialog.dismiss()

        def on_page(page):
            page.on("dialog", on_dialog)
            page.console_errors = []
            page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
            page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        ctx.on("page", on_page)
        contexts.append(ctx)
        return ctx

    yield make
    for ctx in contexts:
        ctx.close()


# -- two xdist workers (pytest.ini: -n 2 --dist loadscope) ------------------------------

# The tests that measure a server's memory, threads or timing, or make
# cgroups: one worker runs them one after another while the other runs the rest.
SERIAL = (
    "tests/test_attack.py::",
    "tests/test_bench_smallvm.py::",
    "tests/test_fuzz.py::",
    "tests/test_hostile.py::",
    "tests/test_multiprocess.py::",
    "tests/test_offhub.py::test_get_answers_at_once_while_a_reviewer_downloads_100000_exchanges",
)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadscope with the SERIAL tests as one scope, the first sent
    out (the largest), and every other test a scope of its own.  Not
    xdist_group marks: pytest-xdist 3.8 loses them under pytest 9.2
    (pytest-dev/pytest-xdist#1386)."""
    from xdist.scheduler import LoadScopeScheduling

    class SerialTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "serial" if nodeid.startswith(SERIAL) else nodeid

    if config.getvalue("dist") == "loadscope":
        return SerialTogether(config, log)
    return None
