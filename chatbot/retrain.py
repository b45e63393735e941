"""Retraining, one run at a time, with a quality gate.

    flask --app app retrain [--force]        # what `make retrain` runs
    python -m chatbot.retrain --models-dir models --pairs-csv pairs.csv [--force] [-- TRAIN ARGS]

``flask retrain`` and the admin page's button both go through ``start``:
take the lock, write the training pairs, run (in the CLI's process, or in a
runner process the web request starts and hands the lock to).

A retrain is one *runner* process that holds an exclusive lock on
``<MODEL_DIR>/.retrain.lock`` from start to end (see ``try_lock``), and runs
``python -m chatbot.train --no-activate`` as its child on a CSV of the app's
training pairs (starter pairs, reviewed and imported pairs; needs-deletion
rows left out: ``pairs.training_pairs``).  The kernel drops the lock when the
runner dies, however it dies (kill -9 included), and the trainer child is
killed with it (``PR_SET_PDEATHSIG``), so a crash never leaves a stale lock or
an orphan trainer.  The trainer never touches ``current``: only the runner
does, after the gate, so a run killed at any point leaves ``current`` as it
was.

Progress lives in files, not in any server's memory:
``<MODEL_DIR>/.retrain/status.json`` (state, epoch, loss, ETA, the gate's
verdict; replaced atomically) and ``.retrain/logs/<run>.log`` (the trainer's
whole output).  So every server process, a server restarted mid-run, and a
run started by ``make retrain`` all show the same progress; the admin page
gets it pushed over Socket.IO by a watcher thread that reads the status file
(``chatbot.versions_admin``).

The quality gate: the new model's dev chrF (``metrics.json`` ``dev_chrf``) is
compared with ``current``'s; worse by more than ``QUALITY_GATE_MARGIN`` chrF
points, the model is kept on disk but not activated, unless forced.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import re
import resource
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from . import versions
from .config import PROJECT_ROOT
from .pairs_csv import Pair, write_pairs_csv

LOCK_NAME = ".retrain.lock"
STATE_DIR = ".retrain"
STATUS_NAME = "status.json"
PAIRS_NAME = "pairs.csv"
BUSY_EXIT = 75  # EX_TEMPFAIL: another retrain holds the lock

RUNNING, ACTIVATED, REFUSED, FAILED, INTERRUPTED = "running", "activated", "refused", "failed", "interrupted"
STATE_LABELS = {RUNNING: "학습 중", ACTIVATED: "적용됨", REFUSED: "품질 기준 미달 (적용 안 함)",
                FAILED: "실패", INTERRUPTED: "중단됨"}

_EPOCH = re.compile(r"^epoch\s+(\d+)\s*\|\s*step\s+(\d+)\s*\|\s*train loss\s+([\d.]+|nan|inf)"
                    r"(?:\s*\|\s*dev loss\s+([\d.]+|nan|inf))?")
_SIZES = re.compile(r"^(\d+) train / (\d+) dev pairs.*?(?:, up to (\d+) epochs)?$")
_NEW_MODEL = re.compile(r"^new model: (.+?)( \(now current\))?$")
_TEMP_PID = re.compile(r"^\.tmp-\d{8}-\d{6}-(\d+)-")
# struct flock (l_type, l_whence, l_start, l_len, l_pid) as Linux's fcntl takes it (64-bit off_t).
_FLOCK = struct.Struct("hhqqi4x")


class RetrainBusy(Exception):
    """Another retrain is running (it holds the lock)."""

    def __init__(self):
        super().__init__("다른 재학습이 이미 진행 중입니다.")


def _now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def state_dir(models_root) -> Path:
    return Path(models_root) / STATE_DIR


def lock_file(models_root) -> Path:
    return Path(models_root) / LOCK_NAME


# -- the lock ----------------------------------------------------------------------

def _whole_file_lock(fd, command, lock_type) -> int:
    """fcntl ``command`` for a lock of the whole file; the l_type the kernel hands back."""
    result = fcntl.fcntl(fd, command, _FLOCK.pack(lock_type, os.SEEK_SET, 0, 0, 0))
    return _FLOCK.unpack(result)[0]


def try_lock(models_root) -> int | None:
    """An fd holding the retrain lock, or None if another process holds it.

    The lock is a Linux open-file-description lock (``F_OFD_SETLK``): like
    ``flock`` it belongs to the open file, so the admin page can hand it to
    the runner process (``pass_fds``) and the kernel drops it when the last fd
    is closed, however the holder dies; unlike ``flock`` it can be asked about
    without taking it (``is_running``).  A classic POSIX lock would not do: it
    belongs to a process, and closing any fd of the file drops it.
    """
    root = Path(models_root)
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file(root), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        _whole_file_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_WRLCK)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_running(models_root) -> bool:
    """True while some process holds the retrain lock.

    Asks the kernel (``F_OFD_GETLK``) and never takes the lock: every page
    view and every server's progress watcher asks, and a poll that held the
    lock even for a moment would make a real retrain starting then fail as
    busy.
    """
    try:
        fd = os.open(lock_file(models_root), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return _whole_file_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK) != fcntl.F_UNLCK
    finally:
        os.close(fd)


# -- status --------------------------------------------------------------------

def write_status(models_root, status: dict) -> None:
    """Replace status.json atomically (readers see the old or the new one)."""
    directory = state_dir(models_root)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".status-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(status, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, directory / STATUS_NAME)


_STATUS_FIELDS = ("state", "run_id", "pid", "started_at", "finished_at", "force", "margin", "pairs", "epoch",
                  "epochs", "step", "train_loss", "dev_loss", "eta_seconds", "elapsed_seconds", "version",
                  "activated", "message", "log")


def read_status(models_root) -> dict:
    """The last run's status; a "running" run whose lock is free died: "interrupted"."""
    try:
        status = json.loads((state_dir(models_root) / STATUS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        status = {}
    status = {**dict.fromkeys(_STATUS_FIELDS), **status}
    running = is_running(models_root)
    if status.get("state") == RUNNING and not running:
        status["state"] = INTERRUPTED
        status["message"] = "재학습 프로세스가 끝나기 전에 중단되었습니다. current는 그대로입니다."
    status["running"] = running
    status["state_label"] = STATE_LABELS.get(status.get("state"), "")
    return status


def read_log(models_root, status=None, max_lines=200) -> str:
    status = status if status is not None else read_status(models_root)
    name = status.get("log")
    if not name:
        return ""
    try:
        lines = (state_dir(models_root) / "logs" / Path(name).name).read_text(
            encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-max_lines:])


# -- the quality gate -------------------------------------------------------------

def read_metrics(version_dir) -> dict:
    if version_dir is None:
        return {}
    try:
        return json.loads((Path(version_dir) / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def quality_gate(new: dict, current: dict, margin: float) -> tuple[bool, str]:
    """(passes, why): does the new model's dev chrF stay within ``margin`` of current's?"""
    new_score, old_score = new.get("dev_chrf"), current.get("dev_chrf")
    if not isinstance(old_score, (int, float)):
        return True, "비교할 current 모델의 dev chrF가 없어 새 모델을 적용합니다."
    if not isinstance(new_score, (int, float)):
        return False, f"새 모델에 dev chrF가 없습니다 (current {old_score:.2f})."
    if new_score < old_score - margin:
        return False, (f"새 모델의 dev chrF {new_score:.2f}가 current의 {old_score:.2f}보다 "
                       f"{old_score - new_score:.2f}점 낮습니다 (허용 {margin:g}점).")
    return True, f"dev chrF {new_score:.2f} (current {old_score:.2f}, 허용 차이 {margin:g}점)."


# -- starting a retrain (the CLI and the admin page) --------------------------------

def start(config, pairs, *, force=False, margin=None, extra_train_args=(), background=False, on_line=None,
          offload=None):
    """Retrain the app's model on ``pairs`` ((question, answer) tuples).

    ``config`` is the app's config (MODEL_DIR, QUALITY_GATE_MARGIN,
    RETRAIN_ARGS).  Takes the lock (RetrainBusy if another retrain holds it),
    writes the pairs to ``.retrain/pairs.csv`` and trains on them: here,
    returning the final status (``flask retrain``), or with ``background`` in
    a new runner process that inherits the lock, returning its Popen at once
    (the admin page: a web request must not wait for a training run).
    ``offload(fn, *args)``, if given, writes the pairs (the admin page's
    heavy.run: a million pairs are written off the event loop).
    """
    offload = offload or (lambda fn, *args: fn(*args))
    root = Path(config["MODEL_DIR"])
    margin = config["QUALITY_GATE_MARGIN"] if margin is None else margin
    train_args = [*shlex.split(config.get("RETRAIN_ARGS") or ""), *extra_train_args]
    pairs_csv = state_dir(root) / PAIRS_NAME
    fd = try_lock(root)
    if fd is None:
        raise RetrainBusy()
    if background:
        try:
            count = offload(_write_pairs, pairs_csv, pairs)
            return _start_runner(root, pairs_csv, fd, force, margin, train_args, count)
        finally:
            os.close(fd)  # the runner has its own fd for the lock: it stays held until the runner ends
    try:
        count = offload(_write_pairs, pairs_csv, pairs)
    except BaseException:
        os.close(fd)
        raise
    return run(root, pairs_csv, force=force, margin=margin, train_args=train_args, lock_fd=fd,
               on_line=on_line, pair_count=count)


def _write_pairs(path, pairs) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        return write_pairs_csv(f, (Pair(question, answer) for question, answer in pairs))


def _start_runner(root, pairs_csv, lock_fd, force, margin, train_args, pair_count) -> subprocess.Popen:
    """``python -m chatbot.retrain`` in its own session, handed the locked fd."""
    command = [sys.executable, "-m", "chatbot.retrain", "--models-dir", str(root), "--pairs-csv", str(pairs_csv),
               "--pair-count", str(pair_count), "--margin", str(margin), "--lock-fd", str(lock_fd)]
    if force:
        command.append("--force")
    command += ["--", *train_args]
    proc = subprocess.Popen(command, pass_fds=(lock_fd,), cwd=str(PROJECT_ROOT), start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Reap it when it ends, so it never lingers as a zombie.
    threading.Thread(target=proc.wait, name=f"retrain-{proc.pid}", daemon=True).start()
    return proc


# -- the runner ----------------------------------------------------------------------

# The trainer yields the CPU to the server's chats: a lower priority (nice),
# so that a retrain on a 1-2 core machine does not slow the replies.
TRAINER_NICE = 10
OUT_OF_MEMORY = "메모리가 부족해 학습이 중단되었습니다"


def _trainer_setup():
    """In the trainer child: get SIGKILL when the runner dies (Linux), its own
    process group, and a lower CPU priority than the server."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    os.setpgrp()  # a Ctrl-C in the runner's terminal is the runner's to handle
    os.nice(TRAINER_NICE)


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's
    memory cgroup (v2 ``memory.events``, v1 ``memory.oom_control``); None
    where neither can be read."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            candidates = [Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events"]
        elif "memory" in controllers.split(","):
            candidates = [Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"]
        else:
            continue
        for candidate in candidates:
            try:
                fields = dict(row.split() for row in candidate.read_text().splitlines() if row.strip())
            except (OSError, ValueError):
                continue
            if "oom_kill" in fields:
                return int(fields["oom_kill"])
    return None


def failure_message(rc: int, killed_for_memory: bool, peak_mb: float | None) -> str:
    """What the admin page and ``make retrain`` say about a failed trainer."""
    peak = f" 학습 프로세스의 최대 메모리 {peak_mb:.0f} MB." if peak_mb else ""
    if killed_for_memory:
        return f"{OUT_OF_MEMORY}.{peak} current는 그대로입니다. README의 메모리 안내를 보세요."
    return f"학습이 실패했습니다 (종료 코드 {rc}).{peak} current는 그대로입니다."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(models_root) -> list[str]:
    """Remove hidden temp dirs of training runs whose process is gone."""
    removed = []
    root = Path(models_root)
    for path in root.glob(".tmp-*"):
        match = _TEMP_PID.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


def run(models_root, pairs_csv, *, force=False, margin=2.0, train_args=(), lock_fd=None,
        python=None, on_line=None, pair_count=None) -> dict:
    """Train on ``pairs_csv`` under the retrain lock, then apply the quality gate.

    ``lock_fd``: an fd already holding the lock (handed over by the server);
    without it the lock is taken here, or RetrainBusy raised.  Returns the
    final status dict (also in status.json).
    """
    root = Path(models_root)
    fd = lock_fd if lock_fd is not None else try_lock(root)
    if fd is None:
        raise RetrainBusy()
    try:
        return _run_locked(root, Path(pairs_csv), force, float(margin), list(train_args),
                           python or sys.executable, on_line, pair_count)
    finally:
        os.close(fd)


def _run_locked(root, pairs_csv, force, margin, train_args, python, on_line, pair_count):
    run_id = time.strftime(versions.TIME_FORMAT) + f"-{os.getpid()}"
    logs = state_dir(root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{run_id}.log"
    remove_stale_temp_dirs(root)
    status = {"state": RUNNING, "run_id": run_id, "pid": os.getpid(), "started_at": _now(),
              "finished_at": None, "force": force, "margin": margin, "pairs": pair_count,
              "epoch": None, "epochs": None, "step": None, "train_loss": None, "dev_loss": None,
              "eta_seconds": None, "elapsed_seconds": 0, "version": None, "activated": False,
              "message": "학습을 시작했습니다.", "log": log_path.name}
    write_status(root, status)
    command = [python, "-m", "chatbot.train", "--pairs", str(pairs_csv), "--models-dir", str(root),
               "--no-activate", "--quiet", *train_args]
    started = time.monotonic()
    first_epoch_at = None
    new_dir = None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {_now()} {' '.join(command)}\n")
        if pair_count is not None:
            log.write(f"# {pair_count} training pairs\n")
            if on_line:
                on_line(f"{pair_count} training pairs")
        log.flush()
        kills_before = oom_kills()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                encoding="utf-8", errors="replace", bufsize=1, env=env,
                                cwd=str(PROJECT_ROOT),
                                preexec_fn=_trainer_setup)
        status["trainer_pid"] = proc.pid
        write_status(root, status)
        try:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                log.write(line + "\n")
                log.flush()
                if on_line:
                    on_line(line)
                if m := _SIZES.match(line):
                    status["train_pairs"], status["dev_pairs"] = int(m.group(1)), int(m.group(2))
                    # The trainer says how many epochs it will run at most: the
                    # runner never loads PyTorch (about 200 MB) to work it out.
                    status["epochs"] = int(m.group(3)) if m.group(3) else None
                    first_epoch_at = time.monotonic()
                    write_status(root, status)
                elif m := _EPOCH.match(line):
                    epoch = int(m.group(1))
                    elapsed = time.monotonic() - (first_epoch_at or started)
                    status.update(epoch=epoch, step=int(m.group(2)), train_loss=float(m.group(3)),
                                  dev_loss=float(m.group(4)) if m.group(4) else None,
                                  elapsed_seconds=round(time.monotonic() - started, 1))
                    if status.get("epochs"):
                        status["eta_seconds"] = round(max(0, status["epochs"] - epoch) * elapsed / epoch, 1)
                    status["message"] = f"epoch {epoch} 학습 중"
                    write_status(root, status)
                elif m := _NEW_MODEL.match(line):
                    new_dir = Path(m.group(1))
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status["elapsed_seconds"] = round(time.monotonic() - started, 1)
        status["finished_at"] = _now()
        status["eta_seconds"] = 0
        # The trainer is this runner's only child: its peak resident memory.
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        status["trainer_peak_mb"] = round(peak_mb, 1)
        if rc != 0 or new_dir is None or not new_dir.is_dir():
            # SIGKILL is what the OOM killer sends; where the cgroup's count
            # can be read, it says whether it was the OOM killer.
            kills_after = oom_kills()
            for_memory = rc == -signal.SIGKILL and (kills_before is None or kills_after is None
                                                     or kills_after > kills_before)
            status.update(state=FAILED, out_of_memory=for_memory, message=failure_message(rc, for_memory, peak_mb))
        else:
            status["version"] = new_dir.name
            new_metrics = read_metrics(new_dir)
            current = versions.current_dir(root)
            passes, why = quality_gate(new_metrics, read_metrics(current), margin)
            status["dev_chrf"] = new_metrics.get("dev_chrf")
            status["current_dev_chrf"] = read_metrics(current).get("dev_chrf")
            if passes or force:
                versions.activate(root, new_dir.name)
                status.update(state=ACTIVATED, activated=True,
                              message=(f"{new_dir.name}을(를) current로 적용했습니다. " + why
                                       + (" (강제 적용)" if force and not passes else "")))
            else:
                status.update(state=REFUSED, message=f"{new_dir.name}은(는) 저장했지만 적용하지 않았습니다: {why}")
        log.write(f"# {_now()} {status['state']}: {status['message']}\n")
    write_status(root, status)
    return status


# -- command line (the process the admin page starts) ----------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m chatbot.retrain", description=__doc__.split("\n")[0])
    p.add_argument("--models-dir", required=True)
    p.add_argument("--pairs-csv", required=True)
    p.add_argument("--force", action="store_true", help="activate even if the quality gate refuses")
    p.add_argument("--margin", type=float, default=2.0, help="chrF points the new model may lose")
    p.add_argument("--lock-fd", type=int, help="an inherited fd that already holds the lock")
    p.add_argument("--pair-count", type=int)
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then flags for chatbot.train")
    args = p.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    try:
        status = run(args.models_dir, args.pairs_csv, force=args.force, margin=args.margin,
                     train_args=train_args, lock_fd=args.lock_fd, pair_count=args.pair_count,
                     on_line=lambda line: print(line, flush=True))
    except RetrainBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BUSY_EXIT
    print(f"{status['state']}: {status['message']}", flush=True)
    return 0 if status["state"] in (ACTIVATED, REFUSED) else 1


if __name__ == "__main__":
    sys.exit(main())
