"""What one client may use: rates, request sizes and request times.

Every resource a client can make the server hold has a bound here or in the
gunicorn worker (chatbot/worker.py: open connections, header time):

- ``ClientLimits``: token buckets keyed by chat session and by client
  address, never by connection, so a reconnect or a new Socket.IO handshake
  does not start a fresh count.  chat.py takes from them for every event.
  An address that keeps going over them (more ``rate_limited`` answers than
  ``FLOOD_REFUSAL_*`` allow) cools down for ``FLOOD_COOLDOWN_SECONDS``: its
  connections are closed and its handshakes and connects refused, instead of
  its packets being answered one by one, which on a slow machine took the
  whole event loop.
- ``RequestLimits``, WSGI middleware in front of the whole app:
  a body over ``MAX_UPLOAD_BYTES`` is refused (413) before any of it is
  read, a chunked upload (no length to check) too (411), a bad length 400; the body must arrive
  within ``BODY_TIMEOUT`` seconds (408); Engine.IO handshakes count against
  the address's connect bucket and one for all addresses (429); and behind a proxy, where the gunicorn
  worker sees only the proxy, the requests open at once per forwarded
  address are capped (429).
- Flask-Limiter limits every other HTTP request per address (``HTTP_LIMIT``),
  and ``request_size_limit`` lowers the body limit to ``MAX_REQUEST_BYTES``
  for everything but a reviewer's CSV import.
"""
import json
import threading
import time
from array import array
from collections import OrderedDict

from flask import current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import RequestTimeout

from .worker import ConnectionLimits

SOCKETIO_PATH = "/socket.io"
IMPORT_ENDPOINT = "queue.import_csv"


class RateBuckets:
    """Token buckets by key: ``rate`` events a second on average, up to
    ``burst`` at once.  At most ``max_keys`` are kept; the least recently
    used go first (a forgotten key starts again with a full bucket), and so
    do buckets that have filled up again, which are the same as none.

    Each bucket is the time at which it will be full again (GCRA), kept in
    flat arrays, an open-addressing table over the keys' hashes, not in a
    dict: a flood from a thousand addresses would otherwise leave a few small
    objects per address, made while its connections were open and scattered
    among their memory, and each of them keeps a page of the heap that
    ``malloc_trim`` cannot give back once the connections are gone (10 MB
    after bench-attack's ``idle_sockets_many``)."""

    def __init__(self, rate: float, burst: int, max_keys: int = 50_000, clock=time.monotonic):
        self.rate = float(rate)
        self.burst = max(1, int(burst))
        self.max_keys = max(1, max_keys)
        self.clock = clock
        self._lock = threading.Lock()
        self._takes = 0
        self._resize(8)

    def __len__(self):
        return self._count

    def take(self, key) -> float:
        """0.0 when the event may go ahead (and is counted), else the
        seconds until it could.  A rate of 0 or less is no limit."""
        if self.rate <= 0:
            return 0.0
        key_hash = hash(key) or 1  # 0 marks an empty slot
        with self._lock:
            now = self.clock()
            self._takes += 1
            slot = self._find(key_hash)
            if not self._hashes[slot]:
                if self._count >= self.max_keys or (self._count + 1) * 2 > len(self._hashes):
                    self._make_room(now)
                    slot = self._find(key_hash)
                self._hashes[slot] = key_hash
                self._full_at[slot] = now
                self._count += 1
            self._used_at[slot] = self._takes
            wait = self._wait_at(self._full_at[slot], now)
            if not wait:
                self._full_at[slot] = max(self._full_at[slot], now) + 1 / self.rate
            return wait

    def wait(self, key) -> float:
        """What ``take`` would answer, without counting anything."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            slot = self._find(hash(key) or 1)
            if not self._hashes[slot]:
                return 0.0
            return self._wait_at(self._full_at[slot], self.clock())

    def _wait_at(self, full_at: float, now: float) -> float:
        """The seconds until a bucket full again at ``full_at`` holds a token; 0.0 if it does at ``now``."""
        wait = max(full_at, now) - now - (self.burst - 1) / self.rate
        return wait if wait > 1e-9 else 0.0

    def _resize(self, size: int):
        self._hashes = array("q", bytes(8 * size))  # the key's hash; 0: empty
        self._full_at = array("d", bytes(8 * size))  # when the bucket is full again
        self._used_at = array("q", bytes(8 * size))  # the take that last used it
        self._count = 0

    def _find(self, key_hash: int) -> int:
        """The key's slot, or the empty one where it would go."""
        mask = len(self._hashes) - 1
        slot = key_hash & mask
        while self._hashes[slot] not in (0, key_hash):
            slot = (slot + 1) & mask
        return slot

    def _make_room(self, now: float):
        """Forget the buckets that are full again and, at ``max_keys``, the
        least recently used quarter; keep the table at most half full."""
        kept = [(self._used_at[i], self._hashes[i], self._full_at[i]) for i in range(len(self._hashes))
                if self._hashes[i] and self._full_at[i] > now]
        if len(kept) >= self.max_keys:
            kept.sort()
            kept = kept[len(kept) - self.max_keys * 3 // 4:]
        size = 8
        while (len(kept) + 1) * 2 > size:
            size *= 2
        self._resize(size)
        for used_at, key_hash, full_at in kept:
            slot = self._find(key_hash)
            self._hashes[slot], self._full_at[slot], self._used_at[slot] = key_hash, full_at, used_at
        self._count = len(kept)


class Cooldowns:
    """Keys refused for ``seconds`` once started; at most ``max_keys`` are
    kept (the oldest go first).  ``seconds`` of 0 or less: never started."""

    def __init__(self, seconds: float, max_keys: int = 50_000, clock=time.monotonic):
        self.seconds = float(seconds)
        self.max_keys = max_keys
        self.clock = clock
        self._until = OrderedDict()  # key -> when its cool-down ends
        self._lock = threading.Lock()

    def start(self, key) -> float:
        """Start (or restart) ``key``'s cool-down; its length."""
        if self.seconds <= 0:
            return 0.0
        with self._lock:
            self._until.pop(key, None)
            self._until[key] = self.clock() + self.seconds
            if len(self._until) > self.max_keys:
                self._until.popitem(last=False)
        return self.seconds

    def left(self, key) -> float:
        """Seconds until ``key``'s cool-down ends; 0.0 when it has none."""
        with self._lock:
            until = self._until.get(key)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._until[key]
                return 0.0
            return left


class ClientLimits:
    """The chat's rate limits, from the app's config."""

    def __init__(self, config):
        self.session = RateBuckets(config["MESSAGE_RATE"], config["MESSAGE_BURST"])
        self.address = RateBuckets(config["ADDRESS_MESSAGE_RATE"], config["ADDRESS_MESSAGE_BURST"])
        self.history = RateBuckets(config["HISTORY_RATE"], config["HISTORY_BURST"])
        self.connect = RateBuckets(config["CONNECT_RATE"], config["CONNECT_BURST"])
        self.handshakes = RateBuckets(config["HANDSHAKE_TOTAL_RATE"], config["HANDSHAKE_TOTAL_BURST"])
        # rate_limited answers an address may get before it cools down
        self.refusals = RateBuckets(config["FLOOD_REFUSAL_RATE"], config["FLOOD_REFUSAL_BURST"])
        self.cooldown = Cooldowns(config["FLOOD_COOLDOWN_SECONDS"])

    def handshake(self, address) -> float:
        """Count an Engine.IO handshake: per address, and from everyone;
        an address that is cooling down waits for the end of it.  One
        refused by either bucket is counted by neither: an address that
        retries while everyone's bucket is empty keeps its own tokens (and
        its Socket.IO connect), and one over its own limit takes nothing
        from everyone's."""
        wait = self.cooldown.left(address) or self.connect.wait(address) or self.handshakes.wait("all")
        return wait or self.connect.take(address) or self.handshakes.take("all")

    def refused(self, address) -> float:
        """Count a ``rate_limited`` answer to ``address``.  When it has had
        more than its share, its cool-down starts: the seconds of it, else 0."""
        if self.refusals.take(address):
            return self.cooldown.start(address)
        return 0.0

    def event(self, session_id, address, history=False) -> float:
        """Count one chat event; the seconds to wait if it is over a limit."""
        wait = self.address.take(address) or self.session.take(session_id)
        if not wait and history:
            wait = self.history.take(session_id)
        return wait


class BodyTimeout(RequestTimeout):
    description = "The request body did not arrive in time."


class DeadlineInput:
    """A request body stream that must be read before a deadline.

    Under gevent a read past the deadline is interrupted (gevent.Timeout);
    in a server without gevent (the flask CLI's development server) the
    deadline is checked between reads only.
    """

    def __init__(self, stream, deadline: float):
        self.stream = stream
        self.deadline = deadline

    def _call(self, method, *args):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout()
        try:
            import gevent
        except ImportError:  # pragma: no cover - gevent is a requirement
            return method(*args)
        with gevent.Timeout(remaining, BodyTimeout()):
            return method(*args)

    def read(self, *args):
        return self._call(self.stream.read, *args)

    def readline(self, *args):
        return self._call(self.stream.readline, *args)

    def readlines(self, *args):
        return self._call(self.stream.readlines, *args)

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


API_PATH = "/api/"  # the REST API (chatbot/api.py) answers only JSON, its refusals here too
API_CODES = {"400": "bad_request", "408": "bad_request", "411": "bad_request", "413": "too_long",
             "429": "rate_limited"}


def refuse(environ, start_response, status, text, retry_after=None):
    """A short plain-text error response (WSGI), with Retry-After if given;
    ``{"code", "message"}`` for the REST API's paths."""
    if environ.get("PATH_INFO", "").startswith(API_PATH):
        body = json.dumps({"code": API_CODES[status[:3]], "message": text}).encode("utf-8")
        content_type = "application/json"
    else:
        body = text.encode("utf-8")
        content_type = "text/plain; charset=utf-8"
    headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    if retry_after is not None:
        headers.append(("Retry-After", str(max(1, round(retry_after)))))
    start_response(status, headers)
    return [body]


class RequestLimits:
    """WSGI middleware: body size and time, handshakes, and (behind a proxy)
    open requests per client address.  It sits inside ProxyFix, so
    REMOTE_ADDR is the client's."""

    def __init__(self, wsgi_app, client_limits: ClientLimits, max_body: int, body_timeout: float,
                 per_address: int = 0):
        self.wsgi_app = wsgi_app
        self.client_limits = client_limits
        self.max_body = max_body
        self.body_timeout = body_timeout
        # Behind a proxy only (per_address > 0): the gunicorn worker counts
        # connections per peer otherwise.
        self.open = ConnectionLimits(total=float("inf"), per_address=per_address) if per_address else None

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("POST", "PUT", "PATCH"):
            if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
                return refuse(environ, start_response, "411 Length Required", "Content-Length required")
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length < 0:
                return refuse(environ, start_response, "400 Bad Request", "Bad Content-Length")
            if length > self.max_body:
                return refuse(environ, start_response, "413 Payload Too Large", "Payload too large")
            if length:
                environ["wsgi.input"] = DeadlineInput(environ["wsgi.input"],
                                                      time.monotonic() + self.body_timeout)
        address = environ.get("REMOTE_ADDR") or "-"
        path = environ.get("PATH_INFO", "")
        if path.startswith(SOCKETIO_PATH) and "sid=" not in environ.get("QUERY_STRING", ""):
            wait = self.client_limits.handshake(address)  # an Engine.IO handshake
            if wait:
                return refuse(environ, start_response, "429 Too Many Requests", "Too many connections", wait)
        if self.open is None:
            return self._call(environ, start_response)
        if self.open.admit(address) is not None:
            return refuse(environ, start_response, "429 Too Many Requests", "Too many connections from your address",
                          10)
        try:
            return self._call(environ, start_response)
        finally:
            # A WebSocket's request lasts as long as the socket: gunicorn's
            # workers return only when it has closed.
            self.open.release(address)

    def _call(self, environ, start_response):
        try:
            return self.wsgi_app(environ, start_response)
        except BodyTimeout:  # read outside Flask (the Socket.IO shield)
            return refuse(environ, start_response, "408 Request Timeout", "The request body did not arrive in time.")


def is_static_file() -> bool:
    """Static files (a page's scripts and styles, Flask-Admin's dozen among
    them) are cheap and cached: not counted against HTTP_LIMIT."""
    endpoint = request.endpoint or ""
    return endpoint == "static" or endpoint.endswith(".static")


def request_size_limit():
    """Only a logged-in reviewer's CSV import may send a large body.

    Runs before every other before_request function (CSRF's reads the form),
    and werkzeug checks Content-Length against it before reading anything.
    """
    from flask_login import current_user

    config = current_app.config
    if request.endpoint == IMPORT_ENDPOINT and current_user.is_authenticated:
        request.max_content_length = config["MAX_UPLOAD_BYTES"] + 64 * 1024  # + the multipart framing
    else:
        request.max_content_length = config["MAX_REQUEST_BYTES"]


def http_limiter(app) -> Limiter:
    """The app's Flask-Limiter, made in init_app (the extension keeps a set of
    its instances in app.extensions["limiter"]: one here)."""
    (limiter,) = app.extensions["limiter"]
    return limiter


def init_app(app):
    config = app.config
    client_limits = ClientLimits(config)
    app.extensions["chatbot.limits"] = client_limits
    limiter = Limiter(get_remote_address, app=app, storage_uri=config["RATELIMIT_STORAGE_URI"],
                      default_limits=[config["HTTP_LIMIT"]] if config["HTTP_LIMIT"] else [], headers_enabled=True)
    limiter.request_filter(is_static_file)
    app.before_request_funcs.setdefault(None, []).insert(0, request_size_limit)
    per_address = config["MAX_CONNECTIONS_PER_ADDRESS"] if config["PROXY_COUNT"] > 0 else 0
    app.wsgi_app = RequestLimits(app.wsgi_app, client_limits, config["MAX_UPLOAD_BYTES"] + 64 * 1024,
                                 config["BODY_TIMEOUT"], per_address)
