"""Review benchmark, first part (issue 26, item 2): how often the suggested
answers on an exchange's edit page hold the right one.

    python -m bench.review --model-dir DIR   # a model trained on bench-quality's training split
                                             # (python -m bench.quality --keep-models ...)

For each question of bench-quality's test split (the same stable hash)
whose reference answer is also a training pair's answer, that is, the
question has a paraphrase in the training data (ChatbotData's clusters
share one answer): is the reference the first suggestion, and among the
first three (chatbot/suggest.py, nothing reviewed yet)?  Writes JSON and
prints a summary.
"""
import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import DEFAULT_DATA, read_pairs, split_test  # noqa: E402
from chatbot import corrections, morph, suggest  # noqa: E402
from chatbot.bot import Chatbot  # noqa: E402

DEFAULT_OUT = ROOT / "bench" / "results" / "review.json"


def suggestion_hits(bot, pairs) -> dict:
    """Top-1 and top-3 shares of the reference answer among the suggestions."""
    if not pairs:
        raise SystemExit("no test question has a paraphrase in the training data")
    nothing_reviewed = corrections._Built([])
    top1 = top3 = 0
    started = time.perf_counter()
    for question, reference in pairs:
        found = [s.answer for s in suggest.nearest_answers(bot, nothing_reviewed, question,
                                                           morph.question_key(question))]
        top1 += bool(found) and found[0] == reference
        top3 += reference in found
    seconds = time.perf_counter() - started
    return {"questions": len(pairs), "top1": round(top1 / len(pairs), 4), "top3": round(top3 / len(pairs), 4),
            "ms_per_question": round(1000 * seconds / len(pairs), 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", required=True, help="a model trained on bench-quality's training split")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--test-percent", type=int, default=10)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    bot = Chatbot.load(Path(args.model_dir))
    train_pairs, test_pairs = split_test(read_pairs(args.data), args.test_percent)
    assert bot.answers is not None and len(bot.answers) == len(train_pairs), "not a model of this training split"
    training_answers = {a for _, a in train_pairs}
    paraphrased = [(q, a) for q, a in test_pairs if a in training_answers]
    result = {
        "suggestions": suggestion_hits(bot, paraphrased),
        "by_meaning": bot.meanings is not None,
        "test_questions": len(test_pairs),
        "meta": {"model": bot.version, "data": args.data, "test_percent": args.test_percent,
                 "command": "python -m bench.review " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    s = result["suggestions"]
    print(f"suggestions: the reference answer first for {s['top1']:.1%}, in the first 3 for {s['top3']:.1%} "
          f"of {s['questions']} test questions with a paraphrase in the training data "
          f"({s['ms_per_question']} ms a question); wrote {args.out}")


if __name__ == "__main__":
    main()
