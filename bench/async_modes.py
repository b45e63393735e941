"""Threads or gevent?  Serve the real app both ways and time concurrent replies.

    python bench/async_modes.py --models-dir models [--python .venv/bin/python]

For each server mode it starts the app on 127.0.0.1: ``gevent`` as `make run`
does (gunicorn.conf.py: gunicorn's gevent worker, the model on OS threads),
``gthread`` (gunicorn's gthread worker with Flask-SocketIO's threading mode,
one OS thread per connection: the server before gevent),
connects CLIENTS Socket.IO clients, and in each round has all of them ask a
question at the same moment while one more client sends a message that needs
no model (an empty one, answered with an error event): how long that takes
shows whether one chat's inference holds up the others.  It reports medians
over rounds and writes bench/results/async_modes.json.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import socketio

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["안녕하세요", "배고파", "오늘 날씨 어때", "심심해", "너 누구야", "주말에 뭐 하지",
             "피곤해", "영화 추천해 줘", "고마워", "잘 자"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(mode, python, models_dir, db_path, port):
    # Every client here comes from 127.0.0.1: no per-address limits.
    env = dict(os.environ, MODEL_DIR=str(models_dir), DATABASE_URL=f"sqlite:///{db_path}",
               CONNECT_RATE="0", ADDRESS_MESSAGE_RATE="0", MAX_CONNECTIONS_PER_ADDRESS="1000")
    if mode == "gevent":  # what `make run` uses (gunicorn.conf.py)
        command = [python, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "app:app"]
    elif mode == "gthread":  # the server before gevent
        env["SOCKETIO_ASYNC_MODE"] = "threading"
        command = [python, "-m", "gunicorn", "--worker-class", "gthread", "--threads", "100",
                   "--workers", "1", "--bind", f"127.0.0.1:{port}", "app:app"]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    subprocess.run([python, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(Path(db_path).with_suffix(".log"), "w"))


def connect(url, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        client = socketio.Client(reconnection=False)
        try:
            client.connect(url, transports=["websocket"], wait_timeout=5)
            return client
        except socketio.exceptions.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def one_round(clients, prober):
    """All clients ask at once, then ``prober`` sends an empty message, which
    needs no model.  Returns each reply's latency and the prober's, in ms."""
    done = threading.Barrier(len(clients) + 1)
    latencies = [None] * len(clients)
    probed = threading.Event()
    prober.on("error", lambda data: probed.set())
    start = time.monotonic()

    def ask(i, client):
        got = threading.Event()
        client.on("reply", lambda data: got.set())
        client.emit("message", {"text": QUESTIONS[i % len(QUESTIONS)]})
        got.wait(60)
        latencies[i] = (time.monotonic() - start) * 1000
        done.wait()

    for i, client in enumerate(clients):
        threading.Thread(target=ask, args=(i, client), daemon=True).start()
    time.sleep(0.005)  # the questions are on their way
    probe_start = time.monotonic()
    prober.emit("message", {"text": ""})
    probed.wait(60)
    probe_ms = (time.monotonic() - probe_start) * 1000
    done.wait()
    return latencies, probe_ms


def measure(mode, args):
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(mode, args.python, args.models_dir, Path(tmp) / "bench.db", port)
        try:
            url = f"http://127.0.0.1:{port}"
            clients = [connect(url) for _ in range(args.clients + 1)]
            prober, clients = clients[0], clients[1:]
            one_round(clients, prober)  # warm-up: loads the model
            slowest, median, probes = [], [], []
            for _ in range(args.rounds):
                latencies, probe_ms = one_round(clients, prober)
                slowest.append(max(latencies))
                median.append(statistics.median(latencies))
                probes.append(probe_ms)
            for client in clients + [prober]:
                client.disconnect()
        finally:
            print((Path(tmp) / "bench.log").read_text()[-2000:], file=sys.stderr) if server.poll() else None
            server.terminate()
            server.wait(10)
    return {"mode": mode, "clients": args.clients, "rounds": args.rounds,
            "median_reply_ms": round(statistics.median(median), 1),
            "slowest_reply_ms": round(statistics.median(slowest), 1),
            "other_chat_ms": round(statistics.median(probes), 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, required=True, help="a models dir with a `current` model")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs the server")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--modes", default="gevent,gthread")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "async_modes.json")
    args = parser.parse_args()
    rows = [measure(mode, args) for mode in args.modes.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(f"medians of {args.rounds} rounds; 'other chat' = a message needing no model, sent during the burst")
    print("| mode | clients | median reply ms | slowest reply ms | other chat ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['mode']} | {row['clients']} | {row['median_reply_ms']} | {row['slowest_reply_ms']} "
              f"| {row['other_chat_ms']} |")


if __name__ == "__main__":
    main()
