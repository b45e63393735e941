"""The chatbot's neural model for training: a GRU encoder-decoder with Luong attention.

Top to bottom:

1. Seq2Seq - embedding, bidirectional GRU encoder, GRU decoder + attention,
   and its training loss (linear_cross_entropy)
2. save_model / load_model - the model directory (model.pt, weights.npz, vocab.json, config.json)

The config and vocabulary are chatbot/model_dir.py (no torch).  Answering
runs the same network in NumPy (chatbot/inference.py, from weights.npz), so
the server never imports torch; turning a question into reply ids is
chatbot/decode.py; the bot that answers is chatbot/bot.py.

Tensors are batch-first: src (B, S), tgt (B, T).  The model is small on
purpose: it trains on a few hundred pairs on a laptop CPU in a minute or two.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from chatbot.model_dir import (CONFIG_FILE, MODEL_FILE, PAD, VOCAB_FILE, WEIGHTS_FILE, ModelConfig, ModelLoadError,
                               Vocab, read_config_and_vocab)

# -----------------------------------------------------------------------------
# the network


class Memory(NamedTuple):
    """What the decoder attends to: encoder outputs, their projected keys, and
    a mask that is False on padding."""

    values: torch.Tensor  # (B, S, H)
    keys: torch.Tensor  # (B, S, H)
    mask: torch.Tensor  # (B, S) bool

    def expand(self, k: int) -> "Memory":
        """Repeat a single source k times (one row per beam hypothesis)."""
        return Memory(*(t.expand(k, *t.shape[1:]) for t in self))


class Attention(nn.Module):
    """Luong attention (Luong et al. 2015): score each encoder output against
    the decoder's current state; padding gets zero weight."""

    def __init__(self, hidden_dim: int, method: str):
        super().__init__()
        self.method = method
        if method == "general":  # score = h_t . W h_s
            self.w_key = nn.Linear(hidden_dim, hidden_dim, bias=False)
        else:  # concat: score = v . tanh(W_q h_t + W_k h_s)
            self.w_key = nn.Linear(hidden_dim, hidden_dim)
            self.w_query = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.v = nn.Linear(hidden_dim, 1, bias=False)

    def keys(self, values):
        # Projected once per question, not once per decoding step.
        return self.w_key(values)

    def forward(self, query, memory: Memory):
        # query (B, T, H) -> context (B, T, H)
        if self.method == "general":
            scores = query @ memory.keys.transpose(1, 2)  # (B, T, S)
        else:
            q = self.w_query(query).unsqueeze(2)  # (B, T, 1, H)
            scores = self.v(torch.tanh(q + memory.keys.unsqueeze(1))).squeeze(-1)
        scores = scores.masked_fill(~memory.mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return weights @ memory.values


def linear_cross_entropy(x, weight, bias, target, label_smoothing: float = 0.0, chunk_elements: int = 2 ** 20):
    """``F.cross_entropy(F.linear(x, weight, bias), target, label_smoothing=…)``
    for x (N, H) and a (V, H) output layer, a chunk of rows at a time: only
    one chunk's logits (about ``chunk_elements`` numbers) exist at once,
    never all N × V of them with their softmax and gradient."""
    rows = max(1, chunk_elements // weight.shape[0])
    return _LinearCrossEntropy.apply(x, weight, bias, target, label_smoothing, rows)


class _LinearCrossEntropy(torch.autograd.Function):
    """The forward pass works out the gradients too, chunk by chunk: a
    chunk's log-probabilities turn into d loss / d logits in place and go
    straight into the gradients of x, weight and bias, which backward then
    only scales.  (The idea of Liger Kernel's fused linear cross-entropy.)

    Every chunk reuses the same two buffers (logits, log-probabilities) and
    the first chunk writes the weight's gradient instead of adding to zeros:
    the trainer maps blocks of 1 MB and more afresh
    (train.allocate_large_blocks_apart), so a new buffer per chunk cost a
    page fault for every 4 kB of it: most of the 18% of a step spent in
    the kernel."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, smoothing, rows):
        n, vocab = x.shape[0], weight.shape[0]
        with_grads = any(ctx.needs_input_grad[:3])
        grad_x = grad_w = grad_b = None
        if with_grads:
            grad_x = torch.empty_like(x)
        logits_buffer, logp_buffer = (x.new_empty(min(rows, n), vocab) for _ in range(2))
        total = x.new_zeros(())
        for i in range(0, n, rows):
            xi, ti = x[i:i + rows], target[i:i + rows, None]
            z, logp = logits_buffer[:len(xi)], logp_buffer[:len(xi)]
            torch.addmm(bias, xi, weight.t(), out=z)
            torch.log_softmax(z, dim=1, out=logp)
            total -= (1 - smoothing) * logp.gather(1, ti).sum() + smoothing / vocab * logp.sum()
            if with_grads:  # d loss / d logits = (softmax - smoothed one-hot target) / n
                d = logp.exp_().sub_(smoothing / vocab).scatter_add_(1, ti, logp.new_full(ti.shape, smoothing - 1))
                d.div_(n)
                torch.mm(d, weight, out=grad_x[i:i + rows])
                if grad_w is None:
                    grad_w, grad_b = d.t() @ xi, d.sum(0)
                else:
                    grad_w.addmm_(d.t(), xi)
                    grad_b += d.sum(0)
        if with_grads:
            if grad_w is None:  # no rows
                grad_w, grad_b = torch.zeros_like(weight), torch.zeros_like(bias)
            ctx.save_for_backward(grad_x, grad_w, grad_b)
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        # Scaled in place: no second copy of the weight's gradient.  A second
        # backward through the same graph fails on the changed tensors
        # instead of scaling them twice.
        grad_x, grad_w, grad_b = ctx.saved_tensors
        return grad_x.mul_(grad_loss), grad_w.mul_(grad_loss), grad_b.mul_(grad_loss), None, None, None


class Seq2Seq(nn.Module):
    def __init__(self, config: ModelConfig, vocab_size: int):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(vocab_size, c.embed_dim, padding_idx=PAD)
        self.dec_embed = self.embed if c.shared_embedding else nn.Embedding(vocab_size, c.embed_dim, padding_idx=PAD)
        directions = 2 if c.bidirectional else 1
        inner_dropout = c.dropout if c.layers > 1 else 0.0  # GRU dropout only acts between layers
        self.encoder = nn.GRU(c.embed_dim, c.hidden_dim // directions, c.layers, batch_first=True,
                              bidirectional=c.bidirectional, dropout=inner_dropout)
        # The encoder's last state (both directions joined) starts the decoder.
        self.bridge = nn.Linear(c.hidden_dim, c.hidden_dim)
        self.decoder = nn.GRU(c.embed_dim, c.hidden_dim, c.layers, batch_first=True, dropout=inner_dropout)
        self.attention = Attention(c.hidden_dim, c.attention)
        self.combine = nn.Linear(2 * c.hidden_dim, c.hidden_dim)  # [state; context] -> attentional state
        if c.tie_output:  # project to embed_dim and score against the embedding table (Press & Wolf 2017)
            self.out_proj = nn.Linear(c.hidden_dim, c.embed_dim)
            self.out = nn.Linear(c.embed_dim, vocab_size)
            self.out.weight = self.dec_embed.weight
        else:
            self.out = nn.Linear(c.hidden_dim, vocab_size)
        self.drop = nn.Dropout(c.dropout)

    def encode(self, src, src_lengths):
        """src (B, S) padded ids -> (Memory, decoder start state (layers, B, H))."""
        x = self.drop(self.embed(src))
        packed = nn.utils.rnn.pack_padded_sequence(x, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, hidden = self.encoder(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if self.config.bidirectional:  # (2*layers, B, H/2) -> (layers, B, H)
            hidden = hidden.view(self.config.layers, 2, *hidden.shape[1:])
            hidden = torch.cat([hidden[:, 0], hidden[:, 1]], dim=-1)
        hidden = torch.tanh(self.bridge(hidden)).contiguous()
        return Memory(out, self.attention.keys(out), src != PAD), hidden

    def decode(self, tgt_in, hidden, memory: Memory):
        """Run the decoder over tgt_in (B, T); returns logits (B, T, V) and the new state.

        Luong attention is computed after the GRU step, so with teacher forcing
        all T steps run in one GRU call.
        """
        states, hidden = self.output_inputs(tgt_in, hidden, memory)
        return self.out(states), hidden

    def output_inputs(self, tgt_in, hidden, memory: Memory, positions=None):
        """The output layer's inputs for tgt_in (B, T), and the new decoder
        state; ``positions``, a (B, T) bool mask, keeps only those steps (N, ·)."""
        out, hidden = self.decoder(self.drop(self.dec_embed(tgt_in)), hidden)
        context = self.attention(out, memory)
        attended = self.drop(torch.tanh(self.combine(torch.cat([out, context], dim=-1))))
        if positions is not None:
            attended = attended[positions]
        if self.config.tie_output:
            attended = self.out_proj(attended)
        return attended, hidden

    def forward(self, src, src_lengths, tgt_in):
        """Teacher forcing: logits (B, T, V) for predicting tgt_in shifted by one."""
        memory, hidden = self.encode(src, src_lengths)
        logits, _ = self.decode(tgt_in, hidden, memory)
        return logits

    def loss(self, src, src_lengths, tgt_in, tgt_out, label_smoothing: float = 0.0):
        """Teacher forcing: the mean cross-entropy of predicting tgt_out (B, T),
        padding left out.  The same as ``F.cross_entropy`` on ``forward``'s
        logits with ``ignore_index=PAD``, but it never holds those logits: a
        row per reply token and a column per word of the vocabulary, they,
        their softmax and their gradients were most of a training step's
        memory (see linear_cross_entropy)."""
        memory, hidden = self.encode(src, src_lengths)
        real = tgt_out != PAD
        states, _ = self.output_inputs(tgt_in, hidden, memory, real)
        return linear_cross_entropy(states, self.out.weight, self.out.bias, tgt_out[real], label_smoothing)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# -----------------------------------------------------------------------------
# the model directory


def save_model(model_dir, model: Seq2Seq, vocab: Vocab, config: ModelConfig) -> None:
    """Write model.pt (state_dict, for torch), weights.npz (the same arrays,
    for the server: chatbot/inference.py), vocab.json and config.json."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / MODEL_FILE)
    _write_weights(model_dir, state)
    vocab.save(model_dir / VOCAB_FILE)
    (model_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def _write_weights(model_dir: Path, state: dict) -> None:
    """weights.npz from a state dict, written whole or not at all."""
    temp = model_dir / f".{WEIGHTS_FILE}.tmp"
    with open(temp, "wb") as f:
        np.savez(f, **{k: v.float().numpy() for k, v in state.items()})
    os.replace(temp, model_dir / WEIGHTS_FILE)


def read_state(model_dir: Path) -> dict:
    """model.pt's state dict (on the CPU); every failure is a ModelLoadError."""
    try:
        state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...: torch raises many kinds
        raise ModelLoadError(f"cannot read {MODEL_FILE} in {model_dir}: {e}") from e
    if not isinstance(state, dict):
        raise ModelLoadError(f"{MODEL_FILE} in {model_dir} is not a state dict")
    return state


def add_numpy_weights(model_dir) -> bool:
    """Give a model directory from before weights.npz its weights.npz (from
    model.pt), so the server loads it without torch.  False when it has one
    already; raises ModelLoadError when model.pt cannot be read."""
    model_dir = Path(model_dir)
    if (model_dir / WEIGHTS_FILE).exists():
        return False
    _write_weights(model_dir, read_state(model_dir))
    return True


def load_model(model_dir, device="cpu") -> tuple[Seq2Seq, Vocab, ModelConfig]:
    """Read a model directory back into torch; every failure becomes a ModelLoadError."""
    model_dir = Path(model_dir)
    config, vocab = read_config_and_vocab(model_dir)
    if not (model_dir / MODEL_FILE).is_file():
        raise ModelLoadError(f"model directory {model_dir} has no {MODEL_FILE}")
    state = read_state(model_dir)
    model = Seq2Seq(config, len(vocab))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{MODEL_FILE} in {model_dir} does not match its config/vocab: {e}") from e
    return model.to(device).eval(), vocab, config


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
