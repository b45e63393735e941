"""Reviewers' login and logout (the ``auth`` blueprint), as in Flask's tutorial.

Failed logins are throttled per address and per name (security.LoginThrottle);
a wrong name costs as much time as a wrong password, so the page does not
reveal which accounts exist.  Logging out is a POST with a CSRF token.
"""
import logging
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
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


def _load_reviewer(user_id):
    try:
        return db.session.get(Reviewer, int(user_id))
    except (TypeError, ValueError):
        return None


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
            logout_user()
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
    app.extensions["chatbot.login_throttle"] = security.LoginThrottle(
        app.config["LOGIN_MAX_FAILURES"], app.config["LOGIN_WINDOW_SECONDS"])
    bp = _create_auth_blueprint()
    app.register_blueprint(bp)
    return bp
