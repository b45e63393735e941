"""Serving benchmark: reply latency, throughput and memory under load.

    make bench-serve                      # or: python -m bench.serve --help

Starts the real server the way the README runs it (`make serve`: gunicorn,
gthread worker) on 127.0.0.1 with a trained model and a scratch SQLite
database, then for each client count N connects N python-socketio clients
that each ask a question, wait for the reply, think for a moment and ask
again, for a fixed time.  Two in three questions are ones the starter pairs
know (a known answer), one in three are new (the network writes the reply);
in mode ``new`` every question is one never asked before (new_question), so
that no cache helps.
It records reply latency (p50/p95/p99), replies per second, errors, peak
server RSS, and checks that the database holds exactly one row per answered
message.  It also measures process start to first
reply, and the RSS that 200 idle connected sockets add.

The default mode also compares the channels with ``--channel-callers``
callers each, in ``--channel-rounds`` interleaved rounds (medians reported):
Socket.IO clients, REST callers (chatbot/api.py), each from its own address
with the bench's API key, and KakaoTalk users (chatbot/kakao.py), all through
one HTTP client with a pool of connections from one address, as Kakao's
servers call the skill.  For KakaoTalk it counts the answers that came
within the reply budget (not the "잠시만요" stand-in).

Every mode in MODES runs the same load on the same machine in one run, so
their ratio is meaningful even on a noisy shared machine.  Results go to
bench/results/serve.json and a table is printed.
"""
import argparse
import asyncio
import collections
import itertools
import json
import os
import random
import signal
import statistics
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import socketio

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bench" / "scratch" / "models"
# Questions the starter pairs know (answered from them) and, one in three,
# questions they do not (the network writes the reply with beam search).
KNOWN = ["안녕하세요", "배고파", "오늘 날씨 어때?", "심심해", "너 누구야", "주말에 뭐 하지",
         "피곤해", "영화 추천해 줘", "고마워", "잘 자", "비 온대", "커피 마실까", "스트레스 받아",
         "운동하기 싫다", "시험 망했어", "점심 뭐 먹지", "좋은 아침", "우울해", "노래 추천", "산책 갈까"]
NEW = ["주식 사도 될까", "자동차 고장났어", "면접 떨어졌어", "컴퓨터가 느려", "머리 자를까",
       "양자역학 공부 중", "환율 전망", "전세 계약 끝나", "보일러 고장", "세금 신고 언제야"]
QUESTIONS = KNOWN + NEW

# The server as configured by default, the plain alternative (one reply
# computed at a time, no batching), and the default server asked only
# questions it has never seen (new_question), so that no cache helps: not the
# sentence encoder's, not a reviewed answer's.
MODES = {
    "default": {},
    "plain": {"REPLY_WORKERS": "1", "REPLY_BATCH_MAX": "1"},
    "new": {},
}
# What a question new each time is made of: a usual question with a few
# everyday words around it, and a number no other question has.
TOPICS = ["오늘", "내일", "요즘", "주말에", "아침에", "밤에", "회사에서", "학교에서", "집에서", "친구랑"]
ENDINGS = ["진짜", "좀", "너무", "정말", "혹시", "그냥", "계속", "갑자기"]


_NEW_QUESTIONS = itertools.count(1)


def usual_question(rng):
    return rng.choice(QUESTIONS)


def new_question(rng):
    """A question no client of this process asked before."""
    return f"{rng.choice(TOPICS)} {rng.choice(ENDINGS)} {rng.choice(QUESTIONS)} {next(_NEW_QUESTIONS)}번"


# One API key and one skill secret for the bench's server.
BENCH_API_KEY = "hm_bench-serve-key-0123456789abcdef"
BENCH_KAKAO_SECRET = "bench-serve-kakao-secret"
# The bench measures serving, not the per-key and per-user limits.
CHANNEL_ENV = {"API_RATE_LIMIT": "100000/minute", "KAKAO_USER_RATE_LIMIT": "100000/minute",
               "KAKAO_TOTAL_RATE_LIMIT": "1000000/minute", "KAKAO_SKILL_SECRET": BENCH_KAKAO_SECRET}
# Nor the handshake rates (issue 24's HANDSHAKE_TOTAL_RATE, 40 a second): 200
# clients connect at once in bench-serve and bench-smallvm, where real ones
# arrive spread out and retry.  bench-attack keeps them: they are a defence.
LOAD_CLIENTS_ENV = {"HANDSHAKE_TOTAL_RATE": "0", "CONNECT_RATE": "0"}
# Kakao's servers call the skill as one HTTP client with a pool of
# connections, from one address: below the server's cap on connections per
# address (MAX_CONNECTIONS_PER_ADDRESS, 32).
KAKAO_POOL = 30
KAKAO_BUDGET_S = 3.5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(models_dir: Path):
    """Train the default model on the starter pairs once, as `make run` does
    (which also gives a model from before weights.npz its NumPy weights)."""
    subprocess.run([sys.executable, "-m", "chatbot.train", "--if-missing", "--quiet",
                    "--pairs", str(ROOT / "chatbot" / "data" / "starter_pairs.csv"),
                    "--models-dir", str(models_dir)], cwd=ROOT, check=True)


class Server:
    """`make serve` in its own process group, with its database and RSS."""

    def __init__(self, mode_env, models_dir, workdir, root=ROOT, venv=None, wrap=()):
        """``root``: the checkout whose ``make serve`` runs (default: this one);
        ``venv``: a virtual environment for it (``make serve VENV=...``), so an
        older checkout (``git worktree add``) runs with this one's packages;
        ``wrap``: a command prefix (bench/smallvm.py's memory cgroup)."""
        self.root = Path(root)
        self.port = free_port()
        self.db_path = Path(workdir) / "serve.db"
        self.env = dict(os.environ, MODEL_DIR=str(models_dir), DATABASE_URL=f"sqlite:///{self.db_path}",
                        PORT=str(self.port), HOST="127.0.0.1", **CHANNEL_ENV, **mode_env)
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=self.root,
                       env=self.env, check=True, capture_output=True)
        self.has_api_keys = self._add_api_key()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(workdir) / "server.log", "w")
        self.started = time.monotonic()
        command = [*wrap, "make", "--no-print-directory", "serve"] + ([f"VENV={venv}"] if venv else [])
        self.proc = subprocess.Popen(command, cwd=self.root, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def processes(self) -> list:
        """The server processes (gunicorn master and worker), not make."""
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for proc in procs:
            try:
                if proc.name() != "make":
                    out.append(proc)
            except psutil.NoSuchProcess:
                pass
        return out

    def rss_mb(self) -> float:
        """Resident memory of the server processes."""
        total = 0
        for proc in self.processes():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total / 2**20

    def memory_detail(self) -> list[dict]:
        """Per server process: RSS split into anonymous memory and file-backed
        pages (shared libraries, the mmapped Mecab dictionary: clean pages the
        kernel can drop and read again)."""
        detail = []
        for proc in self.processes():
            try:
                fields = {}
                with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                    for line in f.readlines()[1:]:
                        key, value = line.split(":", 1)
                        fields[key] = int(value.split()[0]) / 1024
                threads = proc.num_threads()
            except (psutil.NoSuchProcess, OSError):
                continue
            detail.append({"pid": proc.pid, "threads": threads, "rss_mb": round(fields["Rss"], 1),
                           "anon_mb": round(fields["Anonymous"], 1),
                           "file_mb": round(fields["Rss"] - fields["Anonymous"], 1)})
        return detail

    def _add_api_key(self) -> bool:
        """The bench's REST API key, stored as the admin stores one (its
        SHA-256); False for a checkout without API keys (--baseline-root)."""
        import hashlib

        with sqlite3.connect(self.db_path, timeout=30) as con:
            if not con.execute("select 1 from sqlite_master where name = 'api_key'").fetchone():
                return False
            con.execute("insert into api_key (name, prefix, key_hash, created_at) values (?, ?, ?, ?)",
                        ("bench", BENCH_API_KEY[:10], hashlib.sha256(BENCH_API_KEY.encode()).hexdigest(),
                         "2026-01-01 00:00:00"))
        return True

    def rows(self) -> int:
        with sqlite3.connect(self.db_path, timeout=30) as con:
            return con.execute("select count(*) from exchange").fetchone()[0]

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def wait_until_up(url, timeout=120.0):
    """Poll the chat page until the server answers (a Socket.IO connect to a
    closed port does not retry cleanly)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def client_address(i: int) -> str:
    """The i-th client's own source address: Linux routes all of 127.0.0.0/8
    to loopback, so each simulated person can have one, as on the internet
    (the server caps connections and rates per address)."""
    return f"127.0.{1 + i // 250}.{2 + i % 250}"


async def connect(url, address=None):
    """A Socket.IO client over a WebSocket, from ``address`` if given."""
    import aiohttp

    session = None
    if address is not None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))
    client = socketio.AsyncClient(reconnection=False, http_session=session)
    try:
        await client.connect(url, transports=["websocket"], wait_timeout=10)
    except BaseException:
        if session is not None:
            await session.close()
        raise
    return client


async def disconnect(client):
    await client.disconnect()
    http = client.eio.http
    if http is not None and not http.closed:
        await http.close()


async def ask(client, inbox, text, timeout=30.0):
    """Send one message; return (event name, seconds) or ("timeout", None)."""
    start = time.perf_counter()
    await client.emit("message", {"text": text})
    try:
        name = await asyncio.wait_for(inbox.get(), timeout)
    except asyncio.TimeoutError:
        return "timeout", None
    return name, time.perf_counter() - start


def percentile_ms(latencies, p):
    """The p-th percentile of latencies in seconds, in milliseconds (None for none)."""
    latencies = sorted(latencies)
    return round(1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))], 1) if latencies else None


async def chatter(url, done, think, stats, rng, address=None, pick=usual_question):
    """One Socket.IO client: ask, wait for the reply, think, ask again, until ``done()``."""
    try:
        client = await connect(url, address)
    except Exception:
        stats["errors"] += 1
        stats["connect_errors"] += 1
        return
    inbox = asyncio.Queue()
    client.on("reply", lambda data: inbox.put_nowait("reply"))
    client.on("error", lambda data: inbox.put_nowait("error"))
    await asyncio.sleep(rng.uniform(0, think[1]))  # do not all start at once
    while not done():
        stats["sent"] += 1
        name, seconds = await ask(client, inbox, pick(rng))
        if name == "reply":
            stats["latencies"].append(seconds)
        else:
            stats["errors"] += 1
            if name == "timeout":  # a late reply would confuse the next question
                break
        await asyncio.sleep(rng.uniform(*think))
    await disconnect(client)


async def load_run(server, clients, seconds, think, seed, pick=usual_question):
    stats = {"sent": 0, "errors": 0, "connect_errors": 0, "latencies": []}
    rows_before = server.rows()
    peak = [server.rss_mb()]

    async def sample_rss():
        while True:
            peak.append(server.rss_mb())
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_rss())
    started = time.monotonic()
    stop_at = started + seconds
    rng = random.Random(seed)
    await asyncio.gather(*(chatter(server.url, lambda: time.monotonic() >= stop_at, think, stats,
                                   random.Random(rng.random()), client_address(i), pick) for i in range(clients)))
    elapsed = time.monotonic() - started
    sampler.cancel()
    latencies = sorted(stats["latencies"])
    replies = len(latencies)
    stored = server.rows() - rows_before

    return {"clients": clients, "p50_ms": percentile_ms(latencies, 50), "p95_ms": percentile_ms(latencies, 95),
            "p99_ms": percentile_ms(latencies, 99),
            "replies_per_s": round(replies / elapsed, 1), "errors": stats["errors"],
            "lost_rows": abs(replies - stored), "rss_mb": round(max(peak), 1),
            "sent": stats["sent"], "replies": replies, "rows_stored": stored,
            "connect_errors": stats["connect_errors"], "seconds": round(elapsed, 1)}


def kakao_payload(text: str, user: int) -> dict:
    """A SkillPayload as Kakao i Open Builder sends it to a fallback block's skill."""
    return {"intent": {"id": "fallback", "name": "폴백 블록"},
            "userRequest": {"timezone": "Asia/Seoul", "params": {}, "block": {"id": "fallback", "name": "폴백 블록"},
                            "utterance": text, "lang": "ko",
                            "user": {"id": f"bench-kakao-user-{user}", "type": "botUserKey", "properties": {}}},
            "bot": {"id": "bench-bot", "name": "한마디"},
            "action": {"name": "한마디", "clientExtra": {}, "params": {}, "id": "skill", "detailParams": {}}}


async def http_caller(server, channel, index, stop_at, think, stats, rng, kakao_http=None):
    """One REST caller (its own address and connection) or KakaoTalk user
    (through Kakao's one client, ``kakao_http``): ask, wait for the answer,
    think, ask again."""
    import aiohttp

    from chatbot.kakao import TEXTS

    pending_text = TEXTS["wait"]
    if channel == "rest":
        path, headers = "/api/v1/messages", {"Authorization": f"Bearer {BENCH_API_KEY}"}
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(client_address(index), 0)),
                                     timeout=aiohttp.ClientTimeout(total=30))
    else:
        path, headers, http = f"/kakao/skill/{BENCH_KAKAO_SECRET}", {}, kakao_http
    try:
        await asyncio.sleep(rng.uniform(0, think[1]))
        while time.monotonic() < stop_at:
            text = rng.choice(QUESTIONS)
            body = {"text": text, "session": f"bench-{index}"} if channel == "rest" else kakao_payload(text, index)
            stats["sent"] += 1
            start = time.perf_counter()
            try:
                async with http.post(server.url + path, json=body, headers=headers) as response:
                    data = await response.json()
                    seconds = time.perf_counter() - start
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                stats["errors"] += 1
                stats["error_kinds"][type(exc).__name__] += 1
                await asyncio.sleep(rng.uniform(*think))
                continue
            if channel == "rest":
                answered, pending = status == 200 and isinstance(data.get("answer"), str), False
            else:  # an answer has 👍/👎 quick replies; "잠시만요" and refusals have none
                template = data.get("template") or {}
                texts = [(o.get("simpleText") or {}).get("text") for o in template.get("outputs") or [{}]]
                pending = status == 200 and texts[-1] == pending_text
                answered = status == 200 and bool(template.get("quickReplies"))
            if answered:
                stats["latencies"].append(seconds)
            elif pending:
                stats["pending"] += 1
            else:
                stats["errors"] += 1
                stats["error_kinds"][f"{status} {str(data)[:80]}"] += 1
            await asyncio.sleep(rng.uniform(*think))
    finally:
        if channel == "rest":
            await http.close()


async def channel_run(server, channel, callers, seconds, think, seed):
    """``callers`` REST callers or KakaoTalk users for ``seconds``; every
    answer (and every "잠시만요", answered later) must leave one row."""
    stats = {"sent": 0, "errors": 0, "pending": 0, "latencies": [], "error_kinds": collections.Counter()}
    rows_before = server.rows()
    started = time.monotonic()
    rng = random.Random(seed)
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=KAKAO_POOL),
                                     timeout=aiohttp.ClientTimeout(total=30)) as kakao_http:
        await asyncio.gather(*(http_caller(server, channel, i, started + seconds, think, stats,
                                           random.Random(rng.random()), kakao_http) for i in range(callers)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(KAKAO_BUDGET_S + 2)  # a late Kakao answer is stored when it is ready
    latencies = sorted(stats["latencies"])
    stored = server.rows() - rows_before
    expected = len(latencies) + stats["pending"]

    within = sum(1 for s in latencies if s <= KAKAO_BUDGET_S)
    return {"channel": channel, "callers": callers, "p50_ms": percentile_ms(latencies, 50),
            "p95_ms": percentile_ms(latencies, 95), "p99_ms": percentile_ms(latencies, 99),
            "replies_per_s": round(len(latencies) / elapsed, 1), "errors": stats["errors"],
            "pending": stats["pending"],
            "within_budget": round(within / stats["sent"], 4) if channel == "kakao" and stats["sent"] else None,
            "lost_rows": abs(expected - stored), "sent": stats["sent"], "replies": len(latencies),
            "rows_stored": stored, "seconds": round(elapsed, 1), "error_kinds": dict(stats["error_kinds"].most_common(5))}


async def compare_channels(server, args) -> dict:
    """Socket.IO, REST and KakaoTalk with the same number of callers, in
    ``--channel-rounds`` interleaved rounds: per channel the rounds' runs,
    the medians of their p50 and p99, the median of each round's p99 ratio
    to Socket.IO's, and the errors, 잠시만요 and lost rows of all rounds."""
    runs = {"socketio": [], "rest": [], "kakao": []}
    for round_ in range(args.channel_rounds):
        seed = args.seed + round_
        runs["socketio"].append(await load_run(server, args.channel_callers, args.seconds, args.think, seed))
        await asyncio.sleep(2)
        for channel in ("rest", "kakao"):
            runs[channel].append(await channel_run(server, channel, args.channel_callers, args.seconds, args.think, seed))
        for channel, channel_runs in runs.items():
            run = channel_runs[-1]
            print(f"  round {round_ + 1} {channel:8} {args.channel_callers} callers: p50 {run['p50_ms']} ms, "
                  f"p99 {run['p99_ms']} ms, {run['errors']} errors, {run.get('pending', 0)} 잠시만요, "
                  f"{run['lost_rows']} lost rows", flush=True)
    summary = {}
    for channel, channel_runs in runs.items():
        ratios = [r["p99_ms"] / s["p99_ms"] for r, s in zip(channel_runs, runs["socketio"]) if r["p99_ms"] and s["p99_ms"]]
        budgets = [r["within_budget"] for r in channel_runs if r.get("within_budget") is not None]
        summary[channel] = {
            "callers": args.channel_callers, "rounds": len(channel_runs),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in channel_runs), 1),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in channel_runs), 1),
            "p99_ratio_to_socketio": round(statistics.median(ratios), 2) if ratios else None,
            "within_budget_min": min(budgets) if budgets else None,
            "errors": sum(r["errors"] for r in channel_runs), "pending": sum(r.get("pending", 0) for r in channel_runs),
            "lost_rows": sum(r["lost_rows"] for r in channel_runs), "sent": sum(r["sent"] for r in channel_runs),
            "runs": channel_runs}
    return summary


async def startup(server):
    """Seconds from process start to the first reply."""
    await asyncio.to_thread(wait_until_up, server.url)
    client = await connect(server.url)
    inbox = asyncio.Queue()
    client.on("reply", lambda data: inbox.put_nowait("reply"))
    client.on("error", lambda data: inbox.put_nowait("error"))
    name, _ = await ask(client, inbox, "안녕하세요", timeout=60)
    seconds = time.monotonic() - server.started
    await disconnect(client)
    if name != "reply":
        raise RuntimeError(f"first message got {name}, not a reply")
    return round(seconds, 2)


async def idle_rss_delta(server, count=200):
    await asyncio.sleep(1)
    before = server.rss_mb()
    clients = await asyncio.gather(*(connect(server.url, client_address(i)) for i in range(count)))
    await asyncio.sleep(3)
    after = server.rss_mb()
    await asyncio.gather(*(disconnect(c) for c in clients))
    return round(after - before, 1)


async def bench_mode(name, mode_env, args, root=ROOT):
    with tempfile.TemporaryDirectory() as workdir:
        server = Server({**LOAD_CLIENTS_ENV, **mode_env}, args.models_dir, workdir, root=root,
                        venv=Path(sys.prefix).absolute() if root != ROOT else None)
        try:
            result = {"mode": name, "startup_s": await startup(server)}
            result["idle_rss_mb"] = round(server.rss_mb(), 1)
            result["idle_memory"] = server.memory_detail()
            result["idle200_rss_delta_mb"] = await idle_rss_delta(server)
            runs = []
            for clients in args.clients:
                run = await load_run(server, clients, args.seconds, args.think, args.seed,
                                     new_question if name == "new" else usual_question)
                print(f"  {name:8} {clients:4} clients: p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
                      f"{run['replies_per_s']} replies/s, {run['errors']} errors, {run['lost_rows']} lost rows, "
                      f"{run['rss_mb']} MB", flush=True)
                runs.append(run)
                await asyncio.sleep(2)  # let the last replies and disconnects settle
            result["runs"] = runs
            if name == "default" and args.channel_callers and server.has_api_keys:
                result["channels"] = await compare_channels(server, args)
            result["memory_after_runs"] = server.memory_detail()
        finally:
            server.stop()
    return result


def table(runs):
    lines = ["| clients | p50 ms | p95 ms | p99 ms | replies/s | errors | lost rows | RSS MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['clients']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['replies_per_s']} "
                     f"| {r['errors']} | {r['lost_rows']} | {r['rss_mb']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,10,50,200", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="load time per client count")
    parser.add_argument("--think", default="0.2,1.0", help="think time range between messages, seconds")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    parser.add_argument("--models-dir", type=Path, default=MODELS,
                        help="a models dir with `current` (default: train one on the starter pairs)")
    parser.add_argument("--baseline-root", type=Path, default=None,
                        help="another checkout (git worktree add /tmp/old <commit>) whose server runs the "
                             "same load in the same run, as mode 'before'")
    parser.add_argument("--channel-callers", type=int, default=50,
                        help="Socket.IO, REST and KakaoTalk callers in the default mode's channel comparison "
                             "(0: skip it)")
    parser.add_argument("--channel-rounds", type=int, default=3,
                        help="interleaved rounds of the channel comparison (medians are reported)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve.json")
    args = parser.parse_args(argv)
    args.clients = [int(n) for n in args.clients.split(",")]
    args.think = tuple(float(x) for x in args.think.split(","))
    ensure_model(args.models_dir)

    load_before = os.getloadavg()
    results = {}
    for name in args.modes.split(","):
        print(f"mode {name}: {MODES[name] or 'as configured'}", flush=True)
        results[name] = asyncio.run(bench_mode(name, MODES[name], args))
    if args.baseline_root:
        print(f"mode before: {args.baseline_root} as configured there", flush=True)
        results["before"] = asyncio.run(bench_mode("before", {}, args, root=args.baseline_root.resolve()))
        results["before"]["root"] = str(args.baseline_root)
        results["before"]["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.baseline_root,
                                                     capture_output=True, text=True).stdout.strip()

    default = results.get("default") or next(iter(results.values()))
    report = {"runs": default["runs"], "startup_s": default["startup_s"],
              "idle_rss_mb": default["idle_rss_mb"], "idle200_rss_delta_mb": default["idle200_rss_delta_mb"],
              "modes": results, "cpu_count": os.cpu_count(),
              "load_avg_before": [round(x, 2) for x in load_before],
              "load_avg_after": [round(x, 2) for x in os.getloadavg()], "seconds_per_run": args.seconds,
              "think_s": list(args.think), "model": os.readlink(args.models_dir / "current"),
              "questions": {"known": KNOWN, "new": NEW}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    for name, result in results.items():
        print(f"\n### {name}: start to first reply {result['startup_s']} s, idle RSS {result['idle_rss_mb']} MB, "
              f"200 idle sockets add {result['idle200_rss_delta_mb']} MB\n")
        print(table(result["runs"]))
    if default.get("channels"):
        channels = default["channels"]
        print(f"\n### channels: {args.channel_callers} callers each, medians of {args.channel_rounds} interleaved "
              f"rounds\n")
        print("| channel | p50 ms | p99 ms | p99 / Socket.IO | answered within 3.5 s (worst round) | 잠시만요 | "
              "errors | lost rows |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for name, label in (("socketio", "Socket.IO"), ("rest", "REST"), ("kakao", "KakaoTalk")):
            c = channels[name]
            budget = "" if c["within_budget_min"] is None else c["within_budget_min"]
            print(f"| {label} | {c['p50_ms']} | {c['p99_ms']} | {c['p99_ratio_to_socketio']} | {budget} | "
                  f"{c['pending']} | {c['errors']} | {c['lost_rows']} |")
        report["channels"] = channels
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    for other in ("plain", "before"):
        if "default" not in results or other not in results:
            continue
        print(f"\n| clients | replies/s default / {other} | p99 {other} / default |\n|---:|---:|---:|")
        for d, p in zip(results["default"]["runs"], results[other]["runs"]):
            rate = d["replies_per_s"] / p["replies_per_s"] if p["replies_per_s"] else float("nan")
            tail = p["p99_ms"] / d["p99_ms"] if d["p99_ms"] and p["p99_ms"] else float("nan")
            print(f"| {d['clients']} | {rate:.2f} | {tail:.2f} |")
    print(f"\nload average (1, 5, 15 min) before {report['load_avg_before']}, after {report['load_avg_after']}"
          f" on {os.cpu_count()} cores")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
