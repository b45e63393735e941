"""Shared fixtures: an app on a real SQLite file with the real migrations,
and for the end-to-end tests a real browser (Debian's chromium via Playwright)."""
import os
import re
import shutil
from pathlib import Path

import flask_migrate
import pytest

from chatbot import create_app
from chatbot.database import Reviewer
from chatbot.extensions import db

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chatbot_data" / "ChatbotData.train.csv"


@pytest.fixture
def make_app(tmp_path):
    """make_app(**config): an app on a migrated SQLite file and a model dir in
    tmp_path, config overriding the test defaults."""
    made = []

    def make(**config):
        app = create_app({
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "chatbot.db"),
            "MODEL_DIR": str(tmp_path / "models"),
            # Every test client comes from 127.0.0.1: the per-address limits
            # are off unless a test is about them (tests/test_limits.py).
            "ADDRESS_MESSAGE_RATE": 0, "CONNECT_RATE": 0, "HANDSHAKE_TOTAL_RATE": 0, "HTTP_LIMIT": "",
            **config,
        })
        with app.app_context():
            flask_migrate.upgrade()
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


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
            reviewer = Reviewer(username=name)
            reviewer.set_password(password)
            db.session.add(reviewer)
            db.session.commit()
            return db.session.get(Reviewer, reviewer.id)
    return make


def csrf_token(html: str) -> str:
    """The CSRF token in a rendered form."""
    match = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html) or \
        re.search(r'value="([^"]+)"[^>]*name="csrf_token"', html)
    assert match, "no csrf_token in the page"
    return match.group(1)


# -- the browser -------------------------------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]


def pytest_configure(config):
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
