"""HTTP security: response headers with a Content-Security-Policy, the
allowed Host names (ALLOWED_HOSTS), the proxy headers, and the login throttle.

Every response carries the headers below.  The policy allows scripts and
styles only from this site; a page that needs an inline script (none does
today) gets a per-request nonce from ``csp_nonce()``, which Flask-Admin calls
for every ``<script>`` it renders, and the nonce is added to that response's
policy.  Inline event handlers (``onclick=``) can never run.

No page may be framed (``frame-ancestors 'none'``, ``X-Frame-Options:
DENY``) except the widget's /embed (chatbot/widget.py), which sets its own
``frame-ancestors``: then no X-Frame-Options is added, since it cannot list
origins.
"""
import re
import secrets
import threading
import time
from collections import OrderedDict, deque

from flask import g
from werkzeug.exceptions import SecurityError
from werkzeug.wsgi import get_host

from .limits import SOCKETIO_PATH

CSP_DIRECTIVES = (
    ("default-src", "'self'"),
    ("script-src", "'self'"),
    ("style-src", "'self'"),
    ("img-src", "'self' data:"),
    ("connect-src", "'self' ws: wss:"),
    ("frame-ancestors", "'none'"),
    ("base-uri", "'self'"),
    ("form-action", "'self'"),
    ("object-src", "'none'"),
)

STATIC_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


def csp_nonce() -> str:
    """This request's CSP nonce (made on first use)."""
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(18)
    return nonce


def content_security_policy(nonce=None, frame_ancestors=None) -> str:
    """The policy; ``frame_ancestors`` replaces ``'none'`` (a list of sources)."""
    parts = []
    for name, value in CSP_DIRECTIVES:
        if name == "script-src" and nonce:
            value += f" 'nonce-{nonce}'"
        if name == "frame-ancestors" and frame_ancestors:
            value = " ".join(frame_ancestors)
        parts.append(f"{name} {value}")
    return "; ".join(parts)


def may_be_framed(csp: str) -> bool:
    """Whether a policy lets some page frame this one."""
    directives = [part.split() for part in csp.split(";")]
    return any(words[:1] == ["frame-ancestors"] and words[1:] != ["'none'"] for words in directives)


def origin_checker(allowed_origins):
    """Socket.IO's ``cors_allowed_origins``: the bot's own origin (scheme and
    Host of the request), plus ``allowed_origins``.  A list alone would drop
    the own origin, so a callable.

    X-Forwarded-Proto/-Host are never read here: behind a configured proxy
    (``PROXY_COUNT`` > 0) ProxyFix has already put the proxy's values into
    the environ; without one, anyone could send them."""
    listed = frozenset(allowed_origins)

    def allowed(origin, environ):
        if origin in listed:
            return True
        host = environ.get("HTTP_HOST")
        return bool(host) and origin == f"{environ.get('wsgi.url_scheme', 'http')}://{host}"

    return allowed


def parse_hosts(value) -> list[str]:
    """ALLOWED_HOSTS: host names separated by commas or spaces, lower-cased
    (a leading dot also allows the subdomains, as in Flask's TRUSTED_HOSTS)."""
    items = value if isinstance(value, (list, tuple)) else re.split(r"[\s,]+", value or "")
    return list(dict.fromkeys(item.strip().lower() for item in items if item.strip()))


class SocketIOTrustedHosts:
    """Flask refuses a Host outside ``TRUSTED_HOSTS`` (400) for its own views;
    python-engineio answers Socket.IO's requests before Flask, so this checks
    those, with the same list and Werkzeug's same ``get_host``."""

    def __init__(self, wsgi_app, trusted_hosts):
        self.wsgi_app = wsgi_app
        self.trusted_hosts = trusted_hosts

    def __call__(self, environ, start_response):
        if environ.get("PATH_INFO", "").startswith(SOCKETIO_PATH):
            try:
                get_host(environ, self.trusted_hosts)
            except SecurityError:
                body = b"Host not allowed"
                start_response("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(body)))])
                return [body]
        return self.wsgi_app(environ, start_response)


class SecurityHeadersMiddleware:
    """Adds the headers to every response the WSGI app sends, Socket.IO's
    long-polling responses included (those never reach Flask's hooks).
    A header already set (Flask's CSP with a nonce) is kept, and a response
    whose CSP lets some page frame it (/embed) gets no X-Frame-Options."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self.default_csp = content_security_policy()

    def __call__(self, environ, start_response):
        def add_headers(status, headers, exc_info=None):
            present = {name.lower(): value for name, value in headers}
            csp = present.get("content-security-policy")
            if csp is not None and may_be_framed(csp):
                present["x-frame-options"] = None
            extra = [(name, value) for name, value in STATIC_HEADERS.items() if name.lower() not in present]
            if csp is None:
                extra.append(("Content-Security-Policy", self.default_csp))
            return start_response(status, list(headers) + extra, exc_info)

        return self.wsgi_app(environ, add_headers)


class LoginThrottle:
    """Counts failed logins in a sliding window, in this process.

    Two limits: ``max_failures`` per (address, user name), and four times that
    per address whatever the names, so guessing across many names is slowed
    too.  An attempt is counted as a failure *before* the password is checked
    (and taken back if it was right), so parallel requests cannot slip past
    the limit.  At most ``max_keys`` keys are kept; the oldest go first.
    """

    def __init__(self, max_failures=5, window_seconds=300, clock=time.monotonic, max_keys=10000):
        self.max_failures = max(1, int(max_failures))
        self.window = float(window_seconds)
        self.clock = clock
        self.max_keys = max_keys
        self._failures = OrderedDict()  # key -> deque of failure times
        self._lock = threading.Lock()

    def _keys(self, address, username):
        name = (username or "").strip().casefold()[:80]
        return (("user", address, name), self.max_failures), (("addr", address), 4 * self.max_failures)

    def _recent(self, key, now):
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def _wait(self, now, keys):
        wait = 0.0
        for key, limit in keys:
            times = self._recent(key, now)
            if times is not None and len(times) >= limit:
                wait = max(wait, times[-limit] + self.window - now)
        return wait

    def retry_after(self, address, username) -> float:
        """Seconds until a login may be tried again; 0.0 if it may now."""
        with self._lock:
            return self._wait(self.clock(), self._keys(address, username))

    def begin(self, address, username) -> float:
        """Start an attempt: 0.0 and the attempt counted as a failure (see
        ``succeeded``), or the seconds to wait and nothing counted."""
        with self._lock:
            now = self.clock()
            keys = self._keys(address, username)
            wait = self._wait(now, keys)
            if wait > 0:
                return wait
            for key, _ in keys:
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
            return 0.0

    def succeeded(self, address, username):
        """The attempt was right: forget this user's failures from this
        address, and take back the attempt from the address's count."""
        with self._lock:
            (user_key, _), (addr_key, _) = self._keys(address, username)
            self._failures.pop(user_key, None)
            times = self._failures.get(addr_key)
            if times:
                times.pop()
                if not times:
                    del self._failures[addr_key]


def init_app(app):
    """Security headers on every response; ALLOWED_HOSTS; the client's address,
    scheme and host behind a proxy."""

    @app.after_request
    def _content_security_policy(response):
        response.headers.setdefault("Content-Security-Policy", content_security_policy(g.get("csp_nonce")))
        return response

    hosts = parse_hosts(app.config.get("ALLOWED_HOSTS"))
    if hosts:  # against DNS rebinding: a page of another name that resolves to us
        app.config["TRUSTED_HOSTS"] = hosts
        app.wsgi_app = SocketIOTrustedHosts(app.wsgi_app, hosts)
    app.wsgi_app = SecurityHeadersMiddleware(app.wsgi_app)
    proxies = app.config.get("PROXY_COUNT", 0)
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
