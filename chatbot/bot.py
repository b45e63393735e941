"""The bot that answers: a loaded model directory, with its known answers.

Each question gets a training pair's answer when it matches one closely
enough (chatbot/retrieval.py's TF-IDF, weighed with the encoder's states),
else the network writes a reply (chatbot/decode.py).  Every reply has a
confidence from 0 to 1; below the threshold the trainer calibrated
(``threshold``, calibration.json) the server says it does not know.
Batched: the server answers chats that arrive together in one call.
The network runs in NumPy (chatbot/inference.py): no torch here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from chatbot import meaning, morph
from chatbot.decode import generate_batch, score_replies
from chatbot.inference import Network
from chatbot.model_dir import (CALIBRATION_FILE, MEANING_FILE, METRICS_FILE, ModelConfig, ModelLoadError, Vocab,
                               read_config_and_vocab)
from chatbot.retrieval import ANSWERS_FILE, AnswerIndex


class Reply(NamedTuple):
    """A reply, whether it is a training pair's answer (``known``) or one
    the network wrote, and how sure the bot is of it, from 0 to 1.

    With the reviewed answers (chatbot/corrections.py): ``reviewed`` when
    the text is a reviewer's answer, and ``correction``, a reviewer's
    ``(answer, score)`` near enough to send instead of "잘 모르겠어요" when
    the bot is less sure than its threshold."""

    text: str
    known: bool
    confidence: float
    reviewed: bool = False
    correction: tuple | None = None


class Prepared(NamedTuple):
    """What the first step of a batch hands the second: the encoded
    questions, how near each is to any training question (0..1), and the
    reviewed answer each may fall back on (Reply.correction)."""

    sources: list
    nearness: list
    corrections: list | None = None


def written_confidence(nearness: float, logprob: float) -> float:
    """The confidence of a reply the network wrote: how near the question is
    to what the model was trained on, times the network's geometric-mean
    probability per token of its own reply (exp of the mean log-probability):
    a fluent reply to a question unlike any training question is not trusted,
    nor a halting one to a familiar question."""
    return max(0.0, min(1.0, nearness * math.exp(logprob)))


class Chatbot:
    """A loaded model that answers questions; safe to share between threads.

    reply() only reads the weights and keeps its state in local variables,
    so concurrent calls do not interfere.  ``network`` is an
    inference.Network (the trainer's evaluations: Network.from_module).
    """

    def __init__(self, network: Network, vocab: Vocab, config: ModelConfig, version: str = "",
                 metrics: dict | None = None, answers=None, threshold: float = 0.0, meanings=None):
        self.network = network
        # Below this confidence the server says it does not know (calibrated
        # by the trainer; 0 for models from before calibration).
        self.threshold = threshold
        self.vocab = vocab
        self.config = config
        self.version = version
        self.metrics = metrics or {}
        self._boundary_id = vocab.stoi.get(morph.BOUNDARY)
        self.answers = answers  # a retrieval.AnswerIndex, or None: always write the reply
        # The answers' questions' meaning vectors (n, meaning.DIM), or None: words only.
        self.meanings = meanings if answers is not None else None
        # The encoder's states of the training questions, for known_matches().
        self._answer_states = self._question_states(
            [vocab.encode(q, add_eos=True) for q in answers.question_tokens()]) if answers is not None else None

    @classmethod
    def load(cls, model_dir) -> "Chatbot":
        """Load a model directory (a `current` symlink is followed; version is
        the real directory's name).  Raises ModelLoadError."""
        model_dir = Path(model_dir).resolve()
        config, vocab = read_config_and_vocab(model_dir)
        network = Network.load(model_dir, config, len(vocab))
        try:
            metrics = json.loads((model_dir / METRICS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}  # metrics are informative only
        answers = None
        if (model_dir / ANSWERS_FILE).exists():  # models from before the index have none
            try:
                answers = AnswerIndex.load(model_dir / ANSWERS_FILE)
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
                raise ModelLoadError(f"bad {ANSWERS_FILE} in {model_dir}: {e}") from e
        return cls(network, vocab, config, version=model_dir.name, metrics=metrics, answers=answers,
                   threshold=_calibrated_threshold(model_dir), meanings=_meanings(model_dir, config, answers))

    def embed(self, texts: list[str]):
        """The questions' meaning vectors when this model matches by meaning
        and the encoder works; None (words only) otherwise."""
        if self.meanings is None or not self.config.known_answers:
            return None
        try:
            return meaning.embed(texts)
        except meaning.Unavailable:
            return None  # logged once by meaning

    def reply(self, text: str) -> str:
        return self.reply_batch([text])[0]

    def reply_batch(self, texts: list[str], on_reply=None) -> list[str]:
        """Replies to several questions, computed together (the server batches
        chats that arrive at the same time).  ``on_reply(i, reply)``, if
        given, is called with each ``Reply`` as it is ready: known answers
        before the ones the network writes."""
        return [r.text for r in self.replies(texts, on_reply)]

    def replies(self, texts: list[str], on_reply=None) -> list[Reply]:
        """``Reply`` (text, known, confidence) to each question."""
        return self.replies_to_tokens([morph.tokenize(text, self.config.tokenizer) for text in texts], on_reply,
                                      self.embed(texts))

    def replies_to_tokens(self, questions: list[list[str]], on_reply=None, vectors=None) -> list[Reply]:
        """Replies to tokenized questions (and their meaning vectors, if the
        model has them): a known answer, or the network's own."""
        prepared, replies = self._known_tokens(questions, vectors)
        if on_reply is not None:
            for i, reply in enumerate(replies):
                if reply is not None:
                    on_reply(i, reply)
        todo = [i for i, r in enumerate(replies) if r is None]
        for i, reply in zip(todo, self.write_replies(prepared, todo)):
            replies[i] = reply
            if on_reply is not None:
                on_reply(i, reply)
        return replies

    def known_replies(self, texts: list[str], reviewed=None, keys=None, vectors=None):
        """The first step of ``replies``: ``(prepared, replies)``, each
        question's known answer in ``replies`` (None where the network must
        write one), and what ``write_replies`` needs for the others.

        ``reviewed`` (a build of chatbot/corrections.py) and the questions'
        question_keys add the reviewers' answers; see ``_with_reviewed``.
        Each question is embedded once, for both; ``vectors``: their meaning
        vectors, when they are known already (chatbot/reach.py)."""
        if vectors is None:
            vectors = self.embed(texts)
        prepared, replies = self._known_tokens([morph.tokenize(text, self.config.tokenizer) for text in texts],
                                               vectors)
        if reviewed is None:
            return prepared, replies
        return self._with_reviewed(prepared, replies, reviewed, keys, vectors)

    def _known_tokens(self, questions: list[list[str]], vectors=None):
        c = self.config
        sources = [self.vocab.encode(q, add_eos=True) for q in questions]
        replies: list[Reply | None] = [None] * len(questions)
        nearness = [0.0] * len(questions)
        if self.answers is not None and len(self.answers) and questions:
            matches = self.known_matches(questions, sources, vectors)
            for i, (row, best, near) in enumerate(matches):
                nearness[i] = near
                if row is not None and c.known_answers:
                    replies[i] = Reply(self.answers.answers[row], True, best)
        return Prepared(sources, nearness), replies

    def _with_reviewed(self, prepared: Prepared, replies: list, reviewed, keys, vectors):
        """The reviewers' answers joined to the known ones.

        By meaning (this model and ``reviewed`` have vectors), training and
        reviewed questions are one index: a reviewed question that is the
        nearest of all by the model's own score (a tie goes to the reviewer),
        at reviewed.meaning_similarity or more, gives the reply, with that
        score as its confidence.  So a correction takes over a training question only
        where it really is nearer.  By words, as before the encoder: a
        reviewed question at reviewed.min_similarity (TF-IDF of the keys)
        gives the reply whatever the model knows.

        Either way the nearest reviewed question, at the fallback score
        (reviewed.meaning_similarity or unsure_similarity) or more, is kept
        as the reply's ``correction``."""
        by_meaning = vectors is not None and self.meanings is not None and reviewed.by_meaning
        found = reviewed.nearest(keys, vectors if by_meaning else None, self.config.word_weight)
        floor = reviewed.meaning_similarity if by_meaning else reviewed.unsure_similarity
        corrections = [None] * len(replies)
        for i, match in enumerate(found):
            if match is None:
                continue
            answer, score = match
            if by_meaning:
                rival = replies[i].confidence if replies[i] is not None else -1.0
                if score >= max(self.config.min_similarity, reviewed.meaning_similarity) and score >= rival:
                    replies[i] = Reply(answer, True, score, reviewed=True)
                prepared.nearness[i] = max(prepared.nearness[i], score)
            elif score >= reviewed.min_similarity:
                replies[i] = Reply(answer, True, score, reviewed=True)
            if score >= floor:
                corrections[i] = match
                if replies[i] is not None:
                    replies[i] = replies[i]._replace(correction=match)
        return prepared._replace(corrections=corrections), replies

    def write_replies(self, prepared: Prepared, indices: list[int]) -> list[Reply]:
        """The second step: the network's replies to the questions at ``indices``."""
        if not indices:
            return []
        sources = [prepared.sources[i] for i in indices]
        written = generate_batch(self.network, sources, self.config, self._boundary_id)
        logprobs = score_replies(self.network, sources, written)
        corrections = prepared.corrections or [None] * len(prepared.sources)
        return [Reply(morph.detokenize(self.vocab.decode(ids)), False,
                      written_confidence(prepared.nearness[i], logprob), correction=corrections[i])
                for i, ids, logprob in zip(indices, written, logprobs)]

    def known_matches(self, questions, sources, vectors=None) -> list[tuple[int | None, float, float]]:
        """For each question ``(row, confidence, nearness)``: the training
        question whose answer to send (or None) with how sure the match is,
        and how near the question is to any training question at all.

        Candidates are the training questions that share a word with it and
        whose TF-IDF cosine reaches min_similarity: the words must match.
        Among them the best is the one with the highest mean of that cosine
        and state_weight x the cosine of the encoder's states (the decoder's
        start state), which learned that differently worded questions with one
        answer are alike.

        Confidence and nearness are that mean (in [0, 1]) for the match, and
        its maximum over every training question, each times the share of the
        question's words the training questions have (AnswerIndex.known_share):
        on held-out ChatbotData questions against questions about programming,
        facts or errands, the product told them apart better than either
        alone (bench/results/experiments.md).

        With the questions' meaning ``vectors`` (and the model's, ``meanings``)
        the score is word_weight x that TF-IDF cosine + the rest x their
        meaning similarity, and every training question reaching
        min_similarity is a candidate, whether a word is shared or not: a
        paraphrase in other words is found, and its confidence is not cut by
        the share of known words.  The encoder states are left out then:
        re-ranking by them at a weight picked on dev gained 0.3 chrF on dev
        and lost 0.14 on bench-quality's test split (bench/results/
        experiments.md, "The encoder-state term beside meaning")."""
        c = self.config
        words = self.answers.similarities(questions)
        if vectors is not None and self.meanings is not None:
            score = c.word_weight * words + (1 - c.word_weight) * meaning.similarity(vectors, self.meanings)
            eligible = score >= c.min_similarity
            # No known_share: a paraphrase in words no training question has
            # is what meaning is for (on out_of_domain_tune.csv the share
            # changed no cut's fallback rate by more than a question).
            known = [1.0] * len(questions)
        else:
            known = self.answers.known_share(questions)
            score = words
            if c.state_weight:
                states = self._question_states(sources) @ self._answer_states.T
                score = (words + c.state_weight * states) / (1 + c.state_weight)
            eligible = (words > 0) & (words >= c.min_similarity)
        score = score.clip(0, 1)
        candidates = np.where(eligible, score, -np.inf)
        nearness = score.max(axis=1).tolist()
        rows = candidates.argmax(axis=1)
        best = candidates[np.arange(len(rows)), rows]
        return [(row if value > -math.inf else None, max(value, 0.0) * share, near * share)
                for value, row, near, share in zip(best.tolist(), rows.tolist(), nearness, known)]

    def _question_states(self, sources, batch: int = 256) -> np.ndarray:
        """Unit-length decoder start states (n, H) of encoded questions."""
        out = []
        for i in range(0, len(sources), batch):
            _, hidden = self.network.encode(sources[i:i + batch])
            last = hidden[-1]
            out.append(last / np.maximum(np.linalg.norm(last, axis=1, keepdims=True), 1e-12))
        return np.concatenate(out) if out else np.zeros((0, self.config.hidden_dim), dtype=np.float32)


def _meanings(model_dir: Path, config: ModelConfig, answers):
    """The training questions' meaning vectors, when the model was trained
    with the encoder this process has (else None: words only, as before)."""
    path = model_dir / MEANING_FILE
    if not config.meaning_encoder or answers is None or not path.exists():
        return None
    if config.meaning_encoder != meaning.encoder().name:
        return None
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"bad {MEANING_FILE} in {model_dir}: {e}") from e
    if vectors.shape != (len(answers), meaning.DIM) or not np.isfinite(vectors).all():
        raise ModelLoadError(f"bad {MEANING_FILE} in {model_dir}: shape {vectors.shape}, "
                             f"{len(answers)} questions of {meaning.DIM} expected")
    return vectors.astype(np.float32)


def _calibrated_threshold(model_dir: Path) -> float:
    """The threshold in the model directory's calibration.json; 0 without one."""
    try:
        data = json.loads((model_dir / CALIBRATION_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return 0.0  # a model from before calibration answers everything, as it did
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"bad {CALIBRATION_FILE} in {model_dir}: {e}") from e
    threshold = data.get("threshold") if isinstance(data, dict) else None
    if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ModelLoadError(f"bad {CALIBRATION_FILE} in {model_dir}: threshold must be a number from 0 to 1")
    return float(threshold)
