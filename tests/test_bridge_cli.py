"""`stemweave serve` and `stemweave client`: SIGTERM mid-job tells the client; the client command equals the direct call."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import soundfile as sf

from stemweave.bridge.client import Client, JobCancelled
from stemweave.bridge.server import Server, analytic_model
from stemweave.cli import main
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region


def start_server_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stemweave", "serve", "--bind", "tcp://127.0.0.1:*", "--model",
                             "analytic", "--device", "cpu", "--threads", "1", "--heartbeat", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "listening on" in line:
            return proc, line.split("listening on ")[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the server did not start: {lines} {proc.stderr.read()}")


def test_sigterm_mid_job_cancels_it_tells_the_client_and_exits_0():
    proc, endpoint = start_server_process()
    try:
        with Client(endpoint, timeout=20) as client:
            audio = np.zeros((1, 22050), np.float32)
            audio[0, ::100] = 0.5
            running = threading.Event()
            job = client.submit("separate", audio, 22050, model="analytic", preset="separate-fast", steps=20000,
                                resamples=0, on_progress=lambda p: p["stage"] == "separate" and running.set())
            deadline = time.monotonic() + 30
            while not running.is_set():
                client.poll(0.05)
                assert time.monotonic() < deadline
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(JobCancelled) as caught:
                client.wait(job, timeout=20)
            assert caught.value.code == "shutdown" and "shutting down" in caught.value.message
        assert proc.wait(20) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def toy_loader(name, device):
    return analytic_model(rate=4000, window=256)


def test_client_command_gives_the_direct_result(tmp_path):
    rate = 8000
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.standard_normal((2, rate // 4))).astype(np.float32)
    song = tmp_path / "song.wav"
    sf.write(song, audio.T, rate, subtype="FLOAT")
    server = Server("tcp://127.0.0.1:*", model_loader=toy_loader, model_names=["toy"], preload=False).start()
    try:
        code = main(["client", "separate", str(song), "-o", str(tmp_path / "out"), "--server", server.endpoint,
                     "--model", "toy", "--preset", "separate-fast", "--steps", "4", "--resamples", "0", "--seed", "3",
                     "--bit-depth", "32f", "--no-progress"])
        assert code == 0
        # a path where a model name belongs is refused by the server, and nothing is written
        code = main(["client", "separate", str(song), "-o", str(tmp_path / "refused"), "--server", server.endpoint,
                     "--model", str(tmp_path / "model.safetensors"), "--no-progress"])
        assert code == 2 and not (tmp_path / "refused" / "song_bass.wav").exists()
    finally:
        server.stop()
    direct = run_region("separate", toy_loader("toy", "cpu"), sf.read(song, dtype="float32", always_2d=True)[0].T,
                        rate, load_preset("separate-fast").with_overrides(steps=4, resamples=0), seed=3)
    for name, stem in direct.items():
        written, written_rate = sf.read(tmp_path / "out" / f"song_{name}.wav", dtype="float32", always_2d=True)
        assert written_rate == rate
        np.testing.assert_array_equal(written.T, stem)
    assert (tmp_path / "out" / "song.stemweave.json").exists()


def test_serve_refuses_a_public_address_without_keys(capsys):
    assert main(["serve", "--bind", "tcp://0.0.0.0:*", "--device", "cpu"]) == 2
    assert "--curve-secret" in capsys.readouterr().err
