"""The chatbot's neural model: a GRU encoder-decoder with Luong attention.

Top to bottom:

1. ModelConfig   - the hyperparameters and the tokenizer, saved next to the weights
2. Vocab         - morpheme (or word) <-> id, saved as JSON
3. Seq2Seq       - embedding, bidirectional GRU encoder, GRU decoder + attention
4. save_model / load_model - the model directory (model.pt, vocab.json, config.json)

Turning a question into reply ids is chatbot/decode.py; the bot that answers
(known answers first, else the network's own) is chatbot/bot.py.

Tensors are batch-first: src (B, S), tgt (B, T).  The model is small on
purpose: it trains on a few hundred pairs on a laptop CPU in a minute or two.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from chatbot import morph

MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"  # the confidence threshold (chatbot/train.py calibrate)


class ModelLoadError(Exception):
    """A model directory is missing, incomplete, corrupt or does not fit the code."""


# -----------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    embed_dim: int = 128
    hidden_dim: int = 256  # size of encoder outputs and decoder state
    layers: int = 1
    dropout: float = 0.2
    bidirectional: bool = True  # encoder reads the question both ways
    shared_embedding: bool = True  # encoder and decoder use one embedding table
    tie_output: bool = False  # the output layer reuses the (decoder) embedding table
    attention: str = "general"  # Luong score: "general" or "concat"
    max_src_len: int = 40  # longer questions are cut (bounds the server's work)
    max_reply_len: int = 30  # in morphemes, word-boundary tokens included
    decoding: str = "beam"  # "greedy" or "beam"
    beam_size: int = 4
    length_penalty: float = 1.0  # beam score = log p / len ** length_penalty
    no_repeat_ngram: int = 3  # 0 turns it off
    # Known answers (chatbot/retrieval.py): of the training questions with a
    # TF-IDF cosine of at least min_similarity, send the answer of the one with
    # the best (cosine + state_weight * cosine of the encoder's question
    # states) / (1 + state_weight); write the reply when there is none.
    known_answers: bool = True  # False: always write the reply
    state_weight: float = 0.5
    min_similarity: float = 0.3
    seed: int = 1337
    tokenizer: str = "mecab"  # morph backend the model was trained with; reply() uses the same

    def __post_init__(self):
        if self.tokenizer not in morph.BACKENDS:
            raise ValueError(f"tokenizer must be one of {', '.join(morph.BACKENDS)}, not {self.tokenizer!r}")
        if self.attention not in ("general", "concat"):
            raise ValueError(f"attention must be 'general' or 'concat', not {self.attention!r}")
        if self.decoding not in ("greedy", "beam"):
            raise ValueError(f"decoding must be 'greedy' or 'beam', not {self.decoding!r}")
        if self.bidirectional and self.hidden_dim % 2:
            raise ValueError("hidden_dim must be even with a bidirectional encoder")
        if min(self.embed_dim, self.hidden_dim, self.layers, self.beam_size, self.max_reply_len) < 1:
            raise ValueError("sizes must be positive")
        if self.state_weight < 0 or not 0 <= self.min_similarity <= 1:
            raise ValueError("state_weight must be >= 0 and min_similarity between 0 and 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        """Build a config, ignoring keys this version does not know.

        A model trained by a newer version may carry extra settings; they are
        dropped so the model still loads.  Missing keys take the defaults.
        """
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# -----------------------------------------------------------------------------
# vocabulary

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class Vocab:
    """Maps morphemes to ids; the first four ids are the special tokens."""

    def __init__(self, tokens: list[str]):
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(tokens)) != len(tokens):
            raise ValueError("vocabulary has duplicate tokens")
        self.itos = list(tokens)
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}

    @classmethod
    def build(cls, token_lists, min_freq: int = 1, max_size: int | None = None) -> "Vocab":
        """Most frequent tokens first, ties broken alphabetically, so the same
        data always gives the same ids.  max_size counts non-special tokens."""
        counts = Counter(tok for tokens in token_lists for tok in tokens)
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted((tok for tok, n in counts.items() if n >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            ranked = ranked[:max_size]
        return cls(SPECIALS + ranked)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens, add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(tok, UNK) for tok in tokens]
        return ids + [EOS] if add_eos else ids

    def decode(self, ids) -> list[str]:
        """Ids to tokens, stopping at </s> and dropping the other specials."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return out

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"tokens": self.itos}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "Vocab":
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["tokens"])


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
        all T steps run in one GRU call; generation calls it with T=1.
        """
        out, hidden = self.decoder(self.drop(self.dec_embed(tgt_in)), hidden)
        context = self.attention(out, memory)
        attended = self.drop(torch.tanh(self.combine(torch.cat([out, context], dim=-1))))
        if self.config.tie_output:
            attended = self.out_proj(attended)
        return self.out(attended), hidden

    def forward(self, src, src_lengths, tgt_in):
        """Teacher forcing: logits (B, T, V) for predicting tgt_in shifted by one."""
        memory, hidden = self.encode(src, src_lengths)
        logits, _ = self.decode(tgt_in, hidden, memory)
        return logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def encode_many(model, sources):
    """Encode several questions at once (padded; packing keeps padding out)."""
    device = next(model.parameters()).device
    sources = [list(ids)[: model.config.max_src_len] or [EOS] for ids in sources]
    src = torch.full((len(sources), max(map(len, sources))), PAD, dtype=torch.long, device=device)
    for row, ids in enumerate(sources):
        src[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return model.encode(src, torch.tensor([len(ids) for ids in sources]))


# -----------------------------------------------------------------------------
# the model directory


def save_model(model_dir, model: Seq2Seq, vocab: Vocab, config: ModelConfig) -> None:
    """Write model.pt (state_dict), vocab.json and config.json into model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, model_dir / MODEL_FILE)
    vocab.save(model_dir / VOCAB_FILE)
    (model_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def load_model(model_dir, device="cpu") -> tuple[Seq2Seq, Vocab, ModelConfig]:
    """Read a model directory back; every failure becomes a ModelLoadError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    for name in (MODEL_FILE, VOCAB_FILE, CONFIG_FILE):
        if not (model_dir / name).is_file():
            raise ModelLoadError(f"model directory {model_dir} has no {name}")
    try:
        config = ModelConfig.from_dict(json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8")))
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"bad {CONFIG_FILE} in {model_dir}: {e}") from e
    try:
        vocab = Vocab.load(model_dir / VOCAB_FILE)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"bad {VOCAB_FILE} in {model_dir}: {e}") from e
    try:
        state = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...: torch raises many kinds
        raise ModelLoadError(f"cannot read {MODEL_FILE} in {model_dir}: {e}") from e
    model = Seq2Seq(config, len(vocab))
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelLoadError(f"{MODEL_FILE} in {model_dir} does not match its config/vocab: {e}") from e
    return model.to(device).eval(), vocab, config


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))
