"""bench/smallvm.py, scaled down: the server and a retrain share one memory
cgroup of MEMORY_LIMIT_MB while clients chat, and nobody is OOM-killed.

It needs to make a memory cgroup (root, Linux): elsewhere it is skipped,
saying why.
"""
import json
import subprocess
import sys

import pytest

from helpers import SERIAL
from live_server import ROOT


@SERIAL
def test_server_and_retrain_share_a_900_mb_cgroup_without_an_oom_kill(tmp_path):
    out = tmp_path / "smallvm.json"
    run = subprocess.run([sys.executable, "-m", "bench.smallvm", "--quick", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if run.returncode == 2 and "cannot make a memory cgroup" in run.stderr:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["limit_mb"] == 900 and result["cgroup_version"] in (1, 2)
    assert result["retrain"]["state"] in ("activated", "refused"), result["retrain"]
    assert result["oom_kills"] == 0
    assert 0 < result["peak_mb"] <= 900
    assert result["server_alive"] is True
    chat = result["chat"]
    assert chat["replies"] > 0 and chat["replies"] == chat["sent"]
    assert (chat["errors"], chat["lost_rows"]) == (0, 0)
