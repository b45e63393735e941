"""Known answers: TF-IDF over the morphemes of the training questions.

Why: on a few thousand pairs, a human-written answer to a similar question
reads better than anything a small GRU writes (bench/README.md has the
numbers).  ``Chatbot`` adds the network's own sense of which questions are
alike to these word-based similarities, and writes the reply itself when no
training question is alike (see ``Chatbot.replies_to_tokens``).

The weighting is scikit-learn's ``TfidfVectorizer`` default (raw counts,
smoothed idf, rows scaled to unit length, so a dot product is the cosine;
unlike it, a question's unknown words count, see ``_vectors``),
done in NumPy with the matrix stored by column (term): a question has a
handful of terms, and only the training questions that share one get a score.
The index is saved in the model directory as ``answers.json``: the question
tokens and the answers.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from chatbot import morph

ANSWERS_FILE = "answers.json"


def _terms(tokens) -> list[str]:
    """What is matched: the tokens without the word-boundary marker."""
    return [t for t in tokens if t != morph.BOUNDARY]


def _split(question: str) -> list[str]:
    """A stored question (tokens joined by spaces) back into its tokens."""
    return question.split(" ") if question else []


class AnswerIndex:
    """How alike a question is to each training question, and their answers."""

    def __init__(self, questions: list[list[str]], answers: list[str]):
        questions = [list(q) for q in questions]
        if len(questions) != len(answers):
            raise ValueError("questions and answers differ in length")
        # Kept as one string per question (for save()): lists of tokens would
        # cost the server several MB on ten thousand pairs.
        self.questions = [" ".join(q) for q in questions]
        self.answers = list(answers)
        docs = [Counter(_terms(q)) for q in questions]
        self.term_ids = {t: i for i, t in enumerate(sorted({t for d in docs for t in d}))}
        df = Counter(t for d in docs for t in d)
        n = len(docs)
        self.idf = [math.log((1 + n) / (1 + df[t])) + 1 for t in self.term_ids]  # term_ids is in id order
        columns = [[] for _ in self.term_ids]  # per term: (question, weight)
        for r, d in enumerate(docs):
            weights = {self.term_ids[t]: c * self.idf[self.term_ids[t]] for t, c in d.items()}
            norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
            for c, w in weights.items():
                columns[c].append((r, w / norm))
        # Compressed sparse columns: term t's questions are rows[starts[t]:starts[t + 1]].
        self.starts = np.cumsum([0] + [len(col) for col in columns], dtype=np.int64)
        self.rows = np.array([r for col in columns for r, _ in col], dtype=np.int32)
        self.weights = np.array([w for col in columns for _, w in col], dtype=np.float32)

    def __len__(self) -> int:
        return len(self.answers)

    def question_tokens(self) -> list[list[str]]:
        return [_split(q) for q in self.questions]

    def _query(self, tokens) -> list[tuple[int, float]]:
        """A question's unit-length TF-IDF vector, as (term id, weight).

        A word no training question has counts towards the length with the
        highest idf: 양자역학 알아? is then not 'just like' 맛집 알아?, as it
        would be if unknown words were dropped (scikit-learn drops them)."""
        known, unknown = [], 0.0
        unseen_idf = math.log(1 + len(self.answers)) + 1  # smoothed idf of a term in no question
        for t, c in Counter(_terms(tokens)).items():
            i = self.term_ids.get(t)
            if i is not None:
                known.append((i, c * self.idf[i]))
            else:
                unknown += (c * unseen_idf) ** 2
        norm = math.sqrt(sum(w * w for _, w in known) + unknown)
        return [(i, w / norm) for i, w in known] if norm > 0 else []

    def similarities(self, token_lists) -> np.ndarray:
        """Cosine similarity (B, n) of each question to every training question;
        a question with no known term is 0 to all."""
        out = np.zeros((len(token_lists), len(self.answers)), dtype=np.float32)
        for b, tokens in enumerate(token_lists):
            for term, weight in self._query(tokens):
                span = slice(self.starts[term], self.starts[term + 1])
                out[b, self.rows[span]] += self.weights[span] * np.float32(weight)
        return out

    def known_share(self, token_lists) -> list[float]:
        """The share of each question's words that some training question
        has: a question mostly of words the bot never saw (파이썬 리스트
        정렬 방법) is about something it does not know, however well its
        one familiar word matches.  1.0 for a question with no words."""
        shares = []
        for tokens in token_lists:
            terms = _terms(tokens)
            shares.append(sum(t in self.term_ids for t in terms) / len(terms) if terms else 1.0)
        return shares

    def save(self, path) -> None:
        data = {"questions": self.questions, "answers": self.answers}
        Path(path).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "AnswerIndex":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls([_split(q) for q in data["questions"]], data["answers"])
