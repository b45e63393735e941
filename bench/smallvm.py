"""Small-VM benchmark: the server and a retrain in one memory cgroup, while people chat.

    make bench-smallvm                                    # 900 MB, 11k pairs, 50 clients
    MEMORY_LIMIT_MB=700 make bench-smallvm
    python -m bench.smallvm --quick                       # a small limit's check on tiny data (CI)

A 1 GB VM less its OS is about 900 MB for the bot.  This puts ``make serve``
(the starter model) and then ``flask retrain`` (on the pairs of ``--pairs``,
imported with ``flask import-pairs``) into one memory cgroup limited to
``MEMORY_LIMIT_MB``: cgroup v2's ``memory.max`` where the machine has it,
else v1's ``memory.limit_in_bytes`` (swap included where v1 counts it).
Creating a cgroup needs root.  ``--clients`` Socket.IO clients chat
(bench/serve.py's load) from the retrain's start to its end.

Reported: the retrain's result (its state and message, as the admin page
shows them, and the trainer's peak memory), the cgroup's peak memory and
OOM kills, chat p50/p99 during the retrain, errors, lost rows (replies
without their row), and whether the server lived.  Output:
bench/results/smallvm.json (--out) and a summary.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.serve import (LOAD_CLIENTS_ENV, MODELS, Server, chatter, client_address, ensure_model,  # noqa: E402
                         percentile_ms, startup)

DEFAULT_OUT = ROOT / "bench" / "results" / "smallvm.json"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chatbot_data" / "ChatbotData.train.csv"
STARTER = ROOT / "chatbot" / "data" / "starter_pairs.csv"
QUICK = {"limit_mb": 900, "clients": 5, "pairs": 200, "train_args": ["--max-steps", "20"]}


class CgroupUnavailable(RuntimeError):
    """No memory cgroup can be made here (not root, or no memory controller)."""


class MemoryCgroup:
    """A memory cgroup of its own, v2 or v1, whichever the machine mounts."""

    def __init__(self, limit_mb: int, name: str):
        limit = str(limit_mb * 2**20)
        v2, v1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")
        try:
            controllers = v2 / "cgroup.controllers"  # only where cgroup v2 is mounted at the top
            if controllers.exists() and "memory" in controllers.read_text().split():
                self.version, self.path = 2, v2 / name
                if "memory" not in (v2 / "cgroup.subtree_control").read_text().split():
                    (v2 / "cgroup.subtree_control").write_text("+memory")
                self.path.mkdir()
                (self.path / "memory.max").write_text(limit)
                if (self.path / "memory.swap.max").exists():
                    (self.path / "memory.swap.max").write_text("0")
            elif (v1 / "memory.limit_in_bytes").exists():
                self.version, self.path = 1, v1 / name
                self.path.mkdir()
                (self.path / "memory.limit_in_bytes").write_text(limit)
                if (self.path / "memory.memsw.limit_in_bytes").exists():  # swap counts too
                    (self.path / "memory.memsw.limit_in_bytes").write_text(limit)
            else:
                raise CgroupUnavailable("no cgroup memory controller is mounted")
        except OSError as exc:
            raise CgroupUnavailable(f"cannot make a memory cgroup: {exc}") from exc
        self.limit_mb = limit_mb

    def wrap(self) -> list[str]:
        """A command prefix that runs the command inside this cgroup."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def _read(self, name) -> str:
        return (self.path / name).read_text()

    def _fields(self, name) -> dict:
        return {k: int(v) for k, v in (line.split() for line in self._read(name).splitlines() if line.strip())}

    def usage_mb(self) -> float:
        return int(self._read("memory.current" if self.version == 2 else "memory.usage_in_bytes")) / 2**20

    def peak_mb(self) -> float | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        return int(self._read(name)) / 2**20 if (self.path / name).exists() else None

    def anon_file_mb(self) -> tuple[float, float]:
        stat = self._fields("memory.stat")
        if self.version == 2:
            return stat["anon"] / 2**20, stat["file"] / 2**20
        return stat["total_rss"] / 2**20, stat["total_cache"] / 2**20

    def oom_kills(self) -> int:
        fields = self._fields("memory.events" if self.version == 2 else "memory.oom_control")
        return fields.get("oom_kill", 0)

    def remove(self):
        """Kill what is left inside, then remove the cgroup."""
        for _ in range(50):
            pids = [int(p) for p in self._read("cgroup.procs").split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


ROLES = (("trainer", "chatbot.train"), ("runner", "retrain"), ("server", "gunicorn"))


def anonymous_by_role(cgroup: MemoryCgroup) -> dict:
    """Anonymous MB per role (server, runner, trainer) of the processes in the cgroup."""
    out = {}
    for pid in cgroup._read("cgroup.procs").split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        anon = next((int(line.split()[1]) for line in rollup if line.startswith("Anonymous:")), 0) / 1024
        role = next((name for name, marker in ROLES if marker in command), "other")
        out[role] = round(out.get(role, 0) + anon, 1)
    return out


class Sampler(threading.Thread):
    """The cgroup's memory every 0.25 s (its own peak counter where the kernel
    has one), and each role's anonymous memory."""

    def __init__(self, cgroup: MemoryCgroup):
        super().__init__(daemon=True)
        self.cgroup, self.samples, self.running = cgroup, [], True

    def run(self):
        started = time.monotonic()
        while self.running:
            try:
                anon, file = self.cgroup.anon_file_mb()
                self.samples.append((round(time.monotonic() - started, 2), round(self.cgroup.usage_mb(), 1),
                                     round(anon, 1), round(file, 1), anonymous_by_role(self.cgroup)))
            except OSError:
                pass
            time.sleep(0.25)


async def chat_until(url, done, clients, think, seed):
    """``clients`` Socket.IO clients (bench/serve.py's) ask, wait and think until ``done()``."""
    stats = {"sent": 0, "errors": 0, "latencies": [], "connect_errors": 0}
    rng = random.Random(seed)
    await asyncio.gather(*(chatter(url, done, think, stats, random.Random(rng.random()), client_address(i))
                           for i in range(clients)))
    return stats


def server_cpu_seconds(server) -> float:
    """User and system CPU time of the server's processes so far."""
    total = 0.0
    for proc in server.processes():
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def write_pairs(path: Path, data: Path, limit: int | None):
    """The starter pairs plus ``data``'s (the first ``limit`` of them), as one CSV."""
    from chatbot.pairs_csv import read_pairs_csv, write_pairs_csv

    starter, _ = read_pairs_csv(STARTER)
    extra, _ = read_pairs_csv(data)
    pairs = starter + (extra[:limit] if limit else extra)
    with open(path, "w", encoding="utf-8", newline="") as f:
        return write_pairs_csv(f, pairs)


def flask(args, env, **kwargs):
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kwargs)


def run(args) -> dict:
    from chatbot import retrain

    work = Path(tempfile.mkdtemp(prefix="bench-smallvm-"))
    ensure_model(MODELS)  # the fresh install's starter model, trained once outside the cgroup
    models = work / "models"
    models.mkdir()
    current = os.readlink(MODELS / "current")
    shutil.copytree(MODELS / current, models / Path(current).name)
    os.symlink(Path(current).name, models / "current")

    pairs_csv = work / "pairs.csv"
    pair_count = write_pairs(pairs_csv, Path(args.data), args.pairs)
    env = dict(os.environ, MODEL_DIR=str(models), DATABASE_URL=f"sqlite:///{work / 'serve.db'}",
               SECRET_KEY=secrets.token_hex(16), RETRAIN_ARGS=" ".join(["--quiet", *args.train_args]))
    for step in (["db", "upgrade"], ["import-pairs", str(pairs_csv)]):
        done = flask(step, env)
        if done.returncode:
            raise SystemExit(f"flask {' '.join(step)} failed:\n{done.stdout}{done.stderr}")

    cgroup = MemoryCgroup(args.limit_mb, f"chatbot-smallvm-{os.getpid()}")
    sampler = Sampler(cgroup)
    result = {"limit_mb": args.limit_mb, "cgroup_version": cgroup.version, "pairs": pair_count,
              "clients": args.clients, "train_args": args.train_args}
    server = None
    try:
        server = Server({**LOAD_CLIENTS_ENV, "SECRET_KEY": env["SECRET_KEY"]}, models, work, wrap=cgroup.wrap())
        sampler.start()
        # Ready is a first reply (the model, the encoder and the imported
        # pairs' reviewed answers loaded), as a user would wait for it.
        result["first_reply_seconds"] = asyncio.run(startup(server))
        rows_before = server.rows()
        print(f"server up in a {args.limit_mb} MB cgroup (v{cgroup.version}); retraining on {pair_count} pairs "
              f"while {args.clients} clients chat ...", flush=True)
        started = time.monotonic()
        server_cpu = server_cpu_seconds(server)
        trainer = subprocess.Popen([*cgroup.wrap(), sys.executable, "-m", "flask", "--app", "app", "retrain"],
                                   cwd=ROOT, env=env, stdout=open(work / "retrain.log", "w"), stderr=subprocess.STDOUT)
        stats = asyncio.run(chat_until(server.url, lambda: trainer.poll() is not None, args.clients,
                                       tuple(args.think), args.seed))
        trainer.wait()
        retrain_seconds = round(time.monotonic() - started, 1)
        server_cpu = server_cpu_seconds(server) - server_cpu
        time.sleep(2)  # the last replies' rows
        status = retrain.read_status(models)
        result["retrain"] = {"exit_code": trainer.returncode, "state": status.get("state"),
                             "message": status.get("message"), "seconds": retrain_seconds,
                             "trainer_peak_mb": status.get("trainer_peak_mb"),
                             "dev_chrf": status.get("dev_chrf"), "current_dev_chrf": status.get("current_dev_chrf"),
                             # How the time went: the embedding beside the epochs, each epoch.
                             "log": [line.strip() for line in (work / "retrain.log").read_text(
                                 encoding="utf-8", errors="replace").splitlines()
                                 if line.startswith(("meaning:", "epoch", "best epoch"))]}
        # The cores the chats took from the retrain, in core-seconds.
        result["server_cpu_seconds"] = round(server_cpu, 1)
        replies = len(stats["latencies"])
        result["chat"] = {"sent": stats["sent"], "replies": replies, "errors": stats["errors"],
                          "connect_errors": stats["connect_errors"], "p50_ms": percentile_ms(stats["latencies"], 50),
                          "p99_ms": percentile_ms(stats["latencies"], 99),
                          "lost_rows": abs(replies - (server.rows() - rows_before))}
        result["server_alive"] = server.proc.poll() is None and bool(server.processes())
    finally:
        sampler.running = False
        if server is not None:
            server.stop()
        result["oom_kills"] = cgroup.oom_kills()
        peak = cgroup.peak_mb()
        result["peak_mb"] = round(peak if peak is not None else max((s[1] for s in sampler.samples), default=0), 1)
        if sampler.samples:
            result["peak_anon_mb"] = max(s[2] for s in sampler.samples)
            roles = {role for *_, by_role in sampler.samples for role in by_role}
            result["peak_anon_by_role_mb"] = {role: max(by_role.get(role, 0) for *_, by_role in sampler.samples)
                                              for role in sorted(roles)}
            result["samples"] = sampler.samples[::4]  # one a second: seconds, usage, anon, file MB; anon by role
        cgroup.remove()
        shutil.rmtree(work, ignore_errors=True)
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.smallvm", description=__doc__.split("\n")[0])
    p.add_argument("--limit-mb", type=int, default=int(os.environ.get("MEMORY_LIMIT_MB") or 900),
                   help="the cgroup's memory limit (default: $MEMORY_LIMIT_MB or 900)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="a Q,A CSV whose pairs join the starter pairs")
    p.add_argument("--pairs", type=int, help="use only the first N pairs of --data")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--think", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--quick", action="store_true", help="tiny data, a few clients, a short training run")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    args.train_args = []
    if args.quick:
        args.clients, args.pairs, args.train_args = QUICK["clients"], QUICK["pairs"], QUICK["train_args"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except CgroupUnavailable as exc:
        print(f"error: {exc} (run it as root on Linux)", file=sys.stderr)
        return 2
    result["meta"] = {"data": args.data, "quick": args.quick, "cpu": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count(), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    r, c = result.get("retrain", {}), result.get("chat", {})
    print("\n| limit | pairs | retrain | trainer peak MB | cgroup peak MB | OOM kills | chat p50 ms | chat p99 ms "
          "| errors | lost rows | server |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {result['limit_mb']} MB | {result['pairs']} | {r.get('state')} in {r.get('seconds')} s "
          f"| {r.get('trainer_peak_mb')} | {result['peak_mb']} | {result['oom_kills']} | {c.get('p50_ms')} "
          f"| {c.get('p99_ms')} | {c.get('errors')} | {c.get('lost_rows')} | "
          f"{'alive' if result.get('server_alive') else 'DOWN'} |")
    print(f"first reply {result.get('first_reply_seconds')} s after the server started; "
          f"the server used {result.get('server_cpu_seconds')} CPU seconds during the retrain")
    for line in r.get("log", []):
        print(f"  {line}")
    print(f"retrain: {r.get('message')}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
