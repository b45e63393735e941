"""Meaning vectors kept in the database (chatbot/meaning_store.py): what a
restarted server finds instead of embedding again."""
import numpy as np
import sqlalchemy as sa

from chatbot import meaning, meaning_store
from chatbot.database import QuestionMeaning
from chatbot.extensions import db


def unit(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, meaning.DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_vectors_come_back_by_question_and_encoder(app):
    vectors = unit(3)
    with app.app_context(), db.engine.connect() as c:
        assert meaning_store.save(c, "e5-small", dict(zip(["배고파", "안녕", "비 와"], vectors)), limit=100) == 3
        found = meaning_store.load(c, "e5-small", ["  배고파 ", "안녕", "처음 보는 질문"])
        assert set(found) == {"  배고파 ", "안녕"}  # asked as given, looked up normalised
        assert np.allclose(found["안녕"], vectors[1], atol=1e-3) and found["안녕"].dtype == np.float32
        assert meaning_store.load(c, "another-encoder", ["안녕"]) == {}
        # Stored again (another process got there first): nothing added, nothing broken.
        assert meaning_store.save(c, "e5-small", {"안녕": vectors[2]}, limit=100) == 0
        assert np.allclose(meaning_store.load(c, "e5-small", ["안녕"])["안녕"], vectors[1], atol=1e-3)


def test_a_broken_row_is_not_a_vector(app):
    with app.app_context(), db.engine.connect() as c:
        meaning_store.save(c, "e5-small", {"안녕": unit(1)[0]}, limit=100)
        for damaged in (b"\x00\x01\x02", b"\x00\x01", b"\xff" * (2 * meaning.DIM)):  # odd, short, NaN
            c.execute(QuestionMeaning.__table__.update().values(vector=damaged))
            c.commit()
            assert meaning_store.load(c, "e5-small", ["안녕"]) == {}


def test_past_the_limit_the_oldest_go(app):
    from datetime import datetime

    table = QuestionMeaning.__table__
    with app.app_context(), db.engine.connect() as c:
        meaning_store.save(c, "e5-small", {f"질문 {i}": v for i, v in enumerate(unit(5))}, limit=10)
        c.execute(table.update().values(created_at=datetime(2024, 1, 1)))  # older than what follows
        c.commit()
        meaning_store.save(c, "e5-small", {f"새 질문 {i}": v for i, v in enumerate(unit(4, 1))}, limit=6)
        assert c.scalar(sa.select(sa.func.count()).select_from(table)) == 6
        newer = meaning_store.load(c, "e5-small", [f"새 질문 {i}" for i in range(4)])
        assert len(newer) == 4  # the 4 new ones, and 2 of the older
        assert len(meaning_store.load(c, "e5-small", [f"질문 {i}" for i in range(5)])) == 2
