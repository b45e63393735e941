"""The admin's 대화 내보내기 page (/admin/export): the filters of ``flask
export-exchanges`` in a form, and the download, streamed.

The form is a POST with the CSRF token, like every admin form: a download
of every conversation is heavy, and no other site should be able to start
one.  The answer is the file itself, produced chunk by chunk from the
database while it is sent, each chunk on a thread in one of the reviewer's
heavy-work slots (``heavy.streamed``: the event loop serves the chats
meanwhile, and a reviewer cannot start more downloads than the slots); a
form with a mistake comes back with the mistake shown (400).
"""
import logging

from flask import request
from flask_admin import BaseView, expose
from flask_login import current_user
from wtforms import DateField, SelectChoice, SelectField, ValidationError
from wtforms.validators import Optional

from . import export, heavy
from .admin_base import ReviewerOnly, ReviewSecureForm
from .database import CHANNEL_LABELS, ROUTE_LABELS, STATUS_LABELS

log = logging.getLogger(__name__)

FORMAT_LABELS = {"csv": "CSV (엑셀에서 열기)", "jsonl": "JSON Lines (프로그램용)"}


def choices(labels, any_label=None):
    """Options for a SelectField: ``any_label`` first (the value "": no filter), then ``labels``."""
    return ([SelectChoice("", any_label)] if any_label else []) + [SelectChoice(v, l) for v, l in labels.items()]


class ExportForm(ReviewSecureForm):
    first_day = DateField("시작일 (UTC)", validators=[Optional()],
                          render_kw={"placeholder": "YYYY-MM-DD"})
    last_day = DateField("종료일 (UTC)", validators=[Optional()],
                         render_kw={"placeholder": "YYYY-MM-DD"})
    status = SelectField("상태", choices=choices(STATUS_LABELS, "전체"), default="")
    route = SelectField("경로", choices=choices(ROUTE_LABELS, "전체"), default="")
    channel = SelectField("채널", choices=choices(CHANNEL_LABELS, "전체"), default="")
    file_format = SelectField("형식", choices=choices(FORMAT_LABELS), default="csv")

    def validate_last_day(self, field):
        if field.data and self.first_day.data and field.data < self.first_day.data:
            raise ValidationError("종료일이 시작일보다 앞섭니다.")

    def filters(self) -> export.Filters:
        return export.Filters(first_day=self.first_day.data, last_day=self.last_day.data,
                              status=self.status.data or None, route=self.route.data or None,
                              channel=self.channel.data or None)


class ExportView(ReviewerOnly, BaseView):

    @expose("/", methods=["GET", "POST"])
    def index(self):
        form = ExportForm(request.form)
        if request.method == "POST":
            if form.validate():
                return self._download(form.file_format.data, form.filters())
            return self.render("admin/export.html", form=form), 400
        return self.render("admin/export.html", form=form)

    def _download(self, file_format, filters):
        name = export.file_name(file_format)
        log.info("%s exports exchanges (%s, %s)", current_user.username, file_format, filters)
        return heavy.streamed(export.stream(file_format, filters),
                              content_type=export.MEDIA_TYPES[file_format],  # with its charset: as it is
                              headers={"Content-Disposition": f'attachment; filename="{name}"'})
