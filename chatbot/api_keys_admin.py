"""The admin's REST API keys page (/admin/api-keys, "API 키"): the keys,
a form to make one, and a button to revoke one.

A new key is shown once, on the page that answers the form's POST (not
after a redirect, so it is never in a URL, the session or a flash message);
the database holds only its SHA-256 (api.create_key).  The page is sent with
``Cache-Control: no-store`` like every admin page (review.init_app).
"""
import logging

import sqlalchemy as sa
from flask import flash, redirect, request, url_for
from flask_admin import BaseView, expose
from flask_login import current_user
from wtforms import StringField
from wtforms.validators import DataRequired, Length

from . import api
from .admin_base import ReviewerOnly, ReviewSecureForm
from .database import ApiKey
from .extensions import db

log = logging.getLogger(__name__)


class NewKeyForm(ReviewSecureForm):
    name = StringField("이름", filters=[lambda value: value.strip() if isinstance(value, str) else value],
                       validators=[DataRequired("이름을 입력하세요."),
                                   Length(max=api.MAX_NAME_CHARS, message=f"이름은 {api.MAX_NAME_CHARS}자까지입니다.")])


class ApiKeysView(ReviewerOnly, BaseView):

    def _page(self, form, new_secret=None, new_key=None, status=200):
        keys = db.session.execute(sa.select(ApiKey).order_by(ApiKey.id.desc())).scalars().all()
        return self.render("admin/api_keys.html", keys=keys, form=form, new_secret=new_secret,
                           new_key=new_key, prefix=api.PREFIX), status

    @expose("/")
    def index(self):
        return self._page(NewKeyForm())

    @expose("/create", methods=["POST"])
    def create(self):
        form = NewKeyForm(request.form)
        if not form.validate():
            return self._page(form, status=400)
        key, secret = api.create_key(form.name.data, created_by=current_user.username)
        return self._page(NewKeyForm(), new_secret=secret, new_key=key)

    @expose("/revoke", methods=["POST"])
    def revoke(self):
        try:
            key = api.revoke_key(int(request.form.get("id", "")), revoked_by=current_user.username)
        except ValueError:
            key = None
        if key is None:
            flash("없는 키입니다.", "danger")
        else:
            log.info("%s revoked API key %s", current_user.username, key.id)
            flash(f"{key.name} ({key.prefix}…) 키를 폐기했습니다. 이 키로 보낸 요청은 이제 거절됩니다.", "success")
        return redirect(url_for(".index"))
