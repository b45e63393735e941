"""A reviewer's login ends for every copy of its cookie: on logout, on a
password reset with ``create-admin``, when the reviewer is removed, and
REVIEW_SESSION_HOURS after it began; a cookie replayed from another address
or browser is refused (chatbot/auth.py).  Flask's test client, a real SQLite
file, the real CLI."""
import time

import sqlalchemy as sa

from chatbot.database import ApiKey, Reviewer
from chatbot.extensions import db
from helpers import PASSWORD, token_in

NEW_PASSWORD = "a brand new passphrase"


def saved_cookie(client):
    """The session cookie as an attacker would copy it from the browser."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def replay(app, cookie, **environ):
    """A fresh client (another browser) that sends only ``cookie``."""
    other = app.test_client()
    other.environ_base.update(environ)
    other.set_cookie("session", cookie)
    return other


def opens_admin(client):
    response = client.get("/admin/")
    if response.status_code == 302:
        assert "/login" in response.headers["Location"]
        return False
    assert response.status_code == 200
    return True


def api_keys(app):
    with app.app_context():
        return db.session.execute(sa.select(ApiKey)).scalars().all()


def test_a_cookie_saved_before_logout_is_refused_after_it(app, logged_in, auth):
    cookie = saved_cookie(logged_in)
    thief = replay(app, cookie)
    assert opens_admin(thief)  # a copied cookie works while the login lasts
    assert auth.logout().status_code == 302
    assert not opens_admin(logged_in)
    assert not opens_admin(thief)
    assert not opens_admin(replay(app, cookie))


def test_a_cookie_saved_before_a_password_reset_is_refused_and_makes_no_api_key(app, logged_in, monkeypatch):
    cookie = saved_cookie(logged_in)
    thief = replay(app, cookie)
    page = thief.get("/admin/api-keys/")
    assert page.status_code == 200
    csrf = token_in(page.get_data(as_text=True))

    monkeypatch.setenv("CHATBOT_ADMIN_PASSWORD", NEW_PASSWORD)
    result = app.test_cli_runner().invoke(args=["create-admin", "kim"])
    assert result.exit_code == 0, result.output

    assert not opens_admin(thief)
    response = thief.post("/admin/api-keys/create", data={"name": "stolen", "csrf_token": csrf})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert api_keys(app) == []
    assert not opens_admin(logged_in)  # the browser that was logged in logs in again
    assert "their sessions have ended" in result.output


def test_a_removed_reviewers_cookie_is_refused_even_by_a_new_reviewer_with_the_same_id(
        app, logged_in, monkeypatch):
    cookie = saved_cookie(logged_in)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["remove-admin", "kim"])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.execute(sa.select(Reviewer)).scalars().all() == []
    assert not opens_admin(replay(app, cookie))

    # SQLite gives the next reviewer the id the removed one had.
    monkeypatch.setenv("CHATBOT_ADMIN_PASSWORD", NEW_PASSWORD)
    assert runner.invoke(args=["create-admin", "lee"]).exit_code == 0
    with app.app_context():
        assert db.session.execute(sa.select(Reviewer.id).filter_by(username="lee")).scalar_one() == 1
    assert not opens_admin(replay(app, cookie))
    assert runner.invoke(args=["remove-admin", "kim"]).exit_code != 0  # no such reviewer any more


def test_a_login_past_its_lifetime_is_refused_even_when_its_cookie_is_replayed(app, logged_in, monkeypatch):
    cookie = saved_cookie(logged_in)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 11 * 3600)
    assert opens_admin(replay(app, cookie))
    monkeypatch.setattr(time, "time", lambda: now + 12 * 3600 + 60)
    assert not opens_admin(replay(app, cookie))
    monkeypatch.undo()

    # A cookie signed just now (any change to the session re-signs it) is
    # still refused if the login it carries began too long ago.
    assert opens_admin(logged_in)
    with logged_in.session_transaction() as session:
        session["login_at"] = time.time() - 12 * 3600 - 60
    assert not opens_admin(logged_in)


def test_the_lifetime_is_configurable(make_app, make_reviewer):
    app = make_app(REVIEW_SESSION_HOURS=0.5)
    make_reviewer("kim", PASSWORD)
    client = app.test_client()
    token = token_in(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"csrf_token": token, "username": "kim", "password": PASSWORD})
    assert opens_admin(client)
    with client.session_transaction() as session:
        session["login_at"] -= 31 * 60
    assert not opens_admin(client)


def test_a_cookie_replayed_from_another_address_or_browser_is_refused(app, logged_in):
    cookie = saved_cookie(logged_in)
    assert opens_admin(replay(app, cookie))
    assert not opens_admin(replay(app, cookie, REMOTE_ADDR="203.0.113.9"))
    assert not opens_admin(replay(app, cookie, HTTP_USER_AGENT="Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"))


def test_logging_in_still_works_and_again_after_logout(app, client, reviewer, auth):
    response = auth.login()
    assert response.status_code == 302 and response.headers["Location"] == "/admin/"
    assert opens_admin(client)
    assert client.get_cookie("remember_token") is None  # no "remember me" cookie is made
    assert client.get_cookie("session").expires is None  # gone when the browser closes
    assert auth.logout().status_code == 302
    assert not opens_admin(client)
    assert auth.login().status_code == 302
    assert opens_admin(client)


def test_a_stale_cookie_cannot_open_the_admins_socket(app, logged_in, auth):
    """The admin's Socket.IO namespace (retrain progress) asks the same loader."""
    from chatbot.extensions import socketio

    cookie = saved_cookie(logged_in)
    assert socketio.test_client(app, namespace="/admin", flask_test_client=replay(app, cookie)).is_connected("/admin")
    auth.logout()
    stale = socketio.test_client(app, namespace="/admin", flask_test_client=replay(app, cookie))
    assert not stale.is_connected("/admin")


def test_a_remember_me_cookie_logs_nobody_in(app, reviewer):
    """None is made, and one made with the secret key and a current session
    token still carries no login time: Flask-Login's remember path is shut."""
    from flask_login.utils import encode_cookie

    with app.test_request_context():
        remember = encode_cookie(str(reviewer.get_id()))
    client = app.test_client()
    client.set_cookie("remember_token", remember)
    assert not opens_admin(client)
