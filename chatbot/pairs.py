"""Question-answer pairs in the database: the starter set, reviewed and imported pairs.

Reading and writing CSV files is ``chatbot.pairs_csv`` (no Flask there, for
the trainer).
"""
import sqlalchemy as sa
from flask import current_app

from . import morph
from .database import REVIEWED, ROUTE_IMPORT, Exchange, utcnow
from .extensions import db
from .pairs_csv import Pair, PairsFileError, read_pairs_csv


def starter_pairs():
    """The pairs shipped with the project, so a fresh install can talk."""
    pairs, errors = read_pairs_csv(current_app.config["STARTER_PAIRS"])
    if errors:
        line, reason = errors[0]
        raise PairsFileError(f"starter pairs line {line}: {reason}")
    return pairs


def reviewed_pairs():
    """Reviewed exchanges and imported pairs, oldest first, as Pairs (the
    correction where there is one).  Plain rows of three columns, not ORM
    objects: a million of them fit."""
    rows = db.session.execute(
        sa.select(Exchange.question, Exchange.answer, Exchange.corrected_answer)
        .where(Exchange.status == REVIEWED).order_by(Exchange.id))
    return [Pair(question, corrected or answer) for question, answer, corrected in rows]


def training_pairs():
    """Everything the model learns from: starter plus reviewed pairs.

    Rows marked needs-deletion are never included (their status is not
    reviewed); duplicates are dropped, keeping the first.
    """
    seen, result = set(), []
    for pair in starter_pairs() + reviewed_pairs():
        key = (pair.question, pair.answer)
        if key not in seen:
            seen.add(key)
            result.append(key)
    return result


def add_imported_pairs(pairs):
    """Store pairs as reviewed imported exchanges, skipping ones already imported.

    Returns (added, duplicates); commits.
    """
    existing = set(db.session.execute(
        sa.select(Exchange.question, Exchange.answer).where(Exchange.route == ROUTE_IMPORT)).all())
    now, added, duplicates = utcnow(), 0, 0
    for pair in pairs:
        if (pair.question, pair.answer) in existing:
            duplicates += 1
            continue
        existing.add((pair.question, pair.answer))
        db.session.add(Exchange(
            question=pair.question, question_key=morph.question_key(pair.question),
            answer=pair.answer, route=ROUTE_IMPORT, status=REVIEWED, reviewer="import",
            reviewed_at=now, session_id=None))
        added += 1
    db.session.commit()
    return added, duplicates
