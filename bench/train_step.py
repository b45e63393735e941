"""How long the trainer's steps take, this tree against another, in one run.

    python -m bench.train_step --baseline-root /tmp/before --out bench/results/train-step.json

Each round runs STEPS training steps of the network the trainer would build
on the pairs (tokenised, vocabulary, batches of 32, the same seed) once with
this tree's code and once with the baseline's, each in a fresh process on
one thread, alternating; it prints and writes the median wall and CPU time,
minor page faults and the mean loss of each.  The losses show the two trees
train alike.  The pairs default to the starter pairs plus ChatbotData's, as
bench-smallvm's retrain has them.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def worker(root: str, pairs_file: str, steps: int) -> dict:
    """STEPS steps with the chatbot package under ROOT; one thread, as a retrain on two cores has."""
    sys.path.insert(0, root)
    import random
    import resource

    import torch

    from chatbot import train
    from chatbot.model import Seq2Seq
    from chatbot.model_dir import Vocab
    from chatbot.pairs_csv import read_pairs_csv

    train.allocate_large_blocks_apart()  # as the trainer's CLI does
    torch.set_num_threads(1)
    pairs = [(p.question, p.answer) for p in read_pairs_csv(pairs_file)[0]]
    tc, mc = train._split_overrides({"tokenizer": "mecab"})
    train_pairs, _ = train.split_pairs(pairs, tc.dev_percent)
    tokenized = train.tokenize_pairs(train_pairs, mc.tokenizer)
    vocab = Vocab.build([t for q, a, _, _ in tokenized for t in (q, a)], tc.min_freq, tc.max_vocab)
    examples = train.make_examples(tokenized, vocab, mc)
    torch.manual_seed(mc.seed)
    model = Seq2Seq(mc, len(vocab))
    optimizer = train.Adam(model.parameters(), lr=tc.learning_rate)
    batches = train.make_batches(examples, tc.batch_size, random.Random(mc.seed))[:steps]
    model.train()
    before, started, total = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), 0.0
    for batch in batches:
        src, lengths, tgt_in, tgt_out = train.collate([examples[i] for i in batch], "cpu")
        optimizer.zero_grad()
        loss = model.loss(src, lengths, tgt_in, tgt_out, tc.label_smoothing)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        total += loss.item()
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
    return {"wall_s": round(wall, 2), "user_s": round(after.ru_utime - before.ru_utime, 2),
            "system_s": round(after.ru_stime - before.ru_stime, 2), "minor_faults": after.ru_minflt - before.ru_minflt,
            "mean_loss": round(total / len(batches), 6), "steps": len(batches), "vocab": len(vocab)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline-root", required=True, help="a worktree of the code to compare with")
    p.add_argument("--data", help="a Q,A CSV whose pairs join the starter pairs (default: ChatbotData's)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(HERE / "bench" / "results" / "train-step.json"))
    p.add_argument("--worker", nargs=3, metavar=("ROOT", "PAIRS", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return 0
    from bench.quality import DEFAULT_DATA
    from bench.smallvm import write_pairs

    scratch = HERE / "bench" / "scratch"
    scratch.mkdir(exist_ok=True)
    pairs = scratch / "train-step-pairs.csv"
    write_pairs(pairs, Path(args.data or DEFAULT_DATA), None)  # the starter pairs and DATA's, as bench-smallvm retrains on
    trees = {"this": str(HERE), "baseline": str(Path(args.baseline_root).resolve())}
    runs = {name: [] for name in trees}
    for round_ in range(1, args.rounds + 1):
        for name, root in trees.items():
            out = subprocess.run([sys.executable, __file__, "--baseline-root", root, "--worker", root, str(pairs),
                                  str(args.steps)], capture_output=True, text=True, check=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {round_} {name:8s} {runs[name][-1]}", flush=True)
    summary = {name: {key: statistics.median(r[key] for r in rs) for key in ("wall_s", "user_s", "system_s",
                                                                             "minor_faults")}
               | {"mean_loss": rs[0]["mean_loss"]} for name, rs in runs.items()}
    ratio = summary["this"]["wall_s"] / summary["baseline"]["wall_s"]
    result = {"steps": args.steps, "rounds": args.rounds, "baseline_root": trees["baseline"], "runs": runs,
              "median": summary, "wall_ratio": round(ratio, 3),
              "meta": {"cpu_count": os.cpu_count(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, s in summary.items():
        print(f"{name:8s} median of {args.rounds}: {s['wall_s']:.2f} s wall, {s['user_s']:.2f} s user, "
              f"{s['system_s']:.2f} s system, {s['minor_faults']:,.0f} page faults for {args.steps} steps; "
              f"mean loss {s['mean_loss']}")
    print(f"this / baseline wall time: {ratio:.2f}×   wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
