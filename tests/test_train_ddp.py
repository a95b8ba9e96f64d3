"""Training under torchrun on the CPU (two gloo processes): one run, one checkpoint, CPU-hours counted per process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from stemweave.engine.train import export_model

TESTS = Path(__file__).resolve().parent
SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_train import SyntheticStems, settings
from stemweave.engine.train import train
train(settings(Path(sys.argv[1]), "regression", steps=4, threads=1), SyntheticStems(0), log=print)
"""


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun (installed with torch) is not on PATH")
def test_two_process_run_counts_both_processes_cpu_hours(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 processes (DDP)" in done.stdout
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["processes"] == 2 and state["threads"] == 1
    export_model(tmp_path / "run", "sep", out_dir=tmp_path / "m")
    entry = json.loads((tmp_path / "m" / "sep.json").read_text())["training"]["ledger"][-1]
    assert entry["cpu_hours"] == round(state["seconds"] / 3600 * 2, 3) and entry["trained"] == "network"
