"""The review screens at /admin: the list of exchanges to correct and mark,
the audit log, and the home page's counts; ``init_app`` puts them together
with the queue (queue_admin), the export page (export_admin), the model
versions (versions_admin) and the REST API keys (api_keys_admin).

Everything here is built per app in ``init_app`` (Flask-Admin views hold a
blueprint and a reference to their ``Admin``, so one instance can serve only
one app); create_app may be called many times in one process.  Access, the
Korean words and CSRF are shared by every view (admin_base).
"""
import logging
from collections import Counter
from datetime import datetime, time, timedelta

import sqlalchemy as sa
from flask import abort, current_app, flash, jsonify, request
from flask_admin import Admin, AdminIndexView, expose
from flask_admin.actions import action
from flask_admin.contrib.sqla import ModelView
from flask_admin.contrib.sqla import filters as sqla_filters
from flask_admin.theme import Bootstrap4Theme
from flask_login import current_user
from markupsafe import Markup
from wtforms import TextAreaField
from wtforms.validators import Length, Optional

from . import (analytics_admin, api_keys_admin, auth, export_admin, grouping, heavy, kakao_admin, meaning,
               queue_admin, reach, security, suggest, versions_admin)
from .admin_base import ReviewerOnly, ReviewSecureForm, local_swatch, row_ids
from .batching import Busy
from .database import (AUDIT_ACTIONS, CHANNEL_LABELS, FEEDBACK_DOWN, FEEDBACK_LABELS, NEEDS_DELETION, REVIEWED,
                       ROUTE_LABELS, STATUS_LABELS, UNREVIEWED,
                       Exchange, ExchangeDaily, ReviewAudit, audit, review_queue_order)
from .extensions import db

log = logging.getLogger(__name__)

ADMIN_NAME = "한마디 검토"


def home_counts():
    """The home page's numbers: exchanges per status, the 👎 and the unsure
    ones not yet reviewed, exchanges per channel.

    One statement over exchange_daily, the counts the database keeps per
    day, channel and model version (a few rows a day, not every exchange),
    added up per channel."""
    t = ExchangeDaily.__table__
    statuses = (UNREVIEWED, REVIEWED, NEEDS_DELETION)
    by_status, by_channel = Counter(), Counter()
    disliked = unsure = 0
    for row in db.session.execute(
            sa.select(t.c.channel, *(sa.func.sum(t.c[name]).label(name) for name in
                                     ("exchanges", *statuses, "waiting_down", "waiting_unsure")))
            .group_by(t.c.channel)):
        by_channel[row.channel] += row.exchanges
        for status in statuses:
            by_status[status] += getattr(row, status)
        disliked += row.waiting_down
        unsure += row.waiting_unsure
    return +by_status, disliked, unsure, by_channel  # +: no status at zero


def meaning_problem() -> str | None:
    """Why the sentence encoder could not be loaded in this process, if it
    was tried and failed (not when it is off by choice, or not needed yet)."""
    status = meaning.encoder().status()
    return status["error"] if status["name"] != meaning.OFF else None


class ReviewIndexView(ReviewerOnly, AdminIndexView):
    @expose("/")
    @heavy.page
    def index(self):
        counts, disliked, unsure, by_channel = home_counts()
        rows = [(status, label, counts[status]) for status, label in STATUS_LABELS.items()]
        channel_rows = [(channel, label, by_channel.get(channel, 0)) for channel, label in CHANNEL_LABELS.items()]
        return self.render("admin/review_index.html", status_rows=rows, disliked=disliked, unsure=unsure,
                           channel_rows=channel_rows, needs_deletion=counts.get(NEEDS_DELETION, 0),
                           meaning_error=meaning_problem(), flagged=queue_admin.flagged_groups(),
                           home_group_rows=queue_admin.HOME_GROUP_ROWS)


class ChoiceFilter(sqla_filters.FilterEqual):
    def operation(self):
        return "같음"


class GroupFilter(sqla_filters.FilterEqual):
    """The exchanges of one question group by meaning (chatbot/grouping.py):
    its key's and those of the keys that joined it."""

    def apply(self, query, value, alias=None):
        return query.filter(grouping.in_group(value))

    def operation(self):
        return "의 묶음"


class CreatedBetweenFilter(sqla_filters.DateBetweenFilter):
    """From the first day's start to the end of the last day (both included)."""

    def apply(self, query, value, alias=None):
        start, end = value
        column = self.get_column(alias)
        return query.filter(column >= datetime.combine(start, time.min),
                            column < datetime.combine(end + timedelta(days=1), time.min))

    def operation(self):
        return "기간"


class ConfidenceBelowFilter(sqla_filters.FloatSmallerFilter):
    """Replies the model was less sure of than a number (0..1): the weak ones."""

    def operation(self):
        return "미만"


class ConfidenceAtLeastFilter(sqla_filters.FloatGreaterFilter):
    def apply(self, query, value, alias=None):
        return query.filter(self.get_column(alias) >= value)

    def operation(self):
        return "이상"


def _empty_to_none(value):
    if value is None:
        return None
    value = value.strip()
    return value or None


def _format_status(view, context, model, name):
    return STATUS_LABELS.get(model.status, model.status)


def _format_route(view, context, model, name):
    return ROUTE_LABELS.get(model.route, model.route)


def _format_channel(view, context, model, name):
    return CHANNEL_LABELS.get(model.channel, model.channel)


def _format_text(view, context, model, name):
    """User text, escaped, in a span that keeps its line breaks."""
    value = getattr(model, name)
    return Markup('<span class="review-text">{}</span>').format(value) if value else ""


def _format_feedback(view, context, model, name):
    value = FEEDBACK_LABELS.get(model.feedback)
    return Markup('<span title="{}">{}</span>').format(
        "싫어요" if model.feedback == FEEDBACK_DOWN else "좋아요", value) if value else ""


def _format_confidence(view, context, model, name):
    """Two decimals; empty where no model answered (a reviewed answer, an import)."""
    value = getattr(model, name)
    return "" if value is None else f"{value:.2f}"


def _format_time(view, context, model, name):
    value = getattr(model, name)
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def suggestions_for(exchange) -> list:
    """The answers suggested to a reviewer correcting ``exchange`` (not its
    own answer or correction); none when the model threads are busy with
    other suggestions or the model fails (logged): the reviewer can always
    write their own."""

    responder = current_app.extensions.get("chatbot.responder")
    if responder is None:
        return []
    try:
        return responder.suggestions(exchange.question, exclude={exchange.answer, exchange.corrected_answer})
    except Busy:
        return []
    except Exception:
        log.exception("no suggested answers for exchange %s", exchange.id)
        return []


def _reach_inputs(question, group):
    """The questions a correction is for ([(key, question)]: ``question``'s,
    or the queue group ``group``'s, the most frequent CORRECTED_AT_MOST)
    and the past unreviewed questions it might reach (reach.candidates)."""
    if group is not None:
        corrected = [(key, asked) for key, _, asked in queue_admin.group_keys(group)][:reach.CORRECTED_AT_MOST]
    else:
        corrected = reach.corrected_of([question])
    return corrected, reach.candidates(current_app.config["CORRECTION_PREVIEW_ROWS"], {k for k, _ in corrected})


class ExchangeView(ReviewerOnly, ModelView):
    """The list of chat exchanges, for reviewers to correct and mark.

    Unsorted, the list is the review queue (``review_queue_order``): 👎 not yet
    reviewed first, then the rest not yet reviewed, then the others; newest
    first within each.  A column heading sorts by that column instead.

    At a million exchanges: every order reads an index (only indexed columns
    sort), the pager shows no page count (counting every match would read
    them all), and a search looks through the newest ADMIN_SEARCH_ROWS
    exchanges that the filters pick.  The list runs on a heavy-work thread.
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
    simple_list_pager = True

    column_list = ("question", "answer", "corrected_answer", "feedback", "status", "route", "confidence",
                   "channel", "model_version", "session_id", "created_at", "reviewer", "reviewed_at")
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
        "confidence": "확신도",
        "channel": "채널",
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
        "confidence": _format_confidence,
        "channel": _format_channel,
        "created_at": _format_time,
        "reviewed_at": _format_time,
    }
    column_formatters_detail = column_formatters
    column_sortable_list = ("status", "confidence", "channel", "created_at")
    column_searchable_list = ("question", "answer", "corrected_answer")
    column_filters = (
        ChoiceFilter(Exchange.status, "상태", options=tuple(STATUS_LABELS.items())),
        CreatedBetweenFilter(Exchange.created_at, "생성일 (UTC)"),
        ChoiceFilter(Exchange.feedback, "평가", options=tuple(FEEDBACK_LABELS.items())),
        ChoiceFilter(Exchange.route, "경로", options=tuple(ROUTE_LABELS.items())),
        ConfidenceBelowFilter(Exchange.confidence, "확신도"),
        ConfidenceAtLeastFilter(Exchange.confidence, "확신도"),
        ChoiceFilter(Exchange.channel, "채널", options=tuple(CHANNEL_LABELS.items())),
        # One question key; new filters go last, so the numbers in saved
        # links keep their meaning.
        ChoiceFilter(Exchange.question_key, "질문 키"),
        # One question group by meaning (/admin/analytics' links).
        GroupFilter(Exchange.question_key, "질문 묶음"),
    )

    @classmethod
    def filter_arg(cls, name) -> str:
        """The URL argument of the filter called ``name`` ("flt0_8"):
        Flask-Admin numbers filters by their place in column_filters."""
        return next(f"flt0_{i}" for i, f in enumerate(cls.column_filters) if f.name == name)

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

    @expose("/")
    @heavy.page
    def index_view(self):
        return super().index_view()

    def _exchange_asked_for(self):
        """The exchange of the request's ``id`` (404 when there is none)."""
        exchange = self.get_one(str(request.args.get("id", type=int) or 0))
        if exchange is None:
            abort(404)
        return exchange

    @expose("/suggest/")
    def suggest_view(self):
        """The suggestions for an exchange as JSON, which its edit page and
        the review queue's group page fetch after they load: neither page
        waits on the model threads (the group page is a heavy-work page, on
        a thread that must not), nor holds its database connection while
        they work."""
        exchange = self._exchange_asked_for()
        return jsonify(suggestions=[{**s._asdict(), "source_label": suggest.SOURCE_LABELS[s.source]}
                                    for s in suggestions_for(exchange)])

    @expose("/reach/")
    def reach_view(self):
        """What correcting an exchange's question (with ``group``: every
        question of that queue group) would change for the past unreviewed
        questions (chatbot/reach.py), as JSON for the panel under the
        correction box.  The past questions are read on a heavy-work thread,
        in one of the reviewer's slots; they are scored on a model thread,
        in one of the suggestions' slots; a busy server answers 503."""
        exchange = self._exchange_asked_for()
        try:
            with heavy.slot():
                corrected, found = heavy.run(_reach_inputs, exchange.question, request.args.get("group"))
        except heavy.Busy as busy:
            return heavy.refusal(busy)
        db.session.close()  # not held while the model thread works
        try:
            exchanges, nearest = current_app.extensions["chatbot.responder"].reach(corrected, found)
        except Busy:
            return jsonify(error="busy"), 503
        return jsonify(exchanges=exchanges, nearest=[r._asdict() for r in nearest],
                       window=current_app.config["CORRECTION_PREVIEW_ROWS"])

    def search_placeholder(self):
        return f"{super().search_placeholder()} (최근 {current_app.config['ADMIN_SEARCH_ROWS']:,}건에서)"

    def _apply_search(self, query, count_query, joins, count_joins, search):
        """Flask-Admin's search (each word in the question, the answer or the
        correction), among the newest ADMIN_SEARCH_ROWS exchanges that the
        list's filters pick: a read of that many rows at most."""
        query, count_query, joins, count_joins = super()._apply_search(query, count_query, joins, count_joins,
                                                                       search)
        window = db.session.query(Exchange.id)
        filters = self._get_list_filter_args()
        if filters:
            window = self._apply_filters(window, None, {}, {}, filters)[0]
        window = window.order_by(Exchange.id.desc()).limit(current_app.config["ADMIN_SEARCH_ROWS"]).subquery()
        newest = Exchange.id.in_(sa.select(window.c.id))
        return (query.filter(newest), count_query.filter(newest) if count_query is not None else None,
                joins, count_joins)

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
        wanted = row_ids(ids)
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


def _format_audit_status(view, context, model, name):
    value = getattr(model, name)
    return STATUS_LABELS.get(value, value or "")


class AuditView(ReviewerOnly, ModelView):
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


def init_app(app):
    """Register login and the /admin screens on ``app``."""
    auth_bp = auth.init_app(app)

    theme = Bootstrap4Theme(swatch=local_swatch(app.config.get("FLASK_ADMIN_SWATCH", "default")),
                            fluid=True, base_template="admin/review_base.html")
    # Flask-Admin puts this nonce on every <script> it renders; the response's
    # CSP then allows that nonce (chatbot/security.py).
    admin = Admin(app, name=ADMIN_NAME, theme=theme, csp_nonce_generator=security.csp_nonce,
                  index_view=ReviewIndexView(name="현황", url="/admin"))
    admin.add_view(ExchangeView(Exchange, db, name="대화 검토", endpoint="exchange"))
    admin.add_view(queue_admin.QueueView(name="검토 대기열", endpoint="queue", url="/admin/queue"))
    admin.add_view(AuditView(ReviewAudit, db, name="검토 기록", endpoint="audit"))
    admin.add_view(export_admin.ExportView(name="내보내기", endpoint="export", url="/admin/export"))
    admin.add_view(versions_admin.VersionsView(name="모델", endpoint="versions", url="/admin/models"))
    admin.add_view(api_keys_admin.ApiKeysView(name="API 키", endpoint="api_keys", url="/admin/api-keys"))
    admin.add_view(kakao_admin.KakaoView(name="카카오톡", endpoint="kakao_admin", url="/admin/kakao"))
    admin.add_view(analytics_admin.AnalyticsView(
        name="통계", endpoint="analytics", url="/admin/analytics",
        group_filter_arg=ExchangeView.filter_arg("질문 묶음")))
    versions_admin.init_app(app)
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
