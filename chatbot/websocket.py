"""The WebSocket that python-engineio runs a chat's session on, built on wsproto.

python-engineio's own choice (simple-websocket 1.1.0) gives every connection
a reader thread (a greenlet under gevent) that hands frames to the session
through an event, and under a hostile or slow client that lost connections:

- a frame over the size limit woke the waiting session *before* the socket
  was marked closed, so it could go back to waiting and never be woken
  again: one thread or greenlet per oversized frame, forever;
- it wrote frames with the socket's ``send``, which on gevent's sockets may
  write only part of a large frame (a ``history`` to a client that reads
  slowly), corrupting the stream;
- it accepted permessage-deflate, which keeps a zlib compressor and
  decompressor per connection once a message has gone each way: over 100 KB
  per browser chat, for messages of a few dozen bytes.

Here the session's own greenlet (or thread) reads the socket: a frame over
``max_http_buffer_size`` is answered with close code 1009 and ``wait`` returns
None at once; every write is a ``sendall``; no extension is negotiated; and a
socket that neither reads nor writes for ``SOCKET_TIMEOUT`` seconds is closed
(Engine.IO pings every 25 s, so a live client never idles that long).

The reading loop yields after every read of the socket: on gevent a read that
finds data never does by itself, so a client sending frames without pause (a
flood of WebSocket pings, each answered with a pong inside the loop) held the
whole event loop.  A client may send ``PING_BURST`` ping frames at once and
``PING_RATE`` a second after that (Engine.IO pings at its own level; browsers
send none); past that its connection is closed (1008).
"""
import socket
import threading
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection,
                            Request, TextMessage)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

SOCKET_TIMEOUT = 60.0
RECEIVE_BYTES = 4096
PING_BURST = 10
PING_RATE = 1.0
# Where our gunicorn worker puts the connection's socket (chatbot/worker.py
# says why not under gunicorn's own name).
WORKER_SOCKET = "chatbot.socket"
_GUNICORN_SOCKETS = (WORKER_SOCKET, "gunicorn.socket")
_ENVIRON_SOCKETS = (*_GUNICORN_SOCKETS, "werkzeug.socket")


def _upgrade_request(environ) -> bytes:
    """The client's upgrade request, as the WSGI server parsed it."""
    lines = [f"GET {environ.get('PATH_INFO') or '/'} HTTP/1.1"]
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            lines.append(f"{key[5:].replace('_', '-')}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class WebSocket:
    """python-engineio's WebSocket interface: ``WebSocket(handler, server)``
    is called as a WSGI app, and ``handler(ws)`` then uses ``wait``, ``send``
    and ``close``."""

    def __init__(self, handler, server, max_message_size=None):
        self.handler = handler
        self.eio_server = server
        self.max_message_size = max_message_size or server.max_http_buffer_size
        self.sock = None
        self.connection = WSConnection(ConnectionType.SERVER)
        self.closed = False
        self._incoming = []      # whole messages not yet returned by wait
        self._partial = []       # the parts of a message still arriving
        self._partial_size = 0
        self._pings = [float(PING_BURST), time.monotonic()]  # a token bucket: tokens, when counted
        # The session's writer and its reader both write (pongs, the close);
        # one at a time.  A gevent lock in the server (threading is patched).
        self._write_lock = threading.RLock()

    def __call__(self, environ, start_response):
        for key in _ENVIRON_SOCKETS:
            if key in environ:
                self.sock = environ[key]
                break
        else:
            raise RuntimeError("the WSGI server does not expose its socket (gunicorn or werkzeug)")
        try:
            self.connection.receive_data(_upgrade_request(environ))
            request = next((e for e in self.connection.events() if isinstance(e, Request)), None)
        except RemoteProtocolError:
            request = None
        if request is None:
            body = b"Not a valid WebSocket upgrade request"
            start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
            return [body]
        self.sock.settimeout(SOCKET_TIMEOUT)
        self._send_event(AcceptConnection())  # no extensions (see the module docstring)
        # Keep only the open connection's state, not the handshake's (h11's
        # request and headers: a few KB a connection, for its whole life).
        self.connection = self.connection.connection
        try:
            self.handler(self)
        finally:
            self.close()
        if any(key in environ for key in _GUNICORN_SOCKETS):
            raise StopIteration()  # gunicorn: the connection was taken over, write no response
        raise ConnectionError("WebSocket closed")  # werkzeug's development server: drop the connection

    def _send_event(self, event):
        """Write a wsproto event whole, one writer at a time."""
        with self._write_lock:
            self.sock.sendall(self.connection.send(event))

    def send(self, data):
        """Send one message (str: text, bytes: binary)."""
        if self.closed:
            raise OSError("the WebSocket is closed")
        try:
            self._send_event(TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data))
        except LocalProtocolError:
            raise OSError("the WebSocket is closing") from None

    def close(self, code=CloseReason.NORMAL_CLOSURE):
        """Send a close frame (once) and stop reading: ``wait`` returns None."""
        with self._write_lock:
            if self.closed:
                return
            self.closed = True
            try:
                self._send_event(CloseConnection(code=code))
            except (OSError, LocalProtocolError):
                pass
        try:  # wake a wait() blocked in recv: it reads end-of-file at once
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def wait(self):
        """The next message (str or bytes), or None once the connection is closed."""
        while not self._incoming:
            if self.closed:
                return None
            try:
                data = self.sock.recv(RECEIVE_BYTES)
            except OSError:  # a reset, or SOCKET_TIMEOUT without a byte
                data = b""
            if not data:
                self.closed = True
                return None
            with self._write_lock:
                self.connection.receive_data(data)
                self._handle_events()
            time.sleep(0)  # yield (gevent patches time): the read above did not
        return self._incoming.pop(0)

    def _ping_allowed(self) -> bool:
        tokens, then = self._pings
        now = time.monotonic()
        tokens = min(float(PING_BURST), tokens + (now - then) * PING_RATE)
        self._pings = [tokens - 1, now] if tokens >= 1 else [tokens, now]
        return tokens >= 1

    def _handle_events(self):
        for event in self.connection.events():
            if isinstance(event, Ping):
                if not self._ping_allowed():
                    self.close(CloseReason.POLICY_VIOLATION)
                    return
                self._send_event(event.response())
            elif isinstance(event, CloseConnection):  # the client's, or a frame wsproto could not parse
                try:
                    self._send_event(event.response())
                except (OSError, LocalProtocolError):
                    pass
                self.closed = True
                return
            elif isinstance(event, Message):
                self._partial_size += len(event.data)
                if self._partial_size > self.max_message_size:
                    self._partial, self._partial_size = [], 0
                    self.close(CloseReason.MESSAGE_TOO_BIG)
                    return
                self._partial.append(event.data)
                if event.message_finished:
                    joined = ("" if isinstance(event, TextMessage) else b"").join(self._partial)
                    self._incoming.append(joined)
                    self._partial, self._partial_size = [], 0
            elif isinstance(event, RejectConnection):  # pragma: no cover - a server never gets one
                self.closed = True
                return
