"""Answer-quality benchmark: retrieval vs seq2seq on words vs seq2seq on morphemes.

    make bench-quality                                   # ChatbotData, a stable-hash 10% held out
    python -m bench.quality --train a.csv --test b.csv   # any Q,A[,label] CSVs
    python -m bench.quality --quick                      # tiny settings: a smoke test, not a result

Rows, all on the same split in one run:

    retrieval           TF-IDF over the morphemes of the training questions (scikit-learn),
                        cosine similarity -> the answer of the most similar training question
    meaning             the sentence encoder (chatbot/meaning.py, multilingual-e5-small) alone:
                        the answer of the training question nearest in meaning
    seq2seq-whitespace  the default network and training, on whitespace-separated words, greedy decoding
    seq2seq-morph       the same on morphemes (the seed's method), greedy decoding
    seq2seq-morph+beam  the same weights, writing every reply with the default beam search
                        (length normalisation, n-gram blocking)
    default             the project's default, as the server answers: the answer of the training
                        question with the best mix of meaning similarity and TF-IDF cosine (the
                        trainer picks the mix on its dev split; chatbot/bot.py known_matches) when
                        it reaches 0.3; the network writes the reply (beam search) when none does
    seq2seq-whitespace+beam  the whitespace model writing with beam search (for a fair comparison)

The seq2seq rows share one training run per tokenizer, hence the same train_seconds.

The held-out test pairs are never seen by training: run_training() gets the
training part only and takes its own dev split (early stopping) from it.

Metrics (replies vs the reference answers of the held-out questions):
    bleu            sacrebleu corpus BLEU-4, default tokenizer (13a)
    bleu_ko_mecab   the same with tokenize="ko-mecab" (morphemes)
    chrf            sacrebleu corpus chrF (character 6-grams, beta 2)
    distinct1/2     over the whitespace words of every reply: the number of unique
                    n-grams divided by the number of n-grams, n-grams counted within
                    each reply, all replies pooled (Li et al. 2016)
    top_reply_share the share of test questions whose reply is the single most common reply
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python bench/quality.py` works as well as `python -m bench.quality`

from chatbot import morph, train  # noqa: E402
from chatbot.bot import Chatbot  # noqa: E402
from chatbot.model_dir import ModelConfig  # noqa: E402
from chatbot.pairs_csv import read_pairs_csv  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "chatbot_data" / "ChatbotData.train.csv"
DEFAULT_OUT = ROOT / "bench" / "results" / "quality.json"
# Written by us for this, never tuned on: bench/data/README.md.
DEFAULT_OOD = ROOT / "bench" / "data" / "out_of_domain_test.csv"
TEST_SALT = "bench-quality-test|"  # independent of the trainer's own dev split
DEFAULT_ROW = "default"
# --quick: a model small enough to train in seconds (numbers are meaningless).
QUICK = dict(embed_dim=16, hidden_dim=32, epochs=2, min_epochs=1, batch_size=16, max_reply_len=12)


# -----------------------------------------------------------------------------
# data


def read_questions(path) -> list[tuple[str, str]]:
    """(question, category) rows of a Q[,category] CSV."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as f:
        return [(row["Q"], row.get("category") or "") for row in csv.DictReader(f) if row.get("Q")]


def read_pairs(path) -> list[tuple[str, str]]:
    rows, errors = read_pairs_csv(path)
    for line, reason in errors:
        print(f"{path}: line {line}: {reason} (skipped)", file=sys.stderr)
    return [(r.question, r.answer) for r in rows]


def split_test(pairs, test_percent: int):
    """(train, test) by a stable hash of the question: a question and all its
    answers land on the same side."""
    train_pairs, test_pairs = [], []
    for q, a in pairs:
        (test_pairs if train.is_dev(q, test_percent, salt=TEST_SALT) else train_pairs).append((q, a))
    return train_pairs, test_pairs


# -----------------------------------------------------------------------------
# metrics


def distinct_n(replies, n: int) -> float:
    """Unique n-grams / all n-grams over the whitespace words of all replies
    (n-grams do not cross replies)."""
    grams = [tuple(words[i:i + n]) for words in (r.split() for r in replies) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def top_reply_share(replies) -> float:
    """Share of replies equal to the single most common reply."""
    return Counter(replies).most_common(1)[0][1] / len(replies) if replies else 0.0


def score(replies, references) -> dict:
    import sacrebleu

    replies = [morph.normalize(r) for r in replies]
    refs = [[morph.normalize(r) for r in references]]
    return {
        "bleu": round(sacrebleu.corpus_bleu(replies, refs).score, 2),
        "bleu_ko_mecab": round(sacrebleu.corpus_bleu(replies, refs, tokenize="ko-mecab").score, 2),
        "chrf": round(sacrebleu.corpus_chrf(replies, refs).score, 2),
        "distinct1": round(distinct_n(replies, 1), 4),
        "distinct2": round(distinct_n(replies, 2), 4),
        "top_reply_share": round(top_reply_share(replies), 4),
        "top_reply": Counter(replies).most_common(1)[0][0] if replies else "",
    }


def chrf_win_share(replies, baseline, references, resamples: int = 200, seed: int = 0) -> float:
    """Paired bootstrap (Koehn 2004): the share of resampled test sets on which
    `replies` get a higher corpus chrF than `baseline`."""
    import random

    import sacrebleu

    rng = random.Random(seed)
    a, b = [morph.normalize(r) for r in replies], [morph.normalize(r) for r in baseline]
    refs = [morph.normalize(r) for r in references]
    wins = 0
    for _ in range(resamples):
        idx = [rng.randrange(len(refs)) for _ in refs]
        sample_refs = [[refs[i] for i in idx]]
        wins += sacrebleu.corpus_chrf([a[i] for i in idx], sample_refs).score > \
            sacrebleu.corpus_chrf([b[i] for i in idx], sample_refs).score
    return wins / resamples


# -----------------------------------------------------------------------------
# the systems


def morphemes(text: str) -> list[str]:
    """The retrieval baseline's analyzer: morphemes without the word-boundary token."""
    return [t for t in morph.tokenize(text, "mecab") if t != morph.BOUNDARY]


def retrieval_row(train_pairs, test_questions) -> tuple[list[str], dict]:
    """TF-IDF over morphemes of the training questions; reply with the answer
    of the most cosine-similar one (ties: the first)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import linear_kernel

    started = time.time()
    vectorizer = TfidfVectorizer(analyzer=morphemes)  # rows are L2-normalised: dot product = cosine
    train_matrix = vectorizer.fit_transform([q for q, _ in train_pairs])
    train_seconds = time.time() - started
    similarity = linear_kernel(vectorizer.transform(test_questions), train_matrix)
    replies = [train_pairs[i][1] for i in similarity.argmax(axis=1)]
    return replies, {"train_seconds": round(train_seconds, 1), "device": "cpu", "params": train_matrix.shape[1],
                     "params_note": "TF-IDF vocabulary size"}


def meaning_row(train_pairs, test_questions, models_root) -> tuple[list[str], dict]:
    """The sentence encoder alone (chatbot/meaning.py): reply with the answer
    of the training question nearest in meaning (ties: the first)."""
    from chatbot import meaning

    started = time.time()
    encoder = meaning.Encoder(cache_size=0, threads=2)
    train_vectors, _ = meaning.cached_vectors(encoder, [q for q, _ in train_pairs],
                                              meaning.cache_file(models_root, encoder.name))
    train_seconds = time.time() - started
    nearest = meaning.similarity(encoder.embed_uncached(test_questions), train_vectors).argmax(axis=1)
    return [train_pairs[i][1] for i in nearest], {"train_seconds": round(train_seconds, 1), "device": "cpu",
                                                  "params": encoder.name, "params_note": "sentence encoder"}


def train_seq2seq(train_pairs, models_root, tokenizer, args, overrides) -> Chatbot:
    settings = dict(tokenizer=tokenizer, device=args.device, threads=args.threads, quiet=args.quiet_train,
                    activate=False, samples=0, **overrides)
    print(f"\n== training seq2seq on {tokenizer} tokens: {overrides or 'defaults'}", flush=True)
    return Chatbot.load(train.run_training(train_pairs, models_root, **settings))


def seq2seq_replies(bot: Chatbot, questions, **decoding) -> tuple[list[str], float]:
    """Replies with the model's own settings, decoding fields overridden
    (64 questions per call, as identical as one at a time)."""
    saved = bot.config
    bot.config = dataclasses.replace(bot.config, **decoding)
    started = time.time()
    try:
        replies = [r for i in range(0, len(questions), 64) for r in bot.reply_batch(questions[i:i + 64])]
    finally:
        bot.config = saved
    return replies, time.time() - started


def confidences(bot: Chatbot, questions) -> tuple[list, list[float]]:
    """The default's replies (text, known, confidence) and each question's
    best TF-IDF cosine to a training question (the bare cutoff it is compared with)."""
    replies, best_cosine = [], []
    for i in range(0, len(questions), 64):
        batch = questions[i:i + 64]
        replies += bot.replies(batch)
        tokens = [morph.tokenize(q, bot.config.tokenizer) for q in batch]
        best_cosine += bot.answers.similarities(tokens).max(axis=1).tolist()
    return replies, best_cosine


def chrf_of(replies, references) -> float | None:
    import sacrebleu

    return round(sacrebleu.corpus_chrf(list(replies), [list(references)]).score, 2) if replies else None


def selective_point(scores, replies, references, ood_scores, threshold) -> dict:
    """Answer where score >= threshold: coverage, chrF of the answered, and
    the share of out-of-domain questions that get the fallback."""
    kept = [i for i, value in enumerate(scores) if value >= threshold]
    return {"threshold": round(threshold, 4), "coverage": round(len(kept) / len(scores), 4),
            "chrf_answered": chrf_of([replies[i] for i in kept], [references[i] for i in kept]),
            "ood_fallback": round(sum(value < threshold for value in ood_scores) / len(ood_scores), 4)
            if ood_scores else None}


def confidence_report(bot: Chatbot, questions, references, ood_questions, png_path) -> dict:
    """The default at its calibrated threshold (coverage, chrF answered vs all,
    out-of-domain fallback), and the coverage/chrF curve of the confidence next
    to a bare TF-IDF cutoff at the same coverages."""
    replies, cosines = confidences(bot, questions)
    ood_replies, ood_cosines = confidences(bot, ood_questions) if ood_questions else ([], [])
    texts = [r.text for r in replies]
    conf, ood_conf = [r.confidence for r in replies], [r.confidence for r in ood_replies]
    chrf_all = chrf_of(texts, references)
    at_threshold = selective_point(conf, texts, references, ood_conf, bot.threshold)
    curve = []
    for coverage in train.COVERAGES:
        curve.append({"coverage": coverage,
                      "confidence": selective_point(conf, texts, references, ood_conf,
                                                    train.score_keeping(coverage, conf)),
                      "tfidf_cutoff": selective_point(cosines, texts, references, ood_cosines,
                                                      train.score_keeping(coverage, cosines))})
    # The bare cutoff at the coverage the calibrated threshold gave: the fair comparison.
    tfidf_same_coverage = selective_point(cosines, texts, references, ood_cosines,
                                          train.score_keeping(at_threshold["coverage"], cosines))
    plot_curve(curve, png_path)
    return {"calibrated_threshold": bot.threshold, "chrf_all": chrf_all, **at_threshold,
            "chrf_answered_over_all": (round(at_threshold["chrf_answered"] / chrf_all, 3)
                                       if chrf_all and at_threshold["chrf_answered"] is not None else None),
            "tfidf_cutoff_same_coverage": tfidf_same_coverage, "ood_questions": len(ood_questions),
            "curve": curve, "png": str(png_path)}


def plot_curve(curve, path) -> None:
    """chrF of the answered questions against coverage, confidence vs the bare TF-IDF cutoff."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for key, label in (("confidence", "confidence (default)"), ("tfidf_cutoff", "bare TF-IDF cutoff")):
        ax.plot([p[key]["coverage"] * 100 for p in curve], [p[key]["chrf_answered"] for p in curve], marker="o",
                label=label)
    ax.set_xlabel("coverage: held-out questions answered (%)")
    ax.set_ylabel("chrF of the answered")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def model_info(bot: Chatbot) -> dict:
    m = bot.metrics
    return {"train_seconds": m.get("train_seconds"), "device": m.get("device"), "params": m.get("params"),
            "epochs": m.get("epochs"), "best_epoch": m.get("best_epoch"), "dev_loss": m.get("dev_loss"),
            "vocab_size": m.get("vocab_size"), "tokenizer": bot.config.tokenizer}


# -----------------------------------------------------------------------------
# the run


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="one Q,A CSV, split by a stable hash (default: %(default)s)")
    p.add_argument("--test-percent", type=int, default=10, help="share of --data questions held out (default 10)")
    p.add_argument("--train", help="train on this Q,A CSV instead (with --test)")
    p.add_argument("--test", help="score on this Q,A CSV instead (with --train)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (default: %(default)s)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for torch (default: all cores)")
    p.add_argument("--rows", default="all",
                   help="comma-separated subset of: retrieval, meaning, whitespace, morph (default all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="training/model setting for every seq2seq row (repeatable), e.g. --set hidden_dim=512")
    p.add_argument("--ood", default=str(DEFAULT_OOD),
                   help="questions the data does not cover (a Q column), for the fallback share (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 epochs: checks the harness, not the model")
    p.add_argument("--keep-models", metavar="DIR", help="keep the trained models here (default: a temp dir, removed)")
    p.add_argument("--log", metavar="FILE.md", help="append one line per seq2seq row (for bench/results/experiments.md)")
    p.add_argument("--tag", default="", help="experiment name for --log")
    p.add_argument("--quiet-train", action="store_true", help="no training progress bar")
    args = p.parse_args(argv)
    if bool(args.train) != bool(args.test):
        p.error("--train and --test go together")
    return args


def run(args) -> dict:
    if args.train:
        train_pairs, test_pairs = read_pairs(args.train), read_pairs(args.test)
        data = {"train": args.train, "test": args.test}
    else:
        train_pairs, test_pairs = split_test(read_pairs(args.data), args.test_percent)
        data = {"data": args.data, "test_percent": args.test_percent, "split": f"md5('{TEST_SALT}' + question)"}
    if not train_pairs or not test_pairs:
        raise SystemExit(f"need training and test pairs (got {len(train_pairs)} and {len(test_pairs)})")
    test_train_overlap = {q for q, _ in test_pairs} & {q for q, _ in train_pairs}
    questions, references = [q for q, _ in test_pairs], [a for _, a in test_pairs]
    training_answers = {a for _, a in train_pairs}
    overrides = {**(QUICK if args.quick else {})}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key.strip()] = parse_value(value.strip())
    wanted = {"retrieval", "meaning", "whitespace", "morph"} if args.rows == "all" else set(args.rows.split(","))
    defaults = ModelConfig()
    beam = {f: getattr(defaults, f) for f in ("decoding", "beam_size", "length_penalty", "no_repeat_ngram")}
    best_decoding = {**beam, **{f: getattr(defaults, f) for f in ("known_answers", "state_weight", "min_similarity")}}
    beam["known_answers"] = False  # the network writes every reply
    greedy = {"decoding": "greedy", "no_repeat_ngram": 0, "known_answers": False}

    load_start = os.getloadavg()
    models_root = Path(args.keep_models) if args.keep_models else Path(tempfile.mkdtemp(prefix="bench-quality-"))
    rows = []

    def add(name, replies, info, decode_seconds=None, **extra):
        row = {"name": name, **score(replies, references), **info, **extra}
        if decode_seconds is not None:
            row["decode_seconds"] = round(decode_seconds, 1)
        row["samples"] = [{"question": q, "reference": r, "reply": h}
                          for q, r, h in list(zip(questions, references, replies))[:5]]
        rows.append(row)
        print(f"-- {name}: chrF {row['chrf']} BLEU {row['bleu']} distinct-2 {row['distinct2']} "
              f"top share {row['top_reply_share']}", flush=True)

    try:
        retrieval_replies = confidence = None
        if "retrieval" in wanted:
            retrieval_replies, info = retrieval_row(train_pairs, questions)
            add("retrieval", retrieval_replies, info)
        if "meaning" in wanted:
            replies, info = meaning_row(train_pairs, questions, models_root)
            extra = ({"chrf_beats_retrieval_share": chrf_win_share(replies, retrieval_replies, references)}
                     if retrieval_replies is not None else {})
            add("meaning", replies, info, **extra)
        ws_bot = morph_bot = None
        if "whitespace" in wanted:
            ws_bot = train_seq2seq(train_pairs, models_root, "whitespace", args, overrides)
            replies, secs = seq2seq_replies(ws_bot, questions, **greedy)
            add("seq2seq-whitespace", replies, model_info(ws_bot), secs, decoding="greedy")
        if "morph" in wanted:
            morph_bot = train_seq2seq(train_pairs, models_root, "mecab", args, overrides)
            replies, secs = seq2seq_replies(morph_bot, questions, **greedy)
            add("seq2seq-morph", replies, model_info(morph_bot), secs, decoding="greedy")
            replies, secs = seq2seq_replies(morph_bot, questions, **beam)
            add("seq2seq-morph+beam", replies, model_info(morph_bot), secs, decoding=beam)
            replies, secs = seq2seq_replies(morph_bot, questions, **best_decoding)
            extra = {"known_answer_share": round(sum(r in training_answers for r in replies) / len(replies), 4)}
            if retrieval_replies is not None:
                extra["chrf_beats_retrieval_share"] = chrf_win_share(replies, retrieval_replies, references)
            add(DEFAULT_ROW, replies, model_info(morph_bot), secs, decoding=best_decoding, **extra)
            ood = [q for q, _ in read_questions(args.ood)] if args.ood else []
            confidence = confidence_report(morph_bot, questions, references, ood,
                                           Path(args.out).with_name(Path(args.out).stem + "-coverage.png"))
            print(f"-- confidence: threshold {confidence['threshold']} coverage {confidence['coverage']} "
                  f"chrF answered {confidence['chrf_answered']} (all {confidence['chrf_all']}) "
                  f"out-of-domain fallback {confidence['ood_fallback']}", flush=True)
        if ws_bot is not None:
            replies, secs = seq2seq_replies(ws_bot, questions, **beam)
            add("seq2seq-whitespace+beam", replies, model_info(ws_bot), secs, decoding=beam)
    finally:
        if not args.keep_models:
            shutil.rmtree(models_root, ignore_errors=True)

    import torch

    return {
        "rows": rows,
        "default": DEFAULT_ROW,
        "confidence": confidence,
        "meta": {
            **data,
            "train_pairs": len(train_pairs),
            "test_pairs": len(test_pairs),
            "test_questions_also_in_train": len(test_train_overlap),
            "settings": overrides,
            "quick": args.quick,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_average_before_after": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
            "torch": torch.__version__,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


COLUMNS = [("name", "row"), ("bleu", "BLEU"), ("bleu_ko_mecab", "BLEU ko-mecab"), ("chrf", "chrF"),
           ("distinct1", "distinct-1"), ("distinct2", "distinct-2"), ("top_reply_share", "top reply share"),
           ("train_seconds", "train s"), ("device", "device"), ("params", "params")]


def markdown_table(result) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in result["rows"]:
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            cells.append(f"{value:,}" if key == "params" and isinstance(value, int) else str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def append_log(path, tag, result):
    with open(path, "a", encoding="utf-8") as f:
        for row in result["rows"]:
            if row["name"] in ("retrieval", "meaning"):  # nothing trained: the log is of training runs
                continue
            f.write(f"| {tag} | {row['name']} | {json.dumps(result['meta']['settings'], ensure_ascii=False)} "
                    f"| {row['chrf']} | {row['bleu']} | {row['distinct2']} | {row['top_reply_share']} "
                    f"| {row['train_seconds']} | {row.get('best_epoch')}/{row.get('epochs')} "
                    f"| {row.get('dev_loss')} | {result['meta']['load_average_before_after']} |\n")


def share(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def main(argv=None) -> int:
    args = parse_args(argv)
    from chatbot.train import allocate_large_blocks_apart

    allocate_large_blocks_apart()  # as the trainer's CLI (make retrain) does: the same training time
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if args.log:
        append_log(args.log, args.tag, result)
    m = result["meta"]
    print(f"\n{m['train_pairs']} train / {m['test_pairs']} test pairs, {m['threads']} threads, "
          f"load average {m['load_average_before_after']}\n")
    print(markdown_table(result))
    c = result.get("confidence")
    if c:
        print(f"\nconfidence (default): threshold {c['calibrated_threshold']} (calibrated on the trainer's dev split)")
        print(f"  coverage {share(c['coverage'])}, chrF answered {c['chrf_answered']} vs all {c['chrf_all']} "
              f"(x{c['chrf_answered_over_all']}), out-of-domain fallback {share(c['ood_fallback'])} "
              f"of {c['ood_questions']}")
        b = c["tfidf_cutoff_same_coverage"]
        print(f"  bare TF-IDF cutoff at the same coverage: chrF answered {b['chrf_answered']}, "
              f"out-of-domain fallback {share(b['ood_fallback'])}")
        print("  coverage | confidence: chrF answered, ood fallback | TF-IDF cutoff: chrF answered, ood fallback")
        for p in c["curve"]:
            a, t = p["confidence"], p["tfidf_cutoff"]
            print(f"  {p['coverage']:>7.0%} | {a['chrf_answered']}, {share(a['ood_fallback'])} "
                  f"| {t['chrf_answered']}, {share(t['ood_fallback'])}")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
