"""One retrain runner (retrain.start) for `flask retrain` and the admin page,
and is_running that never takes the lock."""
import ast
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chatbot import heavy, retrain
from chatbot.config import PROJECT_ROOT

from helpers import token_in


def imported_modules(name):
    """Every module chatbot/<name>.py imports, at the top or inside a function."""
    tree = ast.parse((PROJECT_ROOT / "chatbot" / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.rsplit(".", 1)[-1] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.module:
                found.add(node.module.rsplit(".", 1)[-1])
            if node.level or node.module == "chatbot":
                found.update(alias.name for alias in node.names)
    return found


def test_cli_and_admin_pages_do_not_import_each_other():
    assert not {"versions_admin", "queue_admin", "review"} & imported_modules("cli")
    for admin in ("versions_admin", "queue_admin", "review"):
        assert "cli" not in imported_modules(admin), admin


@pytest.fixture
def app(make_app):
    return make_app(RETRAIN_ARGS="--epochs 1", QUALITY_GATE_MARGIN=1.5)


def test_cli_and_models_page_both_start_through_retrain_start(app, logged_in, monkeypatch):
    calls = []

    def fake_start(config, pairs, **options):
        calls.append((config["MODEL_DIR"], len(pairs), options))
        if options.get("background"):
            return type("Proc", (), {"pid": 1})()
        return {"state": retrain.ACTIVATED, "message": "ok"}
    monkeypatch.setattr(retrain, "start", fake_start)

    result = app.test_cli_runner().invoke(args=["retrain", "--force", "--", "--seed", "3"])
    assert result.exit_code == 0, result.output
    token = token_in(logged_in.get("/admin/models/").get_data(as_text=True))
    logged_in.post("/admin/models/retrain", data={"csrf_token": token})

    (cli_root, cli_pairs, cli_options), (web_root, web_pairs, web_options) = calls
    assert cli_root == web_root == app.config["MODEL_DIR"] and cli_pairs == web_pairs > 0
    assert cli_options["force"] and not cli_options.get("background")
    assert list(cli_options["extra_train_args"]) == ["--seed", "3"]
    # the page writes the pairs file on a heavy-work thread (chatbot/heavy.py)
    assert web_options == {"force": False, "background": True, "offload": heavy.run}


def test_start_while_a_retrain_runs_is_busy_and_leaves_its_pairs_file_alone(tmp_path):
    config = {"MODEL_DIR": str(tmp_path), "QUALITY_GATE_MARGIN": 2.0, "RETRAIN_ARGS": ""}
    pairs_csv = retrain.state_dir(tmp_path) / retrain.PAIRS_NAME
    pairs_csv.parent.mkdir(parents=True)
    pairs_csv.write_text("the running retrain's pairs", encoding="utf-8")
    fd = retrain.try_lock(tmp_path)
    try:
        for background in (False, True):
            with pytest.raises(retrain.RetrainBusy):
                retrain.start(config, [("안녕", "안녕하세요")], background=background)
    finally:
        os.close(fd)
    assert pairs_csv.read_text(encoding="utf-8") == "the running retrain's pairs"
    assert not retrain.is_running(Path(tmp_path))


# -- is_running asks without taking the lock --------------------------------------

POLLER = """
import sys, time
from chatbot import heavy, retrain
print("polling", flush=True)
while True:
    retrain.is_running(sys.argv[1])
"""


def test_polling_is_running_never_makes_a_real_retrain_busy(tmp_path):
    """Page views and the 0.5 s watchers poll is_running in every server process;
    a `flask retrain` starting meanwhile must get the lock every time."""
    os.close(retrain.try_lock(tmp_path))
    poller = subprocess.Popen([sys.executable, "-c", POLLER, str(tmp_path)], cwd=str(PROJECT_ROOT),
                              stdout=subprocess.PIPE, text=True)
    stop = threading.Event()

    def poll_here():
        while not stop.is_set():
            retrain.is_running(tmp_path)
    thread = threading.Thread(target=poll_here)
    try:
        assert poller.stdout.readline() == "polling\n"
        thread.start()
        busy = tries = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            tries += 1
            fd = retrain.try_lock(tmp_path)
            if fd is None:
                busy += 1
            else:
                os.close(fd)
    finally:
        stop.set()
        poller.kill()
        poller.wait()
        thread.join()
    assert busy == 0, f"{busy} of {tries} tries were told a retrain is running"


def test_is_running_sees_the_lock_held_here_and_elsewhere_and_leaves_it_held(tmp_path):
    assert not retrain.is_running(tmp_path)  # no lock file yet
    fd = retrain.try_lock(tmp_path)
    try:
        assert retrain.is_running(tmp_path)
        # Asking from the holder's own process did not release it (as closing
        # any fd of the file would with a classic POSIX lock).
        other = subprocess.run([sys.executable, "-c", "import sys; from chatbot import retrain; "
                                "print(retrain.try_lock(sys.argv[1]))", str(tmp_path)],
                               cwd=str(PROJECT_ROOT), capture_output=True, text=True, timeout=60)
        assert other.stdout.strip() == "None", other.stderr
    finally:
        os.close(fd)
    assert not retrain.is_running(tmp_path)


def test_the_lock_handed_to_a_runner_is_held_until_the_runner_dies(tmp_path):
    fd = retrain.try_lock(tmp_path)
    try:
        runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    finally:
        os.close(fd)  # as the admin request does after starting the runner
    try:
        assert retrain.is_running(tmp_path) and retrain.try_lock(tmp_path) is None
    finally:
        runner.kill()
        runner.wait()
    assert not retrain.is_running(tmp_path)
    os.close(retrain.try_lock(tmp_path))


def _self_killing_python(tmp_path):
    """A stand-in for the trainer's python that the kernel kills with SIGKILL
    (as the OOM killer does), after printing a line."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho 'epoch   1 | step     1 | train loss 1.000'\nkill -9 $$\n")
    script.chmod(0o755)
    return str(script)


def test_a_trainer_killed_for_memory_is_reported_in_words_and_current_stays(tmp_path, monkeypatch):
    from chatbot import retrain

    kills = iter([3, 4])  # the memory cgroup's OOM kill count, before and after the trainer
    monkeypatch.setattr(retrain, "oom_kills", lambda: next(kills))
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Q,A\n안녕,안녕하세요\n", encoding="utf-8")
    status = retrain.run(tmp_path / "models", pairs, python=_self_killing_python(tmp_path))
    assert (status["state"], status["out_of_memory"]) == (retrain.FAILED, True)
    assert status["message"].startswith(retrain.OUT_OF_MEMORY + ".")
    assert "MB" in status["message"] and status["trainer_peak_mb"] > 0
    assert retrain.read_status(tmp_path / "models")["message"] == status["message"]
    assert not (tmp_path / "models" / "current").exists()


def test_a_trainer_killed_by_someone_else_is_a_plain_failure(tmp_path, monkeypatch):
    from chatbot import retrain

    monkeypatch.setattr(retrain, "oom_kills", lambda: 3)  # no OOM kill in between
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Q,A\n안녕,안녕하세요\n", encoding="utf-8")
    status = retrain.run(tmp_path / "models", pairs, python=_self_killing_python(tmp_path))
    assert (status["state"], status["out_of_memory"]) == (retrain.FAILED, False)
    assert status["message"].startswith("학습이 실패했습니다 (종료 코드 -9).")
    assert retrain.OUT_OF_MEMORY not in status["message"]


def test_the_trainer_runs_at_a_lower_cpu_priority_than_the_runner(tmp_path):
    import os

    from chatbot import retrain

    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho \"nice $(cut -d' ' -f19 /proc/$$/stat)\"\n")
    script.chmod(0o755)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Q,A\n안녕,안녕하세요\n", encoding="utf-8")
    lines = []
    retrain.run(tmp_path / "models", pairs, python=str(script), on_line=lines.append)
    assert f"nice {os.nice(0) + retrain.TRAINER_NICE}" in lines


def test_the_runner_takes_the_epoch_count_from_the_trainer_and_never_loads_pytorch(tmp_path):
    """The runner only watches the trainer: PyTorch (about 200 MB) stays out of it."""
    import subprocess
    import sys

    from live_server import ROOT

    script = tmp_path / "python"
    script.write_text("#!/bin/sh\necho '90 train / 10 dev pairs, vocab 65, 1,000 parameters, device cpu, "
                      "1 threads, up to 7 epochs'\n")
    script.chmod(0o755)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("Q,A\n안녕,안녕하세요\n", encoding="utf-8")
    code = ("import sys\nfrom chatbot import retrain\n"
            f"status = retrain.run({str(tmp_path / 'models')!r}, {str(pairs)!r}, python={str(script)!r})\n"
            "print(status['epochs'], status['train_pairs'], 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["7", "90", "False"]
