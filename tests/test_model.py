"""Tests for chatbot/model.py, model_dir.py and inference.py: vocabulary,
network (torch and NumPy alike), decoding, model directory."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from chatbot import morph
from chatbot.bot import Chatbot
from chatbot.decode import _banned, _top, beam_decode, generate, greedy_decode
from chatbot.inference import Network
from chatbot.model import Seq2Seq, linear_cross_entropy, load_model, save_model
from chatbot.model_dir import BOS, EOS, PAD, UNK, ModelConfig, ModelLoadError, Vocab

SENTENCES = ["안녕하세요 반가워요", "오늘 날씨가 정말 좋네요", "점심 메뉴 추천해 주세요", "비빔밥 어때요?",
             "주말에 뭐 해요?", "영화 보러 가요", "배고파요", "저도 배고파요"]
TINY = dict(embed_dim=16, hidden_dim=32, max_reply_len=8, seed=7)


def tiny_model(**overrides):
    """An untrained torch model (random weights, seeded) and its vocabulary."""
    config = ModelConfig(**{**TINY, **overrides})
    vocab = Vocab.build(morph.tokenize(s) for s in SENTENCES)
    torch.manual_seed(config.seed)
    return Seq2Seq(config, len(vocab)).eval(), vocab, config


def tiny_bot(**overrides):
    model, vocab, config = tiny_model(**overrides)
    return Chatbot(Network.from_module(model), vocab, config)


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


@pytest.mark.parametrize("overrides", [{}, {"attention": "concat", "shared_embedding": False},
                                       {"bidirectional": False, "layers": 2}, {"tie_output": True},
                                       {"layers": 2, "tie_output": True, "shared_embedding": False}])
def test_numpy_network_computes_what_the_torch_model_does(overrides):
    """The server answers with inference.Network: the same encoder states,
    attention and logits as Seq2Seq in eval mode, padding included."""
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(**{**TINY, **overrides}), vocab_size=20).eval()
    net = Network.from_module(model)
    sources = [[5, 6, 2], [7, 8, 9, 10, 11, 2], [12, 2]]
    src = torch.full((3, 6), PAD)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = torch.tensor(ids)
    tgt_in = torch.tensor([[BOS, 4, 5], [BOS, 6, 7], [BOS, 8, 8]])
    with torch.no_grad():
        memory, hidden = model.encode(src, torch.tensor([3, 6, 2]))
        logits, after = model.decode(tgt_in, hidden, memory)
    np_memory, np_hidden = net.encode(sources)
    np_logits, np_after = net.decode(tgt_in.numpy(), np_hidden, np_memory)
    for ours, theirs in [(np_memory.values, memory.values), (np_memory.keys, memory.keys), (np_hidden, hidden),
                         (np_logits, logits), (np_after, after)]:
        assert ours.shape == tuple(theirs.shape)
        assert np.allclose(ours, theirs.numpy(), atol=1e-5)
    assert (np_memory.mask == memory.mask.numpy()).all()


def test_top_k_is_ordered_and_breaks_ties_by_index():
    scores = np.array([0.5, 2.0, -np.inf, 2.0, 1.0, 0.5], dtype=np.float32)
    assert _top(scores, 3).tolist() == [1, 3, 4]
    assert _top(scores, 6).tolist() == [1, 3, 4, 0, 5, 2]
    assert _top(scores, 1).tolist() == [1]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_elements", [1, 40, 75, 10 ** 6])  # a row per chunk, 2 rows, ragged, all at once
def test_linear_cross_entropy_is_cross_entropy_of_the_linear_layer(smoothing, chunk_elements):
    torch.manual_seed(0)
    x = torch.randn(7, 5, requires_grad=True)
    layer = torch.nn.Linear(5, 20)
    target = torch.tensor([0, 3, 19, 3, 7, 1, 12])

    def value_and_grads(loss):
        x.grad = layer.weight.grad = layer.bias.grad = None
        (3 * loss).backward()  # backward scales by the incoming gradient
        return loss.item(), [x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()]

    expected, expected_grads = value_and_grads(
        torch.nn.functional.cross_entropy(layer(x), target, label_smoothing=smoothing))
    ours, our_grads = value_and_grads(
        linear_cross_entropy(x, layer.weight, layer.bias, target, smoothing, chunk_elements))
    assert ours == pytest.approx(expected, abs=1e-6)
    for a, b in zip(our_grads, expected_grads):
        assert torch.allclose(a, b, atol=1e-6)
    with torch.inference_mode():  # the evaluations: the value alone
        assert linear_cross_entropy(x, layer.weight, layer.bias, target, smoothing, chunk_elements).item() == \
            pytest.approx(expected, abs=1e-6)
    # backward scales its gradients in place: a second pass through the same
    # graph must fail, not hand out gradients scaled twice.
    loss = linear_cross_entropy(x, layer.weight, layer.bias, target, smoothing, chunk_elements)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


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
    (a, _, _), (b, _, _) = tiny_model(), tiny_model()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c, _, _ = tiny_model(seed=8)
    assert not torch.equal(a.out.weight, c.out.weight)


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
        ids = generate(bot.network, bot.vocab.encode(morph.tokenize(text), add_eos=True), bot.config,
                       bot.vocab.stoi.get(morph.BOUNDARY))
        assert 1 <= len(bot.vocab.decode(ids)) <= bot.config.max_reply_len
        assert bot.reply(text).strip()


def test_decoders_respect_max_len_and_no_repeat():
    bot = tiny_bot()
    src = bot.vocab.encode(morph.tokenize("배고파요"), add_eos=True)
    for ids in (greedy_decode(bot.network, src, 5, no_repeat_ngram=2),
                beam_decode(bot.network, src, 5, beam_size=3, no_repeat_ngram=2)):
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
    model, vocab, config = tiny_model()
    model_dir = tmp_path / "20250101-120000"
    save_model(model_dir, model, vocab, config)
    return model, model_dir


def test_save_load_round_trip(saved, tmp_path):
    model, model_dir = saved
    bot = Chatbot(Network.from_module(model), *tiny_model()[1:])
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.pt", "vocab.json", "weights.npz"]
    os.symlink(model_dir.name, tmp_path / "current")
    loaded = Chatbot.load(tmp_path / "current")
    assert loaded.version == "20250101-120000"
    assert loaded.config == bot.config
    for text in SENTENCES:
        assert loaded.reply(text) == bot.reply(text)
    again, _, _ = load_model(model_dir)  # and back into torch, for training
    assert not again.training
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), model.state_dict().values()))


def test_the_server_loads_a_model_without_torch(saved):
    """weights.npz is all the server reads: answering never imports torch."""
    _, model_dir = saved
    code = ("import sys; from chatbot.bot import Chatbot; bot = Chatbot.load(sys.argv[1]); "
            "print(bool(bot.reply('배고파요')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_a_model_from_before_weights_npz_still_loads(saved):
    """Older model directories have only model.pt: converted at load (with torch)."""
    model, model_dir = saved
    before = Chatbot.load(model_dir)
    (model_dir / "weights.npz").unlink()
    loaded = Chatbot.load(model_dir)
    for text in SENTENCES:
        assert loaded.reply(text) == before.reply(text)


def test_load_missing_dir(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Chatbot.load(tmp_path / "nope")


@pytest.mark.parametrize("name", ["vocab.json", "config.json"])
def test_load_missing_file(saved, name):
    _, model_dir = saved
    (model_dir / name).unlink()
    with pytest.raises(ModelLoadError, match=name):
        Chatbot.load(model_dir)
    with pytest.raises(ModelLoadError, match=name):
        load_model(model_dir)


def test_load_missing_weights(saved):
    _, model_dir = saved
    (model_dir / "model.pt").unlink()
    with pytest.raises(ModelLoadError, match="model.pt"):
        load_model(model_dir)
    (model_dir / "weights.npz").unlink()
    with pytest.raises(ModelLoadError, match="has no weights.npz"):
        Chatbot.load(model_dir)


@pytest.mark.parametrize("name", ["weights.npz", "model.pt"])
def test_load_garbage_and_truncated_weights(saved, name):
    _, model_dir = saved
    if name == "model.pt":  # the server reads model.pt only when there is no weights.npz
        (model_dir / "weights.npz").unlink()
    weights = model_dir / name
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=name):
        Chatbot.load(model_dir)
    weights.write_bytes(b"not a weights file")
    with pytest.raises(ModelLoadError, match=name):
        Chatbot.load(model_dir)


def test_load_bad_config(saved):
    _, model_dir = saved
    (model_dir / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="config.json"):
        Chatbot.load(model_dir)
    (model_dir / "config.json").write_text(json.dumps({"decoding": "magic"}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="config.json"):
        Chatbot.load(model_dir)


@pytest.mark.parametrize("change", [{"hidden_dim": 64}, {"embed_dim": 8}, {"layers": 2}, {"bidirectional": False},
                                    {"attention": "concat"}, {"tie_output": True}])
def test_load_mismatched_shapes(saved, change):
    model, model_dir = saved
    (model_dir / "config.json").write_text(json.dumps({**model.config.to_dict(), **change}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="do not match its config/vocab"):
        Chatbot.load(model_dir)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(model_dir)


def test_load_weights_for_another_vocabulary(saved):
    model, model_dir = saved
    _, vocab, config = tiny_model()
    save_model(model_dir, model, Vocab(vocab.itos + ["추가"]), config)  # vocab one larger
    with pytest.raises(ModelLoadError, match="do not match its config/vocab"):
        Chatbot.load(model_dir)
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(model_dir)


def test_load_bad_vocab(saved):
    _, model_dir = saved
    (model_dir / "vocab.json").write_text(json.dumps({"tokens": ["a"]}), encoding="utf-8")
    with pytest.raises(ModelLoadError, match="vocab.json"):
        Chatbot.load(model_dir)
