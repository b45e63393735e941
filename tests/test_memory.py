"""The server's memory budget (chatbot/memory.py): the limit from a cgroup
(fake cgroup trees here, v1 and v2) or the machine, MAX_CONNECTIONS from it,
the high-water mark and when memory is given back.  Against a real server:
tests/test_hostile.py."""
import time

import pytest

from chatbot import memory
from helpers import run_in_a_gevent_process

V2 = "0::/system.slice/chatbot.service\n"
V1 = "12:pids:/x\n4:memory:/process_api/abc\n3:cpu,cpuacct:/\n"


def write(root, relative, text):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_a_cgroup_v2_limit_is_the_smallest_along_the_path(tmp_path):
    write(tmp_path, "system.slice/chatbot.service/memory.max", "max\n")
    assert memory.cgroup_limit_mb(V2, root=tmp_path) is None  # no limit anywhere
    write(tmp_path, "system.slice/memory.max", str(900 * 2**20))
    assert memory.cgroup_limit_mb(V2, root=tmp_path) == 900  # the parent's
    write(tmp_path, "system.slice/chatbot.service/memory.max", str(600 * 2**20))
    assert memory.cgroup_limit_mb(V2, root=tmp_path) == 600


def test_a_cgroup_v1_limit_and_its_no_limit(tmp_path):
    write(tmp_path, "memory/process_api/abc/memory.limit_in_bytes", "9223372036854771712\n")  # v1's "none"
    assert memory.cgroup_limit_mb(V1, root=tmp_path) is None
    write(tmp_path, "memory/process_api/abc/memory.limit_in_bytes", str(1024 * 2**20))
    assert memory.cgroup_limit_mb(V1, root=tmp_path) == 1024


def test_in_a_container_the_root_cgroup_holds_the_limit(tmp_path):
    write(tmp_path, "memory.max", str(512 * 2**20))
    assert memory.cgroup_limit_mb("0::/\n", root=tmp_path) == 512


def test_max_connections_follows_from_the_budget():
    # (limit x high water - the server's own memory) / one connection
    assert memory.connections_for(600, 0.85) == int((600 * 0.85 - memory.SERVER_BASE_MB) * 1024
                                                    // memory.CONNECTION_KB)
    assert memory.connections_for(900, 0.85) > memory.connections_for(600, 0.85)
    assert memory.connections_for(64 * 1024, 0.85) == memory.MAX_CONNECTIONS_CAP
    assert memory.connections_for(200, 0.85) == memory.MIN_CONNECTIONS  # less than the server itself


def test_the_config_takes_the_budget_from_the_environment(monkeypatch):
    import importlib

    from chatbot import config

    monkeypatch.setenv("MEMORY_LIMIT_MB", "700")
    monkeypatch.delenv("MAX_CONNECTIONS", raising=False)
    importlib.reload(config)
    try:
        assert config.Config.MEMORY_LIMIT_MB == 700
        assert config.Config.MAX_CONNECTIONS == memory.connections_for(700, config.Config.MEMORY_HIGH_WATER)
        monkeypatch.setenv("MAX_CONNECTIONS", "123")
        importlib.reload(config)
        assert config.Config.MAX_CONNECTIONS == 123
        monkeypatch.delenv("MEMORY_LIMIT_MB")
        importlib.reload(config)
        assert config.Config.MEMORY_LIMIT_MB == memory.detected_memory_mb()
    finally:
        monkeypatch.undo()
        importlib.reload(config)


def test_over_the_high_water_mark_until_memory_falls_back():
    rss, now, reads = [100.0], [0.0], []

    def read():
        reads.append(now[0])
        return rss[0]

    guard = memory.MemoryGuard(200, 0.8, check_every=0.25, rss=read, clock=lambda: now[0])
    assert not guard.over()
    rss[0] = 170.0
    now[0] = 0.1
    assert not guard.over()  # RSS as read 0.1 s ago
    now[0] = 0.25
    assert guard.over()  # over 160 MB: new connections are refused
    rss[0] = 150.0
    now[0] = 0.6
    assert not guard.over()
    assert reads == [0.0, 0.25, 0.6]  # not once a connection


def test_memory_is_given_back_once_per_wave_of_closed_connections():
    now = [0.0]
    guard = memory.MemoryGuard(1000, 0.85, trim_every=2.0, trim_after=3, settle=0.5, clock=lambda: now[0])
    trims = []
    guard.malloc_trim = trims.append
    for open_now in range(1, 11):
        guard.opened(open_now)
    assert [guard.closed(open_now) for open_now in (9, 8)] == [None, None]  # a few: not worth it
    assert guard.closed(7) == 0.5  # three fewer than the peak: once the closings pause
    now[0] = 0.3
    assert guard.closed(6) is None  # already scheduled
    now[0] = 0.5
    assert guard.due_in() == pytest.approx(0.3)  # the wave goes on: wait for its end
    now[0] = 0.8
    assert guard.due_in() == 0.0
    guard.trim()
    assert trims == [0]
    now[0] = 1.0
    # counted from 7, open when the last one was scheduled; 2 s after the last trim
    assert [guard.closed(open_now) for open_now in (5, 4, 3)] == [None, pytest.approx(1.8), None]
    now[0] = 2.8
    assert guard.due_in() == 0.0
    guard.trim()
    for _ in range(20):  # connections that come and go: nothing to give back
        guard.opened(4)
        assert guard.closed(3) is None
    now[0] = 10.0
    assert guard.short(3) == 0.5  # over the high-water mark: trim, whatever closed
    guard.trim()
    assert guard.short(3) is None  # still over, but nothing closed since: a trim would free nothing


def test_a_wave_that_never_pauses_is_trimmed_after_trim_every():
    now = [0.0]
    guard = memory.MemoryGuard(1000, 0.85, trim_every=2.0, trim_after=1, settle=0.5, clock=lambda: now[0])
    guard.opened(100)
    assert guard.closed(99) == 0.5
    for step in range(1, 30):  # a connection closes every 0.1 s, for ever
        now[0] = step * 0.1
        guard.closed(99 - step)
    assert guard.due_in() == 0.0  # 2 s after it was scheduled


# What a closed connection leaves for the garbage collector: a full collection
# runs on the event loop, so thousands of connections' reference cycles
# stalled every chat when they closed together (bench-attack's idle_sockets_many).

RELEASE_A_CLOSED_SESSION = """
import gc, gevent, engineio
from engineio.socket import Socket
from chatbot import guard
eio = engineio.Server(async_mode="gevent")
guard._remember_ping_tasks(eio)
gc.collect()
gc.disable()
for n in range(50):
    session = Socket(eio, f"sid{n}")
    eio.sockets[session.sid] = session
    eio.start_background_task(session._send_ping)  # as python-engineio does once connected
    gevent.sleep(0)
    session.closed = True
    guard.GuardedWebSocket(session._websocket_handler, eio)._release_session()
    del session
gevent.sleep(0.05)
print(len(eio.sockets), gc.collect())
"""


def test_a_closed_sessions_ping_task_is_stopped_and_leaves_no_reference_cycle():
    """GuardedWebSocket stops the ping task of a session that closed (else it
    holds the session for ping_interval), and lets go of it: the killed task's
    exception holds the session, and a session that held the task made a
    cycle (about 50 objects a connection)."""
    done = run_in_a_gevent_process(RELEASE_A_CLOSED_SESSION)
    sessions_left, unreachable = map(int, done.stdout.split())
    assert sessions_left == 0
    assert unreachable == 0


def test_engineio_makes_no_class_for_a_request_through_our_worker():
    """python-engineio's middleware makes a class (a knot of reference cycles)
    for every request that carries ``gunicorn.socket``; our worker hands the
    socket on under WORKER_SOCKET, which chatbot/websocket.py reads."""
    from engineio.middleware import WSGIApp

    from chatbot.websocket import WORKER_SOCKET

    def app(environ, start_response):
        start_response("200 OK", [])
        return [b""]

    middleware = WSGIApp(None, app)
    ours, gunicorns = {WORKER_SOCKET: object(), "PATH_INFO": "/"}, {"gunicorn.socket": object(), "PATH_INFO": "/"}
    middleware(ours, lambda *args: None)
    middleware(gunicorns, lambda *args: None)
    assert "eventlet.input" not in ours
    assert "eventlet.input" in gunicorns  # what it does with gunicorn's name: the test sees the difference


class RecordingSessions(dict):
    """Engine.IO's table of sessions, recording which ids are looked up."""

    def __init__(self, *args):
        super().__init__(*args)
        self.looked_up = []

    def get(self, key, default=None):
        self.looked_up.append(key)
        return super().get(key, default)


class OpenSession:
    closed = closing = False

    def check_ping_timeout(self):
        return True


def test_the_service_task_lets_go_of_a_wave_of_closed_sessions_ids():
    """A pass over 200 sessions takes ping_timeout (here 2 s).  When 150 of
    them close in its first moments, it must not go on holding (and looking
    up) their ids for the rest of the pass: their strings would pin heap
    pages that malloc_trim cannot give back."""
    import threading
    from types import SimpleNamespace

    from chatbot import guard

    sessions = RecordingSessions({f"sid{i}": OpenSession() for i in range(200)})
    eio = SimpleNamespace(sockets=sessions, ping_timeout=2, create_event=threading.Event)
    task = threading.Thread(target=guard._service_task, args=(eio,), daemon=True)
    task.start()
    try:
        deadline = time.monotonic() + 5
        while len(sessions.looked_up) < 5 and time.monotonic() < deadline:
            time.sleep(0.005)
        closed = [f"sid{i}" for i in range(50, 200)]
        for sid in closed:
            del sessions[sid]
        mark = len(sessions.looked_up)
        time.sleep(0.5)  # a quarter of the pass
        after = sessions.looked_up[mark + 2:]  # one lookup may be under way
        assert after, "the service task stopped"
        assert not set(after) & set(closed)
        assert set(after) <= set(sessions)
    finally:
        eio.service_task_event.set()
        task.join(5)
    assert not task.is_alive()
