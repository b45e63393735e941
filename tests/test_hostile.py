"""A real server (gunicorn with its gevent worker, as `make run` starts it)
against clients that try to hold what they should not: each test pushes past
one cap with raw sockets, from its own 127.x.y.z source addresses (Linux
routes all of 127.0.0.0/8 to loopback), and checks that the server refuses
the excess, frees what it held, and keeps answering everyone else."""
import json
import socket
import time

import psutil
import pytest
import websocket

from live_server import LiveServer, prepare

pytestmark = pytest.mark.fuzz

# Small caps, so each test pushes past them quickly.
ENV = {"MAX_CONNECTIONS": "40", "MAX_CONNECTIONS_PER_ADDRESS": "5", "HEADER_TIMEOUT": "2",
       "BODY_TIMEOUT": "2", "CONNECT_RATE": "0", "ADDRESS_MESSAGE_RATE": "0", "MESSAGE_RATE": "0",
       "HISTORY_RATE": "0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    prepare(workdir)
    live = LiveServer(workdir, env=ENV).start()
    yield live
    live.stop()


def raw(server, address, timeout=5.0, receive_buffer=None):
    """A TCP connection to the server from ``address``."""
    sock = socket.socket()
    sock.settimeout(timeout)
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((address, 0))
    sock.connect(("127.0.0.1", server.port))
    return sock


def read_all(sock, limit=1 << 20) -> bytes:
    """What the server sends until it closes the connection (or the timeout)."""
    data = b""
    try:
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data


def get_page(server, address) -> int:
    sock = raw(server, address)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status = read_all(sock).split(b"\r\n", 1)[0]
    sock.close()
    return int(status.split()[1]) if status else 0


def websocket_from(server, address, receive_buffer=None):
    """A Socket.IO connection (a new chat) over a raw WebSocket from ``address``."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     socket=raw(server, address, receive_buffer=receive_buffer), timeout=5)
    assert ws.recv().startswith("0{")  # Engine.IO open
    ws.send("40")
    assert ws.recv().startswith('42["session"')  # its chat session's token comes with the connect
    assert ws.recv().startswith("40")
    return ws


def ask(ws, text):
    """Send a message; the first event that answers it (skipping pings)."""
    ws.send("42" + json.dumps(["message", {"text": text}]))
    return next_event(ws)


def next_event(ws):
    while True:
        frame = ws.recv()
        if frame == "2":
            ws.send("3")
            continue
        if frame.startswith("42"):
            return json.loads(frame[2:])


def worker(server) -> psutil.Process:
    [child] = psutil.Process(server.process.pid).children()
    return child


def settle(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_connections_per_address_are_capped(server):
    held = [raw(server, "127.1.0.1") for _ in range(5)]
    time.sleep(0.3)
    extra = raw(server, "127.1.0.1")
    answer = read_all(extra)
    assert answer.startswith(b"HTTP/1.1 429"), answer[:200]
    assert b"Retry-After" in answer
    assert get_page(server, "127.1.0.2") == 200  # another address is served
    for sock in held:
        sock.close()
    assert settle(lambda: get_page(server, "127.1.0.1") == 200)  # the slots are given back


def test_connections_in_total_are_capped(server):
    held = [raw(server, f"127.2.0.{i}") for i in range(1, 9) for _ in range(5)]  # 40: the cap
    time.sleep(0.5)
    answer = read_all(raw(server, "127.2.1.1"))
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    for sock in held:
        sock.close()
    assert settle(lambda: get_page(server, "127.2.1.1") == 200)


def test_slow_headers_are_cut_off(server):
    started = time.monotonic()
    sock = raw(server, "127.3.0.1", timeout=10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    try:
        for _ in range(30):  # a header byte every 0.2 s, never finishing
            sock.sendall(b"X")
            time.sleep(0.2)
    except OSError:
        pass
    closed = read_all(sock) == b""
    assert closed and time.monotonic() - started < 5  # HEADER_TIMEOUT=2


def test_a_slow_body_is_cut_off(server):
    started = time.monotonic()
    sock = raw(server, "127.3.0.2", timeout=10)
    sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 1000\r\n\r\nusername=")
    answer = b""
    try:
        for _ in range(30):
            sock.sendall(b"a")
            time.sleep(0.2)
    except OSError:
        pass
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 6  # BODY_TIMEOUT=2


def test_a_huge_upload_is_refused_before_its_body(server):
    sock = raw(server, "127.3.0.3")
    sock.sendall(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 b"Content-Length: 1073741824\r\n\r\n")
    started = time.monotonic()
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert time.monotonic() - started < 2  # answered without waiting for a gigabyte


def test_oversized_frames_free_their_connections(server):
    """simple-websocket's reader could be left waiting forever after a frame
    over the limit (chatbot/guard.py); each would keep its connection slot,
    and with 5 per address the sixth connection would be refused."""
    baseline = len(worker(server).net_connections())
    for _ in range(20):
        ws = websocket_from(server, "127.4.0.1")
        ws.send("4" + "a" * 20000)
        try:
            ws.recv()  # the server's close
        except (websocket.WebSocketException, OSError):
            pass
        ws.close()
    ws = websocket_from(server, "127.4.0.1")  # still admitted: every slot was given back
    assert ask(ws, "안녕")[0] == "reply"
    ws.close()
    assert settle(lambda: len(worker(server).net_connections()) <= baseline)


def test_idle_sockets_from_many_addresses_are_given_back(server):
    baseline = len(worker(server).net_connections())
    held = [websocket_from(server, f"127.5.{i}.1") for i in range(30)]
    assert len(worker(server).net_connections()) >= baseline + 30
    for ws in held:
        ws.close()
    assert settle(lambda: len(worker(server).net_connections()) <= baseline)
    assert get_page(server, "127.5.0.1") == 200

