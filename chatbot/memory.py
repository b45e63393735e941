"""The server's memory: how much it may use, how many connections fit in it,
and giving freed memory back to the system.

- ``detected_memory_mb``: the limit of the process's own cgroup (v2
  ``memory.max``, v1 ``memory.limit_in_bytes``, the smallest along its path),
  else the machine's memory: ``MEMORY_LIMIT_MB``'s default (chatbot/config.py).
- ``connections_for``: ``MAX_CONNECTIONS``'s default, as many idle
  connections as fit between the server's own memory and the high-water mark
  (README "Configuration" has the formula).
- ``MemoryGuard``: the worker (chatbot/worker.py) refuses new connections
  while its RSS is over ``MEMORY_HIGH_WATER`` of the limit, and after many
  connections have closed it collects their reference cycles and asks glibc
  to give the freed pages back (``malloc_trim``): without that, the memory of
  5,000 closed sockets stayed with the process.  Two more things are needed
  for the pages to come free, both outside this module: ``make serve`` runs
  Python with ``PYTHONMALLOC=malloc`` (pymalloc keeps each 1 MiB arena while
  any object in it lives, and a flood's survivors are spread over all of
  them), and chatbot/guard.py lets go of a closed Engine.IO session at once.

Nothing here imports Flask: gunicorn.conf.py uses it in gunicorn's master.
"""
import ctypes
import ctypes.util
import gc
import os
import time
from pathlib import Path

# Measured with bench/attack.py's idle_sockets_many (2 cores, the starter
# model, make serve's PYTHONMALLOC=malloc): one more idle Socket.IO WebSocket
# adds 63-66 KB to the worker's RSS; master and worker with the model loaded
# and warm hold 320 MB (worker 288).  Rounded up.
CONNECTION_KB = 70
SERVER_BASE_MB = 320
# Bounds of the MAX_CONNECTIONS that follows from the budget.
MIN_CONNECTIONS = 100
MAX_CONNECTIONS_CAP = 10_000
CGROUP_ROOT = Path("/sys/fs/cgroup")


def machine_mb() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20


def cgroup_limit_mb(proc_cgroup: str | None = None, root: Path = CGROUP_ROOT) -> int | None:
    """The memory limit of this process's cgroup in MB (the smallest along its
    path to the root, which also covers a container whose cgroup is its root),
    or None when there is none.  ``proc_cgroup``: /proc/self/cgroup's text."""
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2, one hierarchy for all controllers
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = Path(path.strip() or "/")
        for directory in [here, *here.parents]:
            try:
                text = (base / str(directory).lstrip("/") / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text) // 2**20)
    # v1 says "no limit" with a huge number (the largest page multiple below
    # 2**63): anything at or above the machine's memory is no limit.
    limits = [limit for limit in limits if limit < machine_mb()]
    return min(limits) if limits else None


def detected_memory_mb() -> int:
    """The cgroup's limit, else the machine's memory."""
    return cgroup_limit_mb() or machine_mb()


def connections_for(limit_mb: float, high_water_share: float) -> int:
    """How many idle connections fit between the server's own memory and the
    high-water mark: (limit x high water - SERVER_BASE_MB) / CONNECTION_KB,
    within MIN_CONNECTIONS and MAX_CONNECTIONS_CAP."""
    room_kb = (limit_mb * high_water_share - SERVER_BASE_MB) * 1024
    return int(max(MIN_CONNECTIONS, min(MAX_CONNECTIONS_CAP, room_kb // CONNECTION_KB)))


def rss_mb() -> float | None:
    """This process's resident memory (Linux; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def glibc_malloc_trim():
    """glibc's malloc_trim, or None (another C library)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


class MemoryGuard:
    """The worker's high-water mark, and giving memory back after
    connections close: ``gc.collect`` (the cycles a closed connection leaves)
    and glibc's ``malloc_trim``.

    A trim is worth it once the open connections have fallen by
    ``trim_after`` from their peak (a steady stream of short connections
    frees nothing for long), or, while RSS is over the mark, once any
    connection has closed since the last one.  Each trim holds the event loop
    for a full collection, which walks every connection still open (about
    0.1 s with 600 sockets under half a core), so: none while the server sits
    at its mark with nothing closed (it would free nothing, again and again);
    a wave of closing connections gets one, ``settle`` seconds after the
    closings pause (or ``trim_every`` after the wave began, if they never
    do), so that it frees the whole wave and not its first hundred; and at
    most one every ``trim_every`` seconds.  RSS is read at most every
    ``check_every`` seconds: reading it for every connection took 7% of the
    event loop under bench-attack's idle_sockets_many.  ``rss`` and
    ``clock`` are for tests."""

    def __init__(self, limit_mb: float, high_water_share: float, trim_every: float = 5.0, trim_after: int = 100,
                 settle: float = 0.5, check_every: float = 0.25, rss=rss_mb, clock=time.monotonic):
        self.limit_mb = limit_mb
        self.high_water_mb = limit_mb * high_water_share
        self.trim_every = trim_every
        self.trim_after = trim_after
        self.settle = settle
        self.rss = rss
        self.clock = clock
        self.malloc_trim = glibc_malloc_trim()
        self.last_trim = float("-inf")
        self.peak = 0  # open connections at most, since the last trim was scheduled
        self.closed_since_trim = 0
        self.last_close = float("-inf")
        self.scheduled_at = None  # when the pending trim was scheduled; None: none pending
        self.check_every = check_every
        self._checked = (float("-inf"), None)  # (when, RSS then)

    def over(self) -> bool:
        """Whether RSS is above the high-water mark (a new connection is then
        refused), as read at most ``check_every`` seconds ago."""
        when, rss = self._checked
        now = self.clock()
        if now - when >= self.check_every:
            rss = self.rss()
            self._checked = (now, rss)
        return rss is not None and rss > self.high_water_mb

    def opened(self, open_now: int):
        self.peak = max(self.peak, open_now)

    def closed(self, open_now: int) -> float | None:
        """A connection closed, ``open_now`` are left: the seconds after which
        to ask ``due_in``, or None when no trim is needed or one is already
        pending (a whole wave of closing connections gets one)."""
        self.closed_since_trim += 1
        self.last_close = self.clock()
        if self.peak - open_now < self.trim_after:
            return None
        return self._schedule(open_now)

    def short(self, open_now: int) -> float | None:
        """Memory is over the mark: as ``closed``, once anything has closed
        since the last trim (before that a trim would free nothing)."""
        if self.closed_since_trim == 0:
            return None
        return self._schedule(open_now)

    def _schedule(self, open_now: int) -> float | None:
        if self.scheduled_at is not None:
            return None
        now = self.clock()
        self.scheduled_at = now
        self.peak = open_now  # the next wave counts from here
        return max(self.settle, self.last_trim + self.trim_every - now)

    def due_in(self) -> float:
        """0 when the pending trim should run now; else the seconds to wait
        first: connections are still closing (a pause of ``settle`` seconds
        ends the wave, or ``trim_every`` after it was scheduled)."""
        now = self.clock()
        wave_ends = min(self.last_close + self.settle, self.scheduled_at + self.trim_every)
        return max(0.0, wave_ends - now)

    def trim(self, in_thread=lambda fn: fn()) -> tuple:
        """Free what closed connections left (their reference cycles, here:
        their finalizers belong to this thread), and give the pages malloc
        then holds free back to the system (``in_thread``: malloc_trim on a
        large heap takes a while, and lets go of the GIL): RSS in MB before
        and after, and the seconds the collection held the event loop."""
        self.scheduled_at = None
        self.closed_since_trim = 0
        self.last_trim = self.clock()
        before = self.rss()
        started = time.perf_counter()
        gc.collect()
        collected_in = time.perf_counter() - started
        if self.malloc_trim is not None:
            in_thread(lambda: self.malloc_trim(0))
        return before, self.rss(), collected_in
