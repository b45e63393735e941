"""A model directory's config, vocabulary and file names: what answering
needs beside the weights, readable without torch (chatbot/inference.py).

1. ModelConfig - the hyperparameters and the tokenizer, saved as config.json
2. Vocab       - morpheme (or word) <-> id, saved as vocab.json
3. read_config_and_vocab - both back from a directory, or ModelLoadError
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from chatbot import morph

MODEL_FILE = "model.pt"
VOCAB_FILE = "vocab.json"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"  # the confidence threshold (chatbot/train.py calibrate)
# The weights as NumPy arrays, what the server loads (chatbot/inference.py);
# model.pt holds the same for torch.
WEIGHTS_FILE = "weights.npz"
# The training questions' meaning vectors (chatbot/meaning.py), in answers.json's
# order, float16; present when config.meaning_encoder names the encoder.
MEANING_FILE = "meaning.npy"


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
    # With meaning vectors (meaning_encoder set, MEANING_FILE there, and that
    # encoder loaded in the process), the score is instead word_weight x the
    # TF-IDF cosine + (1 - word_weight) x the meaning similarity
    # (meaning.similarity), over every training question, shared word or not;
    # the trainer picks word_weight on its dev split.  Without, as above.
    known_answers: bool = True  # False: always write the reply
    state_weight: float = 0.5
    min_similarity: float = 0.3
    meaning_encoder: str = ""  # the encoder of MEANING_FILE; "": none (words only)
    word_weight: float = 0.1
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
        if self.state_weight < 0 or not 0 <= self.min_similarity <= 1 or not 0 <= self.word_weight <= 1:
            raise ValueError("state_weight must be >= 0, min_similarity and word_weight between 0 and 1")

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


def read_config_and_vocab(model_dir) -> tuple[ModelConfig, Vocab]:
    """config.json and vocab.json of a model directory; every failure is a ModelLoadError."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelLoadError(f"model directory {model_dir} does not exist")
    for name in (CONFIG_FILE, VOCAB_FILE):
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
    return config, vocab
