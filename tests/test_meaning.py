"""The sentence encoder (chatbot/meaning.py), the real one: its vectors, its
cache, several threads at once, a broken file, and the event loop."""
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from chatbot import meaning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def encoder():
    return meaning.Encoder(cache_size=8)


def test_vectors_are_unit_length_and_near_in_meaning(encoder):
    """헤어졌어 and 이별했어 share no word, yet each is the other's nearest
    among questions about food, weather, money and code."""
    questions = ["이별했어", "헤어졌어", "배고파", "오늘 날씨 어때", "주식 투자 어떻게 해", "파이썬 리스트 정렬하는 법"]
    vectors = encoder.embed(questions)
    assert vectors.shape == (6, meaning.DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similar = vectors @ vectors.T
    np.fill_diagonal(similar, -1)
    assert similar[0].argmax() == 1 and similar[1].argmax() == 0
    assert similar[0, 1] > similar[0, 2:].max() + 0.05


def test_the_cache_keys_on_the_normalised_question_and_forgets_the_oldest(encoder):
    encoder._cache.clear()
    first = encoder.embed(["배고파"])
    misses = encoder.misses
    again = encoder.embed(["  배고파 ", "배고파\t"])  # the same question, spaced differently
    assert encoder.misses == misses and np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[0])
    wide = encoder.embed(["ＯＫ 배고파"])  # full-width forms folded (NFKC): the cache has "OK 배고파"
    assert np.array_equal(encoder.embed(["OK 배고파"]), wide) and encoder.misses == misses + 1
    misses = encoder.misses
    assert meaning.normalise("ＡＢＣ  가나\t다 ") == "ABC 가나 다"
    batch = encoder.embed([f"질문 {n}" for n in range(10)] + ["질문 3"])  # a repeat in one call: embedded once
    assert encoder.misses == misses + 10 and np.array_equal(batch[3], batch[10])
    assert len(encoder._cache) == 8  # cache_size: the oldest went first
    assert "배고파" not in encoder._cache and "질문 9" in encoder._cache
    unbatched = encoder.embed(["질문 5"])[0]  # the same vector alone as in a batch
    assert np.allclose(unbatched, batch[5], atol=1e-5)
    assert encoder.all_cached(["질문 9", " 질문 5"]) and not encoder.all_cached(["질문 9", "배고파"])


def test_several_threads_embed_at_once_as_one_alone(encoder):
    questions = [f"{n}번째 질문은 무엇일까요" for n in range(24)]
    alone = meaning.Encoder(cache_size=0).embed_uncached(questions)
    shared = meaning.Encoder(cache_size=0)
    results, errors = {}, []

    def work(n):
        try:
            results[n] = shared.embed(questions[n::4])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and sorted(results) == [0, 1, 2, 3]
    for n in range(4):
        assert np.allclose(results[n], alone[n::4], atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "truncated", "noise", "empty"])
def test_a_broken_model_file_turns_meaning_off_with_one_clear_error(tmp_path, caplog, damage):
    """The engine would read a truncated file past its end (and kill the
    process): the child process that tries it first dies instead."""
    good = meaning._bundled_file(meaning.DEFAULT_ENCODER)
    broken = tmp_path / "e5.bin"
    if damage == "truncated":  # the right header, then the end of the file
        broken.write_bytes(Path(good).read_bytes()[:4096])
    elif damage == "noise":
        broken.write_bytes(b"E5S1" + os.urandom(100_000))
    elif damage == "empty":
        broken.write_bytes(b"")
    encoder = meaning.Encoder(model_file=str(broken))
    with caplog.at_level(logging.ERROR, logger="chatbot.meaning"):
        for _ in range(3):
            with pytest.raises(meaning.Unavailable):
                encoder.embed(["배고파"])
        assert not encoder.available()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(broken) in errors[0].getMessage()
    assert encoder.status()["loaded"] is False and str(broken) in encoder.status()["error"]


def test_off_and_unknown_encoders(caplog):
    with caplog.at_level(logging.INFO, logger="chatbot.meaning"):
        off = meaning.Encoder(name=meaning.OFF)
        assert not off.available()
    assert [r.levelno for r in caplog.records] == [logging.INFO]  # off by choice is no error
    with pytest.raises(meaning.Unavailable, match="unknown MEANING_ENCODER"):
        meaning.Encoder(name="gpt-9").engine()


def test_the_app_configures_the_process_encoder(make_app, tmp_path):
    broken = tmp_path / "e5.bin"
    broken.write_bytes(b"nothing")
    make_app(MEANING_MODEL_FILE=str(broken), MEANING_CACHE_SIZE=3, MODEL_THREADS=1)
    assert meaning.encoder().model_file == str(broken) and meaning.encoder().cache_size == 3
    assert not meaning.available()
    same = meaning.encoder()
    make_app(MEANING_MODEL_FILE=str(broken), MEANING_CACHE_SIZE=3, MODEL_THREADS=1)
    assert meaning.encoder() is same  # the same settings keep the one loaded
    make_app()
    assert meaning.encoder().model_file is None and meaning.available()


def test_never_on_the_event_loop():
    """Under gevent (the server's worker), the encoder is prepared on the
    hub's thread (its file checked by a child process, which only that
    thread can wait for); embedding there is refused, and on one of
    gevent's OS threads it works."""
    code = """
from gevent import monkey; monkey.patch_all()
import gevent
from gevent.threadpool import ThreadPool
from chatbot import meaning
encoder = meaning.Encoder()
pool = ThreadPool(1)
try:
    pool.apply(encoder.embed, (["배고파"],))
except RuntimeError as e:
    print("unprepared:", e)
print("prepared:", gevent.spawn(encoder.prepare).get())
try:
    gevent.spawn(encoder.embed, ["배고파"]).get()
except RuntimeError as e:
    print("refused:", e)
print("thread:", pool.apply(encoder.embed, (["배고파"],)).shape)
def with_a_hub_of_its_own():  # as gunicorn's pool threads have: not the event loop for all that
    gevent.get_hub()
    return encoder.embed(["밥 먹자"]).shape
print("thread with a hub:", pool.apply(with_a_hub_of_its_own))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "unprepared: meaning: prepare the encoder on the event loop's thread" in done.stdout
    assert "prepared: True" in done.stdout
    assert "refused: meaning.embed must run on a model or heavy-work thread" in done.stdout
    assert "thread: (1, 384)" in done.stdout and "thread with a hub: (1, 384)" in done.stdout


# -- known answers by meaning (chatbot/bot.py, chatbot/train.py) ---------------------------------


@pytest.fixture(scope="module")
def meaning_model(tmp_path_factory):
    from helpers import tiny_model

    return tiny_model(tmp_path_factory.mktemp("models"))


def test_the_trainer_writes_the_questions_meanings_and_picks_the_word_weight_on_dev(meaning_model):
    import json

    from chatbot.model_dir import MEANING_FILE

    config = json.loads((meaning_model / "config.json").read_text(encoding="utf-8"))
    answers = json.loads((meaning_model / "answers.json").read_text(encoding="utf-8"))
    vectors = np.load(meaning_model / MEANING_FILE)
    assert config["meaning_encoder"] == "e5-small" and config["word_weight"] in (0.0, 0.1, 0.2, 0.3)
    assert vectors.shape == (len(answers["questions"]), meaning.DIM) and vectors.dtype == np.float16
    assert "word weight" in (meaning_model / "train.log").read_text(encoding="utf-8")


def test_a_question_in_other_words_gets_the_training_answer(meaning_model, tmp_path):
    """자기소개 해줘 shares no word with 너 누구야: by meaning it gets that
    answer; the same model with meaning off (and one trained without it)
    cannot find it, and the network writes a reply instead."""
    from helpers import tiny_model

    from chatbot.bot import Chatbot

    bot = Chatbot.load(meaning_model)
    [reply] = bot.replies(["자기소개 해줘"])
    assert (reply.text, reply.known, reply.reviewed) == ("저는 한마디예요.", True, False) and reply.confidence > 0.3
    words_dir = tiny_model(tmp_path / "words", meaning="off")
    assert not (words_dir / "meaning.npy").exists()
    words_only = Chatbot.load(words_dir)
    assert words_only.meanings is None and words_only.config.meaning_encoder == ""
    [reply] = words_only.replies(["자기소개 해줘"])
    assert not reply.known


def test_without_the_encoder_the_model_answers_by_words(meaning_model, make_app):
    """A model trained with meaning, in a process whose encoder is off (or
    failed to load): it loads, and answers by words as before."""
    from chatbot.bot import Chatbot

    make_app(MEANING_ENCODER="off")
    try:
        bot = Chatbot.load(meaning_model)
        assert bot.meanings is None
        assert bot.replies(["안녕하세요"])[0].text == "안녕하세요! 반가워요."
        assert not bot.replies(["자기소개 해줘"])[0].known
    finally:
        meaning.configure()


def test_a_retrain_embeds_only_the_questions_it_has_not_seen(tmp_path):
    encoder = meaning.Encoder(cache_size=0)
    cache = tmp_path / "cache" / "e5-small.npz"
    first, new = meaning.cached_vectors(encoder, ["배고파", "안녕", "배고파"], cache)
    assert new == 2 and first.shape == (3, meaning.DIM) and np.array_equal(first[0], first[2])
    second, new = meaning.cached_vectors(encoder, ["안녕", "고마워"], cache)
    assert new == 1 and np.array_equal(second[0], first[1])
    again, new = meaning.cached_vectors(encoder, ["배고파"], cache)  # older ones are kept, up to a bound
    assert new == 0 and np.array_equal(again[0], first[0])
    bounded, new = meaning.cached_vectors(encoder, ["질문 하나"], cache, limit=2)
    assert new == 1 and len(np.load(cache)["texts"]) == 2
    cache.write_bytes(b"broken")  # an unreadable cache: everything embedded again, nothing lost
    third, new = meaning.cached_vectors(encoder, ["안녕"], cache)
    assert new == 1 and np.allclose(third[0], first[1], atol=1e-5)


def test_the_word_weight_is_picked_the_same_block_by_block():
    """pick_word_weight takes the dev questions a block at a time (the
    trainer's memory); any block size picks what all at once does."""
    from chatbot import train
    from chatbot.retrieval import AnswerIndex

    rng = np.random.default_rng(0)
    train_q = [["배", "고프", str(i % 7)] for i in range(40)]
    index = AnswerIndex(train_q, [f"답 {i % 5}" for i in range(40)])
    unit = lambda n: (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(rng.normal(size=(n, meaning.DIM)))
    meanings = unit(40).astype(np.float32)
    dev_tok = [(["배", str(i % 7), "졸려"], [], f"답 {i % 3}", "") for i in range(23)]
    dev_meanings = (0.9 * meanings[:23] + 0.1 * unit(23)).astype(np.float32)
    picks = {train.pick_word_weight(index, meanings, dev_tok, dev_meanings, (0.0, 0.3, 0.7, 1.0), block=b)
             for b in (1, 5, 23, 1000)}
    assert len(picks) == 1


def test_the_trainer_embeds_in_a_child_process(tmp_path, monkeypatch, capsys):
    """The trainer's vectors come from a child process (its encoder's memory
    is the OS's again before the network is built), the same as embedding
    here, cached; with a broken file the child says why and the model is
    trained by words alone."""
    from chatbot import train

    before = len(meaning._encoder._cache) if meaning._encoder else 0
    cache = tmp_path / "cache.npz"
    vectors, new = meaning.EmbeddingChild(["배고파", "안녕", "배고파"], cache).result()
    assert new == 2 and vectors.shape == (3, meaning.DIM) and vectors.dtype == np.float32
    assert np.allclose(vectors, meaning.Encoder(cache_size=0).embed_uncached(["배고파", "안녕", "배고파"]), atol=1e-5)
    assert meaning.EmbeddingChild(["안녕"], cache).result()[1] == 0
    # On a machine with more cores the child gets more threads: the same vectors.
    two, _ = meaning.EmbeddingChild(["배고파", "안녕"], tmp_path / "two.npz", threads=2).result()
    assert np.allclose(two, vectors[:2], atol=1e-5)
    assert (len(meaning._encoder._cache) if meaning._encoder else 0) == before  # nothing embedded here
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"E5S1" + os.urandom(1000))
    with pytest.raises(meaning.Unavailable, match="broken.bin"):
        meaning.EmbeddingChild(["배고파"], tmp_path / "other.npz", model_file=str(broken)).result()
    monkeypatch.setenv("MEANING_MODEL_FILE", str(broken))
    tokenized = train.tokenize_pairs([("배고파", "밥 드세요.")])
    child = train.start_embedding(tokenized, tmp_path / "models", meaning.DEFAULT_ENCODER, 1)
    assert train.finish_embedding(child) is None
    assert "meaning: off for this model" in capsys.readouterr().out


def test_the_embedding_child_runs_below_the_trainer(tmp_path):
    """The network is the retrain's longer job: the child embeds at the
    lowest priority, so that on two shared cores it takes what the trainer
    leaves instead of slowing its epochs."""
    import time

    child = meaning.EmbeddingChild([f"오늘 {i}번째 질문이에요" for i in range(40)], tmp_path / "cache.npz")
    seen = set()
    while child._process.poll() is None:
        try:
            seen.add(os.getpriority(os.PRIO_PROCESS, child._process.pid))
        except ProcessLookupError:  # it ended between poll and getpriority
            break
        time.sleep(0.005)
    assert child.result()[1] == 40
    assert meaning.EMBEDDING_NICE == 19 and 19 in seen


def test_a_server_whose_encoder_is_broken_still_answers_and_the_admin_says_why(make_app, make_reviewer, tmp_path):
    """The model was trained with meaning; this server's encoder file is
    broken: one error in the log, every question still answered (by words),
    and the admin home page warns the reviewer."""
    from helpers import ask, connect, tiny_model

    broken = tmp_path / "e5.bin"
    broken.write_bytes(b"E5S1" + b"\0" * 64)
    app = make_app(MEANING_MODEL_FILE=str(broken), WTF_CSRF_ENABLED=False)
    try:
        shutil.copytree(tiny_model(tmp_path / "trained"), tmp_path / "models" / "20260101-000000")
        (tmp_path / "models" / "current").symlink_to("20260101-000000")
        client = app.test_client()
        home = client.get("/admin/")  # before any question: nothing tried, nothing to warn of
        records = []  # (not caplog: the migrations' logging config took its handler off the root)
        handler = logging.Handler(logging.ERROR)
        handler.emit = records.append
        logging.getLogger("chatbot.meaning").addHandler(handler)
        try:
            sock = connect(app)  # a connection has the model loaded already
            for question in ("안녕하세요", "자기소개 해줘", "배고파"):
                name, reply = ask(sock, {"text": question})
                assert name == "reply" and reply["answer"], reply
        finally:
            logging.getLogger("chatbot.meaning").removeHandler(handler)
        assert "killed by signal" in meaning.encoder().status()["error"]  # the engine would have killed us
        errors = [r for r in records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(broken) in errors[0].getMessage()
        make_reviewer()
        assert client.post("/login", data={"username": "reviewer", "password": "correct horse battery"}
                           ).status_code == 302
        page = client.get("/admin/").get_data(as_text=True)
        assert 'id="meaning-warning"' in page and str(broken) in page
    finally:
        meaning.configure()
    assert home.status_code in (302, 401)
