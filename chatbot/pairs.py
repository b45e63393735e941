"""Question-answer pairs in the database: the starter set, reviewed and imported pairs.

Reading and writing CSV files is ``chatbot.pairs_csv`` (no Flask there, for
the trainer).
"""
import sqlalchemy as sa
from flask import current_app

from .database import REVIEWED, Exchange
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
    """Reviewed exchanges and imported pairs, oldest first, as Pairs."""
    rows = db.session.execute(
        sa.select(Exchange).where(Exchange.status == REVIEWED).order_by(Exchange.id)
    ).scalars()
    return [Pair(row.question, row.final_answer) for row in rows]


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

