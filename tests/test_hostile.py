"""A real server (gunicorn with its gevent worker, as `make run` starts it)
against clients that try to hold what they should not: each test pushes past
one cap with raw sockets, from its own 127.x.y.z source addresses (Linux
routes all of 127.0.0.0/8 to loopback), and checks that the server refuses
the excess, frees what it held, and keeps answering everyone else."""
import json
import socket
import threading
import time

import psutil
import pytest
import websocket

from helpers import run_async
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



# ---------------------------------------------------------------------------
# issue 24: what a connection declares and never ends, a flood, and memory

HUGE = 4 * 2**30


def stream_declared_body(server, address, method, path, limit=15.0):
    """Declare a 4 GiB body and send it without pause until the server
    closes the connection or ``limit`` seconds pass; (whether the server
    closed it, what it answered)."""
    sock = raw(server, address, timeout=limit)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {HUGE}\r\n\r\n".encode())
    chunk = b"a" * 65536
    deadline = time.monotonic() + limit
    closed = False
    try:
        while time.monotonic() < deadline:
            sock.sendall(chunk)
    except socket.timeout:
        pass  # the server stopped reading but kept the connection
    except OSError:
        closed = True
    answer = read_all(sock)
    sock.close()
    return closed, answer


def test_a_huge_declared_body_ends_its_connection_and_stalls_no_one(server):
    """gunicorn read the rest of an unread body before the next request, with
    no deadline, and on gevent a read that always finds data never yields:
    one such connection held the whole server (a 40 s one, until the worker
    was killed).  Now the connection closes after the answer, for every method."""
    pid = worker(server).pid
    pages, stop = [], threading.Event()

    def browse():  # another client, all along
        while not stop.is_set():
            pages.append(get_page(server, "127.6.1.1"))
            time.sleep(0.05)

    browser = threading.Thread(target=browse)
    browser.start()
    attacks = [("POST", "/api/v1/messages"), ("GET", "/"), ("PUT", "/socket.io/?EIO=4&transport=polling"),
               ("DELETE", "/login"), ("PATCH", "/api/v1/messages"), ("OPTIONS", "/"), ("HEAD", "/")]
    results = []
    # Attack until the other client has had 3 pages (each attack is closed in
    # a few ms now, so a count of attacks ran out first on a fast machine).
    give_up = time.monotonic() + 30
    try:
        while time.monotonic() < give_up and (len(results) < len(attacks) or len(pages) < 3):
            method, path = attacks[len(results) % len(attacks)]
            results.append((method, path, *stream_declared_body(server, "127.6.0.1", method, path)))
    finally:
        stop.set()
        browser.join(30)
    for method, path, closed, answer in results:
        assert closed, (method, path)  # by the server, long before the body's end
        head = answer.split(b"\r\n\r\n", 1)[0]
        assert head.startswith(b"HTTP/1.1 ") and b"Connection: close" in head, (method, path, head)
    assert len(pages) >= 3 and set(pages) == {200}
    assert worker(server).pid == pid  # no worker restart


def test_frames_that_never_end_or_never_stop_end_their_connection(server):
    """A frame header declaring 4 GiB (closed at the size limit, 1009), and a
    flood of ping frames (each answered inside the reading loop, which never
    yielded: closed, 1008), while another client is served."""
    for address, frames, code in (("127.6.2.1", None, 1009), ("127.6.2.2", "pings", 1008)):
        ws = websocket_from(server, address)
        if frames is None:  # FIN, text, masked (zero key), 64-bit length
            payload = bytes([0x81, 0xFF]) + HUGE.to_bytes(8, "big") + b"\0\0\0\0"
            chunk = b"4" * 65536
        else:
            payload, chunk = b"", bytes([0x89, 0x81, 0, 0, 0, 0]) + b"x"
            chunk *= 8192
        ws.sock.sendall(payload)
        closed = False
        deadline = time.monotonic() + 15
        try:
            while time.monotonic() < deadline:
                ws.sock.sendall(chunk)
        except socket.timeout:
            pass
        except OSError:
            closed = True
        assert closed, frames
        data = read_all(ws.sock)
        assert bytes([0x88, 0x02]) + code.to_bytes(2, "big") in data, (frames, data[-40:])
        ws.sock.close()
        assert get_page(server, "127.6.2.9") == 200


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    """A server with the rate limits on (the module's server has them off)."""
    workdir = tmp_path_factory.mktemp("flood")
    prepare(workdir)
    live = LiveServer(workdir, env={"MESSAGE_RATE": "2", "MESSAGE_BURST": "4", "FLOOD_REFUSAL_BURST": "10",
                                    "FLOOD_REFUSAL_RATE": "0.1", "FLOOD_COOLDOWN_SECONDS": "60"}).start()
    yield live
    live.stop()


def test_a_flooding_socket_is_closed_and_its_address_cools_down(limited_server):
    """Answering each packet of a flood (rate_limited) took the whole event
    loop on a slow machine: the socket is closed instead, and its address is
    refused for the cool-down, while others chat."""
    server = limited_server
    ws = websocket_from(server, "127.7.0.1")
    sent = 0
    try:
        for i in range(2000):
            ws.send("42" + json.dumps(["message", {"text": f"안녕 {i}"}]))
            sent += 1
    except (websocket.WebSocketException, OSError):
        pass
    codes = []
    try:
        while True:
            frame = ws.recv()
            if frame.startswith("42"):
                event = json.loads(frame[2:])
                codes.append(event[1].get("code") if event[0] == "error" else event[0])
    except (websocket.WebSocketException, OSError):
        pass  # closed by the server
    # FLOOD_REFUSAL_BURST refusals and the last one, not one per packet (replies may not come: the
    # model answers later than the refusals, and the socket is closed by then)
    assert 10 < codes.count("rate_limited") <= 12, codes
    assert not ws.connected
    # its address: the handshake is refused for the cool-down
    sock = raw(server, "127.7.0.1")
    sock.sendall(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 429") and b"Retry-After: " in answer, answer[:300]
    retry_after = int(answer.split(b"Retry-After: ", 1)[1].split(b"\r\n", 1)[0])
    assert 50 <= retry_after <= 60
    # another address chats as before
    calm = websocket_from(server, "127.7.0.2")
    assert ask(calm, "안녕")[0] == "reply"
    calm.close()


def test_a_server_over_its_memory_high_water_mark_refuses_new_connections(tmp_path):
    """MEMORY_LIMIT_MB smaller than the server itself: every new connection
    is over the high-water mark, and is told so (503, a text, Retry-After)."""
    prepare(tmp_path)
    live = LiveServer(tmp_path, env={"MEMORY_LIMIT_MB": "60"}).start(ready_status=503)
    try:
        answer = read_all(raw(live, "127.8.0.1"))
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"Retry-After: 10" in answer and answer.endswith(b"The server is low on memory. Try again shortly.")
    finally:
        live.stop()


def answered_once(port) -> bool:
    """Ask one question over a raw Socket.IO WebSocket; whether a reply came."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=30)
    try:
        ws.recv()  # Engine.IO open
        ws.send("40")
        ws.send(json.dumps(["message", {"text": "안녕"}]).join(("42", "")))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = ws.recv()
            if frame == "2":  # Engine.IO ping
                ws.send("3")
            elif frame.startswith('42["reply"'):
                return True
        return False
    finally:
        ws.close()


def test_memory_goes_back_after_many_idle_sockets_drop(tmp_path):
    """Issue 12 ended with the memory of 5,000 closed sockets kept by the
    worker.  Now: RSS within 10% of before, within 10 s of their closing."""
    import asyncio

    import aiohttp

    prepare(tmp_path)
    live = LiveServer(tmp_path, env={"CONNECT_RATE": "0", "HANDSHAKE_TOTAL_RATE": "0"}).start()
    try:
        proc = worker(live)
        url = f"ws://127.0.0.1:{live.port}/socket.io/?EIO=4&transport=websocket"

        async def hold(count, prefix):
            """Open ``count`` idle Socket.IO WebSockets, 5 an address; close them all."""
            sessions, sockets = [], []
            gate = asyncio.Semaphore(50)

            async def one(i):
                async with gate:
                    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                        local_addr=(f"{prefix}.{i // 5 // 250}.{i // 5 % 250 + 1}", 0)))
                    sessions.append(session)
                    ws = await session.ws_connect(url)
                    await ws.receive()  # Engine.IO open
                    await ws.send_str("40")
                    await ws.receive()  # Socket.IO connect
                    sockets.append(ws)

            await asyncio.gather(*(one(i) for i in range(count)))
            with_sockets = proc.memory_info().rss
            await asyncio.gather(*(ws.close() for ws in sockets))
            await asyncio.gather(*(s.close() for s in sessions))
            return with_sockets

        run_async(hold(50, "127.9"))  # what any first connections leave (caches)
        # The model (and its sentence encoder) loaded now, not while the
        # sockets below are counted: on a slow machine the first chat's
        # preload once finished in that window (+18 MB, "after" 14% over).
        assert answered_once(live.port)
        assert settle(lambda: len(proc.net_connections()) <= 1)
        before = proc.memory_info().rss
        with_sockets = run_async(hold(1000, "127.10"))
        assert with_sockets > before + 30 * 2**20  # they did cost something (~60 KB each)
        closed_at = time.monotonic()
        back = settle(lambda: proc.memory_info().rss <= before * 1.1, seconds=10)
        after = proc.memory_info().rss
        assert back, (before / 2**20, with_sockets / 2**20, after / 2**20, time.monotonic() - closed_at)
    finally:
        live.stop()
