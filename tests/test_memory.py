"""The server's memory budget (chatbot/memory.py): the limit from a cgroup
(fake cgroup trees here, v1 and v2) or the machine, MAX_CONNECTIONS from it,
the high-water mark and when memory is given back.  Against a real server:
tests/test_hostile.py."""
import pytest

from chatbot import memory

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
    guard = memory.MemoryGuard(1000, 0.85, trim_every=2.0, trim_after=3, clock=lambda: now[0])
    trims = []
    guard.malloc_trim = trims.append
    for open_now in range(1, 11):
        guard.opened(open_now)
    assert [guard.closed(open_now) for open_now in (9, 8)] == [None, None]  # a few: not worth it
    assert guard.closed(7) == 0.0  # three fewer than the peak: now
    assert guard.closed(6) is None  # already scheduled
    guard.trim()
    assert trims == [0]
    now[0] = 0.5
    # counted from 7, open when the last one was scheduled; 2 s after it
    assert [guard.closed(open_now) for open_now in (5, 4, 3)] == [None, pytest.approx(1.5), None]
    now[0] = 2.0
    guard.trim()
    for _ in range(20):  # connections that come and go: nothing to give back
        guard.opened(4)
        assert guard.closed(3) is None
    assert guard.short(3) == pytest.approx(2.0)  # over the high-water mark: trim, whatever closed
