"""The Pure Data patch (docs/puredata/stemweave-loop.pd) drives the OSC surface and round-trips /status, headless
(`pd -nogui -nosound`, Debian puredata-core)."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stemweave.bridge import osc
from stemweave.bridge.loop import LoopEngine

PATCH = Path(__file__).resolve().parents[1] / "docs" / "puredata" / "stemweave-loop.pd"


def test_pd_patch_sets_tempo_and_bars_and_prints_the_status_reply():
    if shutil.which("pd") is None:
        pytest.skip("Pure Data is not installed (Debian package puredata-core: scripts/install-system-packages --test)")
    from test_osc_surface import InstantBackend

    engine = LoopEngine(InstantBackend(), rate=8000, output="virtual", log=lambda text: None)
    control = osc.OscControl(engine, "127.0.0.1", 0, log=lambda text: None).start()
    pd = subprocess.Popen(["pd", "-nogui", "-nosound", "-nomidi", "-noprefs", "-open", str(PATCH),
                           "-send", f"stemweave-port {control.address[1]}", "-send", "stemweave-tempo 97",
                           "-send", "stemweave-bars 2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while (engine.status()["tempo"] != 97.0 or engine.status()["bars"] != 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # the patch asks for the status 200 ms after connecting; its replies print
    finally:
        pd.terminate()
        output = pd.communicate(timeout=10)[0]
        control.close()
        engine.close()
    assert engine.status()["tempo"] == 97.0 and engine.status()["bars"] == 2, output[-2000:]
    problems = [line for line in output.splitlines() if line.startswith("error:") or "stemweave error" in line]
    assert not problems, output[-2000:]  # neither Pd nor the surface complained
    replies = [line for line in output.splitlines() if line.startswith("stemweave-reply: stemweave status ")]
    assert any(" tempo 97 " in line and " bars 2 " in line for line in replies), output[-2000:]
    assert "stemweave-reply: stemweave status tempo 97" in replies
