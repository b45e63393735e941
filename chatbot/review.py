"""The reviewers' side: login, and the Flask-Admin screens at /admin.

Everything here is built per app in ``init_app`` (Flask-Admin views hold a
blueprint and a reference to their ``Admin``, so one instance can serve only
one app); create_app may be called many times in one process.

CSRF: every admin form, the bulk-action form included, derives from
``ReviewSecureForm``, Flask-Admin's ``SecureForm`` made to use Flask-WTF's
token.  So a POST is checked twice with the same token: first by the app-wide
``CSRFProtect`` before the view runs, then by the form's own ``csrf_token``
field when Flask-Admin validates it.
"""
import gettext as _stdlib_gettext
import logging
from datetime import datetime, time, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import flask_admin
from markupsafe import Markup
import sqlalchemy as sa
from flask import (Blueprint, current_app, flash, redirect, render_template, request,
                   url_for)
from flask_admin import Admin, AdminIndexView, expose
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla import filters as sqla_filters
from flask_admin.form import SecureForm
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user, login_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import PasswordField, StringField, TextAreaField
from wtforms.csrf.core import CSRF
from wtforms.validators import DataRequired, Length, Optional

from . import models_admin, queue_admin, security
from .database import (AUDIT_ACTIONS, FEEDBACK_DOWN, FEEDBACK_LABELS, NEEDS_DELETION, REVIEWED,
                       ROUTE_FALLBACK, ROUTE_IMPORT, ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_MODEL, STATUS_LABELS, UNREVIEWED,
                       Exchange, ReviewAudit, Reviewer, audit, review_queue_order)
from .extensions import db, login_manager

log = logging.getLogger(__name__)

ADMIN_NAME = "한마디 검토"
LOGIN_FAILED = "아이디 또는 비밀번호가 올바르지 않습니다"
LOGIN_THROTTLED = "로그인 시도가 너무 많습니다. {minutes}분 뒤에 다시 시도하세요."
ROUTE_LABELS = {
    ROUTE_MODEL: "모델이 작성",
    ROUTE_KNOWN: "학습 데이터 답변",
    ROUTE_MEMORY: "검토된 답변",
    ROUTE_FALLBACK: "기본 응답",
    ROUTE_IMPORT: "가져온 쌍",
}

# ---------------------------------------------------------------------------
# Korean for Flask-Admin's own words ("List", "Save", "With selected", ...).
# Flask-Babel is not installed, so Flask-Admin would show English; its Korean
# catalog ships with it and the standard library can read it.
_FLASK_ADMIN_LOCALES = Path(flask_admin.__file__).resolve().parent / "translations"
_ko = _stdlib_gettext.translation("admin", localedir=str(_FLASK_ADMIN_LOCALES),
                                  languages=["ko"], fallback=True)


def ko_gettext(string, **variables):
    text = _ko.gettext(str(string))
    return text % variables if variables else text


def ko_ngettext(singular, plural, num, **variables):
    variables.setdefault("num", num)
    text = _ko.ngettext(str(singular), str(plural), num)
    return text % variables


# ---------------------------------------------------------------------------
# CSRF for Flask-Admin forms

class _FlaskWTFCSRF(CSRF):
    """A WTForms CSRF implementation that uses Flask-WTF's session token,
    the same token ``CSRFProtect`` checks on every POST."""

    def generate_csrf_token(self, csrf_token_field):
        return generate_csrf()

    def validate_csrf_token(self, form, field):
        # Raises wtforms.ValidationError when the token is missing or wrong.
        validate_csrf(field.data)


class ReviewSecureForm(SecureForm):
    """Flask-Admin's SecureForm, checked against Flask-WTF's token.

    Plain SecureForm keeps its own token, which the app-wide CSRFProtect
    would reject as invalid; this one shares the token, so both checks pass
    for a real form and both fail for a forged one.
    """

    class Meta:
        csrf_class = _FlaskWTFCSRF

        @property
        def csrf(self):
            return current_app.config.get("WTF_CSRF_ENABLED", True)


# ---------------------------------------------------------------------------
# Login

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


# ---------------------------------------------------------------------------
# Flask-Admin views

class _ReviewerOnly:
    """Mixin: the view needs a logged-in reviewer; others go to the login page."""

    def is_accessible(self):
        return current_user.is_authenticated

    def inaccessible_callback(self, name, **kwargs):
        flash(login_manager.login_message, login_manager.login_message_category)
        target = request.full_path if request.query_string else request.path
        return redirect(url_for("auth.login", next=target))

    def render(self, template, **kwargs):
        # Flask-Admin's own strings in Korean (applied after its defaults).
        self._template_args.update(_gettext=ko_gettext, _ngettext=ko_ngettext)
        return super().render(template, **kwargs)


class ReviewIndexView(_ReviewerOnly, AdminIndexView):
    @expose("/")
    def index(self):
        counts = dict(db.session.execute(
            sa.select(Exchange.status, sa.func.count()).group_by(Exchange.status)).all())
        rows = [(status, label, counts.get(status, 0)) for status, label in STATUS_LABELS.items()]
        disliked = db.session.scalar(sa.select(sa.func.count()).select_from(Exchange).where(
            Exchange.feedback == FEEDBACK_DOWN, Exchange.status == UNREVIEWED))
        return self.render("admin/review_index.html", status_rows=rows, disliked=disliked,
                           needs_deletion=counts.get(NEEDS_DELETION, 0))


class ChoiceFilter(sqla_filters.FilterEqual):
    def operation(self):
        return "같음"


class CreatedBetweenFilter(sqla_filters.DateBetweenFilter):
    """From the first day's start to the end of the last day (both included)."""

    def apply(self, query, value, alias=None):
        start, end = value
        column = self.get_column(alias)
        return query.filter(column >= datetime.combine(start, time.min),
                            column < datetime.combine(end + timedelta(days=1), time.min))

    def operation(self):
        return "기간"


def _empty_to_none(value):
    if value is None:
        return None
    value = value.strip()
    return value or None


def _format_status(view, context, model, name):
    return STATUS_LABELS.get(model.status, model.status)


def _format_route(view, context, model, name):
    return ROUTE_LABELS.get(model.route, model.route)


def _format_text(view, context, model, name):
    """User text, escaped, in a span that keeps its line breaks."""
    value = getattr(model, name)
    return Markup('<span class="review-text">{}</span>').format(value) if value else ""


def _format_feedback(view, context, model, name):
    value = FEEDBACK_LABELS.get(model.feedback)
    return Markup('<span title="{}">{}</span>').format(
        "싫어요" if model.feedback == FEEDBACK_DOWN else "좋아요", value) if value else ""


def _format_time(view, context, model, name):
    value = getattr(model, name)
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


class ExchangeView(_ReviewerOnly, ModelView):
    """The list of chat exchanges, for reviewers to correct and mark.

    Unsorted, the list is the review queue (``review_queue_order``): 👎 not yet
    reviewed first, then the rest not yet reviewed, then the others; newest
    first within each.  A column heading sorts by that column instead.
    """

    form_base_class = ReviewSecureForm
    edit_template = "admin/exchange_edit.html"

    can_create = False
    can_delete = False  # "needs deletion" is a status, nothing is erased here
    can_edit = True
    can_view_details = True
    can_export = False
    page_size = 50
    can_set_page_size = True

    column_list = ("question", "answer", "corrected_answer", "feedback", "status", "route", "model_version",
                   "session_id", "created_at", "reviewer", "reviewed_at")
    column_details_list = ("id",) + column_list + ("question_key",)
    column_labels = {
        "id": "번호",
        "question": "질문",
        "question_key": "질문 키",
        "answer": "답변",
        "corrected_answer": "수정한 답변",
        "status": "상태",
        "feedback": "평가",
        "route": "경로",
        "model_version": "모델 버전",
        "session_id": "세션",
        "created_at": "생성 시각 (UTC)",
        "reviewer": "검토자",
        "reviewed_at": "검토 시각 (UTC)",
    }
    column_formatters = {
        "question": _format_text,
        "answer": _format_text,
        "corrected_answer": _format_text,
        "status": _format_status,
        "feedback": _format_feedback,
        "route": _format_route,
        "created_at": _format_time,
        "reviewed_at": _format_time,
    }
    column_formatters_detail = column_formatters
    column_sortable_list = ("status", "feedback", "route", "created_at", "reviewer", "reviewed_at")
    column_searchable_list = ("question", "answer", "corrected_answer")
    column_filters = (
        ChoiceFilter(Exchange.status, "상태", options=tuple(STATUS_LABELS.items())),
        CreatedBetweenFilter(Exchange.created_at, "생성일 (UTC)"),
        ChoiceFilter(Exchange.feedback, "평가", options=tuple(FEEDBACK_LABELS.items())),
        ChoiceFilter(Exchange.route, "경로", options=tuple(ROUTE_LABELS.items())),
    )

    # Only these two fields exist in the edit form, so nothing else can be
    # changed through it, whatever a request sends.
    form_columns = ("corrected_answer", "status")
    form_overrides = {"corrected_answer": TextAreaField}
    form_choices = {"status": list(STATUS_LABELS.items())}
    form_args = {
        "corrected_answer": {
            "label": "수정한 답변",
            "description": "비워 두면 원래 답변을 그대로 씁니다.",
            "filters": [_empty_to_none],
            "validators": [Optional(), Length(max=2000)],
        },
        "status": {"label": "상태"},
    }
    form_widget_args = {"corrected_answer": {"rows": 4}}

    def _apply_sorting(self, query, joins, sort_column, sort_desc):
        if sort_column is None:  # no column chosen: the review queue
            return query.order_by(*review_queue_order()), joins
        return super()._apply_sorting(query, joins, sort_column, sort_desc)

    def on_model_change(self, form, model, is_created):
        if form.status.data != form.status.object_data:
            model.mark(form.status.data, current_user.username, old_status=form.status.object_data)
        elif form.corrected_answer.data != form.corrected_answer.object_data:
            audit(model, "edit", current_user.username, old_status=model.status)

    # -- bulk actions -------------------------------------------------------

    def _bulk_mark(self, ids, status):
        wanted = set()
        for value in ids:
            try:
                wanted.add(int(value))
            except (TypeError, ValueError):
                continue
        if not wanted:
            flash("선택한 항목이 없습니다.", "warning")
            return
        label = STATUS_LABELS[status]
        try:
            rows = db.session.scalars(sa.select(Exchange).where(Exchange.id.in_(wanted))).all()
            changed = [row for row in rows if row.status != status]
            for row in changed:
                row.mark(status, current_user.username)
            db.session.commit()
        except Exception as exc:
            db.session.rollback()
            if not self.handle_view_exception(exc):
                raise
            log.exception("bulk mark %s failed", status)
            flash(f"상태를 바꾸지 못했습니다: {exc}", "danger")
            return
        message = f"{len(changed)}건을 '{label}'(으)로 표시했습니다."
        if len(rows) > len(changed):
            message += f" 이미 '{label}'인 {len(rows) - len(changed)}건은 그대로 두었습니다."
        flash(message, "success")

    @action("mark_reviewed", "검토 완료로 표시", "선택한 대화를 검토 완료로 표시할까요?")
    def action_mark_reviewed(self, ids):
        self._bulk_mark(ids, REVIEWED)

    @action("mark_needs_deletion", "삭제 필요로 표시", "선택한 대화를 삭제 필요로 표시할까요?")
    def action_mark_needs_deletion(self, ids):
        self._bulk_mark(ids, NEEDS_DELETION)

    @action("mark_unreviewed", "미검토로 되돌리기", "선택한 대화를 미검토로 되돌릴까요?")
    def action_mark_unreviewed(self, ids):
        self._bulk_mark(ids, UNREVIEWED)


class ReviewQueueView(_ReviewerOnly, queue_admin.QueueView):
    """Grouped unreviewed questions, the next-unreviewed flow, purge, CSV (chatbot/queue_admin.py)."""


def _format_audit_status(view, context, model, name):
    value = getattr(model, name)
    return STATUS_LABELS.get(value, value or "")


class AuditView(_ReviewerOnly, ModelView):
    """Who reviewed what, and when (read only)."""

    can_create = can_edit = can_delete = False
    can_view_details = True
    page_size = 100
    column_default_sort = ("id", True)
    column_list = ("created_at", "reviewer", "action", "exchange_id", "question", "old_status", "new_status",
                   "corrected_answer")
    column_labels = {"created_at": "시각 (UTC)", "reviewer": "검토자", "action": "작업", "exchange_id": "대화 번호",
                     "question": "질문", "old_status": "이전 상태", "new_status": "새 상태",
                     "corrected_answer": "수정한 답변"}
    column_formatters = {
        "created_at": _format_time, "question": _format_text, "corrected_answer": _format_text,
        "old_status": _format_audit_status, "new_status": _format_audit_status,
        "action": lambda v, c, m, n: AUDIT_ACTIONS.get(m.action, m.action),
    }
    column_filters = ("reviewer", "exchange_id")
    column_searchable_list = ("question",)


class ReviewModelsView(_ReviewerOnly, models_admin.ModelsView):
    """Model versions, rollback, delete and retrain (chatbot/models_admin.py)."""


# ---------------------------------------------------------------------------

def _local_swatch(name):
    """The Bootswatch theme to use, if Flask-Admin ships it without fetching
    anything from the internet (some swatches @import Google Fonts)."""
    static = Path(flask_admin.__file__).resolve().parent / "static" / "bootstrap" / "bootstrap4" / "swatch"
    css = static / (name or "") / "bootstrap.min.css"
    try:
        text = css.read_text(encoding="utf-8", errors="replace")
    except OSError:
        log.warning("FLASK_ADMIN_SWATCH %r not found; using the default look", name)
        return "default"
    if "@import url(http" in text.replace('"', "").replace("'", ""):
        log.warning("FLASK_ADMIN_SWATCH %r loads fonts from the internet; using the default look", name)
        return "default"
    return name


def init_app(app):
    """Register login and the /admin screens on ``app``."""
    login_manager.user_loader(_load_reviewer)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "로그인이 필요합니다."
    login_manager.login_message_category = "warning"

    app.extensions["chatbot.login_throttle"] = security.LoginThrottle(
        app.config["LOGIN_MAX_FAILURES"], app.config["LOGIN_WINDOW_SECONDS"])
    auth_bp = _create_auth_blueprint()
    app.register_blueprint(auth_bp)

    theme = Bootstrap4Theme(swatch=_local_swatch(app.config.get("FLASK_ADMIN_SWATCH", "default")),
                            fluid=True, base_template="admin/review_base.html")
    # Flask-Admin puts this nonce on every <script> it renders; the response's
    # CSP then allows that nonce (chatbot/security.py).
    admin = Admin(app, name=ADMIN_NAME, theme=theme, csp_nonce_generator=security.csp_nonce,
                  index_view=ReviewIndexView(name="현황", url="/admin"))
    admin.add_view(ExchangeView(Exchange, db.session, name="대화 검토", endpoint="exchange"))
    admin.add_view(ReviewQueueView(name="검토 대기열", endpoint="queue", url="/admin/queue"))
    admin.add_view(AuditView(ReviewAudit, db.session, name="검토 기록", endpoint="audit"))
    admin.add_view(ReviewModelsView(name="모델", endpoint="models", url="/admin/models"))
    models_admin.init_app(app)
    app.extensions["review_admin"] = admin

    private_blueprints = {auth_bp.name} | {view.endpoint for view in admin._views}

    @app.after_request
    def _private_page_headers(response):
        # Review pages hold users' messages: no caching, no framing.
        if request.blueprint in private_blueprints and not (request.endpoint or "").endswith(".static"):
            response.headers.setdefault("Cache-Control", "no-store")
            response.headers.setdefault("X-Frame-Options", "DENY")
            response.headers.setdefault("Referrer-Policy", "same-origin")
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return admin
