"""The bot that answers: a loaded model directory, with its known answers.

Each question gets a training pair's answer when it matches one closely
enough (chatbot/retrieval.py's TF-IDF, weighed with the encoder's states),
else the network writes a reply (chatbot/decode.py).  Batched: the server
answers chats that arrive together in one call.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from chatbot import morph
from chatbot.decode import generate_batch
from chatbot.model import METRICS_FILE, ModelConfig, ModelLoadError, Seq2Seq, Vocab, encode_many, load_model
from chatbot.retrieval import ANSWERS_FILE, AnswerIndex


class Chatbot:
    """A loaded model that answers questions; safe to share between threads.

    reply() only reads the weights (eval mode, inference mode) and keeps its
    state in local variables, so concurrent calls do not interfere.
    """

    def __init__(self, model: Seq2Seq, vocab: Vocab, config: ModelConfig, version: str = "",
                 metrics: dict | None = None, answers=None):
        self.model = model.eval()
        self.vocab = vocab
        self.config = config
        self.version = version
        self.metrics = metrics or {}
        self._boundary_id = vocab.stoi.get(morph.BOUNDARY)
        self.answers = answers  # a retrieval.AnswerIndex, or None: always write the reply
        # The encoder's states of the training questions, for known_matches().
        self._answer_states = self._question_states(
            [vocab.encode(q, add_eos=True) for q in answers.question_tokens()]) if answers is not None else None

    @classmethod
    def load(cls, model_dir, device="cpu") -> "Chatbot":
        """Load a model directory (a `current` symlink is followed; version is
        the real directory's name).  Raises ModelLoadError."""
        model_dir = Path(model_dir).resolve()
        model, vocab, config = load_model(model_dir, device)
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
        return cls(model, vocab, config, version=model_dir.name, metrics=metrics, answers=answers)

    def reply(self, text: str) -> str:
        return self.reply_batch([text])[0]

    def reply_batch(self, texts: list[str], on_reply=None) -> list[str]:
        """Replies to several questions, computed together (the server batches
        chats that arrive at the same time).  ``on_reply(i, reply, known)``, if
        given, is called as each reply is ready: known answers (known=True)
        before the ones the network writes."""
        return self.reply_tokens_batch([morph.tokenize(text, self.config.tokenizer) for text in texts], on_reply)

    def reply_tokens_batch(self, questions: list[list[str]], on_reply=None) -> list[str]:
        """Replies to tokenized questions: a known answer, or the network's own."""
        sources, replies = self._known_tokens(questions)
        if on_reply is not None:
            for i, reply in enumerate(replies):
                if reply is not None:
                    on_reply(i, reply, True)
        todo = [i for i, r in enumerate(replies) if r is None]
        for i, reply in zip(todo, self.write_replies(sources, todo)):
            replies[i] = reply
            if on_reply is not None:
                on_reply(i, reply, False)
        return replies

    def known_replies(self, texts: list[str]):
        """The first step of ``reply_batch``: ``(sources, replies)``, each
        question's known answer in ``replies`` (None where the network must
        write one), and the encoded questions for ``write_replies``."""
        return self._known_tokens([morph.tokenize(text, self.config.tokenizer) for text in texts])

    def _known_tokens(self, questions: list[list[str]]):
        c = self.config
        sources = [self.vocab.encode(q, add_eos=True) for q in questions]
        replies: list[str | None] = [None] * len(questions)
        if self.answers is not None and len(self.answers) and c.known_answers and questions:
            for i, row in enumerate(self.known_matches(questions, sources)):
                if row is not None:
                    replies[i] = self.answers.answers[row]
        return sources, replies

    def write_replies(self, sources, indices: list[int]) -> list[str]:
        """The second step: the network's replies to ``sources[i]`` for each i."""
        if not indices:
            return []
        written = generate_batch(self.model, [sources[i] for i in indices], self.config, self._boundary_id)
        return [morph.detokenize(self.vocab.decode(ids)) for ids in written]

    @torch.inference_mode()
    def known_matches(self, questions, sources) -> list[int | None]:
        """For each question, the training question whose answer to send, or None.

        Candidates are the training questions that share a word with it and
        whose TF-IDF cosine reaches min_similarity: the words must match.
        Among them the best is the one with the highest mean of that cosine
        and state_weight x the cosine of the encoder's states (the decoder's
        start state), which learned that differently worded questions with one
        answer are alike."""
        c = self.config
        words = self.answers.similarities(questions)
        score = words
        if c.state_weight:
            states = self._question_states(sources) @ self._answer_states.T
            score = (words + c.state_weight * states) / (1 + c.state_weight)
        score = torch.where((words > 0) & (words >= c.min_similarity), score, -math.inf)
        best, rows = score.max(dim=1)
        return [row if value > -math.inf else None for value, row in zip(best.tolist(), rows.tolist())]

    @torch.inference_mode()
    def _question_states(self, sources, batch: int = 256) -> torch.Tensor:
        """Unit-length decoder start states (n, H) of encoded questions."""
        out = []
        for i in range(0, len(sources), batch):
            _, hidden = encode_many(self.model, sources[i:i + batch])
            out.append(F.normalize(hidden[-1].float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.config.hidden_dim)
