"""What a correction will change, before it is saved (issue 26, item 3):
how many of the past unreviewed questions would get this correction at
once, and the nearest five of them.

Why: a reviewed answer also answers the questions nearest to it (chatbot/
corrections.py).  A correction to a vague question (뭐해?) can reach far:
a reviewer who sees that 안녕, 잘 지내? and 오늘 날씨 어때 would now get
their answer writes a narrower one, or leaves the question to the model.

The answer itself does not matter, only the question: a past question is
reached when, with the corrected questions added to the reviewed ones, one
of them would answer it (bot.Chatbot.known_replies: the nearest of the
training and reviewed questions by the bot's own score, sure enough; or, with no
model, corrections.Corrections.lookup's rule).  A question the network
would write for and then call unsure would get the correction too, below
its threshold; telling those apart would mean running the network on every
candidate, so they are not counted.

The candidates: the keys of the newest CORRECTION_PREVIEW_ROWS unreviewed
exchanges, with the meaning vectors the queue's grouping stored
(chatbot/grouping.py; a key not grouped yet is left out when the model
matches by meaning), the CANDIDATES nearest by meaning (or sharing a word)
scored.  Reading them is database work (``candidates``, on the request's
thread); the scoring is CPU work on a model thread (Responder.reach).
"""
from typing import NamedTuple

import sqlalchemy as sa

from . import grouping, meaning, meaning_store, morph
from .database import UNREVIEWED, Exchange, QuestionGroup, stored_key
from .extensions import db

NEAREST = 5  # the reached questions shown
CORRECTED_AT_MOST = 50  # a queue group's questions tried at once (its most frequent)
CANDIDATES = 300  # the past questions scored, the nearest first
MARK = "\x00reach"  # the corrected questions' answer in the trial build: no real answer is this


class Candidate(NamedTuple):
    key: str
    question: str  # the newest question asked with this key
    count: int  # its unreviewed exchanges
    vector: bytes | None  # its stored meaning vector (float16), if grouped


class Reached(NamedTuple):
    question: str
    count: int
    similarity: float  # the score it would get the correction with, 0..1


def candidates(window: int, exclude=()) -> list[Candidate]:
    """The keys of the newest ``window`` unreviewed exchanges, but ``exclude``."""
    newest = (sa.select(Exchange.question_key, Exchange.id)
              .where(Exchange.status == UNREVIEWED, Exchange.id >= grouping.window_start(window),
                     Exchange.question_key != "")
              .cte("newest").prefix_with("MATERIALIZED"))
    by_key = (sa.select(newest.c.question_key.label("key"), sa.func.count().label("count"),
                        sa.func.max(newest.c.id).label("last"))
              .group_by(newest.c.question_key).cte("by_key"))
    query = (sa.select(by_key.c.key, Exchange.question, by_key.c.count, QuestionGroup.vector)
             .select_from(by_key.join(Exchange, Exchange.id == by_key.c.last)
                          .outerjoin(QuestionGroup, QuestionGroup.question_key == by_key.c.key)))
    skip = set(exclude)
    return [Candidate(*row) for row in db.session.execute(query) if row[0] not in skip]


def reached(bot, reviewed, corrected, found: list[Candidate], limit: int = NEAREST):
    """``(exchanges, [Reached])``: how many unreviewed exchanges of ``found``
    the ``corrected`` questions ([(key, question)]) would answer at once
    once reviewed, and the ``limit`` nearest of them.  ``bot``: the model in
    use or None; ``reviewed``: a build of chatbot/corrections.py."""
    import numpy as np

    if not corrected or not found:
        return 0, []
    mine = bot.embed([question for _, question in corrected]) if bot is not None else None
    by_meaning = mine is not None  # the model matches by meaning, and the encoder works
    trial = reviewed.adding([(key, question, MARK) for key, question in corrected],
                            {meaning.normalise(q): v for (_, q), v in zip(corrected, mine)} if by_meaning else None)
    if by_meaning:
        stored = [meaning_store.from_blob(c.vector) if c.vector is not None else None for c in found]
        found = [c for c, vector in zip(found, stored) if vector is not None]
        if not found:
            return 0, []
        vectors = np.stack([vector for vector in stored if vector is not None])
        nearness = meaning.similarity(vectors, mine).max(axis=1)
    else:
        vectors = None
        nearness = trial.index.similarities([c.key.split() for c in found])[:, -len(corrected):].max(axis=1)
    order = [int(i) for i in np.argsort(-nearness, kind="stable")[:CANDIDATES] if by_meaning or nearness[i] > 0]
    if not order:
        return 0, []
    picked = [found[i] for i in order]
    if bot is not None:
        _, replies = bot.known_replies([c.question for c in picked], trial, [c.key for c in picked],
                                       vectors[order] if by_meaning else None)
        scores = [r.confidence if r is not None and r.reviewed and r.text == MARK else None for r in replies]
    else:
        matches = [trial.most_similar(c.key, trial.min_similarity) for c in picked]
        scores = [m[1] if m is not None and m[0] == MARK else None for m in matches]
    hits = sorted(((score, c) for score, c in zip(scores, picked) if score is not None), key=lambda sc: -sc[0])
    return (sum(c.count for _, c in hits),
            [Reached(c.question, c.count, round(min(1.0, max(0.0, float(score))), 3)) for score, c in hits[:limit]])


def corrected_of(questions) -> list[tuple[str, str]]:
    """[(key, question)] for questions being corrected, one per key (the first)."""
    out = {}
    for question in questions:
        out.setdefault(stored_key(morph.question_key(question)), question)
    return [(key, question) for key, question in out.items() if key]
