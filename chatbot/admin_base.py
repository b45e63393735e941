"""What every /admin screen shares: reviewers only, Flask-Admin's words in
Korean, forms checked against Flask-WTF's CSRF token, and a theme that loads
nothing from the internet.

Every view, Flask-Admin's own and ours (queue_admin, versions_admin), derives
from ``ReviewerOnly``, so access is checked by the view itself, not by
whoever registers it.

CSRF: every admin form, the bulk-action form included, derives from
``ReviewSecureForm``, Flask-Admin's ``SecureForm`` made to use Flask-WTF's
token.  So a POST is checked twice with the same token: first by the app-wide
``CSRFProtect`` before the view runs, then by the form's own ``csrf_token``
field when Flask-Admin validates it.
"""
import gettext as _stdlib_gettext
import logging
from pathlib import Path

import flask_admin
from flask import current_app, flash, redirect, request, url_for
from flask_admin.form import SecureForm
from flask_login import current_user
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms.csrf.core import CSRF

from .extensions import login_manager

log = logging.getLogger(__name__)

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


class ReviewerOnly:
    """Mixin for every admin view: a logged-in reviewer only; others go to the
    login page.  Put it first in the bases."""

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


def local_swatch(name):
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


def row_ids(values) -> set[int]:
    """The row ids in a form's list of values; anything not a number is left out."""
    result = set()
    for value in values:
        try:
            result.add(int(value))
        except (TypeError, ValueError):
            continue
    return result
