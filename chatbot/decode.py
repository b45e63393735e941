"""Turning a question into reply ids: greedy search and beam search, for
several questions at once (every live hypothesis of every question is one
decoder row), as in the PyTorch chatbot tutorial's searchers.

No empty replies, no <unk>, no leading or double spaces, and optionally no
repeated n-grams (``_banned``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from chatbot.model import BOS, EOS, PAD, UNK, Memory, ModelConfig, Seq2Seq, encode_many


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


def _step_logprobs(model, last_tokens, hidden, memory, histories, no_repeat_ngram, boundary_id, force_eos):
    logits, hidden = model.decode(last_tokens, hidden, memory)
    logp = F.log_softmax(logits[:, -1].float(), dim=-1)
    if force_eos:  # out of length: </s> is the only way on
        eos = logp[:, EOS].clone()
        logp.fill_(float("-inf"))
        logp[:, EOS] = eos
        return logp, hidden
    rows, cols = [], []  # every banned (row, token), masked in one indexing call
    for row, tokens in enumerate(histories):
        banned = _banned(tokens, no_repeat_ngram, boundary_id)
        if len(banned) >= logp.size(1):  # nothing left (a toy vocabulary): allow stopping
            banned.discard(EOS)
        rows.extend([row] * len(banned))
        cols.extend(banned)
    logp[rows, cols] = float("-inf")
    return logp, hidden


def _rows(memory: Memory, index) -> Memory:
    """The memory rows for each decoder row (its question's)."""
    return Memory(*(t[index] for t in memory))


@torch.inference_mode()
def greedy_decode_batch(model: Seq2Seq, sources, max_len: int, no_repeat_ngram: int = 0,
                        boundary_id: int | None = None) -> list[list[int]]:
    """Greedy decoding of several questions together: the most likely next
    token for each, until its </s> or max_len tokens."""
    memory, hidden = encode_many(model, sources)
    device = memory.values.device
    replies: list[list[int]] = [[] for _ in sources]
    active = list(range(len(sources)))  # questions still being decoded
    for step in range(max_len + 1):
        last = torch.tensor([[replies[q][-1] if replies[q] else BOS] for q in active], device=device)
        logp, hidden = _step_logprobs(model, last, hidden, _rows(memory, torch.tensor(active, device=device)),
                                      [replies[q] for q in active], no_repeat_ngram, boundary_id,
                                      force_eos=step == max_len)
        keep = []
        for row, tok in enumerate(logp.argmax(dim=1).tolist()):
            if tok != EOS:
                replies[active[row]].append(tok)
                keep.append(row)
        if not keep:
            break
        active = [active[row] for row in keep]
        hidden = hidden[:, torch.tensor(keep, device=device)]
    return replies


@torch.inference_mode()
def beam_decode_batch(model: Seq2Seq, sources, max_len: int, beam_size: int = 4, length_penalty: float = 1.0,
                      no_repeat_ngram: int = 0, boundary_id: int | None = None) -> list[list[int]]:
    """Beam search for several questions together: every live hypothesis of
    every question is one decoder row.  Finished replies are ranked by
    log p / length ** length_penalty so that short replies do not win just
    for being short."""
    memory, hidden = encode_many(model, sources)
    device = memory.values.device
    beams = [[([], 0.0)] for _ in sources]  # per question: (tokens, summed log prob)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in sources]
    active = list(range(len(sources)))
    for step in range(max_len + 1):
        owners = [q for q in active for _ in beams[q]]  # the question of each row
        hyps = [h for q in active for h in beams[q]]
        last = torch.tensor([[toks[-1] if toks else BOS] for toks, _ in hyps], device=device)
        logp, hidden = _step_logprobs(model, last, hidden, _rows(memory, torch.tensor(owners, device=device)),
                                      [t for t, _ in hyps], no_repeat_ngram, boundary_id, force_eos=step == max_len)
        scores = logp + torch.tensor([s for _, s in hyps], device=device).unsqueeze(1)
        vocab_size = scores.size(1)
        next_active, origins, first = [], [], 0
        for q in active:
            width = len(beams[q])
            block = scores[first: first + width].reshape(-1)
            top = block.topk(min(2 * beam_size, block.numel()))
            next_beams = []
            for score, index in zip(top.values.tolist(), top.indices.tolist()):
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
        hidden = hidden[:, torch.tensor(origins, device=device)]
    for q in active:  # out of steps (cannot happen with force_eos, but be safe)
        if not finished[q]:
            finished[q] = [(s / max(len(t), 1) ** length_penalty, t) for t, s in beams[q]]
    return [max(f, key=lambda item: item[0])[1] for f in finished]


def greedy_decode(model: Seq2Seq, src_ids, max_len: int, no_repeat_ngram: int = 0,
                  boundary_id: int | None = None) -> list[int]:
    """Greedy decoding of one question."""
    return greedy_decode_batch(model, [src_ids], max_len, no_repeat_ngram, boundary_id)[0]


def beam_decode(model: Seq2Seq, src_ids, max_len: int, beam_size: int = 4, length_penalty: float = 1.0,
                no_repeat_ngram: int = 0, boundary_id: int | None = None) -> list[int]:
    """Beam search for one question."""
    return beam_decode_batch(model, [src_ids], max_len, beam_size, length_penalty, no_repeat_ngram,
                             boundary_id)[0]


def generate_batch(model: Seq2Seq, sources, config: ModelConfig | None = None,
                   boundary_id: int | None = None) -> list[list[int]]:
    """Decode several questions with the settings in config (the model's own by default)."""
    if not sources:
        return []
    c = config or model.config
    if c.decoding == "greedy":
        return greedy_decode_batch(model, sources, c.max_reply_len, c.no_repeat_ngram, boundary_id)
    return beam_decode_batch(model, sources, c.max_reply_len, c.beam_size, c.length_penalty, c.no_repeat_ngram,
                             boundary_id)


def generate(model: Seq2Seq, src_ids, config: ModelConfig | None = None, boundary_id: int | None = None) -> list[int]:
    """Decode one question with the settings in config (the model's own by default)."""
    return generate_batch(model, [src_ids], config, boundary_id)[0]


@torch.inference_mode()
def score_replies(model: Seq2Seq, sources, replies) -> list[float]:
    """The mean log-probability per token of each reply (its </s> included)
    given its question, teacher-forced in one decoder pass: how sure the
    network is of what it wrote."""
    if not sources:
        return []
    memory, hidden = encode_many(model, sources)
    device = memory.values.device
    targets = [list(ids)[: model.config.max_reply_len] + [EOS] for ids in replies]
    width = max(map(len, targets))
    tgt_in = torch.full((len(targets), width), PAD, dtype=torch.long, device=device)
    tgt_out = torch.full((len(targets), width), PAD, dtype=torch.long, device=device)
    for row, ids in enumerate(targets):
        tgt_in[row, : len(ids)] = torch.tensor([BOS] + ids[:-1], dtype=torch.long)
        tgt_out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    logits, _ = model.decode(tgt_in, hidden, memory)
    logp = F.log_softmax(logits.float(), dim=-1).gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    mask = tgt_out != PAD
    return ((logp * mask).sum(dim=1) / mask.sum(dim=1)).tolist()
