"""The chat's WebSocket (chatbot/websocket.py) on a socket pair, against a
client speaking the protocol with wsproto: messages both ways, pings, the
size limit, slow writes, closes and timeouts, and no compression."""
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, CloseConnection, Message, Ping, Pong, Request, TextMessage)
from wsproto.extensions import PerMessageDeflate

from chatbot import websocket


class Client:
    """The browser's end: wsproto over one end of a socket pair."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(5)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events = []

    def send(self, event):
        self.sock.sendall(self.ws.send(event))

    def read(self, until, timeout=5.0):
        """Read until an event of type ``until`` arrives (or the socket ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.ws.events():
                self.events.append(event)
                if isinstance(event, until):
                    return event
            data = self.sock.recv(65536)
            if not data:
                return None
            self.ws.receive_data(data)
        raise AssertionError(f"no {until} within {timeout}s; got {self.events}")


class PartialSendSocket:
    """The server's end, whose ``send`` writes at most 1,000 bytes (as a
    gevent socket does when the client reads slowly)."""

    def __init__(self, sock):
        self.sock = sock

    def send(self, data):
        return self.sock.send(data[:1000])

    def __getattr__(self, name):
        return getattr(self.sock, name)


def serve(handler, offer_deflate=False, max_message_size=1000, wrap=lambda s: s):
    """Run a WebSocket with ``handler`` on a thread; the connected client."""
    ours, theirs = socket.socketpair()
    client = Client(theirs)
    request = client.ws.send(Request(host="localhost", target="/socket.io/",
                                     extensions=[PerMessageDeflate()] if offer_deflate else [])).decode()
    environ = {websocket.WORKER_SOCKET: wrap(ours), "PATH_INFO": "/socket.io/"}
    for line in request.split("\r\n")[1:]:  # what the WSGI server parsed
        if ": " in line:
            name, value = line.split(": ", 1)
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    ws = websocket.WebSocket(handler, SimpleNamespace(max_http_buffer_size=max_message_size))
    outcome = {}

    def run():
        try:
            ws(environ, lambda status, headers: outcome.setdefault("status", status))
        except StopIteration:
            outcome["taken_over"] = True

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    accepted = client.read(AcceptConnection)
    return ws, client, accepted, thread, outcome


def echo(ws):
    while (data := ws.wait()) is not None:
        ws.send(data)


def test_messages_go_both_ways_and_fragments_are_joined():
    ws, client, _, thread, outcome = serve(echo)
    client.send(TextMessage(data="안녕"))
    assert client.read(Message).data == "안녕"
    client.send(TextMessage(data="나눠서 ", message_finished=False))
    client.send(TextMessage(data="보낸 말"))
    assert client.read(Message).data == "나눠서 보낸 말"
    client.send(CloseConnection(code=1000))
    assert client.read(CloseConnection).code == 1000
    thread.join(5)
    assert not thread.is_alive() and outcome == {"taken_over": True}


def test_pings_are_answered():
    _, client, _, _, _ = serve(echo)
    client.send(Ping(payload=b"hi"))
    assert client.read(Pong).payload == b"hi"


def test_compression_is_never_negotiated():
    _, _, accepted, _, _ = serve(echo, offer_deflate=True)
    assert accepted.extensions == []


def test_an_oversized_message_closes_the_connection_and_frees_the_reader():
    ws, client, _, thread, _ = serve(echo, max_message_size=1000)
    for _ in range(3):  # 1,200 characters in fragments: over the limit before the message ends
        client.send(TextMessage(data="a" * 400, message_finished=False))
    assert client.read(CloseConnection).code == 1009
    thread.join(5)
    assert not thread.is_alive()  # wait() returned None, the handler ended
    assert ws.closed


def test_a_large_message_goes_out_whole_on_a_socket_that_writes_part():
    ws, client, _, _, _ = serve(echo, max_message_size=10**6, wrap=PartialSendSocket)
    ws.send("a" * 200_000)
    received = ""
    while len(received) < 200_000:
        event = client.read(Message)
        received += event.data
    assert received == "a" * 200_000


def test_close_wakes_a_waiting_reader():
    ws, client, _, thread, _ = serve(echo)
    time.sleep(0.1)  # the handler is blocked in wait()
    ws.close()
    assert client.read(CloseConnection).code == 1000
    thread.join(5)
    assert not thread.is_alive()


def test_a_silent_client_is_timed_out(monkeypatch):
    monkeypatch.setattr(websocket, "SOCKET_TIMEOUT", 0.5)
    started = time.monotonic()
    _, _, _, thread, _ = serve(echo)
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 3


def test_a_request_that_is_not_an_upgrade_gets_400():
    ours, theirs = socket.socketpair()
    ws = websocket.WebSocket(echo, SimpleNamespace(max_http_buffer_size=1000))
    statuses = []
    body = ws({"gunicorn.socket": ours, "PATH_INFO": "/socket.io/", "HTTP_HOST": "x"},
              lambda status, headers: statuses.append(status))
    assert statuses == ["400 Bad Request"] and b"WebSocket" in b"".join(body)
    theirs.close()
    ours.close()


def test_the_server_needs_its_socket_in_the_environ():
    ws = websocket.WebSocket(echo, SimpleNamespace(max_http_buffer_size=1000))
    with pytest.raises(RuntimeError):
        ws({"PATH_INFO": "/"}, lambda *a: None)


def test_a_flood_of_pings_closes_the_connection():
    """Each ping is answered inside the reading loop: a client sending them
    without pause kept the loop (on gevent, the whole server) busy forever."""
    ws, client, _, thread, _ = serve(echo)
    client.sock.sendall(b"".join(client.ws.send(Ping(payload=b"x")) for _ in range(200)))
    assert client.read(CloseConnection).code == 1008
    pongs = [e for e in client.events if isinstance(e, Pong)]
    assert len(pongs) == websocket.PING_BURST
    thread.join(5)
    assert not thread.is_alive() and ws.closed


def test_the_reader_yields_after_every_read(monkeypatch):
    """On gevent a read that finds data never switches to another greenlet:
    the loop does (time.sleep(0), which gevent patches), read after read."""
    yields = []
    monkeypatch.setattr(websocket, "time", SimpleNamespace(monotonic=time.monotonic, sleep=yields.append))
    ws, client, _, _, _ = serve(echo)
    count = len(yields)
    client.send(TextMessage(data="하나", message_finished=False))
    time.sleep(0.2)  # read on its own, before the rest arrives
    client.send(TextMessage(data="둘"))
    assert client.read(Message).data == "하나둘"
    assert yields[count:] == [0, 0]


def test_connections_close_a_few_at_a_time_and_never_wait_long(monkeypatch):
    """guard.GuardedWebSocket: a connection that ends takes one of
    CLOSING_AT_ONCE slots for its closing work, and gives it back when done;
    one that finds none free waits at most CLOSING_WAIT, then closes anyway."""
    import threading as real_threading

    from chatbot import guard

    monkeypatch.setattr(guard, "CLOSING_AT_ONCE", 2)
    monkeypatch.setattr(guard, "CLOSING_WAIT", 0.3)
    monkeypatch.setattr(guard.GuardedWebSocket, "closing", None)
    sockets = [guard.GuardedWebSocket(lambda ws: None, SimpleNamespace(max_http_buffer_size=1000)) for _ in range(3)]
    for ws in sockets:
        ws._closing_slot = None
    sockets[0]._take_a_closing_slot()
    sockets[0]._take_a_closing_slot()  # once per connection
    sockets[1]._take_a_closing_slot()
    assert [ws._closing_slot for ws in sockets[:2]] == [guard.GuardedWebSocket.closing] * 2
    started = time.monotonic()
    sockets[2]._take_a_closing_slot()  # none free: waits, then goes on without one
    assert 0.25 < time.monotonic() - started < 2.0
    assert sockets[2]._closing_slot is None
    released = real_threading.Timer(0.1, guard.GuardedWebSocket.closing.release)
    released.start()  # the first connection's closing work ends
    started = time.monotonic()
    sockets[2]._take_a_closing_slot()
    assert time.monotonic() - started < 0.25 and sockets[2]._closing_slot is guard.GuardedWebSocket.closing
    released.join()


def test_a_closed_connection_gives_its_closing_slot_back(monkeypatch):
    from chatbot import guard

    monkeypatch.setattr(guard, "CLOSING_AT_ONCE", 1)
    monkeypatch.setattr(guard.GuardedWebSocket, "closing", None)
    monkeypatch.setattr(websocket, "WebSocket", guard.GuardedWebSocket)  # serve() makes ours
    for _ in range(2):  # with one slot, the second would find none if the first kept it
        ws, client, _, thread, outcome = serve(echo)
        client.send(CloseConnection(code=1000))
        assert client.read(CloseConnection).code == 1000
        thread.join(5)
        assert not thread.is_alive() and outcome == {"taken_over": True}
        assert ws._closing_slot is guard.GuardedWebSocket.closing
    assert guard.GuardedWebSocket.closing.acquire(blocking=False)  # given back


def test_a_slot_goes_back_to_the_semaphore_it_came_from(monkeypatch):
    """Two threads that end at once may each make the semaphore of slots (it
    is made on first use); a slot goes back where it was taken, not to the
    other one, which never lent it (a BoundedSemaphore raises ValueError)."""
    from chatbot import guard

    monkeypatch.setattr(guard.GuardedWebSocket, "closing", None)
    monkeypatch.setattr(websocket, "WebSocket", guard.GuardedWebSocket)
    taken_from = []

    def echo_then_another_thread_makes_its_own(ws):
        echo(ws)  # returns once the connection ended, holding a slot
        taken_from.append(guard.GuardedWebSocket.closing)
        guard.GuardedWebSocket.closing = threading.BoundedSemaphore(guard.CLOSING_AT_ONCE)

    ws, client, _, thread, outcome = serve(echo_then_another_thread_makes_its_own)
    client.send(CloseConnection(code=1000))
    assert client.read(CloseConnection).code == 1000
    thread.join(5)
    assert not thread.is_alive() and outcome == {"taken_over": True}
    assert ws._closing_slot is taken_from[0]
    assert taken_from[0].acquire(blocking=False)  # given back to the one it came from
