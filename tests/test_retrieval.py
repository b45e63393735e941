"""The known-answer index, and the model choosing among its answers."""
import json

import numpy as np
import pytest
import torch

from chatbot import morph
from chatbot.bot import Chatbot
from chatbot.inference import Network
from chatbot.model import Seq2Seq, save_model
from chatbot.model_dir import ModelConfig, ModelLoadError, Vocab
from chatbot.retrieval import ANSWERS_FILE, AnswerIndex

PAIRS = [("오늘 날씨 어때?", "맑고 따뜻해요."), ("오늘 날씨 좋다", "산책 가기 좋은 날이에요."),
         ("점심 뭐 먹지?", "비빔밥 어때요?"), ("점심 메뉴 추천해 줘", "비빔밥 어때요?"),
         ("춘천에 가고 싶어", "닭갈비 드시고 오세요."), ("주말에 뭐 해?", "집에서 쉬려고요.")]


def index_of(pairs):
    return AnswerIndex([morph.tokenize(q) for q, _ in pairs], [a for _, a in pairs])


def test_same_question_is_the_most_alike():
    sims = index_of(PAIRS).similarities([morph.tokenize("춘천에 가고 싶어")])[0]
    assert int(sims.argmax()) == 4 and float(sims[4]) == pytest.approx(1.0, abs=1e-5)
    assert (sims[:4] < 1).all() and (sims[5:] < 1).all()


def test_particles_do_not_hide_a_match():
    # 춘천까지 and 춘천에 share the morpheme 춘천: morphological analysis at work.
    sims = index_of(PAIRS).similarities([morph.tokenize("춘천까지 가려면?")])[0]
    assert int(sims.argmax()) == 4 and 0 < float(sims[4]) < 1


def test_unknown_words_find_nothing():
    index = index_of(PAIRS)
    assert not index.similarities([morph.tokenize("양자역학")]).any()
    assert index.similarities([]).shape == (0, len(PAIRS))


def test_similarity_is_scikit_learns_tfidf_cosine():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import linear_kernel

    def analyzer(text):
        return [t for t in morph.tokenize(text) if t != morph.BOUNDARY]

    questions = ["오늘 날씨 좋다 점심 뭐 먹지?", "춘천에 가고 싶어 오늘", "주말에 점심 뭐 해?"]  # only words it knows
    vectorizer = TfidfVectorizer(analyzer=analyzer)
    expected = linear_kernel(vectorizer.fit(q for q, _ in PAIRS).transform(questions),
                             vectorizer.transform(q for q, _ in PAIRS))
    index = index_of(PAIRS)
    tokens = [morph.tokenize(q) for q in questions]
    assert all(t in index.term_ids for q in tokens for t in q if t != morph.BOUNDARY)
    assert np.allclose(index.similarities(tokens), expected, atol=1e-5)


def test_unknown_words_make_a_question_less_alike():
    # scikit-learn drops unknown words, so "양자역학 어때?" would be as alike to
    # "오늘 날씨 어때?" as "어때?" alone; here the unknown word counts.
    index = index_of(PAIRS)
    alone, with_unknown = index.similarities([morph.tokenize("어때?"), morph.tokenize("양자역학 어때?")]).max(axis=1)
    assert 0 < with_unknown < alone
    assert index.similarities([morph.tokenize("양자역학")]).max() == 0


def test_save_and_load_give_the_same_index(tmp_path):
    index = index_of(PAIRS)
    index.save(tmp_path / ANSWERS_FILE)
    again = AnswerIndex.load(tmp_path / ANSWERS_FILE)
    questions = [morph.tokenize(q) for q in ["오늘 날씨", "점심 추천", "주말 계획"]]
    assert np.array_equal(again.similarities(questions), index.similarities(questions))
    assert again.answers == index.answers and again.question_tokens() == index.question_tokens()


# --- the model choosing ---------------------------------------------------------

TINY = dict(embed_dim=16, hidden_dim=32, max_reply_len=20, seed=3)


def model_and_vocab(**overrides):
    config = ModelConfig(**{**TINY, **overrides})
    vocab = Vocab.build(morph.tokenize(t) for pair in PAIRS for t in pair)
    torch.manual_seed(config.seed)
    return Seq2Seq(config, len(vocab)).eval(), vocab


def bot_with_index(**overrides):
    model, vocab = model_and_vocab(**overrides)
    return Chatbot(Network.from_module(model), vocab, model.config, answers=index_of(PAIRS))


def test_known_question_gets_a_known_answer_and_a_new_one_gets_written():
    bot = bot_with_index()
    writer = bot_with_index(known_answers=False)
    assert bot.reply("춘천에 가고 싶어") == "닭갈비 드시고 오세요."
    assert bot.reply("춘천까지 가고 싶다") == "닭갈비 드시고 오세요."  # worded differently
    # Nothing alike: the network writes it, exactly as it does without the index.
    assert bot.reply("양자역학") == writer.reply("양자역학")
    assert bot.reply("양자역학").strip()
    # A batch answers each question as it would alone.
    questions = ["춘천에 가고 싶어", "양자역학", "점심 뭐 먹지?", "오늘 날씨 어때?", "ㅋㅋㅋ"]
    assert bot.reply_batch(questions) == [bot.reply(q) for q in questions]


def test_known_answers_are_announced_before_written_ones():
    bot = bot_with_index()
    order = []
    questions = ["양자역학", "춘천에 가고 싶어", "ㅋㅋㅋ", "점심 뭐 먹지?"]
    replies = bot.reply_batch(questions, on_reply=lambda i, reply: order.append((i, reply.text, reply.known)))
    assert [(i, known) for i, _, known in order] == [(1, True), (3, True), (0, False), (2, False)]
    assert {i: reply for i, reply, _ in order} == dict(enumerate(replies))


def test_every_training_question_gets_its_own_answer():
    bot = bot_with_index()
    for q, a in PAIRS:
        assert bot.reply(q) == a


def test_encoder_states_alone_never_make_a_match():
    # Questions of unknown words encode alike; they share no word with any
    # training question, so the network writes their replies.
    bot = bot_with_index(state_weight=100.0, min_similarity=0.0)
    tokens = morph.tokenize("ㅋㅋㅋ")
    assert bot.known_matches([tokens], [bot.vocab.encode(tokens, True)])[0][0] is None
    assert bot.reply("ㅋㅋㅋ") == bot_with_index(known_answers=False).reply("ㅋㅋㅋ")


def test_words_decide_whether_states_decide_which():
    questions = [morph.tokenize(q) for q in ["점심 메뉴 뭐 먹지", "오늘 날씨", "주말 계획", "양자역학"]]
    words = index_of(PAIRS).similarities(questions)
    for weight in (0.0, 1.0, 100.0):
        bot = bot_with_index(state_weight=weight, min_similarity=0.3)
        rows = [row for row, _, _ in bot.known_matches(questions, [bot.vocab.encode(q, True) for q in questions])]
        assert rows[-1] is None
        for q, row in enumerate(rows):
            if words[q].max() < 0.3:
                assert row is None
            else:
                assert row is not None and words[q, row] >= 0.3
        if weight == 0.0:  # without the states the best word match wins
            assert all(row == int(words[q].argmax()) for q, row in enumerate(rows) if row is not None)


def test_high_min_similarity_means_write_unless_identical():
    bot = bot_with_index(min_similarity=0.999, state_weight=0.0)
    assert bot.reply("춘천까지 가려면?") == bot_with_index(known_answers=False).reply("춘천까지 가려면?")
    assert bot.reply("춘천에 가고 싶어") == "닭갈비 드시고 오세요."


def test_model_dir_answers_file(tmp_path):
    bot = bot_with_index()
    model, vocab = model_and_vocab()
    save_model(tmp_path, model, vocab, model.config)
    assert Chatbot.load(tmp_path).answers is None  # a model from before the index: writes every reply
    bot.answers.save(tmp_path / ANSWERS_FILE)
    assert Chatbot.load(tmp_path).reply("춘천에 가고 싶어") == "닭갈비 드시고 오세요."
    for garbage in ("{not json", json.dumps({"questions": ["a"]}), json.dumps([1, 2])):
        (tmp_path / ANSWERS_FILE).write_text(garbage, encoding="utf-8")
        with pytest.raises(ModelLoadError, match=ANSWERS_FILE):
            Chatbot.load(tmp_path)


def test_known_share_counts_the_words_some_training_question_has():
    index = index_of(PAIRS)
    shares = index.known_share([morph.tokenize(q) for q in ["점심 뭐 먹지", "점심 파이썬", "양자역학", ""]])
    assert shares[0] == 1.0
    assert 0 < shares[1] < 1
    assert shares[2] == 0.0
    assert shares[3] == 1.0  # nothing to be unfamiliar with
