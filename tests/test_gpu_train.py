"""scripts/gpu-train, run here with a tiny budget so it works the first time it meets a lent GPU (issue 19)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu-train"


def test_gpu_train_continues_the_shipped_prior_and_extends_its_ledger(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "msdm-cpu-small", "--minutes", "1", "--songs", "2",
                           "--test-songs", "1", "--device", "cpu", "--jobs", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr + (tmp_path / "gpu-train.log").read_text()[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    card = json.loads(Path(report["model_file"]).read_text())
    shipped = json.loads((SCRIPT.parents[1] / "engine" / "models" / "msdm-cpu-small.json").read_text())
    before = shipped["training"]["total_steps"]
    assert report["steps"] > 0 and report["total_steps"] == before + report["steps"]
    ledger = card["training"]["ledger"]
    assert ledger[:-1] == shipped["training"]["ledger"] and ledger[-1]["steps"] == report["steps"]
    assert card["dtype"] == "float16" and card["config"] == shipped["config"]
    assert report["denoiser_check_passed"] is True  # a few CPU steps from a passing prior keep it passing
    assert any(r["method"].endswith("msdm-cpu-small-continued.json separate-fast") for r in report["separation"]["results"])


def test_gpu_train_refuses_what_it_cannot_continue(tmp_path):
    for args, message in ((["--model", "no-such-model"], "unknown model"),
                          (["--model", "gmsdi-cpu-small"], "continues msdm priors")):
        done = subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr
