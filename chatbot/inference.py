"""The trained network's forward pass in NumPy: what answering needs.

Why: ``import torch`` alone costs a process about 190 MB of its memory, more
than half of a 1 GB VM's server budget, and answering needs none of
autograd, optimizers or kernels for training.  The server therefore answers
with this module and never imports torch; only training does
(chatbot/model.py's Seq2Seq, whose weights these are).

``Network`` mirrors ``Seq2Seq.encode`` and ``Seq2Seq.decode`` in eval mode
(no dropout), step for step: a test holds the two to the same outputs.  The
searchers that turn these into replies are chatbot/decode.py.

The weights are read from the model directory's ``weights.npz``, which the
trainer writes beside ``model.pt``; a model from before it is converted from
``model.pt`` once at load (that needs torch).
"""
from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from threadpoolctl import threadpool_limits

from chatbot.model_dir import EOS, MODEL_FILE, PAD, WEIGHTS_FILE, ModelConfig, ModelLoadError

log = logging.getLogger(__name__)


def limit_threads(threads: int) -> None:
    """Cap NumPy's BLAS at ``threads`` threads in this process.  Its default,
    one per core, made encoding six times slower on 2 cores: the matrices are
    small and every reply worker would start its own.  (threadpoolctl can
    only cap a library already loaded: this module has loaded NumPy.)"""
    threadpool_limits(max(1, threads), user_api="blas")


class Memory(NamedTuple):
    """What the decoder attends to: encoder outputs, their projected keys, and
    a mask that is False on padding."""

    values: np.ndarray  # (B, S, H)
    keys: np.ndarray  # (B, S, H)
    mask: np.ndarray  # (B, S) bool

    def rows(self, index) -> "Memory":
        """The memory rows for each decoder row (its question's)."""
        return Memory(*(a[index] for a in self))


def _matmul(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """x (..., in) @ weight (in, out) as one 2-D product: NumPy's stacked
    matmul of a 3-D x runs a small product per row instead."""
    return (x.reshape(-1, x.shape[-1]) @ weight).reshape(*x.shape[:-1], weight.shape[1])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log_softmax over the last axis, in float32 like the network."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class ShapeError(ValueError):
    """The weights are not those of a Seq2Seq with this config."""


def _check_shapes(w: dict, c: ModelConfig) -> None:
    """Every array chatbot/model.py's Seq2Seq has for config c, with its
    shape, and no other: NumPy would otherwise broadcast some mistakes into
    wrong replies instead of failing at load."""
    if "embed.weight" not in w or w["embed.weight"].ndim != 2:
        raise ShapeError("no embedding table (embed.weight)")
    V, E, H = w["embed.weight"].shape[0], c.embed_dim, c.hidden_dim
    directions = ("", "_reverse") if c.bidirectional else ("",)
    Hd = H // len(directions)
    expected = {"embed.weight": (V, E), "bridge.weight": (H, H), "bridge.bias": (H,),
                "attention.w_key.weight": (H, H), "combine.weight": (H, 2 * H), "combine.bias": (H,)}
    if "dec_embed.weight" in w or not c.shared_embedding:
        expected["dec_embed.weight"] = (V, E)
    for layer in range(c.layers):
        for d in directions:
            expected |= {f"encoder.weight_ih_l{layer}{d}": (3 * Hd, E if layer == 0 else H),
                         f"encoder.weight_hh_l{layer}{d}": (3 * Hd, Hd),
                         f"encoder.bias_ih_l{layer}{d}": (3 * Hd,), f"encoder.bias_hh_l{layer}{d}": (3 * Hd,)}
        expected |= {f"decoder.weight_ih_l{layer}": (3 * H, E if layer == 0 else H),
                     f"decoder.weight_hh_l{layer}": (3 * H, H),
                     f"decoder.bias_ih_l{layer}": (3 * H,), f"decoder.bias_hh_l{layer}": (3 * H,)}
    if c.attention == "concat":
        expected |= {"attention.w_key.bias": (H,), "attention.w_query.weight": (H, H), "attention.v.weight": (1, H)}
    if c.tie_output:
        expected |= {"out_proj.weight": (E, H), "out_proj.bias": (E,), "out.weight": (V, E), "out.bias": (V,)}
    else:
        expected |= {"out.weight": (V, H), "out.bias": (V,)}
    for name in sorted(expected.keys() | w.keys()):
        if name not in w:
            raise ShapeError(f"{name} is missing")
        if name not in expected:
            raise ShapeError(f"{name} is not part of this model")
        if w[name].shape != expected[name]:
            raise ShapeError(f"{name} has shape {w[name].shape}, the config needs {expected[name]}")


class _GRUDirection(NamedTuple):
    """One layer and direction of a torch.nn.GRU: gates in the order r, z, n."""

    w_ih: np.ndarray  # (3H, in), transposed for x @ w
    w_hh: np.ndarray  # (3H, H), transposed
    b_ih: np.ndarray
    b_hh: np.ndarray

    def run(self, inputs, mask, hidden, reverse=False):
        """inputs (B, T, in), mask (B, T) of real steps, hidden (B, H) ->
        outputs (B, T, H) (zero where masked) and the last real step's state."""
        gates_x = _matmul(inputs, self.w_ih) + self.b_ih  # every step's input part at once
        size = hidden.shape[1]
        outputs = np.zeros(inputs.shape[:2] + (size,), dtype=np.float32)
        steps = range(inputs.shape[1] - 1, -1, -1) if reverse else range(inputs.shape[1])
        for t in steps:
            gx = gates_x[:, t]
            gh = hidden @ self.w_hh + self.b_hh
            rz = _sigmoid(gx[:, :2 * size] + gh[:, :2 * size])
            r, z = rz[:, :size], rz[:, size:]
            n = np.tanh(gx[:, 2 * size:] + r * gh[:, 2 * size:])
            new = (1.0 - z) * n + z * hidden
            if mask is None:
                hidden = new
            else:  # padding leaves the state as it was (torch's packed sequences)
                hidden = np.where(mask[:, t:t + 1], new, hidden)
                new = new * mask[:, t:t + 1]
            outputs[:, t] = new
        return outputs, hidden


class Network:
    """A trained Seq2Seq's weights as NumPy arrays, with its forward pass.

    Only reads its arrays, so one Network serves many threads at once.
    """

    def __init__(self, state: dict, config: ModelConfig):
        self.config = c = config
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
        _check_shapes(w, c)
        self.embed = w["embed.weight"]
        self.dec_embed = w["dec_embed.weight"] if "dec_embed.weight" in w else self.embed
        self.vocab_size = self.embed.shape[0]

        def gru(prefix, layer, suffix=""):
            name = f"_l{layer}{suffix}"
            return _GRUDirection(w[f"{prefix}.weight_ih{name}"].T.copy(), w[f"{prefix}.weight_hh{name}"].T.copy(),
                                 w[f"{prefix}.bias_ih{name}"], w[f"{prefix}.bias_hh{name}"])

        directions = ("", "_reverse") if c.bidirectional else ("",)
        self.encoder = [[gru("encoder", layer, d) for d in directions] for layer in range(c.layers)]
        self.decoder = [gru("decoder", layer) for layer in range(c.layers)]
        self.bridge = (w["bridge.weight"].T.copy(), w["bridge.bias"])
        self.w_key = (w["attention.w_key.weight"].T.copy(), w.get("attention.w_key.bias"))
        if c.attention == "concat":
            self.w_query = w["attention.w_query.weight"].T.copy()
            self.v = w["attention.v.weight"][0]
        self.combine = (w["combine.weight"].T.copy(), w["combine.bias"])
        self.out_proj = (w["out_proj.weight"].T.copy(), w["out_proj.bias"]) if c.tie_output else None
        out_weight = self.dec_embed if c.tie_output else w["out.weight"]
        self.out = (out_weight.T.copy(), w["out.bias"])

    @classmethod
    def from_module(cls, model) -> "Network":
        """The weights of a torch Seq2Seq as they are now (the trainer's evaluations)."""
        return cls({k: v.detach().cpu().float().numpy() for k, v in model.state_dict().items()}, model.config)

    @classmethod
    def load(cls, model_dir, config: ModelConfig, vocab_size: int) -> "Network":
        """The weights in model_dir: weights.npz, else model.pt (needs torch).
        Raises ModelLoadError."""
        model_dir = Path(model_dir)
        path = model_dir / WEIGHTS_FILE
        try:
            if not path.is_file() and not (model_dir / MODEL_FILE).is_file():
                raise ModelLoadError(f"model directory {model_dir} has no {WEIGHTS_FILE} (nor {MODEL_FILE})")
            if path.is_file():
                with np.load(path, allow_pickle=False) as data:
                    state = {k: data[k] for k in data.files}
            else:
                log.warning("%s has no %s: reading %s needs torch (about 190 MB more in this process); "
                            "`python -m chatbot.train --if-missing` (make run) adds it", model_dir, WEIGHTS_FILE,
                            MODEL_FILE)
                state = _state_from_model_pt(model_dir)
            network = cls(state, config)
        except ModelLoadError:
            raise
        except ShapeError as e:
            raise ModelLoadError(f"the weights in {model_dir} do not match its config/vocab: {e}") from e
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
            raise ModelLoadError(f"cannot read {WEIGHTS_FILE} in {model_dir}: {e}") from e
        if network.vocab_size != vocab_size:
            raise ModelLoadError(f"the weights in {model_dir} do not match its config/vocab: they are for "
                                 f"{network.vocab_size} tokens, its vocabulary has {vocab_size}")
        return network

    @staticmethod
    def _linear(x, layer):
        weight, bias = layer
        y = _matmul(x, weight)
        return y if bias is None else y + bias

    def encode(self, sources):
        """Questions (lists of ids, any lengths) -> (Memory, decoder start state (layers, B, H)).

        As chatbot.model's encode_many: cut to max_src_len, an empty one is </s>."""
        c = self.config
        sources = [list(ids)[: c.max_src_len] or [EOS] for ids in sources]
        src = np.full((len(sources), max(map(len, sources))), PAD, dtype=np.int64)
        for row, ids in enumerate(sources):
            src[row, : len(ids)] = ids
        mask = src != PAD
        x = self.embed[src]
        finals = []
        for layer in self.encoder:
            outs = []
            for d, direction in enumerate(layer):
                zeros = np.zeros((len(sources), direction.w_hh.shape[0]), dtype=np.float32)
                out, last = direction.run(x, mask, zeros, reverse=d == 1)
                outs.append(out)
                finals.append(last)
            x = np.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        if c.bidirectional:  # per layer, both directions joined: (layers, B, H)
            hidden = np.stack([np.concatenate(finals[2 * i: 2 * i + 2], axis=-1) for i in range(c.layers)])
        else:
            hidden = np.stack(finals)
        hidden = np.tanh(self._linear(hidden, self.bridge))
        return Memory(x, self._linear(x, self.w_key), mask), hidden

    def attend(self, query, memory: Memory):
        """Luong attention: query (B, T, H) -> context (B, T, H)."""
        if self.config.attention == "general":
            scores = query @ memory.keys.transpose(0, 2, 1)  # (B, T, S)
        else:
            q = _matmul(query, self.w_query)[:, :, None, :]  # (B, T, 1, H)
            scores = np.tanh(q + memory.keys[:, None]) @ self.v
        scores = np.where(memory.mask[:, None, :], scores, -np.inf)
        return _softmax(scores) @ memory.values

    def decode(self, tgt_in, hidden, memory: Memory):
        """The decoder over tgt_in (B, T) ids: logits (B, T, V) and the new state."""
        x = self.dec_embed[np.asarray(tgt_in)]
        states = []
        for layer, gru in enumerate(self.decoder):
            x, last = gru.run(x, None, hidden[layer])
            states.append(last)
        context = self.attend(x, memory)
        attended = np.tanh(self._linear(np.concatenate([x, context], axis=-1), self.combine))
        if self.out_proj is not None:
            attended = self._linear(attended, self.out_proj)
        return self._linear(attended, self.out), np.stack(states)


def _state_from_model_pt(model_dir: Path) -> dict:
    """A model from before weights.npz: read its model.pt with torch."""
    from chatbot.model import read_state  # imports torch: only for such a model

    return {k: v.float().numpy() for k, v in read_state(model_dir).items()}
