"""Reviewers' corrections by meaning (issue 25, item 3): training and
reviewed questions in one index, scored alike, with the real encoder
(chatbot/meaning.py), through the chat as a user meets them."""
import time

import pytest

from chatbot import meaning, morph
from chatbot.database import ROUTE_KNOWN, ROUTE_MEMORY, ROUTE_UNSURE, Exchange
from chatbot.extensions import db
from helpers import add_reviewed, ask, connect, tiny_model

FORGOT = "비밀번호를 잊어버렸어요"
IN_OTHER_WORDS = "암호가 기억나지 않아요"  # no content word in common; 0.73 by meaning
ANSWER = "설정에서 비밀번호를 다시 만들 수 있어요."
UNRELATED = ("오늘 점심 뭐 먹지?", "비행기 표 예매해 줘", "안녕")


def reply(sock, text):
    name, data = ask(sock, {"text": text})
    assert name == "reply", data
    return data


@pytest.fixture
def app(make_app):
    app = make_app(CORRECTION_REFRESH_SECONDS=3600)
    tiny_model(app.config["MODEL_DIR"])
    return app


def test_the_words_share_no_content_word():
    """What makes the first test one of meaning: TF-IDF finds nothing."""
    assert not set(morph.question_key(FORGOT).split()) & set(morph.question_key(IN_OTHER_WORDS).split())


def test_a_paraphrase_in_other_words_gets_the_correction_at_once(app):
    sock = connect(app)
    assert reply(sock, IN_OTHER_WORDS)["answer"] != ANSWER
    add_reviewed(app, FORGOT, ANSWER)
    got = reply(sock, IN_OTHER_WORDS)
    assert (got["answer"], got["route"]) == (ANSWER, ROUTE_MEMORY)
    with app.app_context():  # the score is stored as the reply's confidence
        assert db.session.get(Exchange, got["id"]).confidence == pytest.approx(0.73, abs=0.03)
    for text in UNRELATED:
        other = reply(sock, text)
        assert other["route"] != ROUTE_MEMORY and other["answer"] != ANSWER, text


def test_by_words_alone_the_paraphrase_is_not_found(make_app):
    """The same correction with a model trained with meaning off: the
    paraphrase shares no word, so it does not get it (what meaning adds)."""
    app = make_app(CORRECTION_REFRESH_SECONDS=3600)
    tiny_model(app.config["MODEL_DIR"], meaning="off")
    add_reviewed(app, FORGOT, ANSWER)
    sock = connect(app)
    assert reply(sock, FORGOT)["answer"] == ANSWER  # the exact key
    assert reply(sock, IN_OTHER_WORDS)["answer"] != ANSWER


def test_a_correction_takes_over_a_training_question_only_where_it_is_nearer(app):
    """helpers.TINY_PAIRS has 배고파 -> 맛있는 거 드세요.  A correction of
    너무 배고프다 (0.5 from 배고파) answers itself and what is nearer to it,
    not 배고파, which is nearest to its own training question."""
    add_reviewed(app, "너무 배고프다", "라면 어때요?")
    sock = connect(app)
    trained = reply(sock, "배고파")
    assert (trained["answer"], trained["route"]) == ("맛있는 거 드세요.", ROUTE_KNOWN)
    near = reply(sock, "진짜 너무 배고프다")
    assert (near["answer"], near["route"]) == ("라면 어때요?", ROUTE_MEMORY)


def test_below_the_threshold_a_near_correction_beats_i_do_not_know(make_app):
    """With a threshold no reply reaches, the reviewed answer at
    CORRECTION_MEANING_SIMILARITY or more is still given; a question far
    from it gets "잘 모르겠어요"."""
    app = make_app(CORRECTION_REFRESH_SECONDS=3600, MIN_CONFIDENCE=0.99, UNSURE_REPLIES=["모름"])
    tiny_model(app.config["MODEL_DIR"])
    add_reviewed(app, FORGOT, ANSWER)
    sock = connect(app)
    near = reply(sock, IN_OTHER_WORDS)
    assert (near["answer"], near["route"]) == (ANSWER, ROUTE_MEMORY)
    far = reply(sock, "비행기 표 예매해 줘")
    assert (far["answer"], far["route"]) == ("모름", ROUTE_UNSURE)


def test_one_embedding_and_one_model_call_per_message(app):
    """The question is embedded once, on the one model-thread call that
    weighs the training and the reviewed questions together."""
    add_reviewed(app, FORGOT, ANSWER)
    sock = connect(app)
    reply(sock, "안녕")  # the model and the index are loaded, the encoder warm
    responder = app.extensions["chatbot.responder"]
    calls = []
    run = responder._batcher._run
    responder._batcher._run = lambda fn, *args: calls.append(fn.__name__) or run(fn, *args)
    encoder = meaning.encoder()
    encoder._cache.clear()  # the process's encoder: other tests asked this question too
    misses, hits = encoder.misses, encoder.hits
    assert reply(sock, IN_OTHER_WORDS)["answer"] == ANSWER
    assert calls == ["known_replies"]
    assert (encoder.misses - misses, encoder.hits - hits) == (1, 0)
    assert reply(sock, IN_OTHER_WORDS)["answer"] == ANSWER  # asked again: from the encoder's cache
    assert (encoder.misses - misses, encoder.hits - hits) == (1, 1)


def test_a_rebuild_embeds_only_the_new_reviewed_questions(app, monkeypatch):
    """The last build's vectors are kept, and a question the trainer embedded
    (its cache file) is read from there: only what is new is embedded."""
    embedded = []
    original = meaning.Encoder.embed_uncached

    def recording(self, texts, batch=64):
        embedded.append(list(texts))
        return original(self, texts, batch)

    monkeypatch.setattr(meaning.Encoder, "embed_uncached", recording)
    sock = connect(app)
    add_reviewed(app, FORGOT, ANSWER)
    assert reply(sock, IN_OTHER_WORDS)["answer"] == ANSWER
    assert embedded == [[meaning.normalise(FORGOT)]]
    add_reviewed(app, "택배 언제 와요?", "보통 이틀 걸려요.")
    add_reviewed(app, "배고파", "라면 어때요?")  # a training question: in the trainer's cache
    assert reply(sock, "배송은 얼마나 걸려요?")["route"] is not None
    assert embedded == [[meaning.normalise(FORGOT)], ["택배 언제 와요?"]]
    built = app.extensions["chatbot.responder"].corrections.current(by_meaning=True)
    assert built.vectors.shape == (3, meaning.DIM)


def test_only_the_newest_reviewed_questions_get_a_vector(make_app):
    """CORRECTION_MEANING_LIMIT bounds the vectors (memory and embedding
    time); an older correction still answers its own question exactly."""
    app = make_app(CORRECTION_REFRESH_SECONDS=3600, CORRECTION_MEANING_LIMIT=1)
    tiny_model(app.config["MODEL_DIR"])
    add_reviewed(app, FORGOT, ANSWER)
    add_reviewed(app, "택배 언제 와요?", "보통 이틀 걸려요.")
    sock = connect(app)
    assert reply(sock, IN_OTHER_WORDS)["answer"] != ANSWER  # FORGOT has no vector now
    assert reply(sock, FORGOT)["answer"] == ANSWER
    built = app.extensions["chatbot.responder"].corrections.current(by_meaning=True)
    assert built.vectors.shape == (1, meaning.DIM)


def test_with_a_broken_encoder_the_corrections_are_built_once(make_app, tmp_path):
    """A model trained with meaning in a server whose encoder cannot load
    answers by words; its reviewed answers are then built once, like any
    words-only build, not again for every message in want of vectors."""
    import shutil

    broken = tmp_path / "e5.bin"
    broken.write_bytes(b"E5S1" + b"\0" * 64)
    app = make_app(CORRECTION_REFRESH_SECONDS=3600, MEANING_MODEL_FILE=str(broken))
    shutil.copytree(tiny_model(tmp_path / "trained"), tmp_path / "models" / "20260101-000000")
    (tmp_path / "models" / "current").symlink_to("20260101-000000")
    add_reviewed(app, FORGOT, ANSWER)
    corrections = app.extensions["chatbot.responder"].corrections
    builds = []
    load = corrections._load
    corrections._load = lambda *args: builds.append(args[-1]) or load(*args)
    sock = connect(app)
    for text in ("안녕", "배고파", FORGOT, "비행기 표 예매해 줘"):
        reply(sock, text)
    assert reply(sock, FORGOT)["answer"] == ANSWER
    assert not meaning.encoder().status()["loaded"]
    assert builds == [False]


def test_a_large_import_is_embedded_a_few_questions_at_a_time(app, monkeypatch):
    """A chat waits for at most EMBED_AT_ONCE embeddings (the newest
    reviewed questions); the rest are embedded in the background, a few per
    model-thread step, and then match by meaning too."""
    from chatbot import corrections as corrections_module

    monkeypatch.setattr(corrections_module, "EMBED_AT_ONCE", 3)
    embedded = []
    original = meaning.Encoder.embed_uncached
    monkeypatch.setattr(meaning.Encoder, "embed_uncached",
                        lambda self, texts, batch=64: embedded.append(list(texts)) or original(self, texts, batch))
    add_reviewed(app, FORGOT, ANSWER)  # the oldest: embedded last
    newer = [f"{n}번 주문은 언제 도착해요?" for n in range(1, 9)]
    for question in newer:
        add_reviewed(app, question, "곧 도착해요.")
    sock = connect(app)
    first = reply(sock, IN_OTHER_WORDS)
    assert first["answer"] != ANSWER  # not embedded yet
    assert embedded == [newer[-3:]]
    assert reply(sock, FORGOT)["answer"] == ANSWER  # its own question, exactly, meanwhile
    corrections = app.extensions["chatbot.responder"].corrections
    with app.app_context():
        for _ in range(200):
            if len(corrections.current(by_meaning=True).meaning_rows) == 9:
                break
            time.sleep(0.05)
    assert sorted(q for chunk in embedded for q in chunk) == sorted(newer + [FORGOT])
    assert [len(chunk) for chunk in embedded] == [3, 3, 3]
    assert embedded[-1][-1] == FORGOT
    got = reply(sock, IN_OTHER_WORDS)
    assert (got["answer"], got["route"]) == (ANSWER, ROUTE_MEMORY)


def test_the_server_loads_what_answers_before_the_first_chat(app):
    """Responder.warm_up (started with the server, chat.init_app): the
    model, the encoder and the reviewed answers; the first chat then loads
    nothing."""
    add_reviewed(app, FORGOT, ANSWER)
    responder = app.extensions["chatbot.responder"]
    responder.warm_up(app)
    assert responder._bot is not None and responder._bot.meanings is not None
    assert meaning.encoder().status()["loaded"]
    loads = []
    for name in ("_load",):
        for owner in (responder, responder.corrections):
            original = getattr(owner, name)
            setattr(owner, name, lambda *args, _o=original, _n=type(owner).__name__: loads.append(_n) or _o(*args))
    got = reply(connect(app), IN_OTHER_WORDS)
    assert (got["answer"], got["route"]) == (ANSWER, ROUTE_MEMORY)
    assert loads == []


def test_a_chat_that_waited_for_the_first_build_does_not_embed_the_rest(app, monkeypatch):
    """The server's warm-up builds the reviewed answers while the first chat
    arrives: the chat waits for that build, then answers; the questions the
    build left unembedded are the background's, not the chat's (it waited a
    minute for 2,000 of them in bench-smallvm)."""
    import threading

    from chatbot import corrections as corrections_module

    monkeypatch.setattr(corrections_module, "EMBED_AT_ONCE", 1)
    callers = []
    original = meaning.Encoder.embed_uncached

    def slow(self, texts, batch=64):
        callers.append(threading.current_thread())
        time.sleep(0.3)
        return original(self, texts, batch)

    monkeypatch.setattr(meaning.Encoder, "embed_uncached", slow)
    for n in range(1, 8):
        add_reviewed(app, f"{n}번 주문은 언제 도착해요?", "곧 도착해요.")
    responder = app.extensions["chatbot.responder"]
    responder.model()  # loaded, as the warm-up does first
    corrections = responder.corrections
    warm_up = threading.Thread(target=responder.warm_up, args=(app,))
    warm_up.start()
    for _ in range(200):
        if corrections._lock.locked():
            break
        time.sleep(0.005)
    assert corrections._lock.locked()  # the warm-up is building
    got = reply(connect(app), "7번 주문은 언제 도착해요?")
    assert got["answer"] == "곧 도착해요."
    assert threading.main_thread() not in callers
    warm_up.join()


def test_a_restarted_server_finds_the_reviewed_questions_vectors_in_the_database(app, monkeypatch):
    """A build stores the vectors it embedded (chatbot/meaning_store.py);
    the next process's build, with nothing in memory, reads them instead of
    embedding the reviewed questions again."""
    from chatbot.corrections import Corrections

    lost = "지난주에 산 파란 우산을 지하철에 두고 내렸어요"
    add_reviewed(app, lost, "분실물 센터에 전화해 보세요.")
    add_reviewed(app, FORGOT, ANSWER)
    sock = connect(app)
    assert reply(sock, IN_OTHER_WORDS)["answer"] == ANSWER  # built: both embedded, and stored
    embedded = []
    original = meaning.Encoder.embed_uncached
    monkeypatch.setattr(meaning.Encoder, "embed_uncached",
                        lambda self, texts, batch=64: embedded.append(list(texts)) or original(self, texts, batch))
    responder = app.extensions["chatbot.responder"]
    old = responder.corrections  # a restarted server's: nothing built, nothing in memory
    responder.corrections = Corrections(old._run, old.min_similarity, old.refresh_seconds, old.unsure_similarity,
                                        old.meaning_similarity, old.meaning_limit, old.models_root,
                                        old._run_in_background)
    got = reply(sock, IN_OTHER_WORDS)
    assert (got["answer"], got["route"]) == (ANSWER, ROUTE_MEMORY)
    assert embedded == []
    assert reply(sock, "우산을 지하철에 놓고 내렸어요")["answer"] == "분실물 센터에 전화해 보세요."
