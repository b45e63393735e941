"""Socket.IO hardening: what a client sends can be wrong, never harmful.

Three guards: ``harden`` installs the first two on the app's Socket.IO
server; the third is WSGI middleware that chat.init_app puts in front of it.

- ``GuardedPacket`` decodes Socket.IO packets.  A packet that is not a
  well-formed event (JSON that does not parse or nests too deep, an event name
  that is not a string, a reserved name such as ``connect`` or ``disconnect``
  sent as an event, too many binary attachments, an unknown packet type)
  becomes the event ``MALFORMED_EVENT``, which the chat answers with an
  ``error`` event.  Without this python-socketio would log a traceback and
  answer nothing, or, for reserved names, call the connect/disconnect handler.
- ``GuardedWebSocket``: WebSockets run on chatbot/websocket.py instead of simple-websocket: frames
  are limited to ``max_http_buffer_size`` while they arrive, an oversized
  frame closes its connection and frees it, writes are whole, idle sockets
  time out; and the connection ends cleanly when a frame is not an
  Engine.IO packet, instead of raising in the server.  When it ends, its
  Engine.IO session is let go at once: python-engineio keeps a closed session
  in its ``sockets`` until its service task's next pass (up to
  ``ping_timeout``, 20 s) and its ping task asleep for ``ping_interval``
  (25 s), holding the session and the task's stack; after a flood of
  sockets, their memory could not go back to the system for half a minute.
- ``SocketIOShield`` refuses long-polling POSTs over the payload limit before
  python-engineio sees them: python-engineio 4.15 answers those by closing the
  session and waiting for its queue to drain, which for a client that does not
  poll again never happens, so every such request would hold a server thread
  forever.  It refuses bodies python-engineio cannot decode (it would log a
  traceback and drop them), and turns its KeyError for a request to a session
  that has just closed (a 500) into a 400.
"""
import functools
import io
import json
import logging
import threading

from socketio import packet as sio_packet
from wsproto.frame_protocol import CloseReason

from .limits import refuse
from .websocket import WebSocket

log = logging.getLogger(__name__)

# The event a malformed packet turns into; its one argument says why.
MALFORMED_EVENT = "\x00malformed"
MAX_ATTACHMENTS = 4  # the chat uses none; a few are harmless
# Names a client may not send as events: Socket.IO's own, and ours above (a
# client sending it would otherwise pass any arguments as the "reason").
_RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "__disconnect_final", MALFORMED_EVENT})
_CLIENT_PACKET_TYPES = frozenset({sio_packet.CONNECT, sio_packet.DISCONNECT, sio_packet.EVENT,
                                  sio_packet.ACK, sio_packet.BINARY_EVENT, sio_packet.BINARY_ACK})
_EVENT_TYPES = (sio_packet.EVENT, sio_packet.BINARY_EVENT)


class GuardedPacket(sio_packet.Packet):
    """A Socket.IO packet whose bad events decode to ``MALFORMED_EVENT``."""

    def __init__(self, *args, encoded_packet=None, **kwargs):
        super().__init__(*args, encoded_packet=encoded_packet, **kwargs)
        if encoded_packet is not None and not encoded_packet:  # Packet skips decoding ""
            self._malformed("bad_packet")

    def _malformed(self, reason):
        self.packet_type = sio_packet.EVENT
        self.data = [MALFORMED_EVENT, reason]
        self.id = None  # no acknowledgement for what could not be read
        self.attachments = []
        return 0

    def decode(self, encoded_packet):
        try:
            count = super().decode(encoded_packet)
        except (ValueError, TypeError, RecursionError, IndexError):
            # JSON errors are ValueErrors; deep nesting is a RecursionError.
            # From a client that is not connected the event is ignored.
            return self._malformed("bad_packet")
        if self.packet_type not in _CLIENT_PACKET_TYPES:
            return self._malformed("bad_packet")
        if self.packet_type in _EVENT_TYPES:
            data = self.data
            if not (isinstance(data, list) and data and isinstance(data[0], str)):
                return self._malformed("bad_packet")
            if data[0] in _RESERVED_EVENTS:
                return self._malformed("reserved_event")
            if data[0] == "*":
                # Flask-SocketIO registers the catch-all handler under "*": an
                # event named "*" would reach it without its name and crash it.
                return self._malformed("unknown_event")
            if count > MAX_ATTACHMENTS:
                return self._malformed("too_many_attachments")
        return count

    def add_attachment(self, attachment):
        try:
            return super().add_attachment(attachment)
        except (IndexError, KeyError, TypeError, RecursionError):
            # a placeholder pointing at no attachment
            if self.packet_type not in _EVENT_TYPES:
                raise
            self.data = [MALFORMED_EVENT, "bad_packet"]
            self.id = None
            return True


_ENGINEIO_TYPES = frozenset("0123456")


# Connections close a few at a time: when thousands end together (a flood's
# sockets dropped at once), each one's closing work (its disconnect handlers,
# its close frame, its session let go) would take the event loop's turn
# before a chat still open got its own, and that chat waited for all of them.
# A slot is waited for at most CLOSING_WAIT seconds, so that clients that do
# not read their close frame cannot hold the others up.
CLOSING_AT_ONCE = 8
CLOSING_WAIT = 1.0


class GuardedWebSocket(WebSocket):
    """The chat's WebSocket (chatbot/websocket.py: frame size limit, no reader
    thread, whole writes, timeouts), which also ends the connection cleanly
    when a frame is not an Engine.IO packet python-engineio can decode, and
    closes at most CLOSING_AT_ONCE connections at once."""

    closing = None  # the semaphore of closing slots, made in the server's own threading (gevent's)

    def __call__(self, environ, start_response):
        self._closing_slot = None  # the semaphore this connection holds a slot of, once it ends
        try:
            return super().__call__(environ, start_response)
        finally:
            self._release_session()
            if self._closing_slot is not None:
                self._closing_slot.release()

    def _take_a_closing_slot(self):
        if self._closing_slot is not None:
            return
        if GuardedWebSocket.closing is None:
            GuardedWebSocket.closing = threading.BoundedSemaphore(CLOSING_AT_ONCE)
        slots = GuardedWebSocket.closing  # the one given back: two threads may both have made one
        if slots.acquire(timeout=CLOSING_WAIT):
            self._closing_slot = slots

    def _release_session(self):
        """Let go of the Engine.IO session this WebSocket carried, if closed."""
        session = getattr(self.handler, "__self__", None)  # python-engineio's Socket
        if session is None or not session.closed:
            return
        self.eio_server.sockets.pop(session.sid, None)
        task = getattr(session, "ping_task", None)  # _remember_ping_tasks
        if task is not None and hasattr(task, "kill"):  # a greenlet (a thread cannot be stopped)
            task.kill(block=False)
            # The killed task keeps its exception, whose frames hold the
            # session: with the session holding the task, a cycle only a full
            # garbage collection frees (on the event loop, for every
            # connection that closed since the last one).  Without it, the
            # task and the session are freed as soon as the task has ended.
            session.ping_task = None

    def wait(self):
        data = super().wait()
        if isinstance(data, str) and not _engineio_decodable(data):
            log.info("closing a WebSocket that sent a frame that is not an Engine.IO packet")
            self.close(CloseReason.PROTOCOL_ERROR)
            data = None
        if data is None:  # the connection ends: python-engineio's closing work follows
            self._take_a_closing_slot()
        return data


def _engineio_decodable(frame: str) -> bool:
    """Whether python-engineio can decode this text frame without raising.

    It reads the first character as the packet type, and tries JSON on the
    rest unless that starts with a digit (as every Socket.IO packet does); JSON
    nested too deep raises RecursionError there, outside its error handling.
    """
    if not frame or frame[0] not in _ENGINEIO_TYPES:
        return False
    if len(frame) > 1 and not frame[1].isnumeric() and frame[1] in "[{":
        try:
            json.loads(frame[1:])
        except RecursionError:
            return False
        except ValueError:
            pass
    return True


class SocketIOShield:
    """WSGI middleware in front of Flask-SocketIO's, for its path only."""

    def __init__(self, wsgi_app, max_bytes, path="/socket.io"):
        self.wsgi_app = wsgi_app
        self.max_bytes = max_bytes
        self.path = path

    def __call__(self, environ, start_response):
        if not environ.get("PATH_INFO", "").startswith(self.path):
            return self.wsgi_app(environ, start_response)
        if environ.get("REQUEST_METHOD") == "POST":
            # limits.RequestLimits, in front, has refused chunked bodies and bad lengths.
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length > self.max_bytes:
                return refuse(environ, start_response, "413 Payload Too Large", "Payload too large")
            # Read the (small) body here: python-engineio logs a traceback and
            # drops a body that is not UTF-8 or holds a packet it cannot decode.
            body = environ["wsgi.input"].read(length) if length else b""
            try:
                packets = body.decode("utf-8").split("\x1e")
            except UnicodeDecodeError:
                packets = None
            if packets is None or (body and not all(_engineio_decodable(p) for p in packets)):
                return refuse(environ, start_response, "400 Bad Request", "Bad payload")
            environ["wsgi.input"] = io.BytesIO(body)
        try:
            return self.wsgi_app(environ, start_response)
        except KeyError:
            # python-engineio's _get_socket: "Session is disconnected"
            # (raised before any response was started)
            return refuse(environ, start_response, "400 Bad Request", "Session is disconnected")


def harden(socketio):
    """Install the guards on a Flask-SocketIO extension after ``init_app``."""
    server = socketio.server
    server.packet_class = GuardedPacket
    eio = server.eio
    if eio.async_mode not in ("threading", "gevent"):
        raise RuntimeError(f"SOCKETIO_ASYNC_MODE must be threading or gevent, not {eio.async_mode!r}")
    # eio._async is the driver module's shared dict: replace, don't mutate.
    eio._async = {**eio._async, "websocket": GuardedWebSocket}
    _remember_ping_tasks(eio)
    eio._service_task = functools.partial(_service_task, eio)


def _remember_ping_tasks(eio):
    """Each session's ping task (python-engineio starts one per session, and
    keeps no handle) is kept on the session, for GuardedWebSocket to stop."""
    start = eio.start_background_task

    def start_background_task(target, *args, **kwargs):
        task = start(target, *args, **kwargs)
        if getattr(target, "__name__", "") == "_send_ping":
            target.__self__.ping_task = task
        return task

    eio.start_background_task = start_background_task


def _service_task(eio):
    """python-engineio's ``Server._service_task`` (4.15: every ping_timeout
    seconds, close the sessions whose client stopped answering pings and
    forget closed ones), but over a list of session ids, each looked up when
    its turn comes: the original goes through a copy of ``eio.sockets``,
    which keeps every session of the pass, closed ones too, for up to
    ping_timeout (20 s).

    A pass also ends early once half its sessions are gone, and the next
    starts over those left: its list would otherwise keep the ids of
    thousands of closed connections for the rest of the pass, each made
    while its connection opened and pinning a page of the heap that the
    connection's other memory, freed, left around it (``malloc_trim`` cannot
    give back a page with anything live on it)."""
    eio.service_task_event = stop = eio.create_event()
    while not stop.is_set():
        if not eio.sockets:
            if stop.wait(timeout=eio.ping_timeout):
                break
            continue
        sids = list(eio.sockets)
        interval = float(eio.ping_timeout) / len(sids)
        try:
            for sid in sids:
                session = eio.sockets.get(sid)
                if session is not None:
                    if session.closed:
                        eio.sockets.pop(sid, None)
                    elif not session.closing:
                        session.check_ping_timeout()
                session = None  # not kept while waiting
                if stop.wait(timeout=interval):
                    return
                if len(eio.sockets) * 2 < len(sids):
                    break  # a wave of closings
            sids = sid = None  # nor while waiting for sessions, when none is left
        except Exception:  # as the original: log, and go on
            log.exception("service task exception")
