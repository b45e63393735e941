"""Shared fixtures: an app on a real SQLite file with the real migrations."""
import re
from pathlib import Path

import flask_migrate
import pytest

from chatbot import create_app
from chatbot.database import Reviewer
from chatbot.extensions import db

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "chatbot_data" / "ChatbotData.train.csv"


@pytest.fixture
def app(tmp_path):
    app = create_app({
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": "sqlite:///" + str(tmp_path / "chatbot.db"),
        "MODEL_DIR": str(tmp_path / "models"),
    })
    with app.app_context():
        flask_migrate.upgrade()
    yield app
    with app.app_context():
        db.engine.dispose()


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
