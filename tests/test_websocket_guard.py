"""The WebSocket guard (chatbot/guard.py) with simple-websocket's real server
on a socket pair:

- a frame over the size limit must end the connection, and whoever waits in
  ``receive`` must be told, even when the close frame goes out slowly (a busy
  server): simple-websocket 1.1.0 left that waiter asleep forever, one thread
  (or greenlet) lost per oversized frame;
- a large message must go out whole on a socket whose ``send`` writes only
  part of it (gevent's, when the client reads slowly).
"""
import socket
import threading
import time

import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request, TextMessage

from chatbot.guard import ClosingWebSocketServer


class SlowSendSocket:
    """The server's end of the connection; what it sends goes out 0.3 s late,
    the way a loaded server's does, which opens the race's window."""

    def __init__(self, sock):
        self.sock = sock

    def send(self, data):
        time.sleep(0.3)
        return self.sock.send(data)

    def sendall(self, data):
        time.sleep(0.3)
        self.sock.sendall(data)

    def settimeout(self, seconds):
        self.sock.settimeout(seconds)

    def recv(self, size):
        return self.sock.recv(size)

    def close(self):
        self.sock.close()


class PartialSendSocket(SlowSendSocket):
    """A socket whose ``send`` writes at most 1,000 bytes, as a non-blocking
    (gevent) socket does when the peer's buffers are full."""

    def send(self, data):
        return self.sock.send(data[:1000])

    def sendall(self, data):
        self.sock.sendall(data)


def open_connection(server_class, socket_class=SlowSendSocket):
    """A handshaken WebSocket: (server object, client wsproto, client socket)."""
    ours, theirs = socket.socketpair()
    client = WSConnection(ConnectionType.CLIENT)
    request = client.send(Request(host="localhost", target="/")).decode()
    environ = {"gunicorn.socket": socket_class(ours)}
    for line in request.split("\r\n")[1:]:  # the WSGI server's parse of the upgrade request
        if ": " in line:
            name, value = line.split(": ", 1)
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    server = server_class(environ, max_message_size=1000)
    client.receive_data(theirs.recv(65536))  # the server's 101
    assert any(isinstance(e, AcceptConnection) for e in client.events())
    return server, client, theirs


def receive_after_an_oversized_frame(server_class, wait_seconds=3.0):
    """What ``receive`` does when the client sends a frame over the limit:
    "closed" (it raised ConnectionClosed) or "hung" (it was never woken and
    returned only at its timeout)."""
    server, client, theirs = open_connection(server_class)
    outcome = []

    def waiter():
        try:
            server.receive(timeout=wait_seconds)
            outcome.append("hung")
        except simple_websocket.ConnectionClosed:
            outcome.append("closed")

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.1)  # the waiter is asleep in receive
    theirs.sendall(client.send(TextMessage(data="4" + "a" * 5000)))
    thread.join(wait_seconds + 2)
    theirs.close()
    return outcome[0]


def test_the_receiver_is_woken_when_an_oversized_frame_closes_the_socket():
    assert receive_after_an_oversized_frame(ClosingWebSocketServer) == "closed"


def test_simple_websocket_alone_leaves_the_receiver_waiting():
    """The bug this guards against, so that the test above is known to be able
    to fail.  If simple-websocket fixes it, this fails: drop the workaround."""
    assert receive_after_an_oversized_frame(simple_websocket.Server) == "hung"


def message_received_whole(server_class, size=100_000):
    server, client, theirs = open_connection(server_class, PartialSendSocket)
    server.send("a" * size)
    theirs.settimeout(1)
    received = ""
    try:
        while len(received) < size:
            data = theirs.recv(65536)
            if not data:
                break
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, Message):
                    received += event.data
    except socket.timeout:
        pass
    theirs.close()
    return received == "a" * size


def test_a_large_message_goes_out_whole():
    assert message_received_whole(ClosingWebSocketServer)


def test_simple_websocket_alone_sends_part_of_it():
    assert not message_received_whole(simple_websocket.Server)
