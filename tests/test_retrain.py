"""Retraining (chatbot/retrain.py, `flask retrain`) and the models admin page.

Every training run is tiny (RETRAIN_ARGS / run_training overrides) on a
20-pair starter file, so each takes a few seconds.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatbot import retrain, versions
from chatbot.config import PROJECT_ROOT
from chatbot.database import NEEDS_DELETION, REVIEWED, ROUTE_IMPORT, Exchange
from chatbot.extensions import db, socketio
from chatbot.responder import Responder

from helpers import PAIRS, token_in, trained_model

TINY_ARGS = "--max-steps 2 --epochs 2 --threads 1 --dev-percent 20"


@pytest.fixture
def app(tmp_path, make_app):
    starter = tmp_path / "starter.csv"
    starter.write_text("Q,A\n" + "".join(f"{q},{a}\n" for q, a in PAIRS), encoding="utf-8")
    return make_app(STARTER_PAIRS=str(starter), RETRAIN_ARGS=TINY_ARGS, QUALITY_GATE_MARGIN=2.0)


@pytest.fixture
def root(app):
    return Path(app.config["MODEL_DIR"])


def tiny_version(root, **overrides):
    return trained_model(PAIRS, root, **{"max_steps": 2, "embed_dim": 16, "hidden_dim": 16, "quiet": True,
                                         "threads": 1, **overrides})


def set_chrf(version_dir, value):
    path = Path(version_dir) / "metrics.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["dev_chrf"] = value
    path.write_text(json.dumps(metrics), encoding="utf-8")


def cli_retrain(app, *args):
    return app.test_cli_runner().invoke(args=["retrain", *args])


def current_name(root):
    return os.readlink(root / "current")


# -- the runner: lock, gate, CLI -----------------------------------------------------

def test_cli_retrain_trains_on_starter_and_reviewed_pairs_and_activates(app, root):
    with app.app_context():
        db.session.add_all([
            Exchange(question="수입 질문", question_key="수입 질문", answer="수입 답", route=ROUTE_IMPORT,
                     status=REVIEWED, reviewer="import"),
            Exchange(question="지울 질문", question_key="지울 질문", answer="지울 답", status=NEEDS_DELETION),
            Exchange(question="검토 질문", question_key="검토 질문", answer="원래 답",
                     corrected_answer="고친 답", status=REVIEWED),
        ])
        db.session.commit()
    result = cli_retrain(app)
    assert result.exit_code == 0, result.output
    assert "activated" in result.output
    status = retrain.read_status(root)
    assert status["state"] == retrain.ACTIVATED and not status["running"]
    assert status["pairs"] == len(PAIRS) + 2
    assert current_name(root) == status["version"]
    assert (root / status["version"] / "metrics.json").is_file()
    pairs = (root / ".retrain" / "pairs.csv").read_text(encoding="utf-8")
    assert "수입 질문,수입 답" in pairs and "검토 질문,고친 답" in pairs
    assert all(f"{q},{a}" in pairs for q, a in PAIRS)  # starter pairs are never dropped
    assert "지울 질문" not in pairs
    log = (root / ".retrain" / "logs" / status["log"]).read_text(encoding="utf-8")
    assert "epoch   1" in log and "new model:" in log
    assert status["epoch"] >= 1 and status["train_loss"] is not None
    assert versions.list_versions(root) == [status["version"]]  # retrain.py's hidden state dir is no version


def test_quality_gate_refuses_a_worse_model_unless_forced(app, root):
    old = tiny_version(root)
    set_chrf(old, 100.0)  # current is "excellent": any tiny model is far worse
    result = cli_retrain(app)
    assert result.exit_code == 0, result.output
    status = retrain.read_status(root)
    assert status["state"] == retrain.REFUSED and not status["activated"]
    assert current_name(root) == old.name  # written, not activated
    assert (root / status["version"]).is_dir() and status["version"] != old.name
    assert "100.00" in status["message"] and "적용하지 않았습니다" in status["message"]

    result = cli_retrain(app, "--force")
    assert result.exit_code == 0, result.output
    status = retrain.read_status(root)
    assert status["state"] == retrain.ACTIVATED and current_name(root) == status["version"]


def test_quality_gate_passes_within_the_margin():
    assert retrain.quality_gate({"dev_chrf": 39.0}, {"dev_chrf": 40.5}, 2.0)[0]
    assert not retrain.quality_gate({"dev_chrf": 38.0}, {"dev_chrf": 40.5}, 2.0)[0]
    assert retrain.quality_gate({"dev_chrf": 10.0}, {}, 2.0)[0]  # nothing to compare with
    assert not retrain.quality_gate({}, {"dev_chrf": 1.0}, 2.0)[0]


def test_a_second_retrain_is_told_one_is_running(app, root, client, auth, reviewer):
    fd = retrain.try_lock(root)
    try:
        assert retrain.is_running(root)
        result = cli_retrain(app)
        assert result.exit_code == retrain.BUSY_EXIT
        assert "another retrain is running" in result.output
        auth.login()
        page = client.get("/admin/models/").get_data(as_text=True)
        response = client.post("/admin/models/retrain", data={"csrf_token": token_in(page)},
                               follow_redirects=True)
        assert "이미 진행 중" in response.get_data(as_text=True)
    finally:
        os.close(fd)
    assert not retrain.is_running(root)
    assert versions.list_versions(root) == []


def wait_for(predicate, timeout=90, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_9_mid_run_leaves_current_intact_and_the_lock_released(app, root):
    old = tiny_version(root)
    pairs_csv = root / "pairs.csv"
    pairs_csv.write_text("Q,A\n" + "".join(f"{q},{a}\n" for q, a in PAIRS), encoding="utf-8")
    runner = subprocess.Popen(
        [sys.executable, "-m", "chatbot.retrain", "--models-dir", str(root), "--pairs-csv", str(pairs_csv),
         "--force", "--", "--epochs", "400", "--threads", "1", "--dev-percent", "20"],
        cwd=str(PROJECT_ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        status = wait_for(lambda: (s := retrain.read_status(root)).get("epoch") and s, what="first epoch")
        assert status["state"] == retrain.RUNNING and retrain.is_running(root)
        trainer = status["trainer_pid"]
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()
    # The trainer dies with its runner (PR_SET_PDEATHSIG) and the kernel drops the lock.
    wait_for(lambda: not os.path.exists(f"/proc/{trainer}") or _zombie(trainer), timeout=20, what="trainer exit")
    assert not retrain.is_running(root)
    assert current_name(root) == old.name
    assert versions.list_versions(root) == [old.name]
    status = retrain.read_status(root)
    assert status["state"] == retrain.INTERRUPTED and "중단" in status["message"]
    fd = retrain.try_lock(root)  # the next retrain can start
    assert fd is not None
    os.close(fd)


def _zombie(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


# -- versions.delete -----------------------------------------------------------------

def test_delete_never_removes_current(root):
    old, new = tiny_version(root), tiny_version(root)
    with pytest.raises(versions.VersionInUse):
        versions.delete(root, new.name)
    for bad in ("", "..", "current", "../x", ".retrain"):
        with pytest.raises(ValueError):
            versions.delete(root, bad)
    versions.delete(root, old.name)
    assert versions.list_versions(root) == [new.name] and not old.exists()
    assert not list(root.glob(".deleting-*"))


def test_activate_and_delete_take_only_a_version_directory_name(tmp_path):
    root = tmp_path / "models"
    (root / "20250101-120000").mkdir(parents=True)
    (root / "20250101-120001").mkdir()
    (root / ".retrain").mkdir()
    (root / "notes.txt").write_text("not a version", encoding="utf-8")
    (root / "alias").symlink_to("20250101-120000")
    versions.activate(root, "20250101-120001")
    bad_names = (".", "..", "", "./", "current", ".retrain", "notes.txt", "alias", "missing", "../models",
                 "./20250101-120000", "20250101-120000/", "20250101-120000/.", "20250101-120000/..", None)
    for bad in bad_names:
        with pytest.raises(ValueError):
            versions.activate(root, bad)
        assert current_name(root) == "20250101-120001", bad
        with pytest.raises(ValueError):
            versions.delete(root, bad)
    assert versions.list_versions(root) == ["20250101-120000", "20250101-120001"]
    assert versions.current_dir(root) == (root / "20250101-120001").resolve()


def test_models_page_refuses_to_activate_the_models_directory(app, root, client, auth, reviewer):
    (root / "20250101-120000").mkdir(parents=True)
    versions.activate(root, "20250101-120000")
    auth.login()
    token = token_in(client.get("/admin/models/").get_data(as_text=True))
    for bad in (".", "..", "./"):
        response = client.post("/admin/models/activate", data={"csrf_token": token, "name": bad},
                               follow_redirects=True)
        assert "적용하지 못했습니다" in response.get_data(as_text=True)
        assert current_name(root) == "20250101-120000"


# -- the models page -----------------------------------------------------------------

def test_models_page_needs_login(client):
    response = client.get("/admin/models/")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    token = token_in(client.get("/login").get_data(as_text=True))  # a valid token: only the login is missing
    response = client.post("/admin/models/activate", data={"csrf_token": token, "name": "x"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/admin/models/status.json").status_code == 302


def test_models_page_lists_versions_and_rollback_reloads_the_older_model(app, root, client, auth, reviewer):
    old, new = tiny_version(root), tiny_version(root)
    responder = Responder(root)
    assert responder.model().version == new.name
    auth.login()
    page = client.get("/admin/models/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    assert old.name in html and new.name in html and "current" in html
    metrics = json.loads((old / "metrics.json").read_text(encoding="utf-8"))
    assert str(metrics["train_pairs"]) in html
    assert client.get(f"/admin/models/{old.name}/loss.png").status_code == 200
    assert client.get("/admin/models/nope/loss.png").status_code == 404

    response = client.post("/admin/models/activate", data={"csrf_token": token_in(html), "name": old.name},
                           follow_redirects=True)
    assert "적용했습니다" in response.get_data(as_text=True)
    assert current_name(root) == old.name
    assert responder.model().version == old.name  # the running server serves the older model

    # Without a CSRF token nothing happens.
    assert client.post("/admin/models/activate", data={"name": new.name}).status_code == 400
    assert current_name(root) == old.name


def test_models_page_deletes_old_versions_but_not_current(app, root, client, auth, reviewer):
    old, new = tiny_version(root), tiny_version(root)
    auth.login()
    token = token_in(client.get("/admin/models/").get_data(as_text=True))
    response = client.post("/admin/models/delete", data={"csrf_token": token, "name": new.name},
                           follow_redirects=True)
    assert "지울 수 없습니다" in response.get_data(as_text=True) and new.exists()
    response = client.post("/admin/models/delete", data={"csrf_token": token, "name": "../" + new.name},
                           follow_redirects=True)
    assert "지우지 못했습니다" in response.get_data(as_text=True) and new.exists()
    response = client.post("/admin/models/delete", data={"csrf_token": token, "name": old.name},
                           follow_redirects=True)
    assert "지웠습니다" in response.get_data(as_text=True)
    assert versions.list_versions(root) == [new.name]


def test_retrain_button_runs_the_runner_and_pushes_progress(app, root, client, auth, reviewer):
    auth.login()
    admin_sock = socketio.test_client(app, namespace="/admin", flask_test_client=client)
    assert admin_sock.is_connected("/admin")
    first = admin_sock.get_received("/admin")
    assert first and first[0]["name"] == "retrain" and first[0]["args"][0]["state"] is None

    token = token_in(client.get("/admin/models/").get_data(as_text=True))
    response = client.post("/admin/models/retrain", data={"csrf_token": token}, follow_redirects=True)
    assert "재학습을 시작했습니다" in response.get_data(as_text=True)
    status = wait_for(lambda: (s := retrain.read_status(root))["state"] not in (None, retrain.RUNNING) and s,
                      what="the retrain to finish")
    assert status["state"] == retrain.ACTIVATED, status
    assert current_name(root) == status["version"]

    # The watcher pushed the progress to the connected reviewer.
    def pushed():
        events = [e["args"][0] for e in admin_sock.get_received("/admin") if e["name"] == "retrain"]
        seen.extend(events)
        return any(e["state"] == retrain.ACTIVATED for e in seen)
    seen = []
    wait_for(pushed, timeout=10, what="a pushed 'activated' status")
    assert any(e.get("log_tail") for e in seen)
    admin_sock.disconnect("/admin")

    body = client.get("/admin/models/status.json").get_json()
    assert body["state"] == retrain.ACTIVATED and "new model:" in body["log_tail"]


def test_admin_namespace_refuses_anonymous_clients(app, client):
    sock = socketio.test_client(app, namespace="/admin", flask_test_client=client)
    assert not sock.is_connected("/admin")


def test_activating_a_version_from_before_weights_npz_writes_it_in_a_child_process(app, root, client, auth,
                                                                                   reviewer, monkeypatch):
    """The server reads weights.npz with NumPy and never imports torch: an
    older version without one gets it when a reviewer activates it, from a
    child process (here this process's converter fails, and it still works).
    One whose model.pt is broken is refused, and `current` stays."""
    from chatbot import model
    from chatbot.model_dir import WEIGHTS_FILE

    old, new = tiny_version(root), tiny_version(root)
    (old / WEIGHTS_FILE).unlink()
    monkeypatch.setattr(model, "add_numpy_weights", lambda *_: pytest.fail("converted in the server's process"))
    auth.login()
    token = token_in(client.get("/admin/models/").get_data(as_text=True))
    page = client.post("/admin/models/activate", data={"csrf_token": token, "name": old.name},
                       follow_redirects=True).get_data(as_text=True)
    assert "current로 적용했습니다" in page
    assert (old / WEIGHTS_FILE).is_file() and current_name(root) == old.name
    assert Responder(root).model().version == old.name

    (new / WEIGHTS_FILE).unlink()
    (new / "model.pt").write_bytes(b"not a state dict")
    page = client.post("/admin/models/activate", data={"csrf_token": token, "name": new.name},
                       follow_redirects=True).get_data(as_text=True)
    assert "적용하지 못했습니다" in page and "weights.npz를 만들지 못했습니다" in page
    assert current_name(root) == old.name and not (new / WEIGHTS_FILE).exists()
