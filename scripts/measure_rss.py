"""Memory of one server process as deployed (README "Deployment").

Starts redis-server and PostgreSQL (tests/services.py), migrates, starts one
gunicorn server (gunicorn.conf.py, as `make serve`) on them with the given MODEL_DIR (default: models/),
connects CLIENTS python-socketio chats that each ask ROUNDS questions, and
prints the resident memory (RSS) of gunicorn's master and worker, idle after
start, after the first reply (model loaded) and after the load.

    .venv/bin/python scripts/measure_rss.py [--model-dir models] [--clients 50] [--rounds 4]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import psutil  # noqa: E402

import services  # noqa: E402
from live_server import LiveServer  # noqa: E402

QUESTIONS = ["안녕하세요", "배고파", "날씨 어때", "심심해", "고마워", "너 누구야", "오늘 뭐 하지", "피곤해"]


def rss(server):
    master = psutil.Process(server.process.pid)
    workers = master.children()
    return {"master_mib": round(master.memory_info().rss / 2**20, 1),
            "worker_mib": [round(w.memory_info().rss / 2**20, 1) for w in workers]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", default=str(ROOT / "models"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    import socketio

    services.ensure_installed()
    workdir = Path(tempfile.mkdtemp(prefix="chatbot-rss-"))
    redis = services.Redis(str(workdir)).start()
    postgres = services.Postgres(str(workdir)).start()
    env = {"DATABASE_URL": postgres.url, "SOCKETIO_MESSAGE_QUEUE": redis.url, "MODEL_DIR": args.model_dir,
           "SECRET_KEY": "rss", "MESSAGE_RATE": "0", "MALLOC_ARENA_MAX": "2",
           # every client comes from 127.0.0.1
           "CONNECT_RATE": "0", "ADDRESS_MESSAGE_RATE": "0", "MAX_CONNECTIONS_PER_ADDRESS": "10000"}
    server = None
    try:
        subprocess.run([sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"], cwd=ROOT,
                       env={**os.environ, **env}, check=True, capture_output=True)
        server = LiveServer(workdir, env=env).start()
        time.sleep(2)
        print("idle after start:", rss(server))
        clients, done = [], threading.Semaphore(0)
        for i in range(args.clients):
            client = socketio.Client(reconnection=False)
            client.on("reply", lambda data: done.release())
            client.connect(server.url, auth={"session": f"rss-{i:04d}-session"}, transports=["websocket"])
            clients.append(client)
        clients[0].emit("message", {"text": QUESTIONS[0]})
        done.acquire(timeout=60)
        print("first reply (model loaded):", rss(server))
        start = time.monotonic()
        for r in range(args.rounds):
            for i, client in enumerate(clients):
                client.emit("message", {"text": QUESTIONS[(i + r) % len(QUESTIONS)]})
            for _ in clients:
                done.acquire(timeout=120)
        print(f"after {args.clients} chats x {args.rounds} questions ({time.monotonic() - start:.1f}s):", rss(server))
        for client in clients:
            client.disconnect()
    finally:
        if server:
            server.stop()
        postgres.stop()
        redis.stop()


if __name__ == "__main__":
    main()
