"""Configuration: the secret key that the first start creates."""
import multiprocessing

import pytest

from chatbot.config import load_secret_key


def _load_after(barrier, instance_path, results):
    barrier.wait()
    try:
        results.put(load_secret_key(instance_path))
    except Exception as exc:  # noqa: BLE001 - the test reports it
        results.put(repr(exc))


def test_processes_starting_together_share_one_secret_key(tmp_path):
    """Several server processes on an empty instance folder (the README's
    deployment) all get the same complete key: none crashes, none reads a
    file another is still writing."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(15):
        instance = tmp_path / f"instance{attempt}"
        barrier, results = ctx.Barrier(8), ctx.Queue()
        procs = [ctx.Process(target=_load_after, args=(barrier, instance, results)) for _ in range(8)]
        for proc in procs:
            proc.start()
        keys = [results.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(10)
        assert len(keys) == 8
        assert len(set(keys)) == 1, keys
        assert len(keys[0]) == 64, keys[0]
        assert (instance / "secret_key").read_text() == keys[0]
        assert (instance / "secret_key").stat().st_mode & 0o777 == 0o600
        assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temporary file left behind


def test_an_empty_secret_key_file_is_an_error_not_an_empty_key(tmp_path):
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(RuntimeError, match="secret_key"):
        load_secret_key(tmp_path)
