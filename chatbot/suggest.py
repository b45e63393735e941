"""Answers to suggest to a reviewer: the answers of the questions nearest to
the one being corrected, training pairs and reviewed answers alike (issue
26, item 2), each with how near its question is.

Why: most questions a bot gets wrong were answered well somewhere else
already, in other words.  One click on a suggestion saves writing the
answer again, and gives the same question the same answer everywhere.

Scores are the bot's own (bot.Chatbot.known_matches, without the encoder
states' re-ranking; corrections._Built.scores): by meaning and words when
the model and the encoder have vectors, by words otherwise.  CPU work:
Responder.suggestions calls ``nearest_answers`` on a model thread.
"""
from typing import NamedTuple

from . import meaning, morph

SUGGESTIONS = 3
SOURCE_TRAINING = "training"
SOURCE_REVIEWED = "reviewed"
SOURCE_LABELS = {SOURCE_TRAINING: "학습 데이터", SOURCE_REVIEWED: "검토된 답변"}


class Suggestion(NamedTuple):
    answer: str
    similarity: float  # 0..1, the score of the nearest question with this answer
    source: str  # SOURCE_TRAINING or SOURCE_REVIEWED
    question: str  # that question (a training one joined from its morphemes; a reviewed one as asked, or its key)


def nearest_answers(bot, reviewed, question: str, key: str, limit: int = SUGGESTIONS,
                    exclude: set = frozenset()) -> list[Suggestion]:
    """The ``limit`` distinct answers whose questions are nearest to
    ``question`` (its question_key ``key``), nearest first, none of
    ``exclude`` (the answer being corrected: often the nearest question's,
    which is how the bot picked it).  ``bot``: the model in use (or None),
    ``reviewed``: a build of chatbot/corrections.py."""
    vectors = bot.embed([question]) if bot is not None else None
    found: dict[str, Suggestion] = {}

    def offer(answer, score, source, asked):
        score = round(min(1.0, max(0.0, float(score))), 3)
        if answer in exclude:
            return
        held = found.get(answer)
        if held is None or score > held.similarity or (score == held.similarity and source == SOURCE_REVIEWED):
            found[answer] = Suggestion(answer, score, source, asked)

    word_weight = bot.config.word_weight if bot is not None else 0.0
    if bot is not None and bot.answers is not None and len(bot.answers):
        tokens = morph.tokenize(question, bot.config.tokenizer)
        score = bot.answers.similarities([tokens])[0]
        if vectors is not None and bot.meanings is not None:
            score = word_weight * score + (1 - word_weight) * meaning.similarity(vectors, bot.meanings)[0]
        # Enough rows for ``limit`` distinct answers: many questions share one (저도요.).
        for row in score.argsort()[::-1][: limit * 20 + len(exclude)].tolist():
            offer(bot.answers.answers[row], score[row], SOURCE_TRAINING,
                  morph.detokenize(bot.answers.questions[row].split(" ")))
    by_meaning = vectors is not None and bot.meanings is not None and reviewed.by_meaning
    _, score, rows = reviewed.scores([key], vectors if by_meaning else None, word_weight)
    if score is not None:
        for column in score[0].argsort()[::-1][: limit * 20 + len(exclude)].tolist():
            offer(reviewed.index.answers[rows[column]], score[0, column], SOURCE_REVIEWED,
                  reviewed.asked.get(rows[column]) or reviewed.index.questions[rows[column]])
    ranked = sorted(found.values(), key=lambda s: (-s.similarity, s.source != SOURCE_REVIEWED))
    return [s for s in ranked if s.similarity > 0][:limit]
