"""The gunicorn worker that serves the chat: gevent, with caps on connections.

Each connection is a greenlet (a few KB), not an OS thread, so an idle or
slow client costs almost nothing; the model runs on a few real OS threads
(chatbot/batching.py), so the event loop never waits for the model.

gunicorn's own gevent worker takes connections until its pool is full and
then stops accepting: connection number ``worker_connections + 1`` waits in
the kernel's backlog and hangs.  This worker refuses what is over a cap at
once, with an HTTP error and a close:

- more than ``MAX_CONNECTIONS`` open connections in the process: 503;
- more than ``MAX_CONNECTIONS_PER_ADDRESS`` from one peer address: 429.
  Behind a reverse proxy (``PROXY_COUNT`` > 0) every peer is the proxy, so
  this cap is left to the proxy (the README's nginx ``limit_conn``) and the
  application counts the forwarded address instead (chatbot/limits.py).

Reading a request's headers is bounded by gunicorn's ``keepalive`` seconds
(its gevent worker applies that timeout to every request line and header
block, the first included); ``gunicorn.conf.py`` sets it from
``HEADER_TIMEOUT``.  Bodies are bounded in the application
(chatbot/limits.py), which knows the route.

Nothing here may import the Flask app: gunicorn loads this class in its
master process, before the worker patches the standard library for gevent.
"""
from collections import Counter

import gevent
from gunicorn.workers.ggevent import GeventWorker

from .config import env_int

# How long a refused client gets to read its error before the socket closes.
_REFUSE_LINGER_SECONDS = 1.0


def refusal(status: str, text: str, retry_after: int) -> bytes:
    """A complete HTTP/1.1 error response that closes the connection."""
    body = text.encode("utf-8")
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


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
        self.limits = ConnectionLimits(env_int("MAX_CONNECTIONS", 10000), per_address)

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

    def handle(self, listener, client, addr):
        address = addr[0] if isinstance(addr, tuple) else addr
        refused = self.limits.admit(address)
        if refused is not None:
            self._refuse(client, refused)
            return
        try:
            super().handle(listener, client, addr)
        finally:
            self.limits.release(address)

    def _refuse(self, client, why):
        if why == "total":
            response = refusal("503 Service Unavailable", "The server is full. Try again shortly.", 10)
        else:
            response = refusal("429 Too Many Requests", "Too many connections from your address.", 10)
        self.log.debug("refused a connection: %s cap", why)
        try:
            client.setblocking(1)
            with gevent.Timeout(_REFUSE_LINGER_SECONDS, False):
                client.sendall(response)
                client.shutdown(1)  # SHUT_WR: the client reads the answer, then EOF
                while client.recv(4096):  # let it finish sending, so it sees no reset
                    pass
        except OSError:
            pass
        finally:
            client.close()

