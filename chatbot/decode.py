"""Turning a question into reply ids: greedy search and beam search, for
several questions at once (every live hypothesis of every question is one
decoder row), as in the PyTorch chatbot tutorial's searchers.

They run the network in NumPy (chatbot/inference.py's Network), in the
server and in the trainer's evaluations alike: one decoding path.

No empty replies, no <unk>, no leading or double spaces, and optionally no
repeated n-grams (``_banned``).
"""
from __future__ import annotations

import numpy as np

from chatbot.inference import Network, log_softmax
from chatbot.model_dir import BOS, EOS, PAD, UNK, ModelConfig


def _banned(tokens: list[int], no_repeat_ngram: int, boundary_id: int | None) -> set[int]:
    """Tokens that may not come next after `tokens` (the reply so far)."""
    banned = {PAD, BOS, UNK}  # <unk> would vanish from the text; <s> never follows
    if not tokens:
        banned.add(EOS)  # never an empty reply
    if boundary_id is not None and (not tokens or tokens[-1] == boundary_id):
        banned.add(boundary_id)  # no leading or double spaces
    n = no_repeat_ngram
    if n > 0 and len(tokens) >= n - 1:
        prefix = tuple(tokens[len(tokens) - n + 1:])
        for i in range(len(tokens) - n + 1):
            if tuple(tokens[i:i + n - 1]) == prefix:
                banned.add(tokens[i + n - 1])
    return banned


def _step_logprobs(net: Network, last_tokens, hidden, memory, histories, no_repeat_ngram, boundary_id, force_eos):
    logits, hidden = net.decode(last_tokens, hidden, memory)
    logp = log_softmax(logits[:, -1])
    if force_eos:  # out of length: </s> is the only way on
        eos = logp[:, EOS].copy()
        logp.fill(-np.inf)
        logp[:, EOS] = eos
        return logp, hidden
    rows, cols = [], []  # every banned (row, token), masked in one indexing call
    for row, tokens in enumerate(histories):
        banned = _banned(tokens, no_repeat_ngram, boundary_id)
        if len(banned) >= logp.shape[1]:  # nothing left (a toy vocabulary): allow stopping
            banned.discard(EOS)
        rows.extend([row] * len(banned))
        cols.extend(banned)
    logp[rows, cols] = -np.inf
    return logp, hidden


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, highest first (ties: lower index
    first), without sorting all of them."""
    if k < scores.size:
        candidates = np.argpartition(-scores, k - 1)[:k]
    else:
        candidates = np.arange(scores.size)
    return candidates[np.lexsort((candidates, -scores[candidates]))]


def greedy_decode_batch(net: Network, sources, max_len: int, no_repeat_ngram: int = 0,
                        boundary_id: int | None = None) -> list[list[int]]:
    """Greedy decoding of several questions together: the most likely next
    token for each, until its </s> or max_len tokens."""
    memory, hidden = net.encode(sources)
    replies: list[list[int]] = [[] for _ in sources]
    active = list(range(len(sources)))  # questions still being decoded
    for step in range(max_len + 1):
        last = np.array([[replies[q][-1] if replies[q] else BOS] for q in active])
        logp, hidden = _step_logprobs(net, last, hidden, memory.rows(active), [replies[q] for q in active],
                                      no_repeat_ngram, boundary_id, force_eos=step == max_len)
        keep = []
        for row, tok in enumerate(logp.argmax(axis=1).tolist()):
            if tok != EOS:
                replies[active[row]].append(tok)
                keep.append(row)
        if not keep:
            break
        active = [active[row] for row in keep]
        hidden = hidden[:, keep]
    return replies


def beam_decode_batch(net: Network, sources, max_len: int, beam_size: int = 4, length_penalty: float = 1.0,
                      no_repeat_ngram: int = 0, boundary_id: int | None = None) -> list[list[int]]:
    """Beam search for several questions together: every live hypothesis of
    every question is one decoder row.  Finished replies are ranked by
    log p / length ** length_penalty so that short replies do not win just
    for being short."""
    memory, hidden = net.encode(sources)
    beams = [[([], 0.0)] for _ in sources]  # per question: (tokens, summed log prob)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in sources]
    active = list(range(len(sources)))
    for step in range(max_len + 1):
        owners = [q for q in active for _ in beams[q]]  # the question of each row
        hyps = [h for q in active for h in beams[q]]
        last = np.array([[toks[-1] if toks else BOS] for toks, _ in hyps])
        logp, hidden = _step_logprobs(net, last, hidden, memory.rows(owners), [t for t, _ in hyps],
                                      no_repeat_ngram, boundary_id, force_eos=step == max_len)
        scores = logp + np.array([s for _, s in hyps], dtype=np.float32)[:, None]
        vocab_size = scores.shape[1]
        next_active, origins, first = [], [], 0
        for q in active:
            width = len(beams[q])
            block = scores[first: first + width].reshape(-1)
            top = _top(block, min(2 * beam_size, block.size))
            next_beams = []
            for score, index in zip(block[top].tolist(), top.tolist()):
                if score == float("-inf"):
                    break
                origin, tok = divmod(index, vocab_size)
                tokens = beams[q][origin][0]
                if tok == EOS:
                    finished[q].append((score / (len(tokens) + 1) ** length_penalty, tokens))
                else:
                    next_beams.append((tokens + [tok], score))
                    origins.append(first + origin)
                if len(next_beams) == beam_size:
                    break
            if len(finished[q]) >= beam_size or not next_beams:
                del origins[len(origins) - len(next_beams):]  # this question is done
                if not finished[q]:
                    finished[q] = [(s / max(len(t), 1) ** length_penalty, t) for t, s in beams[q]]
            else:
                beams[q] = next_beams
                next_active.append(q)
            first += width
        if not next_active:
            break
        active = next_active
        hidden = hidden[:, origins]
    for q in active:  # out of steps (cannot happen with force_eos, but be safe)
        if not finished[q]:
            finished[q] = [(s / max(len(t), 1) ** length_penalty, t) for t, s in beams[q]]
    return [max(f, key=lambda item: item[0])[1] for f in finished]


def greedy_decode(net: Network, src_ids, max_len: int, no_repeat_ngram: int = 0,
                  boundary_id: int | None = None) -> list[int]:
    """Greedy decoding of one question."""
    return greedy_decode_batch(net, [src_ids], max_len, no_repeat_ngram, boundary_id)[0]


def beam_decode(net: Network, src_ids, max_len: int, beam_size: int = 4, length_penalty: float = 1.0,
                no_repeat_ngram: int = 0, boundary_id: int | None = None) -> list[int]:
    """Beam search for one question."""
    return beam_decode_batch(net, [src_ids], max_len, beam_size, length_penalty, no_repeat_ngram,
                             boundary_id)[0]


def generate_batch(net: Network, sources, config: ModelConfig | None = None,
                   boundary_id: int | None = None) -> list[list[int]]:
    """Decode several questions with the settings in config (the model's own by default)."""
    if not sources:
        return []
    c = config or net.config
    if c.decoding == "greedy":
        return greedy_decode_batch(net, sources, c.max_reply_len, c.no_repeat_ngram, boundary_id)
    return beam_decode_batch(net, sources, c.max_reply_len, c.beam_size, c.length_penalty, c.no_repeat_ngram,
                             boundary_id)


def generate(net: Network, src_ids, config: ModelConfig | None = None, boundary_id: int | None = None) -> list[int]:
    """Decode one question with the settings in config (the model's own by default)."""
    return generate_batch(net, [src_ids], config, boundary_id)[0]


def score_replies(net: Network, sources, replies) -> list[float]:
    """The mean log-probability per token of each reply (its </s> included)
    given its question, teacher-forced in one decoder pass: how sure the
    network is of what it wrote."""
    if not sources:
        return []
    memory, hidden = net.encode(sources)
    targets = [list(ids)[: net.config.max_reply_len] + [EOS] for ids in replies]
    width = max(map(len, targets))
    tgt_in = np.full((len(targets), width), PAD, dtype=np.int64)
    tgt_out = np.full((len(targets), width), PAD, dtype=np.int64)
    for row, ids in enumerate(targets):
        tgt_in[row, : len(ids)] = [BOS] + ids[:-1]
        tgt_out[row, : len(ids)] = ids
    logits, _ = net.decode(tgt_in, hidden, memory)
    logp = np.take_along_axis(log_softmax(logits), tgt_out[:, :, None], axis=2)[:, :, 0]
    mask = tgt_out != PAD
    return ((logp * mask).sum(axis=1) / mask.sum(axis=1)).tolist()
