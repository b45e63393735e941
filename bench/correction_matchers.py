"""Which word side the corrections' matcher could use, offline, on bench-learning's TUNE half.

    python -m bench.correction_matchers

The index is the starter questions plus the 150 corrected wordings (each
cluster's first, as bench/learning.py corrects them); the queries are two
other wordings of each cluster.  For each word side (the question_key's
morphemes, as chatbot/corrections.py has it; character 2-3-grams; 1-3-grams)
and word weight, it prints the nearest neighbour's accuracy (NN), then, at
each threshold T, the share given their own cluster's correction and the
share given another's, when a correction must reach T and beat the nearest
starter question as the starter model scores it (chatbot/bot.py's rule;
word weight 0.2 over all morphemes).  "with starter" is the nearest
neighbour's accuracy when the starter questions are in the index too,
scored alike: the ceiling of "a paraphrase gets its correction at once"
while a correction takes over a starter question only when it is nearer.
bench/results/experiments.md has runs.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.learning import STARTER, clusters, half_of  # noqa: E402
from bench.quality import DEFAULT_DATA, read_pairs  # noqa: E402
from chatbot import meaning, morph  # noqa: E402
from chatbot.pairs_csv import read_pairs_csv  # noqa: E402
from chatbot.retrieval import AnswerIndex  # noqa: E402

STARTER_WORD_WEIGHT = 0.2  # the starter model's (its config.json), picked on its dev split


def chars(text, sizes=(2, 3)):
    """The question's character n-grams, spaces left out."""
    t = meaning.normalise(text).replace(" ", "")
    return [t[i:i + n] for n in sizes for i in range(len(t) - n + 1)] or [t]


WORD_SIDES = {
    "morph": lambda q: morph.question_key(q).split() or ["∅"],
    "char23": chars,
    "char1-3": lambda q: chars(q, (1, 2, 3)),
}


def main():
    starter = [(p.question, p.answer) for p in read_pairs_csv(STARTER)[0]]
    chosen = [c for c in clusters(read_pairs(DEFAULT_DATA)) if half_of(c[0]) == "tune"][:150]
    corrected = [(wordings[0], answer) for answer, wordings in chosen]
    queries = [(w, answer) for answer, wordings in chosen for w in wordings[1:3]]
    embed = meaning.encoder().embed_uncached
    starter_vectors, corrected_vectors, query_vectors = (embed([q for q, _ in rows])
                                                         for rows in (starter, corrected, queries))
    trained = AnswerIndex([morph.tokenize(q) for q, _ in starter], [a for _, a in starter])
    rival = (STARTER_WORD_WEIGHT * trained.similarities([morph.tokenize(q) for q, _ in queries])
             + (1 - STARTER_WORD_WEIGHT) * meaning.similarity(query_vectors, starter_vectors)).max(axis=1)
    by_meaning = meaning.similarity(query_vectors, corrected_vectors)
    both = corrected + starter
    both_by_meaning = meaning.similarity(query_vectors, np.vstack([corrected_vectors, starter_vectors]))
    for name, terms in WORD_SIDES.items():
        index = AnswerIndex([terms(q) for q, _ in corrected], [a for _, a in corrected])
        words = index.similarities([terms(q) for q, _ in queries])
        both_words = AnswerIndex([terms(q) for q, _ in both], [a for _, a in both]).similarities(
            [terms(q) for q, _ in queries])
        for weight in (0.0, 0.2, 0.3, 0.5):
            score = weight * words + (1 - weight) * by_meaning
            best = score.argmax(axis=1)
            top = score[np.arange(len(queries)), best]
            right = np.array([corrected[b][1] == answer for b, (_, answer) in zip(best, queries)])
            nearest = (weight * both_words + (1 - weight) * both_by_meaning).argmax(axis=1)
            with_starter = np.mean([both[b][1] == answer for b, (_, answer) in zip(nearest, queries)])
            row = [f"{name:8s} weight {weight:.1f} NN {right.mean():.1%} with starter {with_starter:.1%}"]
            for threshold in (0.3, 0.4, 0.5, 0.6):
                given = (top >= threshold) & (top >= rival)
                row.append(f"T {threshold}: {(given & right).mean():.1%} / {(given & ~right).mean():.1%}")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
