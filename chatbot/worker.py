"""The gunicorn worker that serves the chat: gevent, with caps on connections.

Each connection is a greenlet (a few KB), not an OS thread, so an idle or
slow client costs almost nothing; the model runs on a few real OS threads
(chatbot/batching.py), so the event loop never waits for the model.

gunicorn's own gevent worker takes connections until its pool is full and
then stops accepting: connection number ``worker_connections + 1`` waits in
the kernel's backlog and hangs.  This worker refuses what is over a cap at
once, with an HTTP error and a close:

- more than ``MAX_CONNECTIONS`` open connections in the process: 503 (by
  default as many as its memory holds: chatbot/memory.py);
- the process's RSS over ``MEMORY_HIGH_WATER`` of ``MEMORY_LIMIT_MB``: 503,
  until it falls back (after connections close, the worker gives freed
  memory back to the system with glibc's ``malloc_trim``);
- more than ``MAX_CONNECTIONS_PER_ADDRESS`` from one peer address: 429.
  Behind a reverse proxy (``PROXY_COUNT`` > 0) every peer is the proxy, so
  this cap is left to the proxy (the README's nginx ``limit_conn``) and the
  application counts the forwarded address instead (chatbot/limits.py).

Reading a request's headers is bounded by gunicorn's ``keepalive`` seconds
(its gevent worker applies that timeout to every request line and header
block, the first included); ``gunicorn.conf.py`` sets it from
``HEADER_TIMEOUT``.  Bodies are bounded in the application
(chatbot/limits.py), which knows the route.

A body the application did not read to its end (refused with 413, or not
wanted: a GET's) ends the connection: the response says ``Connection:
close``, and the socket closes after it instead of gunicorn reading and
dropping the rest before the next request on it.  gunicorn does that with no
deadline and no byte limit, and on gevent a read that always finds data
never yields: one client declaring ``Content-Length: 4294967296`` and
sending without pause held the whole event loop until the worker was killed.
Before closing, what the client still sends is read and dropped for at most
``_LINGER_SECONDS`` and ``_LINGER_BYTES`` (so that it can read the response
first: closing with unread data sends a reset), yielding between reads.

Nothing here may import the Flask app: gunicorn loads this class in its
master process, before the worker patches the standard library for gevent.
"""
import gc
import socket
import time
from collections import Counter

import gevent
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.ggevent import GeventWorker

from .config import Config, env_int
from .memory import MemoryGuard

# How long a refused client gets to read its error before the socket closes.
_REFUSE_LINGER_SECONDS = 1.0
# A connection closed with a request body still arriving: how long, and how
# many bytes, the server still reads (and drops) before closing it.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1024 * 1024
_LINGER_READ = 64 * 1024


def refusal(status: str, text: str, retry_after: int) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = text.encode("utf-8")
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


def body_unread(body) -> bool:
    """Whether part of a request's body (gunicorn's ``req.body``) has not
    been read yet: gunicorn would read it before the next request."""
    reader = getattr(body, "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > 0
    if isinstance(reader, ChunkedReader):
        return reader.parser is not None
    return False  # a request without a length has no body (gunicorn)


def close_gently(sock, seconds=_LINGER_SECONDS, max_bytes=_LINGER_BYTES):
    """End ``sock`` after a response: send FIN, then read and drop what the
    client still sends for at most ``seconds`` and ``max_bytes``, yielding to
    the event loop after every read.  The caller closes the socket."""
    deadline = time.monotonic() + seconds
    received = 0
    try:
        sock.shutdown(socket.SHUT_WR)  # the client reads the response, then end-of-file
        while received < max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            data = sock.recv(_LINGER_READ)
            if not data:
                break
            received += len(data)
            gevent.sleep(0)  # a read that finds data does not yield by itself
    except OSError:  # a reset, or the deadline (socket.timeout)
        pass


class ConnectionLimits:
    """Open connections in this process, in total and per peer address."""

    def __init__(self, total: int, per_address: int):
        self.total = total
        self.per_address = per_address  # 0: not counted (behind a proxy)
        self.open = 0
        self.by_address = Counter()

    def admit(self, address) -> str | None:
        """Count a new connection; None when admitted, else why it is refused
        ("total" or "address").  Admitted connections must be ``release``d."""
        if self.open >= self.total:
            return "total"
        if self.per_address and self.by_address[address] >= self.per_address:
            return "address"
        self.open += 1
        if self.per_address:
            self.by_address[address] += 1
        return None

    def release(self, address):
        self.open -= 1
        if self.per_address:
            self.by_address[address] -= 1
            if self.by_address[address] <= 0:
                del self.by_address[address]


class GuardedGeventWorker(GeventWorker):
    """gunicorn's gevent worker, refusing connections over the caps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        per_address = env_int("MAX_CONNECTIONS_PER_ADDRESS", 32)
        if env_int("PROXY_COUNT", 0) > 0:
            per_address = 0
        self.limits = ConnectionLimits(Config.MAX_CONNECTIONS, per_address)
        self.memory = MemoryGuard(Config.MEMORY_LIMIT_MB, Config.MEMORY_HIGH_WATER)

    def init_process(self):
        # Each connection is a file descriptor: make room for the cap.
        try:
            import resource
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            wanted = self.limits.total + 256
            if soft != resource.RLIM_INFINITY and soft < wanted:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY
                                                            else min(wanted, hard), hard))
        except (ImportError, ValueError, OSError):
            pass
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        # The app's own objects live as long as the process: out of the
        # cyclic GC's sight, so that collecting what connections left is quick.
        gc.freeze()
        app = self.wsgi
        from .websocket import WORKER_SOCKET

        def close_after_unread_body(environ, start_response):
            """The app, with ``Connection: close`` on a response to a request
            whose body it left unread (``handle_request`` then closes).

            The connection's socket is handed on under our own name:
            python-engineio's middleware makes a class for every request that
            has a ``gunicorn.socket`` (for eventlet, which we do not run), and
            a class is a knot of reference cycles; a WebSocket's lives as long
            as its connection, and thousands of them closing at once left
            that much more for the garbage collector, on the event loop."""
            environ[WORKER_SOCKET] = environ.pop("gunicorn.socket")
            body = environ["wsgi.input"]  # gunicorn's req.body, before any middleware wraps it

            def start(status, headers, exc_info=None):
                response = getattr(start_response, "__self__", None)  # gunicorn's Response
                if body_unread(body) and response is not None:
                    response.req.force_close()
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.wsgi = close_after_unread_body

    def handle_request(self, listener_name, req, sock, addr):
        """gunicorn's, but a request whose body was not read to its end
        closes its connection (the module docstring says why)."""
        try:
            keep_alive = super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # the connection ends (a Connection: close response, a WebSocket)
            if body_unread(req.body):
                close_gently(sock)
            raise
        if body_unread(req.body):
            req.force_close()  # gunicorn's parser then stops instead of draining the body
            close_gently(sock)
        return keep_alive

    def handle(self, listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) else addr
        if self.memory.over():
            self._trim_after(self.memory.short(self.limits.open))  # closed connections' memory may be held still
            self._refuse(client, "memory")
            return
        refused = self.limits.admit(address)
        if refused is not None:
            self._refuse(client, refused)
            return
        self.memory.opened(self.limits.open)
        try:
            super().handle(listener, client, addr)
        finally:
            self.limits.release(address)
            self._trim_after(self.memory.closed(self.limits.open))

    def _trim_after(self, delay):
        if delay is not None:
            gevent.spawn_later(delay, self._trim)

    def _trim(self):
        wait = self.memory.due_in()
        if wait > 0:  # connections are still closing: free the whole wave at once
            gevent.spawn_later(wait, self._trim)
            return
        before, after, collected_in = self.memory.trim(in_thread=gevent.get_hub().threadpool.apply)
        self.log.info("gave memory back: RSS %.0f -> %.0f MB, %d connections open, collection %.0f ms",
                      before or 0, after or 0, self.limits.open, collected_in * 1000)

    def _refuse(self, client, why):
        if why == "total":
            response = refusal("503 Service Unavailable", "The server is full. Try again shortly.", 10)
        elif why == "memory":
            response = refusal("503 Service Unavailable", "The server is low on memory. Try again shortly.", 10)
        else:
            response = refusal("429 Too Many Requests", "Too many connections from your address.", 10)
        self.log.debug("refused a connection: %s cap", why)
        try:
            client.setblocking(1)
            with gevent.Timeout(_REFUSE_LINGER_SECONDS, False):
                client.sendall(response)
            close_gently(client, _REFUSE_LINGER_SECONDS)  # let it finish sending, so it sees no reset
        except OSError:
            pass
        finally:
            client.close()

