"""Train a new chatbot model and publish it as a new version.

    python -m chatbot.train                      # the app's pairs, made current at once
    python -m chatbot.train --no-activate ...    # what `make retrain` runs, through chatbot.retrain
                                                 # (which then applies the quality gate)
    python -m chatbot.train --pairs data.csv     # a Q,A[,label] CSV instead
    python -m chatbot.train --if-missing         # only if there is no usable model yet

Steps: gather (question, answer) pairs, split train/dev by a stable hash of
the question, split both sides into morphemes, build the vocabulary from the
training pairs, train with Adam + teacher forcing, keep the epoch with the
best dev loss (after min_epochs), score decoded dev replies (chrF, BLEU),
then write everything into a hidden temp dir that is renamed into place and
made `current`.
Any failure removes the temp dir and leaves `current` as it was.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.adam import adam as adam_update
from tqdm import tqdm

from chatbot import meaning as meaning_module
from chatbot import morph, versions
from chatbot.bot import Chatbot, Reply
from chatbot.inference import Network, limit_threads
from chatbot.model import Seq2Seq, add_numpy_weights, perplexity, save_model
from chatbot.model_dir import (BOS, CALIBRATION_FILE, CONFIG_FILE, EOS, MEANING_FILE, MODEL_FILE, PAD, WEIGHTS_FILE,
                               ModelConfig, ModelLoadError, Vocab)
from chatbot.pairs_csv import PairsFileError, read_pairs_csv
from chatbot.retrieval import ANSWERS_FILE, AnswerIndex

# -----------------------------------------------------------------------------
# default training config; the model's own settings are ModelConfig's defaults.
# Both can be overridden by run_training(**overrides) and (some) by CLI flags.


@dataclass
class TrainConfig:
    # None = scaled to the data: epochs = PAIR_PASSES // training pairs, between 10 and 80
    # (80 on the ~500 starter pairs, 12 on 8,700 ChatbotData pairs: under 10 min on 2 cores),
    # min_epochs = 3/8 of that (30 on the starter pairs).
    epochs: int | None = None
    max_steps: int | None = None  # stop after this many optimizer steps (tests)
    batch_size: int = 32
    learning_rate: float = 2e-3
    grad_clip: float = 1.0
    label_smoothing: float = 0.1  # 0.0 (with dropout 0.0) memorised faster but replied worse (experiments.md)
    lr_decay: float = 1.0  # multiply the learning rate by this when the dev loss does not improve
    # Early stopping.  On a few hundred pairs the dev loss bottoms out after
    # ~8 epochs, long before the model has learned its own training answers
    # (~25 epochs), and those are what the bot must know.  So the best
    # dev-loss epoch is chosen from min_epochs on.  select_by="chrf" keeps the
    # epoch with the best dev chrF of greedy replies to chrf_dev_questions dev
    # questions instead; on ChatbotData that was too noisy and kept an earlier,
    # worse epoch (bench/results/experiments.md), so it is off by default.
    min_epochs: int | None = None
    patience: int = 5  # epochs without a better dev score before stopping
    select_by: str = "loss"  # "loss" or "chrf"
    chrf_dev_questions: int = 200
    dev_percent: int = 10  # share of questions held out for dev metrics
    min_freq: int = 1  # small data: keep every morpheme seen in training
    max_vocab: int | None = None
    device: str = "auto"  # auto = cuda when available
    threads: int = 0  # CPU threads for torch; 0 = half the cores (the server keeps the rest)
    samples: int = 5  # sample dev replies shown in the log and metrics.json
    # The confidence threshold keeps this share of the dev questions a
    # training answer matched; the rest, and written replies less sure than
    # those, get "잘 모르겠어요" (calibrate).
    target_coverage: float = 0.94
    # Contrastive matching loss (match_loss) beside the decoder's, 0 = off.
    match_weight: float = 0.0
    match_temperature: float = 0.1
    quiet: bool = False  # no progress bar
    activate: bool = True  # point `current` at the new model
    # The sentence encoder for known answers by meaning (chatbot/meaning.py;
    # "off": words only), and the word weights tried on dev to mix with it.
    meaning: str = os.environ.get("MEANING_ENCODER") or meaning_module.DEFAULT_ENCODER
    word_weights: tuple = (0.0, 0.1, 0.2, 0.3)

    def __post_init__(self):
        if self.select_by not in ("chrf", "loss"):
            raise ValueError(f"select_by must be 'chrf' or 'loss', not {self.select_by!r}")
        if (self.epochs is not None and self.epochs < 1) or self.batch_size < 1 or (self.max_steps is not None and self.max_steps < 1):
            raise ValueError("epochs, batch_size and max_steps must be at least 1")
        if not 0 <= self.dev_percent <= 100:
            raise ValueError("dev_percent must be between 0 and 100")
        if not 0 < self.target_coverage <= 1:
            raise ValueError("target_coverage must be above 0 and at most 1")


BEST_STATE_FILE = "best-epoch.pt"  # in the temp dir while training; gone before it is published
PAIR_PASSES = 110_000  # training budget for the automatic epoch count, in (pair, epoch) presentations


def auto_epochs(tc: TrainConfig, train_pairs: int) -> TrainConfig:
    """Fill in epochs and min_epochs left at None, scaled to the data size."""
    epochs = tc.epochs or min(80, max(10, PAIR_PASSES // max(train_pairs, 1)))
    min_epochs = tc.min_epochs if tc.min_epochs is not None else epochs * 3 // 8
    return dataclasses.replace(tc, epochs=epochs, min_epochs=min_epochs)


class TrainingError(Exception):
    """Training cannot start (no data, bad settings); nothing was written."""


# -----------------------------------------------------------------------------
# data


def is_dev(question: str, dev_percent: int, salt: str = "") -> bool:
    """Stable across runs and machines (unlike hash()), and the same question
    always lands on the same side, whatever its answers.  A different salt
    gives an independent split (the benchmark holds out its test set with one)."""
    key = (salt + morph.normalize(question).lower()).encode("utf-8")
    return int(hashlib.md5(key).hexdigest(), 16) % 100 < dev_percent


def split_pairs(pairs, dev_percent: int):
    train, dev = [], []
    for q, a in pairs:
        (dev if is_dev(q, dev_percent) else train).append((q, a))
    return train, dev


def tokenize_pairs(pairs, backend: str | None = None):
    """(question tokens, answer tokens, answer, question): morphemes (or
    words, backend "whitespace") of both sides; pairs where either side is
    empty are dropped.  Each token is one shared string (sys.intern): 11k
    pairs hold 300k tokens of 6.5k kinds."""
    out = []
    for q, a in pairs:
        q_tokens = [sys.intern(t) for t in morph.tokenize(q, backend)]
        a_tokens = [sys.intern(t) for t in morph.tokenize(a, backend)]
        if q_tokens and a_tokens:
            out.append((q_tokens, a_tokens, a, q))
    return out




def start_embedding(tokenized, models_root, encoder_name: str, threads: int):
    """A child process that embeds the tokenized pairs' questions while the
    network trains (meaning.EmbeddingChild), or None when meaning is off.
    Vectors of questions a previous training embedded come from the cache
    beside the models, so a retrain embeds only the new ones."""
    if encoder_name == meaning_module.OFF or not tokenized:
        return None
    return meaning_module.EmbeddingChild(
        [q for _, _, _, q in tokenized], meaning_module.cache_file(models_root, encoder_name), encoder_name,
        os.environ.get("MEANING_MODEL_FILE") or None, threads)


def finish_embedding(child, log=print):
    """The vectors of ``start_embedding``'s child, waited for; None when
    there is none or its encoder cannot be used (the model then matches
    words alone, and says so in the log)."""
    if child is None:
        return None
    waited = time.time()
    try:
        vectors, new = child.result()
    except meaning_module.Unavailable as e:
        log(f"meaning: off for this model ({e}); known answers by words only")
        return None
    log(f"meaning: {len(child.texts)} questions, {new} embedded in {child.seconds:.1f}s beside the training "
        f"(waited {time.time() - waited:.1f}s for it), the rest from the cache")
    return vectors


def pick_word_weight(index: AnswerIndex, meanings, dev_tok, dev_meanings, weights, block: int = 128) -> float:
    """Of ``weights``, the word weight whose mix of TF-IDF and meaning picks
    the training answers nearest the dev questions' own (chrF), the first
    of equals; the first weight without dev questions.  ``block`` dev
    questions at a time: all of ChatbotData's at once made (dev x train)
    float32 matrices of 45 MB each, and their temporaries were the
    trainer's peak."""
    if not dev_tok:
        return weights[0]
    picked = [[] for _ in weights]
    for start in range(0, len(dev_tok), block):
        words = index.similarities([q for q, _, _, _ in dev_tok[start:start + block]])
        near = meaning_module.similarity(dev_meanings[start:start + block], meanings)
        for rows, w in zip(picked, weights):
            rows += (w * words + (1 - w) * near).argmax(axis=1).tolist()
    refs = [morph.normalize(a) for _, _, a, _ in dev_tok]
    scores = [(_chrf([index.answers[i] for i in rows], refs), -n) for n, rows in enumerate(picked)]
    return weights[-max(scores)[1]]


def make_examples(tokenized, vocab: Vocab, config: ModelConfig):
    """(source ids ending in </s>, target ids) cut to the model's length limits."""
    return [(vocab.encode(q, add_eos=True)[: config.max_src_len], vocab.encode(a)[: config.max_reply_len])
            for q, a, _, _ in tokenized]


def make_batches(examples, batch_size: int, rng: random.Random):
    """Shuffled batches of similar length (less padding): shuffle, sort within
    chunks of 50 batches by length, then shuffle the batch order."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = batch_size * 50
    batches = []
    for i in range(0, len(order), chunk):
        part = sorted(order[i:i + chunk], key=lambda j: (len(examples[j][0]), len(examples[j][1])))
        batches += [part[k:k + batch_size] for k in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples, device):
    """Pad a batch: src (B, S), src_lengths (B,), tgt_in = <s> + reply, tgt_out = reply + </s>."""
    src_len = max(len(s) for s, _ in examples)
    tgt_len = max(len(t) for _, t in examples) + 1
    src = torch.full((len(examples), src_len), PAD, dtype=torch.long)
    tgt_in = torch.full((len(examples), tgt_len), PAD, dtype=torch.long)
    tgt_out = torch.full((len(examples), tgt_len), PAD, dtype=torch.long)
    for i, (s, t) in enumerate(examples):
        src[i, : len(s)] = torch.tensor(s)
        tgt_in[i, : len(t) + 1] = torch.tensor([BOS] + t)
        tgt_out[i, : len(t) + 1] = torch.tensor(t + [EOS])
    lengths = torch.tensor([len(s) for s, _ in examples])
    return src.to(device), lengths, tgt_in.to(device), tgt_out.to(device)


def match_loss(model, src, lengths, answers, temperature, device):
    """Contrastive: each question's encoder state must be nearer its own
    answer's state (the answer read by the same encoder) than the batch's
    other answers (in-batch negatives; a repeated answer is not a negative).
    Questions with one answer are drawn together, which is what the
    known-answer match's state cosine relies on."""
    _, hidden = model.encode(src, lengths)
    questions = F.normalize(hidden[-1], dim=-1)
    answer_src = [list(a)[: model.config.max_src_len - 1] + [EOS] for a in answers]
    padded = torch.full((len(answer_src), max(map(len, answer_src))), PAD, dtype=torch.long)
    for row, ids in enumerate(answer_src):
        padded[row, : len(ids)] = torch.tensor(ids)
    _, answer_hidden = model.encode(padded.to(device), torch.tensor([len(ids) for ids in answer_src]))
    scores = questions @ F.normalize(answer_hidden[-1], dim=-1).T / temperature
    same = torch.tensor([[a == b for b in answer_src] for a in answer_src], device=device)
    scores = scores.masked_fill(same & ~torch.eye(len(answer_src), dtype=torch.bool, device=device), -math.inf)
    return F.cross_entropy(scores, torch.arange(len(answer_src), device=device))


# -----------------------------------------------------------------------------
# evaluation


@torch.inference_mode()
def evaluate_loss(model, examples, batch_size, device) -> float:
    """Mean cross-entropy per reply token (no label smoothing, so exp() is perplexity)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        src, lengths, tgt_in, tgt_out = collate(examples[i:i + batch_size], device)
        tokens = int((tgt_out != PAD).sum())
        total += model.loss(src, lengths, tgt_in, tgt_out).item() * tokens
        count += tokens
    model.train()
    return total / max(count, 1)


def answer_all(bot: Chatbot, tokenized, vectors=None) -> list[Reply]:
    """Answer each question as the server would, 16 per model call (a beam
    search's arrays grow with the questions in a call: 64 took 30 MB more);
    ``vectors``: the questions' meaning vectors, for a bot that has them."""
    replies = []
    for i in range(0, len(tokenized), 16):
        replies += bot.replies_to_tokens([q for q, _, _, _ in tokenized[i:i + 16]],
                                         vectors=None if vectors is None else vectors[i:i + 16])
    return replies


def reply_chrf(replies: list[Reply], tokenized) -> float | None:
    """chrF of replies to the tokenized questions against their references:
    all that epoch selection and train chrF need.  Without BLEU, whose
    tokenizer would map MeCab's dictionary beside the training's memory."""
    if not replies:
        return None
    return _chrf([r.text for r in replies], [morph.normalize(answer) for _, _, answer, _ in tokenized])


def _chrf(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return round(sacrebleu.corpus_chrf(hyps, [refs]).score, 2)


def reply_metrics(replies: list[Reply], tokenized, samples: int = 0):
    """Score replies to the tokenized questions against their references."""
    import sacrebleu

    hyps = [r.text for r in replies]
    refs = [morph.normalize(answer) for _, _, answer, _ in tokenized]
    shown = [{"question": morph.detokenize(q), "reference": ref, "reply": hyp}
             for (q, _, _, _), ref, hyp in list(zip(tokenized, refs, hyps))[:samples]]
    if not hyps:
        return None, None, shown
    bleu = sacrebleu.corpus_bleu(hyps, [refs], tokenize="ko-mecab").score
    # sacrebleu's ko-mecab tokenizer caches its calls class-wide, which keeps
    # every instance, its MeCab and the mapped dictionary (50-75 MB) for good.
    from sacrebleu.tokenizers.tokenizer_ko_mecab import TokenizerKoMecab

    TokenizerKoMecab.__call__.cache_clear()
    return _chrf(hyps, refs), round(bleu, 2), shown


COVERAGES = (1.0, 0.9, 0.8, 0.7, 0.6)


def score_keeping(coverage: float, scores) -> float:
    """The score that keeps ``coverage`` of ``scores``, those at or above it (ties kept)."""
    ranked = sorted(scores, reverse=True)
    return ranked[max(1, math.ceil(coverage * len(ranked))) - 1]


def calibrate(replies: list[Reply], references: list[str], target_coverage: float) -> dict:
    """The confidence threshold, and the coverage/quality curve: for each
    coverage of the dev questions, the threshold and the chrF of the replies kept.

    The threshold keeps ``target_coverage`` of the dev questions that a
    training answer matched; below it the bot says "잘 모르겠어요".  A reply
    the network wrote is kept only when it is as sure as those (on a small,
    varied starter set a fifth of the dev questions match nothing, and the
    network's replies to them were mostly off-topic: bench/results/experiments.md).
    Dev questions are held out from the index the bot answered them with, so
    their confidences are what a new question's would be.  A question is
    answered when its confidence is at least the threshold.
    """
    import sacrebleu

    def threshold_keeping(pool, coverage):
        value = score_keeping(coverage, [r.confidence for r in pool])
        return math.floor(value * 10_000) / 10_000  # rounded down: what it keeps stays kept

    def point(coverage):
        threshold = threshold_keeping(replies, coverage)
        kept = [i for i, r in enumerate(replies) if r.confidence >= threshold]
        chrf = sacrebleu.corpus_chrf([replies[i].text for i in kept], [[references[i] for i in kept]]).score
        return {"coverage": coverage, "threshold": threshold, "answered": len(kept), "chrf": round(chrf, 2)}

    if not replies:  # nothing held out: answer everything
        return {"threshold": 0.0, "target_coverage": target_coverage, "dev_questions": 0, "curve": []}
    matched = [r for r in replies if r.known] or replies
    threshold = threshold_keeping(matched, target_coverage)
    return {"threshold": threshold, "target_coverage": target_coverage, "dev_questions": len(replies),
            "dev_answered": round(sum(r.confidence >= threshold for r in replies) / len(replies), 4),
            "curve": [point(c) for c in COVERAGES]}


# -----------------------------------------------------------------------------
# training


class Adam:
    """Adam, with PyTorch's own update (``torch.optim.adam.adam``, which
    ``torch.optim.Adam.step`` calls with these same defaults).

    Why not torch.optim.Adam itself: its ``step`` and ``zero_grad`` wrappers
    import ``torch._dynamo`` (and sympy) on first use, 67 MB that a trainer
    sharing a 1 GB VM with the server cannot spare.  The updates are the same
    to the bit as ``torch.optim.Adam(fused=True)``'s (tests/test_train.py).

    Fused: one pass over each parameter, where the default update makes
    several temporaries the size of the output layer (12% of a step on the
    11k pairs, bench/results/experiments.md).
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.steps = [torch.zeros((), device=p.device) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        adam_update(
            [self.params[i] for i in live], [self.params[i].grad for i in live], [self.exp_avgs[i] for i in live],
            [self.exp_avg_sqs[i] for i in live], [], [self.steps[i] for i in live],
            amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr, weight_decay=0.0, eps=self.eps,
            maximize=False, fused=True)


def release_free_memory() -> None:
    """Return the memory freed since the last call to the system.  glibc
    keeps freed blocks in its heap for reuse, so after training the process
    would hold the batches' memory while it evaluates; malloc_trim gives
    back every free page (a no-op where the C library is not glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def plateau_step(lr: float, best: float, dev_loss: float, decay: float) -> tuple[float, float]:
    """The learning rate and best dev loss after an epoch: cut by ``decay``
    unless the dev loss improved (ReduceLROnPlateau with patience 0 and its
    default relative threshold, 1e-4)."""
    if dev_loss < best * (1 - 1e-4):
        return lr, dev_loss
    return lr * decay, best


def _split_overrides(overrides):
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(overrides) - train_fields - model_fields
    if unknown:
        raise TypeError(f"unknown training settings: {', '.join(sorted(unknown))}")
    tc = TrainConfig(**{k: v for k, v in overrides.items() if k in train_fields})
    mc = ModelConfig(**{k: v for k, v in overrides.items() if k in model_fields})
    return tc, mc


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but CUDA is not available")
    if name not in ("cpu", "cuda"):
        raise TrainingError(f"unknown device {name!r} (auto, cpu or cuda)")
    return torch.device(name)


def run_training(pairs, models_root, **overrides) -> Path:
    """Train on (question, answer) pairs and publish a new version under
    models_root; returns its directory.  overrides are TrainConfig or
    ModelConfig fields.  Raises TrainingError before writing anything when
    there is nothing to train on; on any other failure the temp dir is removed
    and `current` is untouched."""
    overrides.setdefault("tokenizer", (os.environ.get("MORPH_BACKEND") or "mecab").lower())
    tc, mc = _split_overrides(overrides)
    device = _pick_device(tc.device)
    # A model this small gains little from more threads, and they fight with
    # the web server (and each other) for a small machine's cores.  The
    # evaluations decode with NumPy (chatbot/inference.py): its BLAS too.
    threads = tc.threads or max(1, min(4, (os.cpu_count() or 2) // 2))
    limit_threads(threads)
    if device.type == "cpu":
        torch.set_num_threads(threads)

    pairs = [(str(q), str(a)) for q, a in pairs]
    if not pairs:
        raise TrainingError("no training pairs: add some question/answer pairs first")
    train_pairs, dev_pairs = split_pairs(pairs, tc.dev_percent)
    train_tok, dev_tok = tokenize_pairs(train_pairs, mc.tokenizer), tokenize_pairs(dev_pairs, mc.tokenizer)
    morph.release()  # nothing below splits text into morphemes
    release_free_memory()  # MeCab's and the tokenizing's heap
    if not train_tok:
        raise TrainingError(f"the training split is empty ({len(pairs)} pairs, {len(dev_pairs)} held out for dev)")
    # The encoder embeds the questions in a child process on the cores the
    # network leaves (1 of 2) while the network trains: a retrain takes the
    # longer of the two instead of their sum.  Never more threads than that:
    # under a retrain the trainer runs niced (retrain.TRAINER_NICE) and the
    # child lower still (meaning.EMBEDDING_NICE), and an OpenMP thread that
    # waits for a core the server holds stalls its whole team.
    embedding = start_embedding(train_tok + dev_tok, models_root, tc.meaning,
                                max(1, min(4, (os.cpu_count() or 2) - threads)))
    try:
        return _train_and_publish(tc, mc, device, train_tok, dev_tok, models_root, embedding)
    finally:
        if embedding is not None:
            embedding.stop()


def _train_and_publish(tc, mc, device, train_tok, dev_tok, models_root, embedding) -> Path:
    vocab = Vocab.build([t for q, a, _, _ in train_tok for t in (q, a)], tc.min_freq, tc.max_vocab)
    train_ex, dev_ex = make_examples(train_tok, vocab, mc), make_examples(dev_tok, vocab, mc)

    tc = auto_epochs(tc, len(train_ex))

    temp_dir = versions.make_temp_dir(models_root)
    try:
        with open(temp_dir / "train.log", "w", encoding="utf-8") as log_file:
            def log(line):
                print(line, flush=True)
                log_file.write(line + "\n")
                log_file.flush()

            _train(tc, mc, device, vocab, train_tok, dev_tok, train_ex, dev_ex, temp_dir, log,
                   embedding)  # writes metrics.json
        version_dir = versions.publish(temp_dir, models_root)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    if tc.activate:
        versions.activate(models_root, version_dir.name)
    print(f"new model: {version_dir}" + (" (now current)" if tc.activate else ""), flush=True)
    return version_dir


def _train(tc: TrainConfig, mc: ModelConfig, device, vocab, train_tok, dev_tok, train_ex, dev_ex, out_dir, log,
           embedding=None) -> dict:
    """``embedding``: start_embedding's child for train_tok + dev_tok's questions, or None."""
    torch.manual_seed(mc.seed)
    rng = random.Random(mc.seed)
    model = Seq2Seq(mc, len(vocab)).to(device)
    optimizer = Adam(model.parameters(), lr=tc.learning_rate)
    best_dev_loss = math.inf  # lr_decay cuts the learning rate each time the dev loss fails to improve
    log(f"{len(train_ex)} train / {len(dev_ex)} dev pairs, vocab {len(vocab)}, "
        f"{model.num_params():,} parameters, device {device}, {torch.get_num_threads()} threads, "
        f"up to {tc.epochs} epochs")

    started = time.time()
    step, epoch, best_score, best_epoch, bad_epochs = 0, 0, math.inf, 0, 0
    # The best epoch's weights wait on disk, not in memory beside the model's.
    best_state = out_dir / BEST_STATE_FILE
    best_loss = best_chrf = None
    history = []  # (epoch, train loss, dev loss or None, dev chrF or None) for loss.png and metrics.json
    # Epoch selection by chrF judges the network alone: greedy, no known answers.
    greedy = dataclasses.replace(mc, decoding="greedy", known_answers=False)
    model.train()
    while epoch < tc.epochs and (tc.max_steps is None or step < tc.max_steps):
        epoch += 1
        epoch_start, total, batches = time.time(), 0.0, make_batches(train_ex, tc.batch_size, rng)
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=tc.quiet or not sys.stderr.isatty())
        for n, batch in enumerate(bar, start=1):
            src, lengths, tgt_in, tgt_out = collate([train_ex[i] for i in batch], device)
            optimizer.zero_grad()  # before the forward pass: last step's gradients are not held beside it
            loss = model.loss(src, lengths, tgt_in, tgt_out, tc.label_smoothing)
            if tc.match_weight:
                loss = loss + tc.match_weight * match_loss(model, src, lengths, [train_ex[i][1] for i in batch],
                                                           tc.match_temperature, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            step += 1
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if tc.max_steps is not None and step >= tc.max_steps:
                break
        bar.close()
        train_loss = total / n

        line = f"epoch {epoch:3d} | step {step:5d} | train loss {train_loss:.3f}"
        dev_loss = dev_chrf = None
        if dev_ex:
            dev_loss = evaluate_loss(model, dev_ex, tc.batch_size, device)
            line += f" | dev loss {dev_loss:.3f} | dev ppl {perplexity(dev_loss):8.2f}"
            if tc.select_by == "chrf":
                chosen = dev_tok[:tc.chrf_dev_questions]
                greedy_bot = Chatbot(Network.from_module(model), vocab, greedy)
                dev_chrf = reply_chrf(answer_all(greedy_bot, chosen), chosen)
                line += f" | dev chrF {dev_chrf:5.2f}"
                model.train()
            score = -dev_chrf if dev_chrf is not None else dev_loss  # lower is better
        else:  # nothing held out: keep the last epoch
            score = -epoch
        history.append((epoch, train_loss, dev_loss, dev_chrf))
        if dev_loss is not None and tc.lr_decay < 1.0:
            optimizer.lr, best_dev_loss = plateau_step(optimizer.lr, best_dev_loss, dev_loss, tc.lr_decay)
        mark = ""
        if epoch < tc.min_epochs or score < best_score:  # before min_epochs: keep the latest
            if epoch >= tc.min_epochs and dev_ex:
                mark = " *"
            best_score, best_loss, best_chrf, best_epoch, bad_epochs = score, dev_loss, dev_chrf, epoch, 0
            torch.save(model.state_dict(), best_state)
        else:
            bad_epochs += 1
        log(line + f" | {time.time() - epoch_start:.1f}s" + mark)
        if epoch >= tc.min_epochs and bad_epochs >= tc.patience:
            log(f"no better dev {tc.select_by} for {tc.patience} epochs: stopping")
            break
    train_seconds = time.time() - started

    if best_state.exists():  # absent only if every dev loss was NaN
        model.load_state_dict(torch.load(best_state, weights_only=True))
        best_state.unlink()
    model.eval()
    params = model.num_params()
    save_model(out_dir, model.cpu(), vocab, mc)
    network = Network.from_module(model)  # what the server will answer with
    # The evaluations below need only that NumPy network: give the training's
    # memory back (weights, gradients, Adam's state, the last batch) first.
    model = optimizer = loss = None
    release_free_memory()
    # The vectors land in the memory the training gave back (its end is
    # the trainer's peak); config.json gets the encoder's name below.
    meanings = finish_embedding(embedding, log)
    # Dev questions are answered as the server would, from the training pairs'
    # answers (the dev pairs are not in that index); train chrF is the network
    # alone: did it learn its training answers?
    train_index = AnswerIndex([q for q, _, _, _ in train_tok], [a for _, _, a, _ in train_tok])
    train_meanings = dev_meanings = None
    if meanings is not None:
        train_meanings, dev_meanings = meanings[:len(train_tok)], meanings[len(train_tok):]
        mc = dataclasses.replace(mc, meaning_encoder=tc.meaning,
                                 word_weight=pick_word_weight(train_index, train_meanings, dev_tok, dev_meanings,
                                                              tc.word_weights))
        log(f"known answers by meaning ({mc.meaning_encoder}) and words, word weight {mc.word_weight} (on dev)")
        (out_dir / CONFIG_FILE).write_text(json.dumps(mc.to_dict(), indent=2) + "\n", encoding="utf-8")
    dev_replies = answer_all(Chatbot(network, vocab, mc, answers=train_index, meanings=train_meanings), dev_tok,
                             dev_meanings)
    dev_chrf, dev_bleu, samples = reply_metrics(dev_replies, dev_tok, tc.samples)
    calibration = calibrate(dev_replies, [morph.normalize(a) for _, _, a, _ in dev_tok], tc.target_coverage)
    writer = Chatbot(network, vocab, dataclasses.replace(mc, known_answers=False))
    train_chrf = reply_chrf(answer_all(writer, train_tok[:100]), train_tok[:100])
    metrics = {
        "train_pairs": len(train_ex),
        "dev_pairs": len(dev_ex),
        "vocab_size": len(vocab),
        "epochs": epoch,
        "best_epoch": best_epoch,
        "steps": step,
        "train_seconds": round(train_seconds, 1),
        "device": str(device),
        "dev_loss": round(best_loss, 4) if best_loss is not None else None,
        "dev_ppl": round(perplexity(best_loss), 2) if best_loss is not None else None,
        "select_by": tc.select_by,
        "selection_dev_chrf": best_chrf,  # greedy, first chrf_dev_questions dev questions
        "dev_chrf": dev_chrf,
        "dev_bleu": dev_bleu,
        "train_chrf": train_chrf,  # on up to 100 training questions: did it learn them?
        "params": params,
        "tokenizer": mc.tokenizer,
        "history": [{"epoch": e, "train_loss": round(t, 4), "dev_loss": None if d is None else round(d, 4),
                     "dev_chrf": c} for e, t, d, c in history],
        "seed": mc.seed,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "train_config": dataclasses.asdict(tc),
        "samples": samples,
    }
    log(f"best epoch {best_epoch} | dev chrF {dev_chrf} | dev BLEU {dev_bleu} | train chrF {train_chrf} "
        f"| {train_seconds:.0f}s")
    log(f"confidence threshold {calibration['threshold']} answers {calibration.get('dev_answered', 0):.0%} "
        f"of the dev questions; "
        + ", ".join(f"{p['coverage']:.0%}: chrF {p['chrf']}" for p in calibration["curve"]))
    for s in samples:
        log(f"  Q: {s['question']}\n     ref: {s['reference']}\n     bot: {s['reply']}")

    # The server picks among the answers of every pair, dev pairs included.
    everything = train_tok + dev_tok
    AnswerIndex([q for q, _, _, _ in everything], [a for _, _, a, _ in everything]).save(out_dir / ANSWERS_FILE)
    if meanings is not None:  # in answers.json's order: train, then dev
        np.save(out_dir / MEANING_FILE, meanings.astype(np.float16))
    plot_losses(history, best_epoch if dev_ex else None, out_dir / "loss.png", tc.label_smoothing)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n", encoding="utf-8")
    return metrics


def plot_losses(history, best_epoch, path, label_smoothing: float = 0.0) -> None:
    """Train and dev loss per epoch as a PNG (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    epochs = [h[0] for h in history]
    smoothed = f" (label smoothing {label_smoothing:g})" if label_smoothing else ""
    ax.plot(epochs, [h[1] for h in history], marker=".", label="train loss" + smoothed)
    if any(h[2] is not None for h in history):
        ax.plot(epochs, [h[2] for h in history], marker=".", label="dev loss")
    if best_epoch:
        ax.axvline(best_epoch, color="gray", linestyle=":", label=f"kept: epoch {best_epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per token")
    ax.grid(alpha=0.3)
    if any(h[3] is not None for h in history):  # dev chrF on a second axis
        ax2 = ax.twinx()
        ax2.plot(epochs, [h[3] for h in history], color="tab:green", marker=".", label="dev chrF (greedy)")
        ax2.set_ylabel("dev chrF")
        ax2.legend(loc="upper center")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)


# -----------------------------------------------------------------------------
# command line


def has_usable_model(models_root) -> bool:
    """True when `current` points at a model that loads."""
    path = versions.current_dir(models_root)
    if path is None:
        return False
    try:
        Chatbot.load(path)
    except ModelLoadError:
        return False
    return True


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m chatbot.train", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", metavar="FILE.csv", help="train on a Q,A[,label] CSV instead of the app's data")
    p.add_argument("--models-dir",
                   help="models root (default: the app's MODEL_DIR; with --pairs: $MODEL_DIR or ./models)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dev-percent", type=int, help="percent of questions held out for dev metrics (default 10)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--if-missing", action="store_true", help="do nothing if `current` already holds a usable model")
    p.add_argument("--no-activate", action="store_true", help="publish the model but leave `current` alone")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


M_MMAP_THRESHOLD = -3  # mallopt(3)
LARGE_BLOCK = 1 << 20


def allocate_large_blocks_apart() -> None:
    """Have glibc map blocks of 1 MB and more on their own and unmap them
    when freed.  Its default serves them from the heap once the first is
    freed; a batch's logits, their softmax and gradients (about 10 MB each,
    a different size every batch) then leave the heap at its most
    fragmented, 60-90 MB more RSS on the 11k pairs.  The page faults cost
    about a quarter of an epoch's time (bench/results/experiments.md).
    The trainer's process only: the CLI, which `make retrain` runs."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK)
    except (OSError, AttributeError):
        pass


def main(argv=None) -> int:
    args = parse_args(argv)
    allocate_large_blocks_apart()
    flags = ("epochs", "max_steps", "batch_size", "seed", "device", "dev_percent", "threads")
    overrides = {k: v for k, v in vars(args).items() if k in flags and v is not None}
    overrides.update(quiet=args.quiet, activate=not args.no_activate)
    try:
        app = None
        if args.pairs:
            models_root = Path(args.models_dir or os.environ.get("MODEL_DIR") or "models")
        else:
            from chatbot import create_app  # the app and its database only when training on its data

            app = create_app()
            models_root = Path(args.models_dir or app.config["MODEL_DIR"])
        if args.if_missing:
            # Models from before weights.npz get one, so that the server needs
            # no torch for them: `current`, and any the admin may activate.
            for name in versions.list_versions(models_root):
                try:
                    if add_numpy_weights(models_root / name):
                        print(f"{models_root / name}: wrote {WEIGHTS_FILE} from {MODEL_FILE}")
                except ModelLoadError:
                    pass  # unusable: `current` is trained again below, another stays unusable
            current = versions.current_dir(models_root)
            if has_usable_model(models_root):
                print(f"{current} is already usable; not training")
                return 0
        if app is None:
            try:
                rows, errors = read_pairs_csv(args.pairs)
            except PairsFileError as e:
                raise TrainingError(str(e)) from e
            for line, reason in errors:
                print(f"{args.pairs}: line {line}: {reason} (skipped)", file=sys.stderr)
            pairs = [(row.question, row.answer) for row in rows]
        else:
            with app.app_context():
                from chatbot.pairs import training_pairs

                pairs = training_pairs()
        run_training(pairs, models_root, **overrides)
    except (TrainingError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: no model was published", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("error: training failed; no model was published", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
