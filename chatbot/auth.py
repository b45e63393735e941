"""Reviewers' login and logout (the ``auth`` blueprint), as in Flask's tutorial.

Failed logins are throttled per address and per name (security.LoginThrottle);
a wrong name costs as much time as a wrong password, so the page does not
reveal which accounts exist.  Logging out is a POST with a CSRF token.

A login is checked on the server at every request, so a copied cookie is
worth no more than the login it came from: the cookie holds the reviewer's
session token (database.Reviewer), which logging out, a new password and
removing the reviewer replace, and the time of the login, which is refused
REVIEW_SESSION_HOURS later.  SESSION_PROTECTION "strong" (Flask-Login's)
drops a login whose cookie comes back from another address or browser.
No "remember me" cookie is issued; one sent anyway carries no login time
and is refused too.
"""
import logging
import time
from datetime import timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length

from . import security
from .database import Reviewer
from .extensions import db, login_manager

log = logging.getLogger(__name__)

LOGIN_TIME_KEY = "login_at"  # in the session: when this login began (time.time())
LOGIN_FAILED = "아이디 또는 비밀번호가 올바르지 않습니다"
LOGIN_THROTTLED = "로그인 시도가 너무 많습니다. {minutes}분 뒤에 다시 시도하세요."


class LoginForm(FlaskForm):
    username = StringField("아이디", validators=[DataRequired("아이디를 입력하세요."), Length(max=80)])
    password = PasswordField("비밀번호", validators=[DataRequired("비밀번호를 입력하세요."), Length(max=1024)])


class LogoutForm(FlaskForm):
    """Only a CSRF token: logging out is a POST, so other sites cannot do it."""


# Checked when the username does not exist, so that a wrong name takes as
# long as a wrong password and does not reveal which accounts exist.
_DUMMY_HASH = generate_password_hash("not-a-real-password")


def safe_next(target):
    """``target`` if it is a path on this site (like ``/admin/exchange/?page=2``), else None."""
    if not target or not isinstance(target, str):
        return None
    if not target.startswith("/") or target.startswith("//"):
        return None
    if any(ch == "\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _after_login_url():
    return safe_next(request.values.get("next")) or url_for("admin.index")


def _throttle() -> security.LoginThrottle:
    return current_app.extensions["chatbot.login_throttle"]


def _throttled(wait, form):
    minutes = max(1, int(wait // 60 + (1 if wait % 60 else 0)))
    log.warning("login refused for %r from %s: too many failures", form.username.data[:80], request.remote_addr)
    flash(LOGIN_THROTTLED.format(minutes=minutes), "danger")
    form.password.data = ""
    response = current_app.make_response((
        render_template("auth/login.html", form=form, next=safe_next(request.values.get("next")) or ""), 429))
    response.headers["Retry-After"] = str(int(wait) + 1)
    return response


def _load_reviewer(token):
    """Flask-Login's user loader: the reviewer whose current session token the
    cookie holds, while the login is younger than REVIEW_SESSION_HOURS."""
    started = session.get(LOGIN_TIME_KEY)
    if not isinstance(token, str) or not isinstance(started, (int, float)) or isinstance(started, bool):
        return None
    if time.time() - started > current_app.config["REVIEW_SESSION_HOURS"] * 3600:
        return None
    return db.session.execute(sa.select(Reviewer).filter_by(session_token=token)).scalar_one_or_none()


def _create_auth_blueprint():
    bp = Blueprint("auth", __name__)

    @bp.route("/login", methods=["GET", "POST"])
    def login():
        if current_user.is_authenticated:
            return redirect(_after_login_url())
        form = LoginForm()
        status = 200
        if form.validate_on_submit():
            # Counted as a failure before the password is checked (taken back
            # if it is right), so parallel guesses cannot pass the limit.
            address, name = request.remote_addr or "-", form.username.data.strip()
            wait = _throttle().begin(address, name)
            if wait:
                return _throttled(wait, form)
            reviewer = db.session.execute(sa.select(Reviewer).filter_by(username=name)).scalar_one_or_none()
            if reviewer is None:
                check_password_hash(_DUMMY_HASH, form.password.data)
            elif reviewer.check_password(form.password.data):
                _throttle().succeeded(address, name)
                login_user(reviewer)
                session[LOGIN_TIME_KEY] = time.time()
                log.info("reviewer %s logged in", reviewer.username)
                return redirect(_after_login_url())
            log.warning("failed login for %r from %s", form.username.data[:80], request.remote_addr)
            flash(LOGIN_FAILED, "danger")
            status = 401
        elif request.method == "POST":
            status = 400
        form.password.data = ""
        return render_template("auth/login.html", form=form,
                               next=safe_next(request.values.get("next")) or ""), status

    @bp.route("/logout", methods=["GET", "POST"])
    def logout():
        # GET only shows a button: a link or image on another site must not be
        # able to log a reviewer out. The POST carries the CSRF token.
        form = LogoutForm()
        if form.validate_on_submit():
            if current_user.is_authenticated:  # every browser of this reviewer, not only this one
                current_user.end_sessions()
                db.session.commit()
            logout_user()
            session.pop(LOGIN_TIME_KEY, None)
            flash("로그아웃했습니다.", "info")
            return redirect(url_for("auth.login"))
        if request.method == "POST":
            return render_template("auth/logout.html", form=form), 400
        return render_template("auth/logout.html", form=form)

    @bp.errorhandler(CSRFError)
    def csrf_error(error):
        flash("보안 토큰이 없거나 만료되었습니다. 다시 시도하세요.", "danger")
        if request.endpoint == "auth.logout":
            return render_template("auth/logout.html", form=LogoutForm(formdata=None)), 400
        return render_template("auth/login.html", form=LoginForm(formdata=None),
                               next=safe_next(request.values.get("next")) or ""), 400

    return bp


def init_app(app):
    """Flask-Login and the login blueprint; returns the blueprint."""
    login_manager.user_loader(_load_reviewer)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "로그인이 필요합니다."
    login_manager.login_message_category = "warning"
    # The session cookie's own signature expires with the login too.
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(hours=app.config["REVIEW_SESSION_HOURS"])
    app.extensions["chatbot.login_throttle"] = security.LoginThrottle(
        app.config["LOGIN_MAX_FAILURES"], app.config["LOGIN_WINDOW_SECONDS"])
    bp = _create_auth_blueprint()
    app.register_blueprint(bp)
    return bp
