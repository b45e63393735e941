"""bench/smallvm.py, scaled down: the server and a retrain share one memory
cgroup of MEMORY_LIMIT_MB while clients chat, and nobody is OOM-killed.

It needs to make a memory cgroup (root, Linux): elsewhere it is skipped,
saying why.
"""
import json
import subprocess
import sys

import pytest

from live_server import ROOT


# bench/smallvm.py with its starter model's folder (bench.serve.MODELS) given
# as the first argument.
WITH_MODELS = ("import sys\nfrom pathlib import Path\nfrom bench import smallvm\n"
               "smallvm.MODELS = Path(sys.argv.pop(1))\nsys.exit(smallvm.main())\n")


def test_server_and_retrain_share_a_900_mb_cgroup_without_an_oom_kill(tmp_path):
    """The server starts on a model of the starter model's size (the starter
    pairs, the default network) trained for 20 steps, as the quick retrain
    is, instead of bench.serve's full training run (about a minute, unless
    bench/scratch holds one): what the cgroup must hold is the model's
    size, which steps do not change, not its quality."""
    models = tmp_path / "starter-models"
    subprocess.run([sys.executable, "-m", "chatbot.train", "--quiet", "--max-steps", "20",
                    "--pairs", str(ROOT / "chatbot" / "data" / "starter_pairs.csv"), "--models-dir", str(models)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    out = tmp_path / "smallvm.json"
    run = subprocess.run([sys.executable, "-c", WITH_MODELS, str(models), "--quick", "--out", str(out)], cwd=ROOT,
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
