"""Learning benchmark: does one correction teach the bot a question's paraphrases?

    make bench-learning                              # ChatbotData's paraphrase clusters
    python -m bench.learning --data pairs.csv        # any Q,A CSV
    python -m bench.learning --quick                 # a few clusters, a tiny retrain: checks the harness

A fresh install (the starter pairs' model, an empty SQLite database) chats
through the real Socket.IO path.  For each paraphrase cluster of the data (one
answer asked by 3 or more questions that differ after ``question_key``) a
simulated reviewer corrects the bot's reply to one wording (검토 완료 with
the cluster's answer, as the admin's edit form does), and the other wordings
are asked:

    at_once         paraphrase hit rate before any retrain (chatbot/corrections.py)
    after_retrain   the same after ``flask retrain`` (chatbot/retrain.py, forced past the
                    quality gate so that the run is always measured)
    starter_kept    the share of starter questions still given their starter answer, on the
                    fresh model, after the corrections, and after the retrain
    ood_fallback    the share of out-of-domain questions (bench/data/out_of_domain_test.csv,
                    written by us, never tuned on) that get the "잘 모르겠어요" fallback,
                    on the fresh model and after the retrain

Clusters are split by a stable hash into a tune half and a report half
(``--half``): thresholds are chosen on ``tune``, the numbers in
bench/results/learning.json are ``report``'s.  Output: --out (JSON).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATA, DEFAULT_OOD, read_pairs, read_questions  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "learning.json"
STARTER = ROOT / "chatbot" / "data" / "starter_pairs.csv"
QUICK = dict(max_steps=30, embed_dim=32, hidden_dim=64)


def clusters(pairs, min_wordings=3) -> list[tuple[str, list[str]]]:
    """(answer, wordings) for answers asked by ``min_wordings`` or more
    questions that differ after question_key (one wording per key, first seen)."""
    from chatbot import morph

    by_answer = defaultdict(dict)
    for question, answer in pairs:
        by_answer[answer].setdefault(morph.question_key(question), question)
    return [(answer, list(keys.values())) for answer, keys in by_answer.items() if len(keys) >= min_wordings]


def half_of(answer: str) -> str:
    """``tune`` or ``report``, by a stable hash of the cluster's answer."""
    return "tune" if hashlib.md5(("learning|" + answer).encode()).digest()[0] % 2 else "report"


class Chat:
    """The chat as a browser uses it: one Socket.IO session, one reply per message."""

    def __init__(self, app):
        from chatbot.extensions import socketio

        self.sock = socketio.test_client(app, flask_test_client=app.test_client())

    def ask(self, text: str) -> dict:
        self.sock.emit("message", {"text": text})
        received = self.sock.get_received()
        replies = [r["args"][0] for r in received if r["name"] == "reply"]
        if len(replies) != 1:
            raise RuntimeError(f"expected one reply to {text!r}, got {received}")
        return replies[0]


def correct(app, exchange_id: int, answer: str) -> None:
    """What the admin's edit form does: the corrected answer, marked 검토 완료."""
    from chatbot.database import REVIEWED, Exchange
    from chatbot.extensions import db

    with app.app_context():
        row = db.session.get(Exchange, exchange_id)
        row.corrected_answer = answer
        row.mark(REVIEWED, "bench-reviewer")
        db.session.commit()


def share(hits) -> float | None:
    hits = list(hits)
    return round(sum(hits) / len(hits), 4) if hits else None


def starter_kept(chat, starter_pairs) -> float:
    return share(chat.ask(q)["answer"] == a for q, a in starter_pairs)


def ood_fallback(chat, questions) -> float:
    from chatbot.database import ROUTE_UNSURE

    return share(chat.ask(q)["route"] == ROUTE_UNSURE for q in questions)


def run(args) -> dict:
    from chatbot import create_app, retrain, train
    from chatbot.pairs import training_pairs
    from chatbot.pairs_csv import read_pairs_csv

    import flask_migrate

    work = Path(tempfile.mkdtemp(prefix="bench-learning-"))
    starter, errors = read_pairs_csv(args.starter)
    if errors:
        raise SystemExit(f"{args.starter}: {errors[:3]}")
    starter = [(p.question, p.answer) for p in starter]
    data = read_pairs(args.data)
    chosen = [c for c in clusters(data) if half_of(c[0]) == args.half][: args.clusters]
    ood = [q for q, _ in read_questions(args.ood)]
    if args.quick:
        ood = ood[:20]
    starter_sample = starter[:: max(1, len(starter) // args.starter_questions)][: args.starter_questions]

    overrides = {**(QUICK if args.quick else {}), "quiet": True, "samples": 0}
    started = time.time()
    if args.starter_model:
        models = Path(args.starter_model)
    else:
        models = work / "models"
        print(f"training the starter model on {len(starter)} pairs ...", flush=True)
        train.run_training(starter, models, **overrides)
    starter_train_seconds = round(time.time() - started, 1)

    config = {"TESTING": True, "SECRET_KEY": "bench", "SQLALCHEMY_DATABASE_URI": f"sqlite:///{work / 'bench.db'}",
              "MODEL_DIR": str(models), "STARTER_PAIRS": str(args.starter), "ADDRESS_MESSAGE_RATE": 0,
              "MESSAGE_RATE": 0, "CONNECT_RATE": 0, "HANDSHAKE_TOTAL_RATE": 0, "HTTP_LIMIT": "",
              "RETRAIN_ARGS": f"--quiet --max-steps {QUICK['max_steps']}" if args.quick else "--quiet"}
    app = create_app(config)
    with app.app_context():
        flask_migrate.upgrade()
    chat = Chat(app)

    result = {"clusters": len(chosen), "half": args.half, "starter_questions": len(starter_sample),
              "ood_questions": len(ood)}
    print(f"{len(chosen)} clusters ({args.half} half), {len(starter_sample)} starter questions, "
          f"{len(ood)} out-of-domain questions", flush=True)
    result["starter_kept_fresh"] = starter_kept(chat, starter_sample)
    result["ood_fallback_fresh"] = ood_fallback(chat, ood)

    paraphrases = []  # (cluster answer, wording) asked after the correction
    for answer, wordings in chosen:
        first = chat.ask(wordings[0])
        correct(app, first["id"], answer)
        paraphrases += [(answer, w) for w in wordings[1: 1 + args.paraphrases]]
    asked = [(answer, chat.ask(w)) for answer, w in paraphrases]
    result["paraphrases"] = len(paraphrases)
    result["at_once"] = share(reply["answer"] == answer for answer, reply in asked)
    # A correction sent to a paraphrase of another cluster: how often the
    # index reaches too far.
    result["wrong_correction_at_once"] = share(reply["route"] == "memory" and reply["answer"] != answer
                                               for answer, reply in asked)
    result["starter_kept_after_corrections"] = starter_kept(chat, starter_sample)
    result["ood_fallback_after_corrections"] = ood_fallback(chat, ood)
    print(f"at once: {result['at_once']} (wrong correction {result['wrong_correction_at_once']}), starter kept "
          f"{result['starter_kept_after_corrections']}, out of domain fallback "
          f"{result['ood_fallback_after_corrections']}", flush=True)
    if args.no_retrain:
        result["starter_train_seconds"] = starter_train_seconds
        return result

    print("retraining (flask retrain --force) ...", flush=True)
    started = time.time()
    with app.app_context():
        status = retrain.start(app.config, training_pairs(), force=True)
    result["retrain"] = {"state": status.get("state"), "message": status.get("message"),
                         "seconds": round(time.time() - started, 1)}
    after = [chat.ask(w)["answer"] == answer for answer, w in paraphrases]
    result["after_retrain"] = share(after)
    result["starter_kept_after_retrain"] = starter_kept(chat, starter_sample)
    result["ood_fallback_after_retrain"] = ood_fallback(chat, ood)
    result["starter_train_seconds"] = starter_train_seconds
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="Q,A CSV whose paraphrase clusters are used")
    p.add_argument("--starter", default=str(STARTER), help="the fresh install's pairs (default: %(default)s)")
    p.add_argument("--starter-model", help="a models directory with the starter model (default: train one)")
    p.add_argument("--ood", default=str(DEFAULT_OOD), help="out-of-domain questions (Q column)")
    p.add_argument("--half", choices=["tune", "report"], default="report")
    p.add_argument("--clusters", type=int, default=150, help="at most this many clusters (default 150)")
    p.add_argument("--paraphrases", type=int, default=2, help="wordings asked per cluster after the correction")
    p.add_argument("--starter-questions", type=int, default=200, help="starter questions asked (an even sample)")
    p.add_argument("--quick", action="store_true", help="a few clusters and a tiny model: checks the harness")
    p.add_argument("--no-retrain", action="store_true", help="stop after the corrections (tuning)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    if args.quick:
        args.clusters, args.starter_questions = min(args.clusters, 6), min(args.starter_questions, 20)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    result["meta"] = {"data": args.data, "starter": args.starter, "ood": args.ood, "quick": args.quick,
                      "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                      "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if args.no_retrain:
        print(f"wrote {out}")
        return 0
    print(f"\nparaphrase hit rate: at once {result['at_once']}, after retrain {result['after_retrain']} "
          f"({result['paraphrases']} paraphrases of {result['clusters']} corrections)")
    print(f"starter answers kept: fresh {result['starter_kept_fresh']}, after corrections "
          f"{result['starter_kept_after_corrections']}, after retrain {result['starter_kept_after_retrain']}")
    print(f"out-of-domain fallback: fresh {result['ood_fallback_fresh']}, "
          f"after retrain {result['ood_fallback_after_retrain']}")
    print(f"retrain: {result['retrain']['state']} in {result['retrain']['seconds']} s\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
