"""Attack benchmark: does the server survive hostile clients?

    make bench-attack                                   # or: python -m bench.attack --help
    make bench-attack BENCH_ARGS="--label after --seconds 15"
    make bench-attack BENCH_ARGS="--quick"              # CI: ~3 s a class, exits 1 if a goal is missed

Starts the server the way the README runs it (``make serve`` in ``--root``, by
default this checkout; bench/serve.py's ``Server``) on 127.0.0.1 with the
starter model and a scratch SQLite database, then runs one attack at a time
for ``--seconds`` while a legitimate python-socketio client chats from its own
address (127.0.0.2), asking a question every 0.5 s from before the attack
until ``--after`` seconds after it.  The attacker uses other addresses
(127.66.N.1 for the N-th attack class, so that what a server remembers about
one attack's address does not decide the next; 127.77.x.y for the
many-address attack): Linux routes all of 127.0.0.0/8 to loopback, so
per-address limits on the server see them apart.

The legitimate client and the sampling of the server (every 0.25 s: the
gunicorn worker's threads and open file descriptors, RSS of every server
process) run in a separate process, so the attacker's own event loop never
delays their measurements.  After each attack the bench waits (up to 10 s)
for the worker's threads and descriptors to settle, checks that ``GET /``
still answers within 10 s, and otherwise starts a fresh server for the next
attack (``server_restarted_by_bench`` in that attack's result).

Results are stored by ``--label`` in ``--out`` (other labels in the file are
kept, so one file holds the before and after tables), and a table is printed.
"""
import argparse
import asyncio
import base64
import contextlib
import csv
import json
import math
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
import zlib
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import psutil
import socketio

from bench.serve import KNOWN, MODELS, NEW, ROOT, Server, ensure_model, wait_until_up
from bench.smallvm import CgroupUnavailable, MemoryCgroup

QUESTIONS = KNOWN + NEW
LEGIT_ADDR = "127.0.0.2"     # the legitimate client, always
PROBE_ADDR = "127.0.0.3"     # the bench's own health checks (GET /)
ATTACKER_PREFIX = "127.66"   # single-address attacks: 127.66.<attack number>.1 (prep: .2)
MANY_PREFIX = "127.77"       # idle_sockets_many: 127.77.x.y
HOST = "127.0.0.1"
FRAME_CAP_NOTE = "16 bytes x MAX_MESSAGE_CHARS (500) + 1 KiB = 9,024 bytes"
PAYLOAD_CAP = 16 * 500 + 1024  # the same, in bytes
SERVER_ENV_KEYS = {"MODEL_DIR", "DATABASE_URL", "PORT", "HOST"}  # set by bench.serve.Server

GOAL_DEFINITIONS = {
    "p99_during_le_1s": "the legitimate client's p99 reply latency while the attack ran is at most 1000 ms "
                        "(false when it got no reply at all)",
    "errors_during_0": "the legitimate client got no error, timeout (5 s) or dropped connection while the "
                       "attack ran",
    "threads_back_within_10pct": "the worker's OS thread count 5 s after the attack is at most 10% "
                                 "(or 1 thread) above the median of the 2 s before it",
    "rss_back_within_10pct": "RSS of the server processes 5 s after the attack is at most 10% above before",
    "no_restarts": "no gunicorn worker restart (pid change or 'Booting worker' line) and the server "
                   "still answered GET / within 10 s afterwards",
    "export_complete": "reviewer_export_1m: both downloads (CSV, JSON Lines) answered 200 and sent every "
                       "exchange up to their last id, each line well formed, the ids rising",
    "p99_during_le_300ms": "reviewer_export_1m: the legitimate client's p99 while the downloads ran is at most 300 ms",
    "pages_le_500ms": "admin_pages_1m: each page's median time is at most 500 ms, every load answered 200",
}


# ---------------------------------------------------------------------------
# small helpers

def now():
    return time.monotonic()


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rounded(x, digits=1):
    return None if x is None else round(x, digits)


async def wait_for(awaitable, timeout):
    """asyncio.wait_for that never waits for a negative time."""
    return await asyncio.wait_for(awaitable, max(0.01, timeout))


class Refused(Exception):
    """A connection the server did not accept; ``reason`` says how."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Pacer:
    """At most ``rate`` passes through ``wait()`` a second, shared by every
    task that uses it; never lets a lag turn into a catch-up burst."""

    def __init__(self, rate):
        self.rate = float(rate)
        self.start = now()
        self.count = 0

    async def wait(self):
        self.count += 1
        ahead = self.count / self.rate - (now() - self.start)
        if ahead > 0:
            await asyncio.sleep(ahead)
        else:
            if ahead < -0.05:
                self.start = now() - self.count / self.rate
            await asyncio.sleep(0)


def server_tree(make_pid):
    """(masters, workers) of the server started by ``make`` (pid ``make_pid``):
    the master is the gunicorn process whose parent is not gunicorn, the workers
    are the master's children."""
    try:
        procs = psutil.Process(make_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return [], []
    server = []
    for proc in procs:
        try:
            if proc.name() not in ("make", "sh", "bash", "dash"):
                server.append(proc)
        except psutil.NoSuchProcess:
            pass
    pids = {p.pid for p in server}
    masters, workers = [], []
    for proc in server:
        try:
            (workers if proc.ppid() in pids else masters).append(proc)
        except psutil.NoSuchProcess:
            pass
    master_pids = {p.pid for p in masters}
    workers = [w for w in workers if _safe(w.ppid) in master_pids]
    return masters, workers


def _safe(fn, default=None):
    try:
        return fn()
    except (psutil.NoSuchProcess, psutil.AccessDenied, OSError):
        return default


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def open_files_under(pids, prefix):
    """Bytes on disk of the files under ``prefix`` that these processes hold
    open, deleted ones included (werkzeug's upload spool files are unlinked)."""
    total = 0
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
                if target.startswith(prefix) and target.endswith(" (deleted)"):
                    total += os.stat(f"{fd_dir}/{name}").st_blocks * 512
            except OSError:
                pass
    return total


def sample_server(make_pid, tmpdir=None):
    """One sample: worker threads and fds, RSS of all server processes."""
    masters, workers = server_tree(make_pid)
    threads = fds = 0
    worker_rss = rss = 0
    for w in workers:
        threads += _safe(w.num_threads, 0)
        fds += _safe(w.num_fds, 0)
        worker_rss += _safe(lambda: w.memory_info().rss, 0)
    for p in masters:
        rss += _safe(lambda: p.memory_info().rss, 0)
    rss += worker_rss
    sample = {"t": now(), "threads": threads if workers else None, "fds": fds if workers else None,
              "rss_mb": rss / 2**20 if masters or workers else None,
              "worker_rss_mb": worker_rss / 2**20 if workers else None,
              "workers": sorted(w.pid for w in workers), "masters": sorted(p.pid for p in masters)}
    if tmpdir:
        held = open_files_under([w.pid for w in workers], tmpdir)
        sample["tmp_mb"] = (dir_bytes(tmpdir) + held) / 2**20
    return sample


# ---------------------------------------------------------------------------
# Engine.IO / Socket.IO over raw WebSockets (aiohttp)

def http_session(addr, limit=0):
    """An aiohttp session whose connections come from ``addr``."""
    connector = aiohttp.TCPConnector(local_addr=(addr, 0), limit=limit, limit_per_host=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))


def classify(data: str) -> str:
    """What a text frame from the server is."""
    if data == "2":
        return "ping"
    if data.startswith("42"):
        head = data[2:40]
        if head.startswith('["reply"'):
            return "reply"
        if head.startswith('["history"'):
            return "history"
        if head.startswith('["error"'):
            try:
                payload = json.loads(data[2:])[1]
                return "error:" + str(payload.get("code"))
            except (ValueError, IndexError, AttributeError):
                return "error:?"
        try:
            return "event:" + str(json.loads(data[2:])[0])
        except (ValueError, IndexError):
            return "event:?"
    if data.startswith("40"):
        return "connected"
    if data.startswith("44"):
        return "connect_error"
    if data.startswith("41"):
        return "ns_disconnect"
    if data.startswith("0"):
        return "open"
    if data.startswith("1"):
        return "eio_close"
    if data in ("3", "6"):
        return "pong_or_noop"
    return "other"


_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
           aiohttp.WSMsgType.ERROR)


async def close_ws(ws, timeout=2.0):
    if ws is None:
        return
    try:
        await wait_for(ws.close(), timeout)
    except BaseException as exc:  # noqa: BLE001 - a hung close must not hang the bench
        with contextlib.suppress(Exception):
            ws._response.close()  # drop the connection without the closing handshake
        if isinstance(exc, asyncio.CancelledError):
            raise


async def open_eio(session, url, auth=None, timeout=5.0, namespace=True):
    """A WebSocket that completed the Engine.IO handshake and, unless
    ``namespace`` is false, the Socket.IO connect (``40``); else Refused."""
    deadline = now() + timeout
    try:
        ws = await wait_for(session.ws_connect(
            url, autoping=True, max_msg_size=0, compress=0,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=1.0)), timeout)
    except aiohttp.WSServerHandshakeError as exc:
        raise Refused(f"http_{exc.status}") from None
    except asyncio.TimeoutError:
        raise Refused("connect_timeout") from None
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, ConnectionError):
        raise Refused("connect_failed") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise Refused(type(exc).__name__) from None
    try:
        msg = await wait_for(ws.receive(), deadline - now())
        if msg.type != aiohttp.WSMsgType.TEXT or not msg.data.startswith("0"):
            raise Refused("closed_before_open" if msg.type in _CLOSED else "no_open_packet")
        if namespace:
            await wait_for(ws.send_str("40" + (json.dumps(auth) if auth else "")), deadline - now())
            while True:
                msg = await wait_for(ws.receive(), deadline - now())
                if msg.type in _CLOSED:
                    raise Refused("closed_before_connect")
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                if msg.data.startswith("40"):
                    break
                if msg.data.startswith("44"):
                    raise Refused("connect_error_packet")
                if msg.data == "2":
                    await wait_for(ws.send_str("3"), deadline - now())
    except asyncio.TimeoutError:
        await close_ws(ws, 0.5)
        raise Refused("handshake_timeout") from None
    except Refused:
        await close_ws(ws, 0.5)
        raise
    except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
        await close_ws(ws, 0.5)
        raise Refused("handshake_failed") from None
    except BaseException:
        await close_ws(ws, 0.5)
        raise
    return ws


class Tally:
    """What came back over some WebSockets: frames by kind, bytes each way."""

    def __init__(self):
        self.kinds = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self.sent = 0

    async def send(self, ws, text, timeout=5.0):
        await wait_for(ws.send_str(text), timeout)
        self.sent += 1
        self.bytes_out += len(text.encode())

    async def read(self, ws, on_kind=None):
        """Read until the socket closes (or the task is cancelled), answering
        Engine.IO pings; returns how it ended."""
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.bytes_in += len(msg.data.encode())
                    kind = classify(msg.data)
                    self.kinds[kind] += 1
                    if kind == "ping":
                        await wait_for(ws.send_str("3"), 5)
                    if on_kind is not None:
                        on_kind(kind)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    self.bytes_in += len(msg.data)
                    self.kinds["binary"] += 1
            return "closed"
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - reset, timeout, ...
            return "error"

    def answers(self):
        return {k: v for k, v in sorted(self.kinds.items()) if k not in ("ping", "pong_or_noop", "open")}

    def answered(self):
        """Events answered with a reply, a history or an error."""
        return sum(v for k, v in self.kinds.items() if k in ("reply", "history") or k.startswith("error:"))


# ---------------------------------------------------------------------------
# the attacks: each takes the context, runs until ctx.deadline, closes what it
# opened and returns its counts

class Ctx:
    def __init__(self, args, port, worker_rss, seconds, attacker):
        self.args = args
        self.port = port
        self.url = f"http://{HOST}:{port}"
        self.ws_url = f"ws://{HOST}:{port}/socket.io/?EIO=4&transport=websocket"
        self.poll_url = f"{self.url}/socket.io/?EIO=4&transport=polling"
        self.attacker = attacker
        self.seconds = seconds
        self.start = now()
        self.deadline = self.start + seconds
        self.worker_rss = worker_rss  # () -> MB of the worker(s) now
        self.state = {}               # prep results (history session id)

    def left(self):
        return self.deadline - now()


async def oversized_frames(ctx):
    """Open a WebSocket, connect (40), send one Engine.IO message frame far over
    the payload cap, see what the server does within 0.5 s, close; repeat."""
    frame = "4" + "a" * ctx.args.frame_chars
    c = Counter()
    close_codes = Counter()

    async def worker(session):
        while ctx.left() > 0.1:
            c["attempts"] += 1
            try:
                ws = await open_eio(session, ctx.ws_url, timeout=min(5.0, ctx.left() + 1))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                await asyncio.sleep(0.05)
                continue
            try:
                await wait_for(ws.send_str(frame), 5)
                c["sent"] += 1
                try:
                    msg = await wait_for(ws.receive(), 0.5)
                    if msg.type in _CLOSED:
                        c["closed_by_server"] += 1
                        close_codes[str(ws.close_code)] += 1
                    else:
                        c["answered:" + (classify(msg.data) if msg.type == aiohttp.WSMsgType.TEXT
                                         else str(msg.type))] += 1
                except asyncio.TimeoutError:
                    c["no_reaction_in_0.5s"] += 1
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
                c["send_failed"] += 1
            finally:
                await close_ws(ws, 1.0)

    async with http_session(ctx.attacker) as session:
        await asyncio.gather(*(worker(session) for _ in range(ctx.args.frame_workers)))
    out = dict(sorted(c.items()))
    out.update({"frame_bytes": len(frame), "payload_cap": FRAME_CAP_NOTE, "close_codes": dict(close_codes),
                "workers": ctx.args.frame_workers,
                "attempts_per_s": round(c["attempts"] / max(0.001, now() - ctx.start), 1)})
    return out


async def _hold_idle(ctx, addresses, count, per_address, retry_429=False):
    """Open up to ``count`` WebSockets (Engine.IO + Socket.IO connect), ``per_address``
    from each address in turn, keep them open answering pings until the deadline.
    ``retry_429``: a socket refused as too many (the handshake rates) is tried
    again at once, ignoring Retry-After, until it opens or the attack ends."""
    c = Counter()
    sessions = {}
    sockets, keepers = [], []
    closing = False
    rss_before = ctx.worker_rss()
    sem = asyncio.Semaphore(ctx.args.open_concurrency)

    async def keep(ws):
        tally = Tally()
        how = await tally.read(ws)
        if not closing:
            c["closed_by_server_" + how] += 1
        c["pings_answered"] += tally.kinds["ping"]

    async def open_one(i):
        addr = addresses[min(i // per_address, len(addresses) - 1)]
        async with sem:
            if ctx.left() < 0.5:
                c["not_tried"] += 1
                return
            if addr not in sessions:
                sessions[addr] = http_session(addr)
            while True:
                try:
                    ws = await open_eio(sessions[addr], ctx.ws_url, timeout=min(5.0, ctx.left()))
                    break
                except Refused as exc:
                    if retry_429 and exc.reason == "http_429" and ctx.left() >= 0.5:
                        c["http_429_tried_again"] += 1
                        continue
                    c["refused"] += 1
                    c["refused:" + exc.reason] += 1
                    return
            c["accepted"] += 1
            sockets.append(ws)
            keepers.append(asyncio.create_task(keep(ws)))

    t_open = now()
    opener = asyncio.gather(*(open_one(i) for i in range(count)))
    try:
        await wait_for(opener, ctx.left())
    except asyncio.TimeoutError:
        pass
    open_seconds = now() - t_open
    # the memory they hold, once the server has settled them
    await asyncio.sleep(min(2.0, max(0.0, ctx.left() - 0.2)))
    open_now = sum(1 for ws in sockets if not ws.closed)
    rss_open = ctx.worker_rss()
    await asyncio.sleep(max(0.0, ctx.left()))
    still_open = sum(1 for ws in sockets if not ws.closed)
    closing = True
    for task in keepers:
        task.cancel()
    await asyncio.gather(*keepers, return_exceptions=True)
    close_sem = asyncio.Semaphore(500)

    async def close_one(ws):
        async with close_sem:
            await close_ws(ws, 1.0)

    await asyncio.gather(*(close_one(ws) for ws in sockets), return_exceptions=True)
    await asyncio.gather(*(s.close() for s in sessions.values()), return_exceptions=True)
    c["pending_at_deadline"] = count - c["accepted"] - c["refused"] - c["not_tried"]
    out = dict(sorted(c.items()))
    out.update({"tried": count, "addresses": len({addresses[min(i // per_address, len(addresses) - 1)]
                                                  for i in range(count)}),
                "open_phase_s": round(open_seconds, 2),
                "open_after_open_phase": open_now, "open_at_end": still_open,
                "worker_rss_before_mb": rounded(rss_before),
                "worker_rss_with_sockets_mb": rounded(rss_open),
                "rss_added_by_open_sockets_mb": rounded(rss_open - rss_before) if rss_open and rss_before else None,
                "rss_added_per_socket_kb": (round((rss_open - rss_before) * 1024 / open_now, 1)
                                            if rss_open and rss_before and open_now else None)})
    return out


async def idle_sockets(ctx):
    return await _hold_idle(ctx, [ctx.attacker], ctx.args.idle_count, ctx.args.idle_count)


def many_addresses(n):
    return [f"{MANY_PREFIX}.{i // 250}.{i % 250 + 1}" for i in range(n)]


async def idle_sockets_many(ctx):
    per = ctx.args.idle_per_address
    count = ctx.args.idle_many_count
    return await _hold_idle(ctx, many_addresses(math.ceil(count / per)), count, per, retry_429=True)


async def _open_tcp(addr, port, timeout):
    return await wait_for(asyncio.open_connection(HOST, port, local_addr=(addr, 0)), timeout)


async def _slow_conn(ctx, c, prefix: bytes, drip: bytes, every: float, closed_after: list):
    """One connection that sends ``prefix`` and then ``drip`` every ``every``
    seconds, never finishing; counts what the server does about it."""
    try:
        reader, writer = await _open_tcp(ctx.attacker, ctx.port, min(5.0, max(0.1, ctx.left())))
    except (asyncio.TimeoutError, OSError):
        c["connect_failed"] += 1
        return
    c["opened"] += 1
    t_open = now()
    read_task = asyncio.ensure_future(reader.read(4096))
    try:
        writer.write(prefix)
        await wait_for(writer.drain(), 5)
        c["bytes_sent"] += len(prefix)
        while ctx.left() > 0:
            await asyncio.wait([read_task], timeout=min(every, max(0.01, ctx.left())))
            if read_task.done():
                data = read_task.result()
                if data:
                    status = data.split(b"\r\n", 1)[0].split(b" ")
                    c["answered:" + (status[1].decode("ascii", "replace") if len(status) > 1 else "?")] += 1
                else:
                    c["closed_by_server"] += 1
                closed_after.append(now() - t_open)
                return
            if ctx.left() <= 0:
                break
            writer.write(drip)
            await wait_for(writer.drain(), 5)
            c["bytes_sent"] += len(drip)
        c["open_at_end"] += 1
    except asyncio.TimeoutError:
        c["send_stalled"] += 1
    except (ConnectionError, OSError):
        c["reset_by_server"] += 1
        closed_after.append(now() - t_open)
    finally:
        read_task.cancel()
        with contextlib.suppress(BaseException):
            await read_task
        writer.close()
        with contextlib.suppress(Exception):
            await wait_for(writer.wait_closed(), 1)


def _closed_summary(closed_after):
    if not closed_after:
        return {}
    return {"closed_after_s_min": round(min(closed_after), 2), "closed_after_s_median": round(median(closed_after), 2),
            "closed_after_s_max": round(max(closed_after), 2)}


async def slow_headers(ctx):
    """Many connections that send a request line and then one header byte
    every few seconds, never finishing the headers."""
    c = Counter()
    closed_after = []
    prefix = f"GET / HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\nUser-Agent: bench-attack\r\nX-Slow: ".encode()
    await asyncio.gather(*(_slow_conn(ctx, c, prefix, b"a", ctx.args.slow_header_every, closed_after)
                           for _ in range(ctx.args.slow_count)))
    out = dict(sorted(c.items()))
    out.update({"sockets": ctx.args.slow_count, "byte_every_s": ctx.args.slow_header_every,
                **_closed_summary(closed_after)})
    return out


async def _polling_sid(session, ctx):
    async with session.get(ctx.poll_url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        text = await resp.text()
        if resp.status != 200 or not text.startswith("0"):
            raise Refused(f"handshake_http_{resp.status}")
        return json.loads(text[1:].split("\x1e")[0])["sid"]


async def slow_body(ctx):
    """Complete headers of a POST with a large Content-Length, then one body
    byte a second: a third to /login (100,000 bytes), a third to a long-polling
    session (100,000 bytes, over the Socket.IO payload cap), a third to a
    long-polling session with a length under the cap (8,000 bytes)."""
    targets = {"login": {}, "polling_100000": {}, "polling_8000": {}}
    n = ctx.args.slow_count
    counts = {name: Counter() for name in targets}
    closed = {name: [] for name in targets}
    sids = []
    async with http_session(ctx.attacker) as session:
        sid_tasks = []
        for _ in range(2 * (n // 3) + 2):
            sid_tasks.append(asyncio.ensure_future(_polling_sid(session, ctx)))
        try:
            done = await wait_for(asyncio.gather(*sid_tasks, return_exceptions=True), min(5.0, ctx.left()))
        except asyncio.TimeoutError:
            for task in sid_tasks:
                task.cancel()
            done = await asyncio.gather(*sid_tasks, return_exceptions=True)
        handshake_failed = Counter()
        for item in done:
            if isinstance(item, str):
                sids.append(item)
            else:
                handshake_failed[getattr(item, "reason", type(item).__name__)] += 1

        jobs = []
        for i in range(n):
            kind = ("login", "polling_100000", "polling_8000")[i % 3]
            if kind == "login":
                path, length, drip = "/login", 100000, b"a"
                head = "application/x-www-form-urlencoded"
                body_start = b"username="
            else:
                if not sids:
                    counts[kind]["no_session"] += 1
                    continue
                sid = sids.pop()
                path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
                length = 100000 if kind == "polling_100000" else 8000
                head, body_start, drip = "text/plain;charset=UTF-8", b"4", b"a"
            prefix = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\nContent-Type: {head}\r\n"
                      f"Content-Length: {length}\r\n\r\n").encode() + body_start
            jobs.append(_slow_conn(ctx, counts[kind], prefix, drip, ctx.args.slow_body_every, closed[kind]))
        await asyncio.gather(*jobs)
        # close the long-polling sessions we opened (Engine.IO close packet)
        close_jobs = [session.post(f"{ctx.poll_url}&sid={sid}", data="1", timeout=aiohttp.ClientTimeout(total=2))
                      for sid in sids]
        for job in close_jobs:
            with contextlib.suppress(Exception):
                async with job:
                    pass
    out = {name: {**dict(sorted(counts[name].items())), **_closed_summary(closed[name])} for name in targets}
    out.update({"sockets": n, "byte_every_s": ctx.args.slow_body_every,
                "polling_handshake_failed": dict(handshake_failed)})
    return out


async def longpoll(ctx):
    """Many long-polling Engine.IO sessions from one address, each with a GET
    poll always outstanding."""
    c = Counter()
    sids = []
    sem = asyncio.Semaphore(ctx.args.open_concurrency)

    async def request(session, method, url, data=None, timeout=5.0):
        async with session.request(method, url, data=data,
                                   timeout=aiohttp.ClientTimeout(total=max(0.1, timeout))) as resp:
            return resp.status, await resp.text()

    async def one(session):
        async with sem:
            if ctx.left() < 0.5:
                c["not_tried"] += 1
                return
            try:
                status, text = await request(session, "GET", ctx.poll_url, timeout=min(5.0, ctx.left()))
                if status != 200 or not text.startswith("0"):
                    c[f"refused:http_{status}"] += 1
                    return
                sid = json.loads(text[1:].split("\x1e")[0])["sid"]
                status, text = await request(session, "POST", f"{ctx.poll_url}&sid={sid}", "40",
                                             timeout=min(5.0, ctx.left()))
                if status != 200:
                    c[f"refused_connect:http_{status}"] += 1
                    return
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError):
                c["refused:error"] += 1
                return
        c["sessions"] += 1
        sids.append(sid)
        url = f"{ctx.poll_url}&sid={sid}"
        try:
            while ctx.left() > 0:
                try:
                    status, text = await request(session, "GET", url, timeout=ctx.left())
                except asyncio.TimeoutError:
                    break  # the deadline, with a poll outstanding
                if status != 200:
                    c[f"poll_refused:http_{status}"] += 1
                    return
                c["polls_answered"] += 1
                for packet in text.split("\x1e"):
                    if packet == "2":
                        await request(session, "POST", url, "3", timeout=5)
                        c["pings_answered"] += 1
                    elif packet.startswith("1"):
                        c["closed_by_server"] += 1
                        return
            c["open_at_end"] += 1
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            c["poll_failed"] += 1

    async with http_session(ctx.attacker) as session:
        await asyncio.gather(*(one(session) for _ in range(ctx.args.longpoll_count)))
        for sid in sids:  # close the sessions (Engine.IO close packet)
            with contextlib.suppress(Exception):
                await request(session, "POST", f"{ctx.poll_url}&sid={sid}", "1", timeout=1)
    out = dict(sorted(c.items()))
    out["tried"] = ctx.args.longpoll_count
    return out


async def flood_socket(ctx, ws, tally, c, send_round):
    """Call ``send_round()`` (it paces itself and sends through ``tally``) on
    ``ws`` while ``tally`` reads what comes back, until the attack's time is up
    or the server closes the socket; counts in ``c`` how it ended, then
    closes it."""
    reader = asyncio.ensure_future(tally.read(ws))
    try:
        while ctx.left() > 0 and not ws.closed and not reader.done():
            await send_round()
        if not reader.done():
            await asyncio.wait([reader], timeout=0.5)  # answers in flight
        if reader.done() and ctx.left() > 0:
            c["closed_by_server"] += 1
    except asyncio.TimeoutError:
        c["send_stalled"] += 1
    except (aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
        c["send_failed"] += 1
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await close_ws(ws, 1.0)


BURST = ['41', '40', '42["history"]', '42["message",{"text":"안녕하세요"}]']


async def rehandshake_flood(ctx):
    """One WebSocket sending 41 (leave the namespace), 40 (join it again),
    history and message, as fast as the cap allows; reconnects when closed."""
    tally = Tally()
    c = Counter()
    pacer = Pacer(ctx.args.max_rate / len(BURST))
    async with http_session(ctx.attacker) as session:
        while ctx.left() > 0.1:
            try:
                ws = await open_eio(session, ctx.ws_url, timeout=min(5.0, ctx.left() + 1))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                await asyncio.sleep(0.1)
                continue
            c["connections"] += 1

            async def burst(ws=ws):
                await pacer.wait()
                for packet in BURST:
                    await tally.send(ws, packet)
                c["bursts"] += 1

            await flood_socket(ctx, ws, tally, c, burst)
    elapsed = max(0.001, now() - ctx.start)
    out = dict(sorted(c.items()))
    out.update({"answers": tally.answers(), "packets_sent": tally.sent,
                "events_sent": 2 * c["bursts"], "events_answered": tally.answered(),
                "packets_per_s": round(tally.sent / elapsed, 1), "bursts_per_s": round(c["bursts"] / elapsed, 1)})
    return out


async def rehandshake_flood_newconn(ctx):
    """A new WebSocket per burst: connect (40), history, message, wait for
    the two answers (at most 2 s), close; several at a time."""
    c = Counter()
    answers = Counter()
    pacer = Pacer(ctx.args.max_rate / len(BURST))

    async def worker(session):
        while ctx.left() > 0.1:
            await pacer.wait()
            c["attempts"] += 1
            try:
                ws = await open_eio(session, ctx.ws_url, timeout=min(5.0, ctx.left() + 1))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                await asyncio.sleep(0.05)
                continue
            tally = Tally()
            got = asyncio.Queue()
            reader = asyncio.ensure_future(tally.read(ws, on_kind=got.put_nowait))
            try:
                await tally.send(ws, BURST[2])
                await tally.send(ws, BURST[3])
                c["bursts"] += 1
                waiting = 2
                end = now() + 2.0
                while waiting and now() < end:
                    try:
                        kind = await wait_for(got.get(), end - now())
                    except asyncio.TimeoutError:
                        break
                    if kind in ("reply", "history") or kind.startswith("error:"):
                        waiting -= 1
                if waiting:
                    c["unanswered"] += waiting
            except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
                c["send_failed"] += 1
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                await close_ws(ws, 1.0)
                answers.update(tally.answers())

    async with http_session(ctx.attacker) as session:
        await asyncio.gather(*(worker(session) for _ in range(ctx.args.newconn_workers)))
    elapsed = max(0.001, now() - ctx.start)
    out = dict(sorted(c.items()))
    out.update({"answers": dict(sorted(answers.items())), "workers": ctx.args.newconn_workers,
                "connections_per_s": round(c["attempts"] / elapsed, 1)})
    return out


async def message_flood(ctx):
    """One WebSocket sending chat messages as fast as the cap allows (reading
    whatever comes back); reconnects when closed."""
    tally = Tally()
    c = Counter()
    pacer = Pacer(ctx.args.max_rate)
    n = 0
    async with http_session(ctx.attacker) as session:
        while ctx.left() > 0.1:
            try:
                ws = await open_eio(session, ctx.ws_url, timeout=min(5.0, ctx.left() + 1))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                await asyncio.sleep(0.1)
                continue
            c["connections"] += 1

            async def message(ws=ws):
                nonlocal n
                await pacer.wait()
                n += 1
                await tally.send(ws, '42["message",{"text":"안녕하세요 #%d"}]' % n)

            await flood_socket(ctx, ws, tally, c, message)
    elapsed = max(0.001, now() - ctx.start)
    out = dict(sorted(c.items()))
    out.update({"answers": tally.answers(), "messages_sent": tally.sent,
                "unanswered": tally.sent - tally.answered(),
                "messages_per_s": round(tally.sent / elapsed, 1), "rate_cap_per_s": ctx.args.max_rate})
    return out


async def message_flood_many(ctx):
    """Many WebSockets from one address, each sending 4 messages a second
    (under a per-connection limit of 5/s)."""
    tally = Tally()
    c = Counter()
    sem = asyncio.Semaphore(ctx.args.open_concurrency)
    rate = ctx.args.flood_many_rate

    async def one(i, session):
        async with sem:
            if ctx.left() < 0.5:
                c["not_tried"] += 1
                return
            try:
                ws = await open_eio(session, ctx.ws_url, timeout=min(5.0, ctx.left()))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                return
        c["accepted"] += 1
        await asyncio.sleep(random.uniform(0, 1 / rate))  # the sockets do not all send at once
        k = 0
        next_at = now()

        async def message():
            nonlocal k, next_at
            k += 1
            await tally.send(ws, '42["message",{"text":"안녕하세요 #%d-%d"}]' % (i, k))
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, min(next_at - now(), ctx.left())))

        await flood_socket(ctx, ws, tally, c, message)

    async with http_session(ctx.attacker) as session:
        await asyncio.gather(*(one(i, session) for i in range(ctx.args.flood_many_sockets)))
    elapsed = max(0.001, now() - ctx.start)
    out = dict(sorted(c.items()))
    out.update({"sockets": ctx.args.flood_many_sockets, "per_socket_rate": rate, "answers": tally.answers(),
                "messages_sent": tally.sent, "unanswered": tally.sent - tally.answered(),
                "messages_per_s": round(tally.sent / elapsed, 1)})
    return out


async def chat_token(session, ws_url):
    """The token of a new chat session (the ``session`` event of chatbot/chat.py),
    which later connections send to come back to it; None if none came."""
    ws = await open_eio(session, ws_url, timeout=5, namespace=False)
    try:
        await wait_for(ws.send_str("40"), 5)
        end = now() + 5
        while now() < end:
            msg = await wait_for(ws.receive(), end - now())
            if msg.type in _CLOSED:
                break
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data.startswith('42["session"'):
                return json.loads(msg.data[2:])[1]["token"]
    finally:
        await close_ws(ws, 1.0)
    return None


async def prep_history(args, port, addr):
    """Before the measured window: store ``args.history_rows`` exchanges in one
    chat session, 10 per connection at 4 a second, one connection at a time
    (under the rate limits: over them, the address would cool down)."""
    ws_url = f"ws://{HOST}:{port}/socket.io/?EIO=4&transport=websocket"
    auth = {}
    c = Counter()
    t0 = now()

    one_at_a_time = asyncio.Semaphore(1)

    async def store(session, texts):
        async with one_at_a_time:
            await store_one(session, texts)

    async def store_one(session, texts):
        try:
            ws = await open_eio(session, ws_url, auth=auth, timeout=5)
        except Refused as exc:
            c["refused:" + exc.reason] += 1
            return
        tally = Tally()
        done = asyncio.Queue()
        reader = asyncio.ensure_future(tally.read(ws, on_kind=done.put_nowait))
        try:
            for text in texts:
                await tally.send(ws, "42" + json.dumps(["message", {"text": text}], ensure_ascii=False))
                await asyncio.sleep(0.25)
            end = now() + 10
            answered = 0
            while answered < len(texts) and now() < end:
                try:
                    kind = await wait_for(done.get(), end - now())
                except asyncio.TimeoutError:
                    break
                if kind == "reply" or kind.startswith("error:"):
                    answered += 1
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, OSError, RuntimeError):
            c["send_failed"] += 1
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            await close_ws(ws, 1.0)
            c.update(tally.answers())

    async with http_session(addr) as session:
        try:
            auth["session"] = await chat_token(session, ws_url)
        except (Refused, asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, IndexError):
            c["no_token"] += 1
        texts = [f"{QUESTIONS[i % len(QUESTIONS)]} {i}" for i in range(args.history_rows)]
        chunks = [texts[i:i + 10] for i in range(0, len(texts), 10)]
        try:
            await wait_for(asyncio.gather(*(store(session, chunk) for chunk in chunks)), 15 + 4 * len(chunks))
        except asyncio.TimeoutError:
            c["prep_timeout"] += 1
        # how many the history holds now
        stored = None
        try:
            ws = await open_eio(session, ws_url, auth=auth, timeout=5)
            try:
                await wait_for(ws.send_str('42["history"]'), 5)
                end = now() + 10
                while now() < end:
                    msg = await wait_for(ws.receive(), end - now())
                    if msg.type in _CLOSED:
                        break
                    if msg.type == aiohttp.WSMsgType.TEXT and classify(msg.data) == "history":
                        stored = len(json.loads(msg.data[2:])[1]["exchanges"])
                        break
            finally:
                await close_ws(ws, 1.0)
        except (Refused, asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, IndexError):
            pass
    return {"session_id": auth.get("session"), "rows_wanted": args.history_rows, "history_length": stored,
            "prep_answers": dict(sorted(c.items())), "prep_s": round(now() - t0, 1)}


async def history_amplification(ctx):
    """Several WebSockets of one stored chat session asking for its history
    as fast as the cap allows: bytes out vs bytes in."""
    prep = ctx.state.get("history") or {}
    auth = {"session": prep["session_id"]} if prep.get("session_id") else None
    tally = Tally()
    c = Counter()
    pacer = Pacer(ctx.args.max_rate)

    async def worker(session):
        while ctx.left() > 0.1:
            try:
                ws = await open_eio(session, ctx.ws_url, auth=auth, timeout=min(5.0, ctx.left() + 1))
            except Refused as exc:
                c["refused:" + exc.reason] += 1
                await asyncio.sleep(0.1)
                continue
            c["connections"] += 1

            async def history(ws=ws):
                await pacer.wait()
                await tally.send(ws, '42["history"]')

            await flood_socket(ctx, ws, tally, c, history)

    async with http_session(ctx.attacker) as session:
        await asyncio.gather(*(worker(session) for _ in range(ctx.args.history_sockets)))
    elapsed = max(0.001, now() - ctx.start)
    answers = tally.answers()
    refused = sum(v for k, v in answers.items() if k.startswith("error:"))
    out = dict(sorted(c.items()))
    out.update({"prep": prep, "sockets": ctx.args.history_sockets, "answers": answers,
                "requests_sent": tally.sent, "requests_per_s": round(tally.sent / elapsed, 1),
                "unanswered": tally.sent - tally.answered(),
                "answered": answers.get("history", 0), "refused": refused,
                "bytes_sent": tally.bytes_out, "bytes_received": tally.bytes_in,
                "amplification": round(tally.bytes_in / tally.bytes_out, 1) if tally.bytes_out else None,
                "bytes_received_per_s": round(tally.bytes_in / elapsed)})
    return out


async def _upload(ctx, path, total):
    """POST a multipart body of ``total`` bytes (streamed, never in memory);
    how far it got before the server answered or closed."""
    boundary = "benchattack" + "".join(random.choice("0123456789abcdef") for _ in range(16))
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"pairs.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + total + len(tail)
    request = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
    chunk = b"question,answer\n" * 16384  # 256 KiB, reused
    out = {"path": path, "content_length": length, "bytes_sent": 0, "status": None}
    t0 = now()
    try:
        reader, writer = await _open_tcp(ctx.attacker, ctx.port, min(5.0, ctx.left() + 1))
    except (asyncio.TimeoutError, OSError):
        out["outcome"] = "connect_failed"
        return out

    async def read_status():
        line = await reader.readline()
        t = now()
        try:
            return int(line.split()[1]), t
        except (IndexError, ValueError):
            return None, t

    answer = asyncio.ensure_future(read_status())
    sent = 0
    outcome = "deadline"
    try:
        writer.write(request + head)
        await wait_for(writer.drain(), 5)

        def body():
            left = total
            while left > 0:
                piece = chunk if left >= len(chunk) else chunk[:left]
                left -= len(piece)
                yield piece
            yield tail

        for piece in body():
            if answer.done():
                outcome = "answered_before_end"
                break
            if ctx.left() <= 0:
                break
            writer.write(piece)
            try:
                await wait_for(writer.drain(), min(5.0, max(0.1, ctx.left())))
            except asyncio.TimeoutError:
                outcome = "stalled" if ctx.left() > 0 else "deadline"
                break
            sent += len(piece)
        else:
            outcome = "sent_all"
        out["bytes_sent"] = sent
        out["send_s"] = round(now() - t0, 2)
        if not answer.done():
            await asyncio.wait([answer], timeout=max(0.5, min(10.0, ctx.left() + 5)))
    except (ConnectionError, OSError):
        outcome = "closed_by_server"
        out["bytes_sent"] = sent
    finally:
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            status, t = answer.result()
            out["status"] = status
            out["answered_after_s"] = round(t - t0, 2)
        elif answer.done() and not answer.cancelled():
            out["read_error"] = type(answer.exception()).__name__
        answer.cancel()
        with contextlib.suppress(BaseException):
            await answer
        writer.close()
        with contextlib.suppress(Exception):
            await wait_for(writer.wait_closed(), 1)
    out["outcome"] = outcome
    out["bytes_sent_mb"] = round(out["bytes_sent"] / 2**20, 1)
    out["seconds"] = round(now() - t0, 2)
    return out


async def large_upload(ctx):
    """A large multipart upload to /login (not logged in, no CSRF token) and,
    at the same time, one to /admin/queue/import; each starts again when
    answered, until the deadline."""
    total = ctx.args.upload_mb * 2**20
    tmp = ctx.args.server_tmpdir

    def free():
        st = os.statvfs(tmp)
        return st.f_bavail * st.f_frsize

    async def repeat(path):
        runs = []
        while ctx.left() > 0.2:
            runs.append(await _upload(ctx, path, total))
            await asyncio.sleep(0.2 if runs[-1]["outcome"] == "connect_failed" else 0.02)  # <= 50 a second
        answered = [r["answered_after_s"] for r in runs if r.get("answered_after_s") is not None]
        return {"uploads": len(runs), "first": runs[0] if runs else None,
                "statuses": dict(Counter(str(r["status"]) for r in runs)),
                "outcomes": dict(Counter(r["outcome"] for r in runs)),
                "bytes_sent_mb_total": round(sum(r["bytes_sent"] for r in runs) / 2**20, 1),
                "bytes_sent_mb_max": round(max((r["bytes_sent"] for r in runs), default=0) / 2**20, 1),
                "answered_after_s_max": max(answered, default=None),
                "answered_after_s_median": rounded(median(answered), 2)}

    free_before = free()
    login, upload = await asyncio.gather(repeat("/login"), repeat("/admin/queue/import"))
    return {"upload_mb": ctx.args.upload_mb, "login": login, "import": upload, "server_tmpdir": tmp,
            "tmpdir_free_mb_before": round(free_before / 2**20), "tmpdir_free_mb_after": round(free() / 2**20)}


# ---------------------------------------------------------------------------
# transport attacks (issue 24): bodies and frames that declare more than they
# will ever send, and long-polling POSTs just over the payload cap

HUGE_LENGTH = 4 * 2**30      # 4 GiB: what huge_declared_body and websocket_huge_frame_header declare
HUGE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
HUGE_PATHS = ("/api/v1/messages", "/socket.io/?EIO=4&transport=polling", "/", "/login")


async def _stream_until_closed(ctx, reader, writer, chunk, c, closed_after, http=True):
    """Write ``chunk`` again and again (as fast as the server takes it) until
    the server closes the connection or the attack's time is up; counts the
    status line it answered with (``http``) and how long the server let it
    stream."""
    t0 = now()
    read_task = asyncio.ensure_future(reader.read(4096))
    answered = False
    try:
        while ctx.left() > 0:
            if read_task.done():
                data = None if read_task.exception() else read_task.result()
                if data and not answered and http:
                    answered = True
                    status = data.split(b"\r\n", 1)[0].split(b" ")
                    c["answered:" + (status[1].decode("ascii", "replace") if len(status) > 1 else "?")] += 1
                if not data:  # EOF or a reset: the server closed it
                    c["closed_by_server"] += 1
                    closed_after.append(now() - t0)
                    return
                read_task = asyncio.ensure_future(reader.read(4096))
            writer.write(chunk)
            try:
                await wait_for(writer.drain(), min(2.0, max(0.05, ctx.left())))
            except asyncio.TimeoutError:
                if ctx.left() > 0:
                    c["send_stalled_2s"] += 1  # the server stopped reading but kept the connection
                    await asyncio.wait([read_task], timeout=max(0.01, min(2.0, ctx.left())))
                continue
            c["mb_sent"] += len(chunk) / 2**20
        c["open_at_end"] += 1
    except (ConnectionError, OSError):
        c["closed_by_server"] += 1
        closed_after.append(now() - t0)
    finally:
        read_task.cancel()
        with contextlib.suppress(BaseException):
            await read_task
        writer.close()
        with contextlib.suppress(Exception):
            await wait_for(writer.wait_closed(), 1)


async def huge_declared_body(ctx):
    """Connections that declare a 4 GiB body (every method, several paths) and
    then send it as fast as the server reads; each starts again when the
    server closes it."""
    c = Counter()
    by_method = {m: Counter() for m in HUGE_METHODS}
    closed_after = []
    chunk = b"a" * 65536

    async def connection(i):
        method, path = HUGE_METHODS[i % len(HUGE_METHODS)], HUGE_PATHS[i % len(HUGE_PATHS)]
        while ctx.left() > 0.1:
            try:
                reader, writer = await _open_tcp(ctx.attacker, ctx.port, min(5.0, ctx.left() + 1))
            except (asyncio.TimeoutError, OSError):
                c["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            c["connections"] += 1
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {HUGE_LENGTH}\r\n\r\n".encode())
            await _stream_until_closed(ctx, reader, writer, chunk, by_method[method], closed_after)

    await asyncio.gather(*(connection(i) for i in range(ctx.args.huge_body_connections)))
    for counts in by_method.values():
        c.update({k: v for k, v in counts.items() if k != "mb_sent"})
    out = dict(sorted(c.items()))
    out.update({"mb_sent": round(sum(m["mb_sent"] for m in by_method.values()), 1),
                "by_method": {m: {k: round(v, 1) for k, v in sorted(n.items())} for m, n in by_method.items()},
                "declared_bytes": HUGE_LENGTH, "connections_at_once": ctx.args.huge_body_connections,
                **_closed_summary(closed_after)})
    return out


def ws_frame(opcode, payload=b"", declared=None):
    """A masked (zero key) client WebSocket frame; ``declared``: the length its
    header states, whatever follows."""
    n = len(payload) if declared is None else declared
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


async def _open_raw_ws(ctx):
    """A WebSocket upgrade on a bare TCP connection, and the Socket.IO connect
    (``40``); (reader, writer), else Refused."""
    try:
        reader, writer = await _open_tcp(ctx.attacker, ctx.port, min(5.0, ctx.left() + 1))
    except (asyncio.TimeoutError, OSError):
        raise Refused("connect_failed") from None
    key = base64.b64encode(os.urandom(16)).decode()
    try:
        writer.write(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {HOST}:{ctx.port}\r\n"
                     f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        head = await wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = head.split(b" ", 2)[1].decode("ascii", "replace") if b" " in head else "?"
        if status != "101":
            raise Refused("http_" + status)
        writer.write(ws_frame(1, b"40"))
        await wait_for(writer.drain(), 5)
    except Refused:
        writer.close()
        raise
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        writer.close()
        raise Refused("handshake_failed") from None
    return reader, writer


async def websocket_huge_frame_header(ctx):
    """WebSockets that send a frame header declaring a 4 GiB message and then
    its payload as fast as the server reads; and, half of them, a flood of
    tiny ping frames instead (headers without a body).  Each starts again
    when the server closes it."""
    counts = {"huge_frame": Counter(), "ping_flood": Counter()}
    closed = {"huge_frame": [], "ping_flood": []}
    refused = Counter()

    async def connection(i):
        kind = ("huge_frame", "ping_flood")[i % 2]
        c = counts[kind]
        while ctx.left() > 0.1:
            try:
                reader, writer = await _open_raw_ws(ctx)
            except Refused as exc:
                refused[exc.reason] += 1
                await asyncio.sleep(0.2)
                continue
            c["connections"] += 1
            if kind == "huge_frame":
                writer.write(ws_frame(1, declared=HUGE_LENGTH))
                chunk = b"4" * 65536
            else:
                chunk = ws_frame(9, b"x") * 8192
            await _stream_until_closed(ctx, reader, writer, chunk, c, closed[kind], http=False)

    await asyncio.gather(*(connection(i) for i in range(ctx.args.ws_header_connections)))
    out = {kind: {**{k: round(v, 1) for k, v in sorted(counts[kind].items())}, **_closed_summary(closed[kind])}
           for kind in counts}
    out.update({"refused": dict(sorted(refused.items())), "connections_at_once": ctx.args.ws_header_connections,
                "declared_bytes": HUGE_LENGTH})
    return out


async def polling_just_over_limit(ctx):
    """Long-polling POSTs one byte over the payload cap (``FRAME_CAP_NOTE``)
    to an open Engine.IO session, as fast as the server answers, on a few
    keep-alive connections."""
    c = Counter()
    body = "4" + "a" * PAYLOAD_CAP  # one byte over
    pacer = Pacer(ctx.args.max_rate)
    async with http_session(ctx.attacker, limit=ctx.args.polling_over_connections) as session:
        try:
            sid = await _polling_sid(session, ctx)
        except (Refused, asyncio.TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            return {"bench_error": f"no long-polling session: {exc!r}"}
        url = f"{ctx.poll_url}&sid={sid}"

        async def worker():
            while ctx.left() > 0.05:
                await pacer.wait()
                try:
                    async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(
                            total=max(0.1, min(5.0, ctx.left() + 1)))) as resp:
                        await resp.read()
                        c[f"http_{resp.status}"] += 1
                        if resp.headers.get("Connection", "").lower() == "close":
                            c["connection_close"] += 1
                except asyncio.TimeoutError:
                    c["timeout"] += 1
                except (aiohttp.ClientError, OSError):
                    c["failed"] += 1
                    await asyncio.sleep(0.01)

        await asyncio.gather(*(worker() for _ in range(ctx.args.polling_over_connections)))
        with contextlib.suppress(Exception):
            async with session.post(url, data="1", timeout=aiohttp.ClientTimeout(total=2)):
                pass
    elapsed = max(0.001, now() - ctx.start)
    out = dict(sorted(c.items()))
    out.update({"body_bytes": len(body), "requests_per_s": round(sum(v for k, v in c.items() if k.startswith("http_"))
                                                                  / elapsed, 1),
                "connections": ctx.args.polling_over_connections})
    return out


# ---------------------------------------------------------------------------
# a reviewer's heavy work on a large database: reviewer_export_1m, admin_pages_1m
# (before the measured window, the server's database gets --large-db-rows
# exchanges, bench/analytics.py's fill, and a reviewer; once per server)

LARGE_DB_ATTACKS = ("reviewer_export_1m", "admin_pages_1m")
BENCH_REVIEWER = ("bench-reviewer", "bench-reviewer-password")
CSRF_TOKEN = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
PAGE_GOAL_MS = 500
EXPORT_P99_GOAL_MS = 300


def fill_large_database(db_path, rows):
    """``rows`` exchanges over the last year (bench/analytics.py's fill) and
    the bench's reviewer, in the server's SQLite file; (exchanges, seconds)."""
    import sqlalchemy as sa

    from bench.analytics import fill
    from chatbot import create_app
    from chatbot.database import Reviewer
    from chatbot.extensions import db

    models = tempfile.mkdtemp(prefix="bench-attack-fill-")
    app = create_app({"SECRET_KEY": "bench-attack-fill", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{db_path}",
                      "MODEL_DIR": models, "HTTP_LIMIT": ""})
    with app.app_context():
        if db.session.scalar(sa.select(Reviewer).where(Reviewer.username == BENCH_REVIEWER[0])) is None:
            account = Reviewer(username=BENCH_REVIEWER[0])
            account.set_password(BENCH_REVIEWER[1])
            db.session.add(account)
            db.session.commit()
    count, seconds = fill(app, rows, 365)
    with app.app_context():
        db.engine.dispose()
    shutil.rmtree(models, ignore_errors=True)
    return count, round(seconds, 1)


async def prep_large_database(bench, args):
    """The server's database filled (once per server started)."""
    if getattr(bench, "large_db", None) and bench.large_db["server"] == bench.starts:
        return bench.large_db
    count, seconds = await asyncio.to_thread(fill_large_database, bench.server.db_path, args.large_db_rows)
    bench.large_db = {"server": bench.starts, "exchanges": count, "fill_s": seconds}
    return bench.large_db


async def reviewer_session(ctx):
    """An aiohttp session from the attacker's address, logged in as the bench's reviewer."""
    connector = aiohttp.TCPConnector(local_addr=(ctx.attacker, 0), limit=0)
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120))
    try:
        async with session.get(ctx.url + "/login") as response:
            token = CSRF_TOKEN.search(await response.text()).group(1)
        data = {"csrf_token": token, "username": BENCH_REVIEWER[0], "password": BENCH_REVIEWER[1]}
        async with session.post(ctx.url + "/login", data=data, allow_redirects=False) as response:
            if response.status != 302:
                raise RuntimeError(f"the bench's reviewer could not log in: HTTP {response.status}")
    except BaseException:
        await session.close()
        raise
    return session


def _database_ids(db_path, last_id):
    """(exchanges with an id up to ``last_id``, the greatest id) in the server's file, read only."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as connection:
        count = connection.execute("SELECT count(*) FROM exchange WHERE id <= ?", (last_id,)).fetchone()[0]
        return count, connection.execute("SELECT max(id) FROM exchange").fetchone()[0]


async def download_export(ctx, session, file_format, db_path):
    """Download every exchange as ``file_format`` from the admin's export,
    checking every line as it comes (CSV: 16 fields; JSON Lines: an object
    with 16 fields), and that the ids rise and are every exchange's up to
    the last one sent, and no fewer than existed when the download began."""
    async with session.get(ctx.url + "/admin/export/") as response:
        token = CSRF_TOKEN.search(await response.text()).group(1)
    _, greatest_before = await asyncio.to_thread(_database_ids, db_path, 0)
    out = {"format": file_format, "status": None, "lines": 0, "bad_lines": 0, "bytes": 0,
           "ids_rising": True, "outcome": "done"}
    last_id, header, rest = 0, file_format == "csv", b""
    t0 = now()

    def check(line):
        nonlocal last_id, header
        if file_format == "csv":
            fields = next(csv.reader([line.decode("utf-8-sig").rstrip("\r")]))
            if header:  # the names of the fields
                header = False
                return
            row_id = int(fields[0]) if len(fields) == 16 else None
        else:
            item = json.loads(line)
            row_id = item["id"] if isinstance(item, dict) and len(item) == 16 else None
        if row_id is None:
            out["bad_lines"] += 1
            return
        out["lines"] += 1
        out["ids_rising"] = out["ids_rising"] and row_id > last_id
        last_id = row_id

    try:
        async with session.post(ctx.url + "/admin/export/", data={"csrf_token": token, "file_format": file_format},
                                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120)) as response:
            out["status"] = response.status
            out["first_byte_s"] = round(now() - t0, 2)
            async for chunk in response.content.iter_chunked(1 << 16):
                out["bytes"] += len(chunk)
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    try:
                        check(line)
                    except (ValueError, KeyError, TypeError, StopIteration):
                        out["bad_lines"] += 1
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        out["outcome"] = type(exc).__name__
    out["seconds"] = round(now() - t0, 1)
    if rest:
        out["bad_lines"] += 1  # a last line without its end: the download was cut
    expected, _ = await asyncio.to_thread(_database_ids, db_path, last_id)
    out.update({"last_id": last_id, "greatest_id_before": greatest_before, "expected_lines": expected,
                "rows_per_s": round(out["lines"] / max(0.001, out["seconds"])),
                "complete": (out["status"] == 200 and out["outcome"] == "done" and out["bad_lines"] == 0
                             and out["ids_rising"] and out["lines"] == expected
                             and last_id >= (greatest_before or 0))})
    print(f"   export {file_format}: {out['lines']:,} lines of {expected:,} in {out['seconds']} s, "
          f"complete {out['complete']}", flush=True)
    return out


async def reviewer_export_1m(ctx):
    """A reviewer downloads every exchange of the large database, as CSV and
    then as JSON Lines, each line checked (the window lasts as long as both)."""
    large = ctx.state["large_db"]
    session = await reviewer_session(ctx)
    try:
        results = {}
        for file_format in ("csv", "jsonl"):
            results[file_format] = await download_export(ctx, session, file_format, ctx.state["db_path"])
    finally:
        await session.close()
    return {"database": large, **results}


def admin_pages(today):
    year_ago = (today - timedelta(days=365)).isoformat()
    return {"home": "/admin/", "queue": "/admin/queue/", "analytics": "/admin/analytics/",
            "analytics_year": f"/admin/analytics/?from={year_ago}&to={today.isoformat()}&period=week",
            "list": "/admin/exchange/", "search": "/admin/exchange/?search=%EC%97%86%EB%8A%94%EB%A7%90"}


async def admin_pages_1m(ctx):
    """A reviewer loads the heavy admin pages of the large database one after
    another (home, queue, the statistics of the last 30 days and of a year,
    the review list, and a search that finds nothing, so reads all it may)
    until the window ends."""
    large = ctx.state["large_db"]
    pages = admin_pages(datetime.now(timezone.utc).date())
    times = {name: [] for name in pages}
    statuses = {name: Counter() for name in pages}
    session = await reviewer_session(ctx)
    try:
        while ctx.left() > 0:
            for name, path in pages.items():
                t = now()
                try:
                    async with session.get(ctx.url + path, allow_redirects=False) as response:
                        await response.read()
                        statuses[name][str(response.status)] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    statuses[name][type(exc).__name__] += 1
                times[name].append((now() - t) * 1000)
    finally:
        await session.close()
    out = {"database": large}
    for name, values in times.items():
        out[name] = {"loads": len(values), "median_ms": rounded(median(values)), "p90_ms": rounded(pct(values, 90)),
                     "max_ms": rounded(max(values, default=None)), "statuses": dict(statuses[name])}
    print("   pages (median ms): " + ", ".join(f"{n} {out[n]['median_ms']}" for n in pages), flush=True)
    return out


async def warm_up_admin_pages(url, attacker):
    """Each admin page loaded once before the measured window, so that the
    server's "before" RSS already holds what a first visit loads for good
    (templates, Flask-Admin's views): what the goal compares is memory the
    attack leaves behind."""
    ctx = types.SimpleNamespace(url=url, attacker=attacker)
    session = await reviewer_session(ctx)
    try:
        for path in admin_pages(datetime.now(timezone.utc).date()).values():
            async with session.get(url + path, allow_redirects=False) as response:
                await response.read()
    finally:
        await session.close()


def large_db_goals(name, counts, during):
    """The issue's own goals for the large-database classes."""
    if name == "reviewer_export_1m":
        return {"export_complete": all(counts.get(f, {}).get("complete") is True for f in ("csv", "jsonl")),
                "p99_during_le_300ms": during["p99_ms"] is not None and during["p99_ms"] <= EXPORT_P99_GOAL_MS}
    if name == "admin_pages_1m":
        pages = [counts.get(n) or {} for n in admin_pages(datetime.now(timezone.utc).date())]
        return {"pages_le_500ms": all(p.get("median_ms") is not None and p["median_ms"] <= PAGE_GOAL_MS
                                      and set(p["statuses"]) == {"200"} for p in pages)}
    return {}


ATTACKS = {
    "oversized_frames": oversized_frames,
    "idle_sockets": idle_sockets,
    "idle_sockets_many": idle_sockets_many,
    "slow_headers": slow_headers,
    "slow_body": slow_body,
    "longpoll": longpoll,
    "rehandshake_flood": rehandshake_flood,
    "rehandshake_flood_newconn": rehandshake_flood_newconn,
    "message_flood": message_flood,
    "message_flood_many": message_flood_many,
    "history_amplification": history_amplification,
    "large_upload": large_upload,
    "huge_declared_body": huge_declared_body,
    "websocket_huge_frame_header": websocket_huge_frame_header,
    "polling_just_over_limit": polling_just_over_limit,
    "reviewer_export_1m": reviewer_export_1m,
    "admin_pages_1m": admin_pages_1m,
}


# ---------------------------------------------------------------------------
# the monitor process: the legitimate client and the server sampler

async def _legit_connect(url, addr):
    session = http_session(addr, limit=10)
    client = socketio.AsyncClient(reconnection=False, http_session=session, request_timeout=5,
                                  handle_sigint=False)
    inbox = asyncio.Queue()
    client.on("reply", lambda data=None: inbox.put_nowait(("reply", None)))
    client.on("error", lambda data=None: inbox.put_nowait(
        ("error", data.get("code") if isinstance(data, dict) else str(data))))
    client.on("disconnect", lambda *a: inbox.put_nowait(("dropped", None)))
    try:
        await wait_for(client.connect(url, transports=["websocket"], wait_timeout=5), 6)
    except BaseException:
        await _legit_close(client, session)
        raise
    return client, session, inbox


async def _legit_close(client, session):
    if client is not None:
        with contextlib.suppress(BaseException):
            await wait_for(client.disconnect(), 3)
    if session is not None:
        with contextlib.suppress(BaseException):
            await wait_for(session.close(), 2)


async def legit_client(url, addr, interval, records, seed, ready):
    """Ask a question every ``interval`` s; records (sent at, seconds, outcome)."""
    rng = random.Random(seed)
    client = session = inbox = None
    next_at = now()
    try:
        while True:
            t = now()
            if client is None or not client.connected:
                if client is not None:  # dropped between two questions
                    records.append((t, None, "dropped"))
                    await _legit_close(client, session)
                    client = session = None
                try:
                    client, session, inbox = await _legit_connect(url, addr)
                except Exception:  # noqa: BLE001
                    records.append((t, None, "connect_failed"))
                    client = session = None
            ready.set()
            if client is not None:
                while not inbox.empty():  # a late answer to an earlier question
                    inbox.get_nowait()
                start = now()
                try:
                    await wait_for(client.emit("message", {"text": rng.choice(QUESTIONS)}), 5)
                    kind, code = await wait_for(inbox.get(), 5 - (now() - start))
                except asyncio.TimeoutError:
                    kind, code = "timeout", None
                except Exception:  # noqa: BLE001 - emit on a closed connection
                    kind, code = "dropped", None
                seconds = now() - start
                if kind == "reply":
                    records.append((start, seconds, "reply"))
                else:
                    records.append((start, seconds, f"error:{code}" if kind == "error" else kind))
                    if kind in ("timeout", "dropped"):  # start afresh, as a browser would
                        await _legit_close(client, session)
                        client = session = None
            next_at += interval
            delay = next_at - now()
            if delay < 0:
                next_at = now()
            await asyncio.sleep(max(0.0, delay))
    finally:
        await _legit_close(client, session)


async def sampler(make_pid, tmpdir, samples, every=0.25):
    while True:
        samples.append(await asyncio.to_thread(sample_server, make_pid, tmpdir))
        await asyncio.sleep(every)


async def _monitor_main(conn):
    parent = os.getppid()
    loop_tasks = []
    records, samples = [], []

    async def recv():
        while True:
            if os.getppid() != parent:
                raise SystemExit(0)  # the bench is gone
            if conn.poll():
                return conn.recv()
            await asyncio.sleep(0.05)

    while True:
        cmd = await recv()
        if cmd[0] == "quit":
            return
        if cmd[0] == "start":
            cfg = cmd[1]
            records, samples = [], []
            ready = asyncio.Event()
            loop_tasks = [asyncio.create_task(sampler(cfg["make_pid"], cfg.get("tmpdir"), samples)),
                          asyncio.create_task(legit_client(cfg["url"], cfg["addr"], cfg["interval"], records,
                                                           cfg["seed"], ready))]
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(ready.wait(), 10)
            conn.send(("ready", now()))
        elif cmd[0] == "stop":
            for task in loop_tasks:
                task.cancel()
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_for(asyncio.gather(*loop_tasks, return_exceptions=True), 8)
            loop_tasks = []
            conn.send(("data", {"records": records, "samples": samples}))


def monitor_process(conn):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the bench stops it
    with contextlib.suppress(SystemExit, KeyboardInterrupt):
        asyncio.run(_monitor_main(conn))


class Monitor:
    """The monitor process, driven from the bench's event loop."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=monitor_process, args=(child,), daemon=True, name="bench-attack-monitor")
        self.proc.start()

    async def _reply(self, timeout):
        if not await asyncio.to_thread(self.conn.poll, timeout):
            raise RuntimeError("the monitor process did not answer")
        return self.conn.recv()

    async def start(self, cfg):
        self.conn.send(("start", cfg))
        return (await self._reply(30))[1]

    async def stop(self):
        self.conn.send(("stop",))
        return (await self._reply(30))[1]

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.send(("quit",))
        self.proc.join(3)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)


# ---------------------------------------------------------------------------
# the server, and one attack with its measurements

async def http_status(port, path="/", addr=PROBE_ADDR, timeout=10.0):
    """The status code of GET ``path``, or None if none came within ``timeout``."""
    writer = None
    try:
        reader, writer = await _open_tcp(addr, port, timeout)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        await wait_for(writer.drain(), timeout)
        line = await wait_for(reader.readline(), timeout)
        return int(line.split()[1])
    except (asyncio.TimeoutError, OSError, IndexError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await wait_for(writer.wait_closed(), 1)


class CpuCgroup:
    """A CPU quota for the server, in cores (0.5: half of one): cgroup v2's
    ``cpu.max`` or v1's ``cpu.cfs_quota_us``, like bench/smallvm.py's
    MemoryCgroup (needs root).  On v2 a process is in one cgroup for every
    controller: given ``path`` (a v2 MemoryCgroup's), the quota goes there."""

    PERIOD_US = 100_000

    def __init__(self, cores: float, name: str, path=None):
        quota = max(1000, int(cores * self.PERIOD_US))
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")
        self.cores = cores
        try:
            controllers = v2 / "cgroup.controllers"
            if controllers.exists() and "cpu" in controllers.read_text().split():
                self.version, self.own = 2, path is None
                self.path = v2 / name if path is None else Path(path)
                if "cpu" not in (v2 / "cgroup.subtree_control").read_text().split():
                    (v2 / "cgroup.subtree_control").write_text("+cpu")
                if self.own:
                    self.path.mkdir()
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
            elif (v1 / "cpu.cfs_quota_us").exists():
                self.version, self.own, self.path = 1, True, v1 / name
                self.path.mkdir()
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                raise CgroupUnavailable("no cgroup cpu controller is mounted")
        except OSError as exc:
            raise CgroupUnavailable(f"cannot make a cpu cgroup: {exc}") from exc

    def wrap(self) -> list:
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")] if self.own else []

    def throttled_s(self):
        """Seconds the server was held back by the quota."""
        try:
            fields = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        except (OSError, ValueError):
            return None
        if "throttled_usec" in fields:
            return round(int(fields["throttled_usec"]) / 1e6, 1)
        return round(int(fields.get("throttled_time", 0)) / 1e9, 1)

    def remove(self):
        if not self.own:
            return
        for _ in range(50):
            try:
                pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class Bench:
    """The server under test (restartable), its workdir and the monitor."""

    def __init__(self, args, cpu_quota=None):
        self.args = args
        self.cpu_quota = cpu_quota  # cores, or None: unlimited
        self.cgroups = []           # the running server's (CpuCgroup, MemoryCgroup)
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-attack-"))
        self.tmpdir = args.server_env.get("TMPDIR") or str(self.workdir / "tmp")
        Path(self.tmpdir).mkdir(parents=True, exist_ok=True)
        args.server_tmpdir = self.tmpdir
        self.server = None
        self.starts = 0
        self.monitor = None

    def server_env(self):
        env = {"SECRET_KEY": "bench-attack-" + os.urandom(8).hex(), "TMPDIR": self.tmpdir}
        env.update(self.args.server_env)
        return env

    def start_server(self, memory_mb=None):
        """A fresh server: under the CPU quota if the bench has one, and in a
        memory cgroup of ``memory_mb`` if given."""
        self.starts += 1
        rundir = self.workdir / f"server{self.starts}"
        rundir.mkdir()
        name = f"bench-attack-{os.getpid()}-{self.starts}"
        memory = MemoryCgroup(memory_mb, name) if memory_mb else None
        self.cgroups = [memory] if memory else []
        if self.cpu_quota:
            try:
                self.cgroups.append(CpuCgroup(self.cpu_quota, name, memory.path if memory and memory.version == 2
                                              else None))
            except CgroupUnavailable:
                self.remove_cgroups()
                raise
        wrap = [arg for cgroup in self.cgroups for arg in cgroup.wrap()]
        try:
            self.server = Server(self.server_env(), self.args.models_dir, rundir, root=self.args.root,
                                 venv=self.args.venv, wrap=wrap)
        except subprocess.CalledProcessError as exc:
            sys.stderr.write((exc.stderr or b"").decode(errors="replace")[-3000:])
            self.remove_cgroups()
            raise
        wait_until_up(self.server.url, timeout=120)
        self.log_path = rundir / "server.log"
        limits = "".join(f", in a memory cgroup of {c.limit_mb} MB" if isinstance(c, MemoryCgroup)
                         else f", under a CPU quota of {c.cores:g} core" for c in self.cgroups)
        print(f"server {self.starts} up on port {self.server.port} "
              f"({time.monotonic() - self.server.started:.1f} s{limits})", flush=True)

    def stop_server(self, grace=5.0):
        server, self.server = self.server, None
        if server is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGTERM)
        try:
            server.proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # the whole group, even when make has gone and gunicorn lingers
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(5)
        with contextlib.suppress(Exception):
            server.log.close()
        self.remove_cgroups()

    def remove_cgroups(self):
        for cgroup in reversed(self.cgroups):
            cgroup.remove()
        self.cgroups = []

    def cgroup_stats(self):
        """The running server's cgroups: its CPU quota and the time it was
        held back, its memory limit, peak and OOM kills."""
        out = {}
        for cgroup in self.cgroups:
            if isinstance(cgroup, CpuCgroup):
                out.update({"cpu_quota_cores": cgroup.cores, "cpu_throttled_s": cgroup.throttled_s()})
            else:
                with contextlib.suppress(OSError, KeyError, ValueError):
                    out.update({"memory_limit_mb": cgroup.limit_mb, "memory_peak_mb": rounded(cgroup.peak_mb()),
                                "memory_oom_kills": cgroup.oom_kills()})
        return out

    def log_lines(self):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return {"timeouts": 0, "booting": 0, "lines": 0}
        return {"timeouts": text.count("WORKER TIMEOUT"), "booting": text.count("Booting worker"),
                "lines": text.count("\n")}

    def log_tail(self, skip_lines, limit=15):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[skip_lines:]
        except OSError:
            return []
        return [line[:300] for line in lines[-limit:]]

    def worker_rss(self):
        if self.server is None:
            return None
        _, workers = server_tree(self.server.proc.pid)
        rss = sum(_safe(lambda w=w: w.memory_info().rss, 0) for w in workers)
        return rss / 2**20 if workers else None

    def close(self):
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        self.stop_server(grace=3.0)
        if self.args.keep_workdir:
            print(f"server logs and databases kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def phase(records, lo, hi):
    """The legitimate client's replies asked between ``lo`` and ``hi``;
    ``slowest``: the three slowest, as [seconds after ``lo`` it asked, ms]
    (when in the attack the server stalled)."""
    in_phase = [r for r in records if lo <= r[0] < hi]
    latencies = [r[1] for r in in_phase if r[2] == "reply"]
    errors = Counter(r[2] for r in in_phase if r[2] != "reply")
    slowest = sorted((r for r in in_phase if r[1] is not None), key=lambda r: -r[1])[:3]
    return {"p50_ms": rounded(pct(latencies, 50) * 1000 if latencies else None),
            "p99_ms": rounded(pct(latencies, 99) * 1000 if latencies else None),
            "max_ms": rounded(max(latencies) * 1000 if latencies else None),
            "asked": len(in_phase), "replies": len(latencies), "errors": sum(errors.values()),
            "error_kinds": dict(sorted(errors.items())),
            "slowest": [[rounded(r[0] - lo), rounded(r[1] * 1000)] for r in slowest]}


def server_stats(samples, t0, t1, probe_at, keys=("threads", "fds", "rss_mb", "worker_rss_mb")):
    before = [s for s in samples if t0 - 2.0 <= s["t"] < t0]
    during = [s for s in samples if t0 <= s["t"] <= t1]
    after = [s for s in samples if abs(s["t"] - probe_at) <= 0.5]
    out = {}
    for key in keys:
        b = median(s.get(key) for s in before)
        p = max((s[key] for s in during if s.get(key) is not None), default=None)
        a = median(s.get(key) for s in after)
        digits = 1 if key.endswith("_mb") else 0
        out[key] = {"before": rounded(b, digits), "peak": rounded(p, digits), "after": rounded(a, digits)}
        if digits == 0:
            out[key] = {k: (int(v) if v is not None else None) for k, v in out[key].items()}
    return out


def worker_pid_changes(samples):
    changes = 0
    last = None
    for s in samples:
        workers = tuple(s["workers"])
        if workers and last and workers != last:
            changes += len(set(workers) - set(last))
        if workers:
            last = workers
    return changes


async def settle(bench, target_threads, target_fds, limit):
    """Wait (up to ``limit`` s) until the worker's threads and fds are within
    10% of before, or stop changing for 2 s."""
    t0 = now()
    history = []
    while True:
        s = await asyncio.to_thread(sample_server, bench.server.proc.pid)
        history.append((s["threads"], s["fds"]))
        ok = (s["threads"] is not None and target_threads is not None
              and s["threads"] <= max(target_threads * 1.1, target_threads + 1)
              and (target_fds is None or s["fds"] <= max(target_fds * 1.1, target_fds + 2)))
        stable = len(history) >= 5 and len(set(history[-5:])) == 1
        if ok or stable or now() - t0 >= limit or s["threads"] is None:
            return {"seconds": round(now() - t0, 1), "threads": s["threads"], "fds": s["fds"],
                    "back_to_before": bool(ok)}
        await asyncio.sleep(0.5)


def attacker_address(args, name, prep=False):
    """Each attack has its own source address (unless --attacker-addr), so a
    server's per-address limits or penalties from one attack do not decide
    the next one."""
    if args.attacker_addr:
        return args.attacker_addr
    return f"{ATTACKER_PREFIX}.{list(ATTACKS).index(name) + 1}.{2 if prep else 1}"


async def run_one(name, bench, args):
    fn = ATTACKS[name]
    seconds = {"huge_declared_body": args.huge_body_seconds,
               "idle_sockets_many": args.idle_many_seconds}.get(name, args.seconds)
    print(f"\n== {name} ({seconds:g} s)", flush=True)
    state = {}
    attacker = attacker_address(args, name)
    if name == "history_amplification":
        state["history"] = await prep_history(args, bench.server.port, attacker_address(args, name, prep=True))
        print(f"   prep: {state['history']['history_length']} exchanges in the session "
              f"({state['history']['prep_s']} s)", flush=True)
    if name in LARGE_DB_ATTACKS:
        state["large_db"] = await prep_large_database(bench, args)
        state["db_path"] = bench.server.db_path
        print(f"   prep: {state['large_db']['exchanges']:,} exchanges in the database "
              f"(filled in {state['large_db']['fill_s']} s)", flush=True)
    if name == "admin_pages_1m":
        await warm_up_admin_pages(bench.server.url, attacker_address(args, name, prep=True))
    log_start = bench.log_lines()
    cfg = {"url": bench.server.url, "addr": args.legit_addr, "interval": args.interval,
           "make_pid": bench.server.proc.pid, "seed": zlib.crc32(name.encode()),
           "tmpdir": bench.tmpdir if name == "large_upload" else None}
    await bench.monitor.start(cfg)
    await asyncio.sleep(args.before)
    ctx = Ctx(args, bench.server.port, bench.worker_rss, seconds, attacker)
    ctx.state = state
    t0 = ctx.start
    try:
        counts = await wait_for(fn(ctx), seconds + 30 + (1800 if name in LARGE_DB_ATTACKS else 0))
    except asyncio.TimeoutError:
        counts = {"bench_error": "the attack did not stop within 30 s of its deadline"}
    except Exception as exc:  # noqa: BLE001 - the bench reports, and goes on
        counts = {"bench_error": f"{type(exc).__name__}: {exc}"}
    if ctx.left() > 0:  # ended early: the window stays --seconds long
        counts["ended_early_s"] = round(ctx.left(), 1)
        await asyncio.sleep(ctx.left())
    t1 = now()
    await asyncio.sleep(args.after)
    data = await bench.monitor.stop()
    records, samples = data["records"], data["samples"]
    probe_at = t1 + args.after_probe
    legit = {"before": phase(records, t0 - args.before - 5, t0), "during": phase(records, t0, t1),
             "after": phase(records, t1, t1 + args.after)}
    keys = ("threads", "fds", "rss_mb", "worker_rss_mb") + (("tmp_mb",) if cfg["tmpdir"] else ())
    stats = server_stats(samples, t0, t1, probe_at, keys)
    log_end = bench.log_lines()
    pid_changes = worker_pid_changes([s for s in samples if s["t"] >= t0 - 2])
    booted = log_end["booting"] - log_start["booting"]
    stats["worker_pid_changes"] = pid_changes
    stats["log_worker_timeouts"] = log_end["timeouts"] - log_start["timeouts"]
    stats["log_booting_worker"] = booted
    stats["worker_restarts"] = max(pid_changes, booted)
    stats["worker_pids"] = sorted({p for s in samples for p in s["workers"]})
    stats["settle"] = await settle(bench, stats["threads"]["before"], stats["fds"]["before"], args.settle)
    status = await http_status(bench.server.port, timeout=10)
    alive = status == 200
    stats["alive_after"] = alive
    stats["get_status_after"] = status
    result = {"attack": name, "seconds": round(t1 - t0, 1),
              "attacker_addr": f"{MANY_PREFIX}.x.y" if name == "idle_sockets_many" else attacker,
              "counts": counts, "legit": legit, "server": stats, "server_cgroups": bench.cgroup_stats()}
    if not alive:
        stats["log_tail"] = bench.log_tail(log_start["lines"])
        print(f"   server did not answer GET / within 10 s (status {status}): restarting it", flush=True)
        bench.stop_server()
        await start_server(bench)
        result["server_restarted_by_bench"] = True
    else:
        result["server_restarted_by_bench"] = False
    t, f, r = stats["threads"], stats["fds"], stats["rss_mb"]
    during = legit["during"]
    result["goals"] = {
        "p99_during_le_1s": during["p99_ms"] is not None and during["p99_ms"] <= 1000,
        "errors_during_0": during["errors"] == 0 and during["replies"] > 0,
        "threads_back_within_10pct": (alive and t["before"] is not None and t["after"] is not None
                                      and t["after"] <= max(t["before"] * 1.1, t["before"] + 1)),
        "rss_back_within_10pct": (alive and r["before"] is not None and r["after"] is not None
                                  and r["after"] <= r["before"] * 1.1),
        "no_restarts": alive and stats["worker_restarts"] == 0,
        **large_db_goals(name, counts, during),
    }
    print("   legit during: p50 {p50_ms} ms, p99 {p99_ms} ms, {replies} replies, {errors} errors {error_kinds}"
          .format(**during), flush=True)
    print(f"   threads {t['before']}→{t['peak']}→{t['after']}, fds {f['before']}→{f['peak']}→{f['after']}, "
          f"RSS {r['before']}→{r['peak']}→{r['after']} MB, restarts {stats['worker_restarts']}, alive {alive}",
          flush=True)
    print("   counts: " + json.dumps(counts, ensure_ascii=False)[:600], flush=True)
    return result


async def warm_up(port, timeout=60.0):
    """Ask every question the legitimate client asks, known and new (from the
    probe address), so that the model is loaded and its paths warm before the
    first measurement: a fresh server's memory grows by some 30 MB in its
    first replies (the Mecab dictionary's pages, PyTorch's first calls), which
    is not an attack's doing.  Returns the seconds to the first reply."""
    t0 = now()
    first = None
    async with http_session(PROBE_ADDR) as session:
        ws = await open_eio(session, f"ws://{HOST}:{port}/socket.io/?EIO=4&transport=websocket", timeout=10)
        try:
            for question in QUESTIONS:
                while now() - t0 < timeout:
                    await wait_for(ws.send_str("42" + json.dumps(["message", {"text": question}])), 5)
                    kind = None
                    while kind is None and now() - t0 < timeout:
                        msg = await wait_for(ws.receive(), timeout - (now() - t0))
                        if msg.type in _CLOSED:
                            raise RuntimeError("the server closed the warm-up connection")
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            continue
                        if msg.data == "2":
                            await wait_for(ws.send_str("3"), 5)
                        elif classify(msg.data) in ("reply", "error:server_error", "error:rate_limited"):
                            kind = classify(msg.data)
                    if kind != "error:rate_limited":
                        break
                    await asyncio.sleep(1.0)  # over the per-session limit: ask again
                if first is None:
                    first = now() - t0
        finally:
            await close_ws(ws, 1.0)
    return round(first if first is not None else now() - t0, 2)


async def start_server(bench, memory_mb=None):
    await asyncio.to_thread(bench.start_server, memory_mb)
    try:
        seconds = await warm_up(bench.server.port)
        print(f"   first reply (model loaded) after {seconds} s", flush=True)
    except (Refused, asyncio.TimeoutError, RuntimeError, OSError, aiohttp.ClientError) as exc:
        print(f"   warm-up question failed: {exc!r}", flush=True)


async def run_all(args, bench):
    bench.monitor = Monitor()
    await start_server(bench)
    results = []
    for i, name in enumerate(args.attacks):
        try:
            if args.fresh_server and i > 0 and bench.server is not None:
                bench.stop_server()
                await start_server(bench)
            memory_mb = args.idle_many_memory_mb if name in MEMORY_CGROUP_ATTACKS else None
            cgroup_note = None
            if memory_mb:  # a server of its own, in a memory cgroup
                bench.stop_server()
                try:
                    await start_server(bench, memory_mb)
                except CgroupUnavailable as exc:
                    cgroup_note = f"no memory cgroup: {exc}"
                    print(f"   {cgroup_note}; without one", flush=True)
            if bench.server is None or await http_status(bench.server.port, timeout=10) != 200:
                bench.stop_server()
                await start_server(bench)
            results.append(await run_one(name, bench, args))
            if cgroup_note:
                results[-1]["server_cgroups"]["note"] = cgroup_note
            if memory_mb:
                bench.stop_server()  # the next attack gets a server without the memory limit
        except Exception as exc:  # noqa: BLE001 - e.g. a server that no longer starts: keep what we have
            print(f"   bench error, stopping here: {exc!r}", flush=True)
            results.append({"attack": name, "bench_error": repr(exc),
                            "goals": {goal: False for goal in GOAL_DEFINITIONS}})
            break
    return results


# ---------------------------------------------------------------------------
# output

def arrow(d):
    def fmt(x):
        return "–" if x is None else (f"{x:g}" if isinstance(x, (int, float)) else str(x))
    return f"{fmt(d['before'])}→{fmt(d['peak'])}→{fmt(d['after'])}"


def table(results):
    lines = ["| attack | legit p50/p99 during (ms) | legit errors during/after | threads before→peak→after "
             "| fds before→peak→after | RSS MB before→peak→after | restarts | goals met |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    short = {"p99_during_le_1s": "p99", "errors_during_0": "errors", "threads_back_within_10pct": "threads",
             "rss_back_within_10pct": "rss", "no_restarts": "restarts", "export_complete": "export",
             "p99_during_le_300ms": "p99<=300", "pages_le_500ms": "pages"}
    for r in results:
        if "bench_error" in r:
            lines.append(f"| {r['attack']} | bench error: {r['bench_error'][:80]} | | | | | | 0/{len(r['goals'])} |")
            continue
        d, a, s = r["legit"]["during"], r["legit"]["after"], r["server"]
        goals = r["goals"]
        missed = [short[k] for k, ok in goals.items() if not ok]
        met = f"{len(goals) - len(missed)}/{len(goals)}" + (f" (missed: {', '.join(missed)})" if missed else "")
        restarts = str(s["worker_restarts"]) + (" +dead, restarted" if r.get("server_restarted_by_bench") else "")
        p = "–" if d["p50_ms"] is None else f"{d['p50_ms']:g}"
        q = "–" if d["p99_ms"] is None else f"{d['p99_ms']:g}"
        lines.append(f"| {r['attack']} | {p} / {q} | {d['errors']} / {a['errors']} | {arrow(s['threads'])} "
                     f"| {arrow(s['fds'])} | {arrow(s['rss_mb'])} | {restarts} | {met} |")
    return "\n".join(lines)


def git_commit(root):
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


# attacks whose server runs in a memory cgroup of --idle-many-memory-mb
MEMORY_CGROUP_ATTACKS = ("idle_sockets_many",)

QUICK = {"seconds": 3.0, "before": 1.0, "after": 2.5, "after_probe": 2.0, "settle": 1.5, "idle_count": 20,
         "idle_many_count": 100, "idle_per_address": 5, "slow_count": 10, "longpoll_count": 10, "upload_mb": 8,
         "history_rows": 20, "history_sockets": 3, "flood_many_sockets": 10, "newconn_workers": 4,
         "frame_workers": 2, "slow_header_every": 1.0, "huge_body_connections": 7, "huge_body_seconds": 3.0,
         "idle_many_seconds": 3.0, "ws_header_connections": 4,
         "polling_over_connections": 2, "large_db_rows": 30_000}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated: " + ", ".join(ATTACKS))
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each attack")
    parser.add_argument("--before", type=float, default=3.0, help="legitimate chat before each attack, s")
    parser.add_argument("--after", type=float, default=10.0, help="legitimate chat after each attack, s")
    parser.add_argument("--after-probe", type=float, default=5.0,
                        help="when after the attack the server's 'after' numbers are read, s")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="longest wait for threads/fds to settle between attacks, s")
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose `make serve` is attacked")
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix),
                        help="virtual environment for the server (make serve VENV=...; default: this one)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for the server (repeatable)")
    parser.add_argument("--models-dir", type=Path, default=MODELS,
                        help="a models dir with `current` (default: train one on the starter pairs)")
    parser.add_argument("--label", default=None,
                        help="name of this run in the output file (default: 'default', or 'quick' with --quick)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attack.json")
    parser.add_argument("--quick", action="store_true",
                        help="CI: every class ~3 s with small counts; exit 1 if any goal is missed")
    parser.add_argument("--fresh-server", action="store_true",
                        help="start a new server before every attack (default: only when one died), so "
                             "no attack inherits what the previous one left behind")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep the servers' logs, databases and TMPDIR (a /tmp/bench-attack-* dir)")
    parser.add_argument("--legit-addr", default=LEGIT_ADDR)
    parser.add_argument("--attacker-addr", default=None,
                        help=f"one source address for every single-address attack "
                             f"(default: {ATTACKER_PREFIX}.N.1 for the N-th attack class)")
    parser.add_argument("--interval", type=float, default=0.5, help="the legitimate client asks this often, s")
    parser.add_argument("--max-rate", type=float, default=2000.0,
                        help="cap on any flood's packets a second (the bench's own CPU)")
    parser.add_argument("--idle-count", type=int, default=1000)
    parser.add_argument("--idle-many-count", type=int, default=5000)
    parser.add_argument("--idle-per-address", type=int, default=5,
                        help="sockets per address in idle_sockets_many (each costs two of the address's connect tokens)")
    parser.add_argument("--idle-many-seconds", type=float, default=75.0,
                        help="length of idle_sockets_many: at the handshake rates' defaults (40 a second) "
                             "its sockets reach the memory mark of its cgroup after about 70 s")
    parser.add_argument("--idle-many-memory-mb", type=int, default=600,
                        help="idle_sockets_many's server runs in a memory cgroup this large (needs root; 0: none)")
    parser.add_argument("--cpu-quota", default=None,
                        help="comma-separated CPU quotas for the server, in cores (0: unlimited); each is a run "
                             "of its own, stored as LABEL (unlimited) or LABEL-cpuQ (needs root for a cgroup). "
                             "Default: 0,0.5 (both); with --quick: 0")
    parser.add_argument("--slow-count", type=int, default=200)
    parser.add_argument("--slow-header-every", type=float, default=2.0)
    parser.add_argument("--slow-body-every", type=float, default=1.0)
    parser.add_argument("--longpoll-count", type=int, default=200)
    parser.add_argument("--upload-mb", type=int, default=1024)
    parser.add_argument("--frame-chars", type=int, default=20000, help="oversized frame length")
    parser.add_argument("--frame-workers", type=int, default=4)
    parser.add_argument("--newconn-workers", type=int, default=8)
    parser.add_argument("--flood-many-sockets", type=int, default=100)
    parser.add_argument("--flood-many-rate", type=float, default=4.0)
    parser.add_argument("--history-rows", type=int, default=100)
    parser.add_argument("--history-sockets", type=int, default=8)
    parser.add_argument("--huge-body-connections", type=int, default=10,
                        help="connections at once in huge_declared_body")
    parser.add_argument("--huge-body-seconds", type=float, default=60.0,
                        help="length of huge_declared_body (the other classes: --seconds)")
    parser.add_argument("--ws-header-connections", type=int, default=10,
                        help="WebSockets at once in websocket_huge_frame_header")
    parser.add_argument("--polling-over-connections", type=int, default=4,
                        help="keep-alive connections in polling_just_over_limit")
    parser.add_argument("--open-concurrency", type=int, default=50, help="connections being opened at once")
    parser.add_argument("--large-db-rows", type=int, default=1_000_000,
                        help="exchanges in the database for reviewer_export_1m and admin_pages_1m")
    args = parser.parse_args(argv)
    if args.quick:  # what was not given on the command line takes the quick value
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attacks if a not in ATTACKS]
    if unknown:
        parser.error(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")
    env = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env wants KEY=VALUE, got {item!r}")
        if key in SERVER_ENV_KEYS:
            parser.error(f"--env {key}: the bench sets it (use --models-dir for MODEL_DIR)")
        env[key] = value
    args.server_env = env
    args.root = args.root.resolve()
    args.venv = args.venv.absolute()
    args.after_probe = min(args.after_probe, max(0.5, args.after - 0.5))
    if args.label is None:
        args.label = "quick" if args.quick else "default"
    return args


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpu_quotas(args):
    """The runs to make: None (unlimited) and/or CPU quotas in cores."""
    text = args.cpu_quota if args.cpu_quota is not None else ("0" if args.quick else "0,0.5")
    quotas = []
    for item in text.split(","):
        value = float(item) if item.strip() not in ("", "none", "unlimited") else 0.0
        quotas.append(value if value > 0 else None)
    return quotas


def main(argv=None):
    args = parse_args(argv)
    nofile = raise_fd_limit()
    ensure_model(args.models_dir)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    missed = []
    for quota in cpu_quotas(args):
        label = args.label if quota is None else f"{args.label}-cpu{quota:g}"
        try:
            missed += run_mode(args, quota, label, nofile)
        except KeyboardInterrupt:
            print("\ninterrupted: the server is stopped, nothing more written", file=sys.stderr)
            return 130
        except CgroupUnavailable as exc:
            print(f"\n### {label}: not run: {exc}", file=sys.stderr)
            missed.append((label, "cpu quota"))
    if args.quick and missed:
        print(f"{len(missed)} goal(s) missed", file=sys.stderr)
        return 1
    return 0


def run_mode(args, quota, label, nofile):
    """Every attack against servers under one CPU quota (None: unlimited);
    stores the report under ``label`` and returns the goals missed."""
    load_before = os.getloadavg()
    started = time.monotonic()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if quota is not None:  # fail early, before the first server, when no cgroup can be made
        CpuCgroup(quota, f"bench-attack-{os.getpid()}-check").remove()
    bench = Bench(args, quota)
    try:
        results = asyncio.run(run_all(args, bench))
    finally:
        bench.close()
    report = {"label": label, "root": str(args.root), "commit": git_commit(args.root), "when": when,
              "cpu_count": os.cpu_count(), "cpu_quota_cores": quota,
              "load_avg_before": [round(x, 2) for x in load_before],
              "load_avg_after": [round(x, 2) for x in os.getloadavg()],
              "wall_s": round(time.monotonic() - started, 1), "quick": args.quick,
              "settings": {"seconds": args.seconds, "before_s": args.before, "after_s": args.after,
                           "after_probe_s": args.after_probe, "server_env": args.server_env,
                           "legit_addr": args.legit_addr, "attacker_addr": args.attacker_addr or f"{ATTACKER_PREFIX}.N.1",
                           "legit_interval_s": args.interval, "max_rate_per_s": args.max_rate,
                           "idle_count": args.idle_count, "idle_many_count": args.idle_many_count,
                           "idle_per_address": args.idle_per_address, "slow_count": args.slow_count,
                           "longpoll_count": args.longpoll_count, "upload_mb": args.upload_mb,
                           "frame_chars": args.frame_chars, "flood_many_sockets": args.flood_many_sockets,
                           "history_rows": args.history_rows, "history_sockets": args.history_sockets,
                           "huge_body_connections": args.huge_body_connections,
                           "huge_body_seconds": args.huge_body_seconds, "idle_many_seconds": args.idle_many_seconds,
                           "ws_header_connections": args.ws_header_connections,
                           "polling_over_connections": args.polling_over_connections,
                           "idle_many_memory_mb": args.idle_many_memory_mb,
                           "large_db_rows": args.large_db_rows,
                           "fresh_server": args.fresh_server, "bench_nofile_limit": list(nofile),
                           "server_starts": bench.starts},
              "goal_definitions": GOAL_DEFINITIONS, "results": results}
    stored = {}
    if args.out.exists():
        with contextlib.suppress(ValueError, OSError):
            stored = json.loads(args.out.read_text())
    runs = stored.get("runs", {}) if isinstance(stored, dict) else {}
    runs[label] = report
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": runs}, indent=2, ensure_ascii=False) + "\n")

    quota_note = "unlimited CPU" if quota is None else f"the server under a CPU quota of {quota:g} core"
    print(f"\n### {label}: {args.root} at {report['commit']}, {args.seconds:g} s per attack, {quota_note}\n")
    print(table(results))
    print(f"\nload average (1, 5, 15 min) before {report['load_avg_before']}, after {report['load_avg_after']}"
          f" on {os.cpu_count()} cores; {report['wall_s']} s in all; servers started {bench.starts}")
    print(f"wrote {args.out} (label {label!r})")
    return [(r["attack"], k) for r in results for k, ok in r["goals"].items() if not ok]


if __name__ == "__main__":
    sys.exit(main())
