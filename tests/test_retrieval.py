"""The known-answer index, and the model choosing among its answers."""
import json

import pytest
import torch

from chatbot import morph
from chatbot.model import Chatbot, ModelConfig, ModelLoadError, Seq2Seq, Vocab, save_model
from chatbot.retrieval import ANSWERS_FILE, AnswerIndex

PAIRS = [("오늘 날씨 어때?", "맑고 따뜻해요."), ("오늘 날씨 좋다", "산책 가기 좋은 날이에요."),
         ("점심 뭐 먹지?", "비빔밥 어때요?"), ("점심 메뉴 추천해 줘", "비빔밥 어때요?"),
         ("춘천에 가고 싶어", "닭갈비 드시고 오세요."), ("주말에 뭐 해?", "집에서 쉬려고요.")]


def index_of(pairs):
    return AnswerIndex([morph.tokenize(q) for q, _ in pairs], [a for _, a in pairs])


def test_same_question_finds_its_answer_first():
    hits = index_of(PAIRS).search([morph.tokenize("춘천에 가고 싶어")], k=3)[0]
    assert hits[0][0] == "닭갈비 드시고 오세요." and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert all(a >= b for (_, a), (_, b) in zip(hits, hits[1:]))


def test_particles_do_not_hide_a_match():
    # 춘천까지 and 춘천에 share the morpheme 춘천: morphological analysis at work.
    answer, sim = index_of(PAIRS).search([morph.tokenize("춘천까지 가려면?")], k=1)[0][0]
    assert answer == "닭갈비 드시고 오세요." and 0 < sim < 1


def test_each_answer_once_and_unknown_words_find_nothing():
    index = index_of(PAIRS)
    hits = index.search([morph.tokenize("점심 메뉴 뭐 먹지?")], k=10)[0]
    answers = [a for a, _ in hits]
    assert answers.count("비빔밥 어때요?") == 1 and len(answers) == len(set(answers))
    assert index.search([morph.tokenize("양자역학")], k=5) == [[]]
    assert index.search([], k=5) == []


def test_similarity_is_scikit_learns_tfidf_cosine():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import linear_kernel

    def analyzer(text):
        return [t for t in morph.tokenize(text) if t != morph.BOUNDARY]

    questions = ["날씨 좋은 날 점심 뭐 먹지?", "춘천 날씨 어때?", "주말에 점심"]
    vectorizer = TfidfVectorizer(analyzer=analyzer)
    expected = linear_kernel(vectorizer.fit(q for q, _ in PAIRS).transform(questions),
                             vectorizer.transform(q for q, _ in PAIRS))
    index = AnswerIndex([morph.tokenize(q) for q, _ in PAIRS], [f"answer {i}" for i in range(len(PAIRS))])
    for row, hits in enumerate(index.search([morph.tokenize(q) for q in questions], k=len(PAIRS))):
        for answer, sim in hits:
            assert sim == pytest.approx(expected[row, int(answer.split()[1])], abs=1e-5)


def test_save_and_load_give_the_same_answers(tmp_path):
    index = index_of(PAIRS)
    index.save(tmp_path / ANSWERS_FILE)
    again = AnswerIndex.load(tmp_path / ANSWERS_FILE)
    questions = [morph.tokenize(q) for q in ["오늘 날씨", "점심 추천", "주말 계획"]]
    assert again.search(questions, 3) == index.search(questions, 3)


# --- the model choosing ---------------------------------------------------------

TINY = dict(embed_dim=16, hidden_dim=32, max_reply_len=20, seed=3)


def bot_with_index(**overrides):
    config = ModelConfig(**{**TINY, **overrides})
    vocab = Vocab.build(morph.tokenize(t) for pair in PAIRS for t in pair)
    torch.manual_seed(config.seed)
    return Chatbot(Seq2Seq(config, len(vocab)), vocab, config, answers=index_of(PAIRS))


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


def test_every_training_question_gets_its_own_answer():
    bot = bot_with_index()
    for q, a in PAIRS:
        assert bot.reply(q) == a


def test_encoder_states_alone_never_make_a_match():
    # Questions of unknown words encode alike; they share no word with any
    # training question, so the network writes their replies.
    bot = bot_with_index(state_weight=100.0)
    sims = bot.known_similarities([morph.tokenize("ㅋㅋㅋ")], [bot.vocab.encode(morph.tokenize("ㅋㅋㅋ"), True)])
    assert sims.shape == (1, len(PAIRS)) and not sims.any()
    assert bot.reply("ㅋㅋㅋ") == bot_with_index(known_answers=False).reply("ㅋㅋㅋ")


def test_state_weight_mixes_in_the_encoder_similarity():
    q = morph.tokenize("점심 메뉴 뭐 먹지")
    src = [bot_with_index().vocab.encode(q, True)]
    words_only = bot_with_index(state_weight=0.0).known_similarities([q], src)
    mixed = bot_with_index(state_weight=1.0).known_similarities([q], src)
    assert torch.allclose(words_only, index_of(PAIRS).similarities([q]))
    assert not torch.allclose(words_only, mixed)
    assert ((mixed == 0) == (words_only == 0)).all()


def test_high_min_similarity_means_write_unless_identical():
    bot = bot_with_index(min_similarity=0.999, state_weight=0.0)
    assert bot.reply("춘천까지 가려면?") == bot_with_index(known_answers=False).reply("춘천까지 가려면?")
    assert bot.reply("춘천에 가고 싶어") == "닭갈비 드시고 오세요."


def test_model_dir_answers_file(tmp_path):
    bot = bot_with_index()
    save_model(tmp_path, bot.model, bot.vocab, bot.config)
    assert Chatbot.load(tmp_path).answers is None  # a model from before the index: writes every reply
    bot.answers.save(tmp_path / ANSWERS_FILE)
    assert Chatbot.load(tmp_path).reply("춘천에 가고 싶어") == "닭갈비 드시고 오세요."
    for garbage in ("{not json", json.dumps({"questions": ["a"]}), json.dumps([1, 2])):
        (tmp_path / ANSWERS_FILE).write_text(garbage, encoding="utf-8")
        with pytest.raises(ModelLoadError, match=ANSWERS_FILE):
            Chatbot.load(tmp_path)
