"""Issue 20, security and reliability: CURVE client authentication, key file modes, CURVE misconfiguration stops
`stemweave serve` (exit 2), huge finite samples, memory per job, IPv6 loopback. Real sockets, real key files, a
real `stemweave serve` process where the item is about starting it."""

import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import zmq
import zmq.auth

from stemweave.bridge import protocol as P
from stemweave.bridge.client import Client, ServerError
from stemweave.bridge.server import Server, ServerError as SetupError, analytic_model
from stemweave.cli import main

RATE = 8000
FAST = {"steps": 2, "resamples": 0}


def toy(name, device):
    if name == "nan":
        return NanPrior()
    return analytic_model(rate=4000, window=256)


class NanPrior:
    """A prior whose denoiser returns NaN: what a broken model file (or overflowing input) produces."""

    def __init__(self):
        inner = analytic_model(rate=4000, window=256)
        self.stems, self.rate, self.window, self.inner = inner.stems, inner.rate, inner.window, inner

    def denoise(self, x, sigma):
        return self.inner.denoise(x, sigma) * float("nan")


def keys(tmp_path):
    """`stemweave serve --make-keys` into tmp_path/keys: (folder, server public, server secret, client secret)."""
    folder = tmp_path / "keys"
    assert main(["serve", "--make-keys", str(folder)]) == 0
    return folder, folder / "server.key", folder / "server.key_secret", folder / "client.key_secret"


def serve_process(*args, timeout=60):
    """Run `stemweave serve ARGS` (expected to refuse to start): (exit status, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "stemweave", "serve", "--device", "cpu", "--no-preload", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    return proc.returncode, proc.stderr


def server(bind="tcp://127.0.0.1:*", **kw):
    return Server(bind, model_loader=toy, model_names=["toy", "nan"], preload=False, heartbeat_s=0.2,
                  max_seconds=300.0, **kw).start()


# 1. CURVE without client authentication ----------------------------------------------------------------------


def test_curve_accepts_only_listed_clients_unless_any_client_is_explicit(tmp_path):
    folder, public, secret, client_secret = keys(tmp_path)
    with pytest.raises(SetupError, match="--curve-clients"):
        Server("tcp://127.0.0.1:*", model_loader=toy, model_names=["toy"], curve_secret=secret, preload=False)
    served = server(curve_secret=secret, curve_clients=folder / "clients")
    try:
        with Client(served.endpoint, timeout=10, server_key=public, client_cert=client_secret) as listed:
            assert listed.hello()["curve_clients"] == "listed"
        with Client(served.endpoint, timeout=1.5, server_key=public) as stranger:  # knows the server key only
            with pytest.raises(ServerError, match="no reply"):
                stranger.hello()
    finally:
        served.stop()
    served = server(curve_secret=secret, curve_any_client=True)
    try:
        with Client(served.endpoint, timeout=10, server_key=public) as stranger:
            assert stranger.hello()["curve_clients"] == "any"
    finally:
        served.stop()


# 2. Secret keys world-readable -------------------------------------------------------------------------------


def test_make_keys_writes_private_secrets_and_serve_refuses_a_readable_one(tmp_path):
    folder, public, secret, client_secret = keys(tmp_path)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in (secret, client_secret):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (folder / "clients" / "client.key").is_file() and not list((folder / "clients").glob("*secret"))
    assert main(["serve", "--make-keys", str(folder)]) == 2  # never overwrites keys
    os.chmod(secret, 0o644)
    with pytest.raises(SetupError, match="chmod 600"):
        Server("tcp://127.0.0.1:*", model_loader=toy, model_names=["toy"], curve_secret=secret,
               curve_clients=folder / "clients", preload=False)
    status, err = serve_process("--curve-secret", str(secret), "--curve-clients", str(folder / "clients"))
    assert status == 2 and "readable by others" in err and "Traceback" not in err


# 3. Misconfigured CURVE fails quietly -------------------------------------------------------------------------


def test_misconfigured_curve_stops_serve_with_exit_2(tmp_path):
    folder, public, secret, client_secret = keys(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    cases = [
        (["--curve-clients", str(folder / "clients")], "needs --curve-secret"),
        (["--curve-secret", str(secret), "--curve-clients", str(tmp_path / "missing")], "not a folder"),
        (["--curve-secret", str(secret), "--curve-clients", str(tmp_path / "empty")], "holds no client public key"),
        (["--curve-secret", str(secret)], "--curve-any-client"),
        (["--make-keys", str(tmp_path / "a-file" / "keys")], "cannot write keys"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "stemweave", "serve", "--device", "cpu", "--no-preload", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for args, _ in cases]
    for proc, (args, expected) in zip(procs, cases):
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        assert expected in err and "Traceback" not in err, (args, err)


# 4. Huge finite samples ------------------------------------------------------------------------------------------


def test_huge_finite_samples_are_refused_and_the_bound_is_carried(tmp_path):
    served = server()
    try:
        with Client(served.endpoint, timeout=20) as client:
            huge = np.full((2, 2000), 1e19, np.float32)
            with pytest.raises(ServerError) as refused:
                client.separate(huge, RATE, model="toy", **FAST)
            assert refused.value.code == "too-large" and "at most 10000" in refused.value.message
            loud = (9e3 * np.sin(np.arange(4000) / 7.0)).astype(np.float32)[None].repeat(2, 0)
            stems = client.separate(loud, RATE, model="toy", preset="separate-fast", **FAST)
            assert all(np.isfinite(s).all() for s in stems.values())
            np.testing.assert_allclose(sum(stems.values()), loud, atol=0.05)  # still sums to the input
    finally:
        served.stop()
    sf.write(tmp_path / "huge.wav", np.full((2000, 2), 1e19, np.float32), RATE, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "huge.wav"), "-o", str(tmp_path / "out"), "--model", "analytic"]) == 2
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_non_finite_model_output_is_never_sent(tmp_path):
    served = server()
    try:
        with Client(served.endpoint, timeout=20) as client:
            partials = []
            with pytest.raises(ServerError) as failed:
                client.separate(np.full((1, 4000), 0.1, np.float32), RATE, model="nan", preset="separate-fast",
                                on_partial=partials.append, **FAST)
            assert failed.value.code == "failed" and "NaN or infinite" in failed.value.message
            assert partials == []
    finally:
        served.stop()


def test_the_cli_writes_nothing_when_a_model_produces_nan(tmp_path, monkeypatch):
    from stemweave import api

    monkeypatch.setattr(api, "load_task_model", lambda *a, **k: (NanPrior(), "nan"))
    sf.write(tmp_path / "mix.wav", np.full(2000, 0.1, np.float32), RATE)
    assert main(["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "out"), "--no-progress", "--steps", "2",
                 "--resamples", "0"]) == 2
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


# 5. Memory per job ---------------------------------------------------------------------------------------------------


def test_a_job_is_bounded_by_bytes_at_the_larger_of_its_rate_and_the_models(tmp_path):
    served = server(max_job_bytes=1 << 20)  # 1 MiB: frames up to 2 MiB are received and answered
    try:
        assert served._about()["max_job_bytes"] == 1 << 20
        with Client(served.endpoint, timeout=20) as client:
            stereo = np.zeros((2, 3 << 16), np.float32)  # 1.5 MiB in two frames of 0.75 MiB
            with pytest.raises(ServerError) as refused:
                client.submit("separate", stereo, RATE, model="toy", **FAST)
            assert refused.value.code == "too-large" and "--max-job-mb" in refused.value.message
            assert set(client.separate(stereo[:, :4000], RATE, model="toy", **FAST)) == {"bass", "drums", "guitar",
                                                                                        "piano"}
            # 100 000 frames at 1 kHz are 0.4 MB, but 1.6 MB at the (now warm) model's 4 kHz: refused
            with pytest.raises(ServerError, match="model rate 4000"):
                client.generate(1000, frames=100_000, model="toy", **FAST)
            with pytest.raises(ServerError, match="frame limit") as local:  # over ZeroMQ's limit: refused here
                client.submit("separate", np.zeros((1, 5 << 20), np.float32), RATE, model="toy")
            assert local.value.code == "too-large"
        # a raw client that sends a frame over the limit anyway is disconnected (no reply, documented);
        # the server keeps serving everyone else
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(served.endpoint)
        head = {"v": 1, "type": "submit", "task": "separate", "rate": RATE, "channels": 1, "frames": 3 << 18,
                "audio": True}
        raw.send_multipart([P.json.dumps(head).encode(), np.zeros(3 << 18, "<f4").tobytes()])
        assert raw.poll(1000) == 0
        raw.close()
        with Client(served.endpoint, timeout=10) as client:
            assert client.hello()["max_frame_bytes"] == 2 << 20
    finally:
        served.stop()


# 6. IPv6 loopback -----------------------------------------------------------------------------------------------------


def test_ipv6_loopback_serves(tmp_path):
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:  # a machine without IPv6: the server refuses at start, clearly
        with pytest.raises(SetupError, match="cannot bind"):
            server("tcp://[::1]:*")
        pytest.skip(f"no IPv6 loopback here: {error}")
    served = server("tcp://[::1]:*")  # before issue 20: "No such device" (the socket had IPv6 off)
    try:
        assert served.endpoint.startswith("tcp://[::1]:")
        with Client(served.endpoint, timeout=10) as client:
            assert client.hello()["name"] == "stemweave"
            assert set(client.separate(np.zeros((1, 2000), np.float32), RATE, model="toy", **FAST)) == {
                "bass", "drums", "guitar", "piano"}
    finally:
        served.stop()
