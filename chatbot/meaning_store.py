"""Questions' meaning vectors in the database (table question_meaning), so
that a restarted server, or another of its processes, finds what was
embedded before instead of embedding it again (about 25 ms of CPU each:
seconds to minutes after a restart with many reviewed answers).

Keyed by the encoder's name and the SHA-256 of the normalised question;
vectors are float16, as the trainer's cache file has them.  Bounded:
past ``limit`` rows the oldest go.  Calls take a connection (SQLAlchemy
Core) so they can run on a model thread with a connection of their own.
"""
import hashlib

import sqlalchemy as sa

from . import meaning
from .database import QuestionMeaning, insert_new, utcnow

TABLE = QuestionMeaning.__table__
CHUNK = 500  # questions per SELECT ... IN (...): under every database's limit on parameters


def to_blob(vector) -> bytes:
    """A vector as the database keeps it: meaning.DIM float16, little-endian
    (here and in question_group, chatbot/grouping.py)."""
    import numpy as np

    return np.asarray(vector, dtype="<f2").tobytes()


def from_blob(blob: bytes):
    """A stored vector as float32, or None when it is not one of
    meaning.DIM values (a damaged row)."""
    import numpy as np

    if len(blob) != 2 * meaning.DIM:
        return None
    return np.frombuffer(blob, dtype="<f2").astype(np.float32)


def question_hash(question: str) -> str:
    return hashlib.sha256(meaning.normalise(question).encode("utf-8")).hexdigest()


def _rows(connection, encoder_name: str, hashes, *columns):
    """The stored rows of ``hashes`` (their ``columns``), CHUNK hashes a statement."""
    for start in range(0, len(hashes), CHUNK):
        yield from connection.execute(sa.select(*columns).where(
            TABLE.c.encoder == encoder_name, TABLE.c.question_hash.in_(hashes[start:start + CHUNK])))


def load(connection, encoder_name: str, questions) -> dict:
    """The stored vectors of ``questions``, by question (float32)."""
    import numpy as np

    by_hash = {question_hash(q): q for q in questions}
    found = {}
    for key, blob in _rows(connection, encoder_name, list(by_hash), TABLE.c.question_hash, TABLE.c.vector):
        vector = from_blob(blob)
        if vector is not None and np.isfinite(vector).all():
            found[by_hash[key]] = vector
    return found


def save(connection, encoder_name: str, vectors: dict, limit: int) -> int:
    """Store ``vectors`` (question -> vector) not stored yet, then drop the
    oldest rows past ``limit``; commits.  Another process storing the same
    question at the same time is no error.  Returns the rows it tried to add."""
    if not vectors or limit <= 0:
        return 0
    rows = {question_hash(q): to_blob(v) for q, v in vectors.items()}
    for (key,) in _rows(connection, encoder_name, list(rows), TABLE.c.question_hash):
        rows.pop(key, None)
    now = utcnow()
    values = [{"encoder": encoder_name, "question_hash": key, "vector": blob, "created_at": now}
              for key, blob in rows.items()]
    insert_new(connection, TABLE, values)
    added = len(values)
    if added:
        excess = connection.scalar(sa.select(sa.func.count()).select_from(TABLE)) - limit
        if excess > 0:
            oldest = connection.execute(sa.select(TABLE.c.encoder, TABLE.c.question_hash)
                                        .order_by(TABLE.c.created_at, TABLE.c.question_hash).limit(excess)).all()
            for start in range(0, len(oldest), CHUNK):
                for name in {e for e, _ in oldest[start:start + CHUNK]}:
                    connection.execute(TABLE.delete().where(
                        TABLE.c.encoder == name,
                        TABLE.c.question_hash.in_([h for e, h in oldest[start:start + CHUNK] if e == name])))
    connection.commit()
    return added
