"""The chat widget for other web sites: ``/widget.js``, which a site pastes
into its pages, and ``/embed``, the chat page it shows in an iframe.

The iframe keeps the chat isolated from the host page (its CSS, its
scripts) and keeps the Socket.IO connection same-origin.  Which sites may
frame ``/embed`` is ALLOWED_ORIGINS, enforced by the browser through the
CSP's ``frame-ancestors``: nothing else (Referer, Sec-Fetch-Site) is
checked, since those can be absent for honest visitors.
"""
from flask import Blueprint, current_app, render_template, send_from_directory

from .security import content_security_policy

bp = Blueprint("widget", __name__)

SCRIPT_MAX_AGE = 300  # seconds a browser may keep widget.js before asking again


@bp.route("/widget.js")
def script():
    """Any page may load it: it is a script, not data.  CORP cross-origin so
    that hosts with Cross-Origin-Embedder-Policy can load it too."""
    response = send_from_directory(current_app.static_folder, "widget.js", mimetype="text/javascript",
                                   max_age=SCRIPT_MAX_AGE)
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response


@bp.route("/embed")
def embed():
    """The chat page in the widget's compact layout, on the widget channel."""
    response = current_app.make_response(
        render_template("chat.html", max_chars=current_app.config["MAX_MESSAGE_CHARS"], embed=True))
    response.headers["Content-Security-Policy"] = content_security_policy(
        frame_ancestors=["'self'", *current_app.config["ALLOWED_ORIGINS"]])
    return response


def init_app(app):
    app.register_blueprint(bp)
