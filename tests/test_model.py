"""Tests for chatbot/model.py: vocabulary, network, decoding, model directory."""
import json
import os
import threading

import pytest
import torch

from chatbot import morph
from chatbot.bot import Chatbot
from chatbot.decode import _banned, beam_decode, generate, greedy_decode
from chatbot.model import BOS, EOS, PAD, UNK, ModelConfig, ModelLoadError, Seq2Seq, Vocab, save_model

SENTENCES = ["안녕하세요 반가워요", "오늘 날씨가 정말 좋네요", "점심 메뉴 추천해 주세요", "비빔밥 어때요?",
             "주말에 뭐 해요?", "영화 보러 가요", "배고파요", "저도 배고파요"]
TINY = dict(embed_dim=16, hidden_dim=32, max_reply_len=8, seed=7)


def tiny_bot(**overrides):
    config = ModelConfig(**{**TINY, **overrides})
    vocab = Vocab.build(morph.tokenize(s) for s in SENTENCES)
    torch.manual_seed(config.seed)
    return Chatbot(Seq2Seq(config, len(vocab)), vocab, config)


# --- config ------------------------------------------------------------------


def test_config_round_trip_ignores_unknown_keys():
    config = ModelConfig(hidden_dim=64, decoding="greedy")
    data = config.to_dict()
    assert ModelConfig.from_dict(data) == config
    assert ModelConfig.from_dict({**data, "from_the_future": 1}) == config
    assert ModelConfig.from_dict({}) == ModelConfig()


@pytest.mark.parametrize("bad", [{"decoding": "sampling"}, {"attention": "dot"}, {"hidden_dim": 33}, {"layers": 0},
                                 {"tokenizer": "spacy"}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)


# --- vocabulary --------------------------------------------------------------


def test_vocab_order_is_by_frequency_then_token():
    vocab = Vocab.build([["b", "a", "c"], ["c", "b"], ["c"]])
    assert vocab.itos == ["<pad>", "<s>", "</s>", "<unk>", "c", "b", "a"]
    assert (vocab.stoi["<pad>"], vocab.stoi["<s>"], vocab.stoi["</s>"], vocab.stoi["<unk>"]) == (PAD, BOS, EOS, UNK)
    assert len(Vocab.build([["a", "b"], ["a"]], min_freq=2)) == 5
    assert len(Vocab.build([["a", "b", "c"]], max_size=2)) == 6


def test_vocab_encode_decode(tmp_path):
    tokens = morph.tokenize("오늘 날씨가 정말 좋네요")
    vocab = Vocab.build([tokens])
    ids = vocab.encode(tokens + ["모르는말"], add_eos=True)
    assert ids[-2:] == [UNK, EOS]
    assert vocab.decode(ids) == tokens  # <unk> dropped, stops at </s>
    assert vocab.decode([BOS] + vocab.encode(tokens) + [EOS, vocab.stoi["날씨"]]) == tokens

    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.itos == vocab.itos and len(loaded) == len(vocab)
    assert morph.detokenize(loaded.decode(ids)) == "오늘 날씨가 정말 좋네요"


def test_vocab_rejects_missing_specials():
    with pytest.raises(ValueError):
        Vocab(["a", "b"])


# --- network -----------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"attention": "concat", "shared_embedding": False},
                                       {"bidirectional": False, "layers": 2}, {"tie_output": True},
                                       {"tie_output": True, "shared_embedding": False}])
def test_forward_shapes_and_padding_is_ignored(overrides):
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(**{**TINY, **overrides}), vocab_size=20).eval()
    short, long = [5, 6, 2], [7, 8, 9, 10, 11, 2]
    src = torch.tensor([short + [PAD] * 3, long])
    tgt_in = torch.tensor([[BOS, 4, 5], [BOS, 6, 7]])
    logits = model(src, torch.tensor([3, 6]), tgt_in)
    assert logits.shape == (2, 3, 20)
    alone = model(torch.tensor([short]), torch.tensor([3]), tgt_in[:1])
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # padding changed nothing


def test_tied_output_shares_the_embedding():
    model = Seq2Seq(ModelConfig(**TINY, tie_output=True), vocab_size=20)
    assert model.out.weight is model.dec_embed.weight
    assert model.num_params() < Seq2Seq(ModelConfig(**TINY), vocab_size=20).num_params()


def test_reply_uses_the_models_tokenizer(monkeypatch):
    bot = tiny_bot(tokenizer="whitespace")
    seen = []
    real_tokenize = morph.tokenize
    monkeypatch.setattr(morph, "tokenize", lambda text, backend=None: seen.append(backend) or real_tokenize(text, backend))
    bot.reply("오늘 날씨")
    assert seen == ["whitespace"]


def test_same_seed_same_weights():
    a, b = tiny_bot(), tiny_bot()
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = tiny_bot(seed=8)
    assert not torch.equal(a.model.out.weight, c.model.out.weight)


# --- decoding ----------------------------------------------------------------


def test_banned_tokens():
    assert EOS in _banned([], 3, None)  # never an empty reply
    assert EOS not in _banned([5], 3, None)
    assert 9 in _banned([], 3, 9) and 9 in _banned([5, 9], 3, 9) and 9 not in _banned([5], 3, 9)
    assert 7 in _banned([5, 6, 7, 5, 6], 3, None)  # "5 6 7" would repeat
    assert 7 not in _banned([5, 6, 7, 5, 6], 0, None)


@pytest.mark.parametrize("decoding", ["greedy", "beam"])
def test_decoding_gives_nonempty_reply_within_max_len(decoding):
    bot = tiny_bot(decoding=decoding)
    for text in ["안녕하세요", "", "완전히 처음 보는 말"]:
        ids = generate(bot.model, bot.vocab.encode(morph.tokenize(text), add_eos=True), bot.config,
                       bot.vocab.stoi.get(morph.BOUNDARY))
        assert 1 <= len(bot.vocab.decode(ids)) <= bot.config.max_reply_len
        assert bot.reply(text).strip()


def test_decoders_respect_max_len_and_no_repeat():
    bot = tiny_bot()
    src = bot.vocab.encode(morph.tokenize("배고파요"), add_eos=True)
    for ids in (greedy_decode(bot.model, src, 5, no_repeat_ngram=2),
                beam_decode(bot.model, src, 5, beam_size=3, no_repeat_ngram=2)):
        assert 1 <= len(ids) <= 5 and EOS not in ids
        bigrams = list(zip(ids, ids[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_replies_are_thread_safe():
    bot = tiny_bot()
    texts = SENTENCES * 3
    expected = [bot.reply(t) for t in texts]
    results = {}

    def work(i):
        results[i] = [bot.reply(t) for t in texts]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: expected for i in range(len(threads))}  # every thread finished, each with the right replies


# --- model directory ---------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    bot = tiny_bot()
    model_dir = tmp_path / "20250101-120000"
    save_model(model_dir, bot.model, bot.vocab, bot.config)
    return bot, model_dir


def test_save_load_round_trip(saved, tmp_path):
    bot, model_dir = saved
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.pt", "vocab.json"]
    os.symlink(model_dir.name, tmp_path / "current")
    loaded = Chatbot.load(tmp_path / "current")
    assert loaded.version == "20250101-120000"
    assert loaded.config == bot.config
    assert not loaded.model.training
    for text in SENTENCES:
        assert loaded.reply(text) == bot.reply(text)


def test_load_missing_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Chatbot.load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["model.pt", "vocab.json", "config.json"])
def test_load_missing_file(saved, name):
    _, model_dir = saved
    (model_dir / name).unlink()
    with pytest.raises(ModelLoadError, match=name):
        Chatbot.load(model_dir)


def test_load_garbage_and_truncated_weights(saved):
    _, model_dir = saved
    weights = model_dir / "model.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.pt"):
        Chatbot.load(model_dir)
    weights.write_bytes(b"not a torch file")
    with pytest.raises(ModelLoadError, match="model.pt"):
        Chatbot.load(model_dir)


def test_load_bad_config(saved):
    _, model_dir = saved
    (model_dir / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="config.json"):
        Chatbot.load(model_dir)
    (model_dir / "config.json").write_text(json.dumps({"decoding": "magic"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="config.json"):
        Chatbot.load(model_dir)


def test_load_mismatched_shapes(saved):
    bot, model_dir = saved
    (model_dir / "config.json").write_text(json.dumps({**bot.config.to_dict(), "hidden_dim": 64}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="does not match"):
        Chatbot.load(model_dir)
    save_model(model_dir, bot.model, Vocab(bot.vocab.itos + ["추가"]), bot.config)  # vocab one larger
    with pytest.raises(ModelLoadError, match="does not match"):
        Chatbot.load(model_dir)


def test_load_bad_vocab(saved):
    _, model_dir = saved
    (model_dir / "vocab.json").write_text(json.dumps({"tokens": ["a"]}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="vocab.json"):
        Chatbot.load(model_dir)
