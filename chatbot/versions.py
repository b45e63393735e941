"""Trained models on disk: one directory per version, `current` picks one.

    models/
        20250101-120000/      model.pt weights.npz vocab.json config.json metrics.json train.log
        20250101-120000-2/    a second model published in the same second
        .tmp-20250101-1205...  a training run in progress (hidden)
        current -> 20250101-120000-2

A model is written into a hidden temp dir and renamed into place when
complete, and `current` is swapped with os.replace, so a reader never sees a
half-written model or a missing `current`.  Rolling back is activate(old_name).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from pathlib import Path

CURRENT = "current"
TIME_FORMAT = "%Y%m%d-%H%M%S"


def _natural_key(name: str):
    # "…-10" must sort after "…-2".
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_version_dir(path: Path) -> bool:
    return (path.is_dir() and not path.is_symlink()
            and not path.name.startswith(".") and path.name != CURRENT)


def current_dir(models_root) -> Path | None:
    """The directory `current` points at, or None if it is missing or dangling."""
    link = Path(models_root) / CURRENT
    if not link.exists():  # exists() follows the link, so a dangling one is False
        return None
    return link.resolve()


def list_versions(models_root) -> list[str]:
    """Names of the version directories, oldest first (temp dirs and `current` left out)."""
    root = Path(models_root)
    if not root.is_dir():
        return []
    return sorted((p.name for p in root.iterdir() if _is_version_dir(p)), key=_natural_key)


def _check_version(root: Path, name) -> None:
    """ValueError unless ``name`` is one of list_versions(root), exactly.

    Checked against the directory's own entries, not by building a path:
    ``root / "."`` is root itself, and ``.``, ``..``, hidden names, `current`
    and anything with a separator are never an entry that list_versions gives.
    """
    if not isinstance(name, str) or name not in list_versions(root):
        raise ValueError(f"{name!r} is not a model version in {root}")


def make_temp_dir(models_root) -> Path:
    """A fresh hidden directory inside models_root, so publishing is a rename
    within one file system (atomic)."""
    root = Path(models_root)
    root.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{time.strftime(TIME_FORMAT)}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))


def publish(temp_dir, models_root) -> Path:
    """Rename temp_dir to a new timestamped version directory and return it.

    The name is claimed with os.mkdir, which fails if it exists, so two
    trainers finishing in the same second get `…` and `…-2`; the temp dir
    then replaces our own empty placeholder in one os.rename.
    """
    root = Path(models_root)
    base = time.strftime(TIME_FORMAT)
    n = 1
    while True:
        target = root / (base if n == 1 else f"{base}-{n}")
        try:
            os.mkdir(target)
            break
        except FileExistsError:
            n += 1
    try:
        os.rename(temp_dir, target)
    except BaseException:
        os.rmdir(target)
        raise
    return target


def activate(models_root, name: str) -> Path:
    """Point `current` at version `name` atomically (new symlink, then os.replace)."""
    root = Path(models_root)
    _check_version(root, name)
    tmp_link = root / f".current-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.symlink(name, tmp_link)  # relative, so the models dir can be moved
    try:
        os.replace(tmp_link, root / CURRENT)
    except BaseException:
        tmp_link.unlink()
        raise
    return root / name


WEIGHTS_TIMEOUT_SECONDS = 300


def add_numpy_weights(models_root, name: str) -> bool:
    """Give version ``name``, if it is from before weights.npz, its
    weights.npz, converted from model.pt in a child process: the server
    reads weights.npz with NumPy and never imports torch (about 190 MB of
    its memory).  True when it wrote one.  Raises ValueError when the
    version cannot be converted (a broken model.pt): activating it would
    fail to load anyway."""
    import subprocess
    import sys

    from .model_dir import WEIGHTS_FILE

    root = Path(models_root)
    _check_version(root, name)
    if (root / name / WEIGHTS_FILE).is_file():
        return False
    code = "import sys; from chatbot.model import add_numpy_weights; add_numpy_weights(sys.argv[1])"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(root / name)], capture_output=True, text=True,
                              timeout=WEIGHTS_TIMEOUT_SECONDS, cwd=Path(__file__).resolve().parents[1])
    except subprocess.TimeoutExpired:
        raise ValueError(f"{name}의 {WEIGHTS_FILE}를 {WEIGHTS_TIMEOUT_SECONDS}초 안에 만들지 못했습니다") from None
    if done.returncode != 0:
        why = ((done.stderr or "").strip().splitlines() or ["?"])[-1]
        raise ValueError(f"{name}의 {WEIGHTS_FILE}를 만들지 못했습니다 ({why})")
    return True


class VersionInUse(ValueError):
    """The version is `current`: it cannot be deleted."""


def delete(models_root, name: str) -> None:
    """Delete version `name`; never the one `current` points at.

    The directory is first renamed to a hidden name (so it is no longer a
    version and cannot be activated), then `current` is checked again: if it
    was swapped to this version meanwhile, the rename is undone and the
    delete refused.  Only then is the hidden directory removed.
    """
    import shutil

    root = Path(models_root)
    _check_version(root, name)
    if _points_at(root, name):
        raise VersionInUse(f"{name} is current; activate another version first")
    hidden = root / f".deleting-{name}-{uuid.uuid4().hex[:8]}"
    os.rename(root / name, hidden)
    if _points_at(root, name):
        os.rename(hidden, root / name)
        raise VersionInUse(f"{name} is current; activate another version first")
    shutil.rmtree(hidden)


def _points_at(root: Path, name: str) -> bool:
    try:
        return os.readlink(root / CURRENT) == name
    except OSError:
        return False
