"""Tests for chatbot/train.py and chatbot/versions.py (tiny, fast training runs)."""
import csv
import io
import json
import os
import re
import time

import numpy as np
import pytest
import torch

from chatbot import meaning, train, versions
from chatbot.bot import Chatbot
from chatbot.model import Seq2Seq
from chatbot.model_dir import PAD, ModelConfig
from helpers import PAIRS, TINY_PAIRS
from live_server import ROOT

NAME = re.compile(r"^\d{8}-\d{6}(-\d+)?$")
FAST = ["--max-steps", "3", "--quiet"]


@pytest.fixture
def pairs_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Q", "A", "label"])
        writer.writerows([q, a, 0] for q, a in PAIRS)
    return path


@pytest.fixture
def models(tmp_path):
    return tmp_path / "models"


def hidden_entries(root):
    return [p.name for p in root.iterdir() if p.name.startswith(".")]


def fixed_clock(monkeypatch, stamp="20250101-120000"):
    monkeypatch.setattr(versions.time, "strftime", lambda fmt, *a: stamp)


# --- data --------------------------------------------------------------------


def test_dev_split_is_stable_and_by_question():
    a = train.split_pairs(PAIRS * 2, 30)
    assert a == train.split_pairs(PAIRS * 2, 30)
    dev_questions = {q for q, _ in a[1]}
    assert dev_questions and not dev_questions & {q for q, _ in a[0]}
    assert train.is_dev("안녕하세요", 30) == train.is_dev("  안녕하세요 ", 30)
    assert train.split_pairs(PAIRS, 0)[1] == [] and train.split_pairs(PAIRS, 100)[0] == []


# --- command line ------------------------------------------------------------


def test_cli_trains_publishes_and_activates(pairs_csv, models, monkeypatch):
    monkeypatch.chdir(pairs_csv.parent)
    monkeypatch.delenv("MODEL_DIR", raising=False)
    assert train.main(["--pairs", str(pairs_csv), "--models-dir", str(models), *FAST]) == 0

    [name] = versions.list_versions(models)
    assert NAME.match(name)
    assert os.readlink(models / "current") == name  # relative link
    assert versions.current_dir(models) == (models / name).resolve()
    assert hidden_entries(models) == []
    files = sorted(p.name for p in (models / name).iterdir())
    assert files == ["answers.json", "calibration.json", "config.json", "loss.png", "meaning.npy", "metrics.json",
                     "model.pt", "train.log", "vocab.json", "weights.npz"]
    assert (models / name / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = json.loads((models / name / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 3 and metrics["train_pairs"] + metrics["dev_pairs"] == len(PAIRS)
    for key in ("vocab_size", "epochs", "train_seconds", "device", "dev_loss", "dev_chrf", "dev_bleu",
                "params", "seed", "created_at", "tokenizer", "history"):
        assert key in metrics
    assert "epoch" in (models / name / "train.log").read_text(encoding="utf-8")

    bot = Chatbot.load(models / "current")
    assert bot.version == name and bot.reply("안녕하세요").strip()


def test_models_dir_from_env(pairs_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "env-models"))
    assert train.main(["--pairs", str(pairs_csv), "--no-activate", *FAST]) == 0
    assert len(versions.list_versions(tmp_path / "env-models")) == 1
    assert versions.current_dir(tmp_path / "env-models") is None  # --no-activate


def test_two_runs_in_the_same_second_get_different_dirs(pairs_csv, models, monkeypatch):
    fixed_clock(monkeypatch)
    args = ["--pairs", str(pairs_csv), "--models-dir", str(models), *FAST]
    assert train.main(args) == 0
    assert train.main(args) == 0
    assert versions.list_versions(models) == ["20250101-120000", "20250101-120000-2"]
    assert versions.current_dir(models).name == "20250101-120000-2"


def test_if_missing_does_nothing_when_current_is_usable(pairs_csv, models):
    args = ["--pairs", str(pairs_csv), "--models-dir", str(models), "--if-missing", *FAST]
    assert train.main(args) == 0  # no model yet: trains
    before = versions.list_versions(models)
    assert len(before) == 1
    assert train.main(args) == 0
    assert versions.list_versions(models) == before


def test_if_missing_gives_older_models_their_numpy_weights(pairs_csv, models, capsys):
    """`make run` on model directories from before weights.npz: the server
    would read model.pt with torch (190 MB), for `current` or for an older
    version activated in the admin; now it does not have to."""
    args = ["--pairs", str(pairs_csv), "--models-dir", str(models), *FAST]
    assert train.main(args) == 0
    assert train.main(args) == 0
    names = versions.list_versions(models)
    assert len(names) == 2 and versions.current_dir(models).name == names[-1]
    expected = {}
    for name in names:
        expected[name] = (models / name / "weights.npz").read_bytes()
        (models / name / "weights.npz").unlink()
    capsys.readouterr()
    assert train.main([*args, "--if-missing"]) == 0
    out = capsys.readouterr().out
    assert versions.list_versions(models) == names  # converted, not retrained
    for name in names:
        assert f"{name}: wrote weights.npz from model.pt" in out
        with np.load(models / name / "weights.npz") as ours, np.load(io.BytesIO(expected[name])) as theirs:
            assert sorted(ours.files) == sorted(theirs.files) and len(theirs.files) > 10
            assert all(np.array_equal(ours[k], theirs[k]) for k in theirs.files)
        assert [p.name for p in (models / name).iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_if_missing_retrains_when_an_older_model_cannot_be_read(pairs_csv, models):
    args = ["--pairs", str(pairs_csv), "--models-dir", str(models), "--if-missing", *FAST]
    assert train.main(args) == 0
    broken = versions.current_dir(models)
    (broken / "weights.npz").unlink()
    (broken / "model.pt").write_bytes(b"not a model")
    assert train.main(args) == 0
    assert versions.current_dir(models).name != broken.name  # a new one, not the broken one
    assert (versions.current_dir(models) / "weights.npz").is_file()


def test_empty_csv_fails_and_writes_nothing(tmp_path, models, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("Q,A,label\n", encoding="utf-8")
    assert train.main(["--pairs", str(empty), "--models-dir", str(models), *FAST]) != 0
    assert "no training pairs" in capsys.readouterr().err
    assert not models.exists()


def test_empty_train_split_fails(pairs_csv, models, capsys):
    assert train.main(["--pairs", str(pairs_csv), "--models-dir", str(models), "--dev-percent", "100", *FAST]) != 0
    assert "training split is empty" in capsys.readouterr().err
    assert not models.exists()


def test_missing_csv_fails(tmp_path, models):
    assert train.main(["--pairs", str(tmp_path / "nope.csv"), "--models-dir", str(models)]) != 0


@pytest.mark.parametrize("error, code", [(RuntimeError("boom"), 1), (KeyboardInterrupt(), 130)])
def test_failed_run_leaves_current_alone(pairs_csv, models, monkeypatch, error, code):
    assert train.main(["--pairs", str(pairs_csv), "--models-dir", str(models), *FAST]) == 0
    before, current = versions.list_versions(models), versions.current_dir(models)

    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", explode)  # fails mid-step
    assert train.main(["--pairs", str(pairs_csv), "--models-dir", str(models), *FAST]) == code
    assert versions.list_versions(models) == before
    assert versions.current_dir(models) == current
    assert hidden_entries(models) == []


# --- run_training ------------------------------------------------------------

TINY = dict(embed_dim=16, hidden_dim=32, max_steps=6, batch_size=4, max_reply_len=10, dev_percent=30,
            quiet=True, activate=False)


def test_same_seed_same_metrics(models):
    a = train.run_training(PAIRS, models, seed=3, **TINY)
    b = train.run_training(PAIRS, models, seed=3, **TINY)
    c = train.run_training(PAIRS, models, seed=4, **TINY)
    metrics = [json.loads((d / "metrics.json").read_text(encoding="utf-8")) for d in (a, b, c)]
    keys = ("train_pairs", "dev_pairs", "vocab_size", "steps", "dev_loss", "dev_chrf", "dev_bleu", "samples")
    assert metrics[0]["dev_pairs"] > 0
    assert [metrics[0][k] for k in keys] == [metrics[1][k] for k in keys]
    assert metrics[0]["dev_loss"] != metrics[2]["dev_loss"]
    assert (a / "model.pt").read_bytes() == (b / "model.pt").read_bytes()
    assert versions.current_dir(models) is None


class RecordedChild(meaning.EmbeddingChild):
    """The trainer's embedding child, with when it started and when it was waited for."""

    made = []

    def __init__(self, *args, **kwargs):
        self.events = [("started", time.monotonic())]
        super().__init__(*args, **kwargs)
        RecordedChild.made.append(self)

    def result(self):
        self.events.append(("waited for", time.monotonic()))
        return super().result()


def test_the_questions_are_embedded_while_the_network_trains(models, monkeypatch):
    """The embedding child starts before the first training step, still
    runs when it comes, and is waited for after the last; its vectors
    still reach the model."""
    steps = []
    loss = Seq2Seq.loss

    def timed_loss(self, *args, **kwargs):
        steps.append((time.monotonic(), RecordedChild.made[0]._process.poll()))
        return loss(self, *args, **kwargs)

    monkeypatch.setattr(RecordedChild, "made", [])
    monkeypatch.setattr(train.meaning_module, "EmbeddingChild", RecordedChild)
    monkeypatch.setattr(Seq2Seq, "loss", timed_loss)
    version = train.run_training(PAIRS, models, **TINY)
    [child] = RecordedChild.made
    (_, started), (_, waited) = child.events
    assert started < steps[0][0] and steps[-1][0] < waited
    assert steps[0][1] is None  # the child was still embedding when the network began
    assert child._process.returncode == 0
    assert np.load(version / "meaning.npy").shape == (len(PAIRS), meaning.DIM)
    assert json.loads((version / "config.json").read_text(encoding="utf-8"))["meaning_encoder"] == \
        meaning.DEFAULT_ENCODER
    assert "embedded in" in (version / "train.log").read_text(encoding="utf-8")


def test_a_failed_training_ends_its_embedding_child(models, monkeypatch):
    """Training fails while the child still embeds: the child is killed, not left to run."""
    monkeypatch.setattr(RecordedChild, "made", [])
    monkeypatch.setattr(train.meaning_module, "EmbeddingChild", RecordedChild)
    monkeypatch.setattr(train, "_train", lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        train.run_training(PAIRS, models, **TINY)
    [child] = RecordedChild.made
    assert child._process.returncode is not None  # ended: killed, or done already
    assert child.events == [("started", child.events[0][1])]  # never waited for: the training failed first
    assert versions.list_versions(models) == []


def test_run_training_rejects_unknown_settings(models):
    with pytest.raises(TypeError, match="bogus"):
        train.run_training(PAIRS, models, bogus=1)
    with pytest.raises(train.TrainingError):
        train.run_training([], models)
    assert not models.exists()


def test_whitespace_model_records_and_uses_its_tokenizer(models, monkeypatch):
    out = train.run_training(PAIRS, models, tokenizer="whitespace", **TINY)
    bot = Chatbot.load(out)
    assert bot.config.tokenizer == "whitespace"
    assert "오늘" in bot.vocab.stoi and "어때?" in bot.vocab.stoi  # words, not morphemes
    seen = []
    real_tokenize = train.morph.tokenize
    monkeypatch.setattr(train.morph, "tokenize", lambda text, backend=None: seen.append(backend)
                        or real_tokenize(text, backend))
    monkeypatch.setenv("MORPH_BACKEND", "mecab")
    assert bot.reply("오늘 날씨 어때?").strip()
    assert seen and set(seen) == {"whitespace"}  # the question, and the known answers it weighs


def test_tokenizer_defaults_to_morph_backend(models, monkeypatch):
    monkeypatch.setenv("MORPH_BACKEND", "whitespace")
    assert Chatbot.load(train.run_training(PAIRS, models, **TINY)).config.tokenizer == "whitespace"
    monkeypatch.delenv("MORPH_BACKEND")
    assert Chatbot.load(train.run_training(PAIRS, models, **TINY)).config.tokenizer == "mecab"


def test_loss_history_and_lr_decay(models):
    out = train.run_training(PAIRS, models, **{**TINY, "max_steps": None, "epochs": 3, "min_epochs": 1,
                                               "lr_decay": 0.5})
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]
    assert all(h["train_loss"] > 0 and h["dev_loss"] > 0 for h in metrics["history"])
    assert (out / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("select_by", ["chrf", "loss"])
def test_greedy_decoding_and_early_stop(models, select_by):
    out = train.run_training(PAIRS, models, **{**TINY, "max_steps": None, "epochs": 4, "min_epochs": 1,
                                               "patience": 1, "decoding": "greedy", "select_by": select_by})
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert 1 <= metrics["best_epoch"] <= metrics["epochs"] <= 4
    assert len(metrics["samples"]) == 5 and all(s["reply"] for s in metrics["samples"])
    assert metrics["select_by"] == select_by
    chrfs = [h["dev_chrf"] for h in metrics["history"]]
    if select_by == "chrf":  # the kept epoch has the best dev chrF
        assert metrics["selection_dev_chrf"] == max(chrfs[:metrics["epochs"]])
    else:
        assert chrfs == [None] * metrics["epochs"]


def test_epochs_scale_with_data_size():
    auto = train.auto_epochs
    assert (auto(train.TrainConfig(), 458).epochs, auto(train.TrainConfig(), 458).min_epochs) == (80, 30)
    assert (auto(train.TrainConfig(), 8697).epochs, auto(train.TrainConfig(), 8697).min_epochs) == (12, 4)
    assert auto(train.TrainConfig(), 10**6).epochs == 10
    assert auto(train.TrainConfig(epochs=3, min_epochs=0), 458).epochs == 3
    with pytest.raises(ValueError):
        train.TrainConfig(select_by="bleu")


# --- versions ----------------------------------------------------------------


def test_versions_layout(tmp_path, monkeypatch):
    root = tmp_path / "models"
    assert versions.current_dir(root) is None and versions.list_versions(root) == []
    fixed_clock(monkeypatch)
    names = []
    for _ in range(11):
        temp = versions.make_temp_dir(root)
        assert temp.parent == root and temp.name.startswith(".tmp-")
        (temp / "model.pt").write_text("x")
        names.append(versions.publish(temp, root).name)
    assert names[:3] == ["20250101-120000", "20250101-120000-2", "20250101-120000-3"]
    versions.make_temp_dir(root)  # an unfinished run is not a version
    assert versions.list_versions(root) == names  # "-10" sorts after "-9"

    versions.activate(root, names[0])
    versions.activate(root, names[1])
    assert versions.current_dir(root) == (root / names[1]).resolve()
    for bad in ["nope", "current", "", "../models", ".tmp-x"]:
        with pytest.raises(ValueError):
            versions.activate(root, bad)
    assert versions.current_dir(root).name == names[1]

    (root / names[1] / "model.pt").unlink()
    (root / names[1]).rmdir()
    assert versions.current_dir(root) is None  # dangling


def test_cli_trains_on_the_apps_pairs(app, monkeypatch):
    """What `make run` / `make retrain` do: starter + reviewed pairs, the app's MODEL_DIR."""
    import chatbot

    monkeypatch.setattr(chatbot, "create_app", lambda: app)
    models = app.config["MODEL_DIR"]
    assert train.main(["--if-missing", *FAST]) == 0
    [name] = versions.list_versions(models)
    metrics = json.loads((versions.current_dir(models) / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train_pairs"] > 100
    assert train.main(["--if-missing", *FAST]) == 0  # already there: nothing new
    assert versions.list_versions(models) == [name]


def test_match_loss_trains_the_encoder_and_a_repeated_answer_is_no_negative():
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=16, hidden_dim=16)
    model = Seq2Seq(config, 30)
    src = torch.tensor([[5, 6, 2], [7, 8, 2], [9, 10, 2]])
    lengths = torch.tensor([3, 3, 3])
    answers = [[11, 12], [13, 14], [15, 16]]
    loss = train.match_loss(model, src, lengths, answers, 0.1, "cpu")
    assert loss.item() > 0
    loss.backward()
    assert model.embed.weight.grad.abs().sum() > 0  # it trains the encoder
    # A repeated answer is no negative: with one answer for all, nothing to tell apart.
    same = train.match_loss(model, src, lengths, [[11, 12]] * 3, 0.1, "cpu")
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_the_trainers_adam_updates_exactly_as_torch_optim_adams_fused_update():
    import torch

    from chatbot.train import Adam

    torch.manual_seed(0)
    ours, theirs = torch.nn.GRU(4, 6), torch.nn.GRU(4, 6)
    theirs.load_state_dict(ours.state_dict())
    theirs.bias_hh_l0.requires_grad_(False)  # a frozen parameter is skipped by both
    ours.bias_hh_l0.requires_grad_(False)
    opt_ours, opt_theirs = Adam(ours.parameters(), lr=0.01), torch.optim.Adam(theirs.parameters(), lr=0.01, fused=True)
    for step in range(5):
        x = torch.randn(3, 2, 4)
        for model, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            out, _ = model(x)
            (out ** 2).sum().backward()
            opt.step()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours.weight_ih_l0, torch.nn.GRU(4, 6).weight_ih_l0)  # it did move


def test_a_training_run_never_loads_torch_dynamo(tmp_path):
    """torch.optim's wrappers would import torch._dynamo and sympy: 67 MB."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from chatbot import train\n"
            f"train.run_training({TINY_PAIRS!r} * 3, {str(tmp_path / 'models')!r}, max_steps=3, embed_dim=16,"
            " hidden_dim=16, quiet=True, samples=0)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'sympy'))))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_the_learning_rate_is_cut_only_when_the_dev_loss_does_not_improve():
    from chatbot.train import plateau_step

    assert plateau_step(0.01, 2.0, 1.5, 0.5) == (0.01, 1.5)          # better: kept, new best
    assert plateau_step(0.01, 2.0, 2.0, 0.5) == (0.005, 2.0)         # the same: cut
    assert plateau_step(0.01, 2.0, 1.99999, 0.5) == (0.005, 2.0)     # within 1e-4 of the best: cut
    assert plateau_step(0.01, float("inf"), 3.0, 0.5) == (0.01, 3.0)  # the first epoch sets the best


@pytest.mark.parametrize("tie_output", [False, True])
def test_the_training_loss_is_the_padded_loss(tie_output):
    """Seq2Seq.loss scores only where the reply has a token, without holding
    the logits: the same loss and gradients as all logits with the padding
    ignored."""
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(embed_dim=16, hidden_dim=32, dropout=0.0, tie_output=tie_output), 30)
    examples = [([5, 6, 7, 2], [8, 9]), ([10, 2], [11, 12, 13, 14, 15]), ([16, 17, 2], [18])]
    src, lengths, tgt_in, tgt_out = train.collate(examples, torch.device("cpu"))
    real = tgt_out != PAD
    assert real.sum() < real.numel()  # there is padding to leave out

    def loss_and_grads(loss):
        model.zero_grad()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    full, full_grads = loss_and_grads(torch.nn.functional.cross_entropy(
        model(src, lengths, tgt_in).flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, label_smoothing=0.1))
    ours, our_grads = loss_and_grads(model.loss(src, lengths, tgt_in, tgt_out, label_smoothing=0.1))
    assert ours == pytest.approx(full, abs=1e-6)
    assert len(our_grads) == len(full_grads) == len(list(model.parameters()))
    for a, b in zip(our_grads, full_grads):
        assert torch.allclose(a, b, atol=1e-6)
