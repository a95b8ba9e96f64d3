"""The plugin stub (plugin_stub/) in real hosts: its C unit tests, lv2_validate/lv2info, lv2file offline (separation
and loop mode), jalv on a dummy JACK server, and the VST3 in pedalboard (separation, loop mode, saved state), each
against a real `stemweave serve` on a free loopback port. Ardour 7: tests/test_plugin_ardour.py.

The server runs the built-in analytic model (`--model analytic`, closed-form Gaussian stems: no weights) with the
interactive presets shortened to a few sampler steps (`--preset-dir`), so a separation takes about a second; the
loop server also runs the live loop engine (`--osc-port`, a virtual audio clock) with a 4-step loop preset.
Every test skips, saying what to install, when its host is missing (scripts/install-system-packages --test
installs them all).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "plugin_stub"
BUILD = STUB / "build"
LV2_DIR = BUILD / "lv2"  # holds only the bundle: LV2_PATH
BUNDLE = LV2_DIR / "stemweave.lv2"
URI = "https://stemweave.dev/plugins/stemweave"
STATUS = {0: "idle", 1: "capturing", 2: "working", 3: "ready", 4: "error", 5: "offline"}

FAST_PRESETS = {
    "separate-fast": 'description = "test: few steps"\ntask = "separate"\n[sampler]\nsteps = 6\nsigma_min = 1e-4\n'
                     'sigma_max = 1.0\nrho = 7.0\ns_churn = 0.0\nresamples = 0\n[options]\nlikelihood = "dirac"\n'
                     'constrained = "bass"\n',
    "accompany-fast": 'description = "test: few steps"\ntask = "accompany"\n[sampler]\nsteps = 6\nsigma_min = 1e-4\n'
                      'sigma_max = 20.0\nrho = 7.0\ns_churn = 0.0\nresamples = 0\n',
}
LOOP_PRESET = ('description = "test: live loops in few steps"\ntask = "accompany"\n[sampler]\nsteps = 4\n'
               'sigma_min = 1e-4\nsigma_max = 20.0\nrho = 7.0\ns_churn = 0.0\nresamples = 0\n')


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian: scripts/install-system-packages --test)")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def bundle() -> Path:
    return build_bundle()


def build_bundle() -> Path:
    """The LV2 bundle, built with the README's one command (`make -C plugin_stub`); skips without the tools."""
    need("make", "cc", "pkg-config")
    for pc in ("lv2", "libzmq"):
        if subprocess.run(["pkg-config", "--exists", pc]).returncode:
            pytest.skip(f"pkg-config cannot find {pc}: install lv2-dev and libzmq3-dev")
    build = subprocess.run(["make", "-C", str(STUB)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    assert (BUNDLE / "stemweave.so").is_file()
    return BUNDLE


class Serve:
    """`stemweave serve` in a subprocess on a free loopback port, with the analytic model and fast presets."""

    def __init__(self, tmp: Path):
        presets = tmp / "presets"
        presets.mkdir(exist_ok=True)
        for name, text in FAST_PRESETS.items():
            (presets / f"{name}.toml").write_text(text)
        self.log = tmp / "serve.log"
        self.args = [sys.executable, "-m", "stemweave", "serve", "--bind", "tcp://127.0.0.1:*", "--model", "analytic",
                     "--device", "cpu", "--threads", "1", "--preset-dir", str(presets), "--heartbeat", "0.5"]
        self.proc = None
        self.endpoint = None

    def start(self, endpoint: str | None = None) -> "Serve":
        args = list(self.args)
        if endpoint:
            args[args.index("tcp://127.0.0.1:*")] = endpoint
        out = open(self.log, "a")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT)
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            match = re.search(r"listening on (tcp://\S+)", line)
            if match:
                self.endpoint = match.group(1)
                return self
            if self.proc.poll() is not None:
                break
        raise AssertionError(f"stemweave serve did not start: {line!r} {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("stemweave.bridge.server", reason="the bridge (stemweave serve) is not in this checkout")
    serve = Serve(tmp_path_factory.mktemp("serve")).start()
    yield serve
    serve.stop()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def loop_serve(tmp: Path, rate: int = 48000) -> Serve:
    """`stemweave serve` with the live loop engine (--osc-port) on a virtual audio clock at `rate`."""
    serve = Serve(tmp)
    (tmp / "presets" / "loop.toml").write_text(LOOP_PRESET)  # the engine's default preset name, made fast
    serve.osc_port = free_udp_port()
    serve.args += ["--osc-port", str(serve.osc_port), "--audio-device", "virtual", "--audio-rate", str(rate)]
    serve.start()
    from stemweave.bridge.osc import send

    deadline = time.monotonic() + 30  # the OSC surface opens after the ZeroMQ socket: wait until it answers
    while not send("/stemweave/status", port=serve.osc_port, reply_timeout=0.5):
        assert time.monotonic() < deadline, f"the OSC surface never answered: {serve.log.read_text()[-2000:]}"
    return serve


@pytest.fixture(scope="module")
def loop_server(tmp_path_factory):
    pytest.importorskip("stemweave.bridge.server", reason="the bridge (stemweave serve) is not in this checkout")
    pytest.importorskip("pythonosc", reason="the live loop's OSC surface needs python-osc")
    serve = loop_serve(tmp_path_factory.mktemp("loop-serve"))
    yield serve
    serve.stop()


def fetch_loop(endpoint: str, since: int = 0):
    """The server's live loop, asked for as the plugin does (a `loop` request on a DEALER socket)."""
    import zmq

    from stemweave.bridge import protocol as P

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(endpoint)
        dealer.send_multipart([json.dumps({"v": 1, "type": "loop", "req": 1, "since": since}).encode()])
        assert dealer.poll(10000), "the server did not answer the loop request"
        return P.decode(dealer.recv_multipart())
    finally:
        dealer.close(0)
        context.term()


def make_loop(serve: Serve, tempo: float, bars: int, timeout: float = 60.0):
    """Ask the server's loop engine (over OSC) for a loop at `tempo` and `bars`, and wait until it is made."""
    from stemweave.bridge.osc import send

    send("/stemweave/loop/tempo", float(tempo), port=serve.osc_port)
    send("/stemweave/loop/bars", int(bars), port=serve.osc_port)
    send("/stemweave/loop/start", port=serve.osc_port)
    deadline = time.monotonic() + timeout
    while True:
        loop = fetch_loop(serve.endpoint)
        if loop.serial and loop.tempo == tempo and loop.bars == bars and loop.mix is not None:
            return loop
        assert time.monotonic() < deadline, f"no {bars}-bar loop at {tempo} BPM: {serve.log.read_text()[-2000:]}"
        time.sleep(0.2)


def bar_synced(loop, frames: int, host_bar_frames: int) -> np.ndarray:
    """What loop mode plays over `frames` timeline frames from bar 0 for a host with bars of host_bar_frames:
    host bar k plays the loop's bar k mod bars from its start, at the loop's rate (cut at, or silent up to, the
    host's bar line). (frames, channels)"""
    mix = loop.mix.T
    out = np.zeros((frames, mix.shape[1]), np.float32)
    for start in range(0, frames, host_bar_frames):
        bar = (start // host_bar_frames) % loop.bars
        n = min(host_bar_frames, loop.bar_frames, frames - start)
        out[start: start + n] = mix[bar * loop.bar_frames: bar * loop.bar_frames + n]
    return out


def host_env(endpoint: str, **more) -> dict:
    env = dict(os.environ, LV2_PATH=str(LV2_DIR), STEMWEAVE_ENDPOINT=endpoint, **more)
    return env


def test_region(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A stereo test region (frames, 2) float32: a bass-ish tone, gated noise and a high tone, channels differing."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    low = 0.3 * np.sin(2 * np.pi * 110 * t)
    noise = 0.1 * rng.standard_normal(t.size) * (np.sin(2 * np.pi * 4 * t) > 0)
    high = 0.05 * np.sin(2 * np.pi * 1320 * t)
    return np.stack([low + noise + high, 0.8 * low + noise - high], 1).astype(np.float32)


test_region.__test__ = False  # a helper, not a test


def server_stems(endpoint: str, region: np.ndarray, rate: int) -> dict[str, np.ndarray]:
    """What the server returns for this region (the plugin's request: seed 0, default model and preset)."""
    from stemweave.bridge.client import Client

    with Client(endpoint, timeout=60) as client:
        return client.separate(np.ascontiguousarray(region.T), rate, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# The shared C code's unit tests (state format, loop protocol, loop position arithmetic and swap)


def test_shared_c_code_unit_tests(tmp_path):
    """`make -C plugin_stub check`: version 2 states round-trip (stems and capture), version 1 states still load,
    damaged states are refused; loop headers; loop positions for matching, slower, faster and tick-rounded hosts;
    the swap to a newer loop lands on the bar line for every block size."""
    need("make", "cc", "pkg-config")
    for pc in ("lv2", "libzmq"):
        if subprocess.run(["pkg-config", "--exists", pc]).returncode:
            pytest.skip(f"pkg-config cannot find {pc}: install lv2-dev and libzmq3-dev")
    check = subprocess.run(["make", "-C", str(STUB), "check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    match = re.search(r"sw_test: (\d+) checks, 0 failed", check.stdout)
    assert match and int(match.group(1)) > 1000, check.stdout


# ---------------------------------------------------------------------------------------------------------------
# lv2_validate and lv2info


def test_lv2_validate_and_lv2info(bundle):
    need("lv2_validate", "lv2info", "sordi")
    validate = subprocess.run(["lv2_validate", *map(str, sorted(bundle.glob("*.ttl")))], capture_output=True, text=True)
    report = validate.stdout + validate.stderr
    assert validate.returncode == 0, report
    assert "Found 0 errors" in report and "error:" not in report, report
    info = subprocess.run(["lv2info", URI], capture_output=True, text=True, env=dict(os.environ, LV2_PATH=str(LV2_DIR)))
    assert info.returncode == 0, info.stderr
    assert "error" not in info.stderr.lower(), info.stderr
    assert "Has latency:       yes, reported by port 23" in info.stdout
    assert "http://lv2plug.in/ns/ext/urid#map" in info.stdout.split("Optional Features")[0]  # the one required
    for symbol in ("capture", "separate", "accompany", "cancel", "target", "solo", "gain_bass", "status", "progress",
                   "latency", "control", "loop_mode", "loop_state"):
        assert f"Symbol:      {symbol}\n" in info.stdout, symbol


# ---------------------------------------------------------------------------------------------------------------
# lv2file: an offline render, so the plugin waits for the job (freewheel) and the result is sample-accurate


def run_lv2file(endpoint: str, src: Path, dst: Path, **controls) -> subprocess.CompletedProcess:
    args = ["lv2file", "-i", str(src), "-o", str(dst), "-b", "512", "--ignore-clipping"]
    for name, value in controls.items():
        args += ["-p", f"{name}:{value}"]
    return subprocess.run([*args, URI], capture_output=True, text=True, env=host_env(endpoint), timeout=120)


def test_lv2file_separates_the_captured_region_in_place(bundle, server, tmp_path):
    """Capture [0.25 s, 1.25 s) of the host timeline, separate it, and loop the bass stem from there on: the output
    is the input untouched up to the region's end, then the server's bass stem of exactly that region, aligned to
    the sample, over the region's second pass."""
    need("lv2file")
    rate = 48000
    lead, length = rate // 4, rate  # the region: timeline frames [12000, 60000)
    region = test_region(rate, 1.0)
    song = np.concatenate([test_region(rate, 0.25, seed=1), region, region])  # lead-in, the region, its repeat
    sf.write(tmp_path / "in.wav", song, rate, subtype="FLOAT")
    started = time.monotonic()
    run = run_lv2file(server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, capture=1,
                      mark_start=0.25, mark_end=1.25, separate=1, loop=1, solo=1)
    elapsed = time.monotonic() - started
    assert run.returncode == 0, run.stdout + run.stderr
    out, out_rate = sf.read(tmp_path / "out.wav", dtype="float32")
    assert out_rate == rate and out.shape == song.shape

    # until the region's last sample the plugin is a wire
    np.testing.assert_array_equal(out[: lead + length - 1], song[: lead + length - 1])
    # the region's second pass: the bass stem the server returns for exactly the captured frames
    bass = server_stems(server.endpoint, region, rate)["bass"].T  # (frames, 2); the server's cache: the same job
    second = out[lead + length: lead + 2 * length]
    np.testing.assert_allclose(second, bass, atol=1e-6)
    assert np.abs(bass).max() > 0.05 and np.abs(second - region).max() > 0.05  # a stem, not the mixture
    # one sample early or late would not match: the alignment is exact
    assert np.abs(out[lead + length + 1: lead + 2 * length] - bass[:-1]).max() > 1e-3
    assert elapsed < 60


def test_lv2file_all_stems_null_against_the_input(bundle, server, tmp_path):
    """Every stem at unity gain replaces the region: Dirac separation sums to the region, so the output nulls."""
    need("lv2file")
    rate = 48000
    region = test_region(rate, 1.0, seed=2)
    sf.write(tmp_path / "in.wav", np.concatenate([region, region]), rate, subtype="FLOAT")
    run = run_lv2file(server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, capture=1,
                      mark_end=1.0, separate=1, loop=1)
    assert run.returncode == 0, run.stdout + run.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_allclose(out[rate:], region, atol=1e-5)
    np.testing.assert_array_equal(out[: rate - 1], region[: rate - 1])


def test_lv2file_passes_audio_through_when_no_server(bundle, tmp_path):
    """No server on the port: the job fails at once (no hang in an offline render) and the audio is untouched."""
    need("lv2file")
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    rate = 48000
    song = test_region(rate, 2.0, seed=3)
    sf.write(tmp_path / "in.wav", song, rate, subtype="FLOAT")
    started = time.monotonic()
    run = run_lv2file(dead, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, capture=1, mark_end=1.0,
                      separate=1, loop=1)
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 20
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_array_equal(out, song)
    assert "cannot reach the server" in run.stderr


def test_lv2file_loop_mode_plays_the_server_loop_from_the_first_frame(bundle, loop_server, tmp_path):
    """Loop mode in an offline host that sends no musical position (lv2file): the render waits for the server's
    loop, then plays it at its own bars from the timeline's first frame, on top of the input, exact to the sample,
    through several passes of the loop."""
    need("lv2file")
    rate = 48000
    loop = make_loop(loop_server, 150.0, 2)  # bars of round(48000 * 240 / 150) = 76800 frames
    assert loop.rate == rate and loop.bar_frames == 76800 and loop.mix.shape == (2, 2 * 76800)
    song = test_region(rate, 7.0, seed=5)  # 336000 frames: more than two passes of the loop
    sf.write(tmp_path / "in.wav", song, rate, subtype="FLOAT")
    run = run_lv2file(loop_server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, loop_mode=1)
    assert run.returncode == 0, run.stdout + run.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    looped = bar_synced(loop, len(song), loop.bar_frames)  # its own bars: the loop end to end, again and again
    np.testing.assert_array_equal(looped[loop.frames: 2 * loop.frames], looped[: loop.frames])
    np.testing.assert_allclose(out, song + looped, atol=1e-6)
    assert np.abs(looped).max() > 0.05
    assert np.abs(out[1:] - (song[1:] + looped[:-1])).max() > 1e-3  # one frame off would not match


def test_lv2file_loop_mode_refuses_a_loop_at_another_sample_rate(bundle, loop_server, tmp_path):
    """A 44.1 kHz render against a loop made at 48 kHz: the plugin plays nothing rather than the loop at the wrong
    speed, says which --audio-rate the server needs, and the audio passes untouched."""
    need("lv2file")
    make_loop(loop_server, 150.0, 2)
    rate = 44100
    song = test_region(rate, 1.0, seed=9)
    sf.write(tmp_path / "in.wav", song, rate, subtype="FLOAT")
    run = run_lv2file(loop_server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, loop_mode=1)
    assert run.returncode == 0, run.stdout + run.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_array_equal(out, song)
    assert "the loop runs at 48000 Hz and the host at 44100 Hz" in run.stderr, run.stderr
    assert "--audio-rate 44100" in run.stderr


def test_lv2file_loop_mode_without_a_loop_engine_passes_audio_through(bundle, server, tmp_path):
    """Loop mode against a server started without --osc-port: the server answers no-loop at once, the plugin
    says so, and the audio passes untouched (no hang in an offline render)."""
    need("lv2file")
    rate = 48000
    song = test_region(rate, 1.0, seed=6)
    sf.write(tmp_path / "in.wav", song, rate, subtype="FLOAT")
    started = time.monotonic()
    run = run_lv2file(server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, loop_mode=1)
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 20
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_array_equal(out, song)
    assert "loop mode: the server says no-loop" in run.stderr, run.stderr


# ---------------------------------------------------------------------------------------------------------------
# jalv on a dummy JACK server, in real time


class Jack:
    """A private dummy JACK server (its own server name, so parallel runs and a user's JACK never meet)."""

    def __init__(self, tmp: Path, rate: int = 48000, period: int = 512):
        self.name, self.period = f"stemweave-test-{os.getpid()}", period
        self.env = dict(os.environ, JACK_DEFAULT_SERVER=self.name, JACK_NO_AUDIO_RESERVATION="1")
        self.log = open(tmp / "jackd.log", "w")
        self.proc = subprocess.Popen(["jackd", "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        self.run(["jack_wait", "-w", "-t", "10"])

    def run(self, args, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=20, **kw)

    def ports(self) -> list[str]:
        return self.run(["jack_lsp"]).stdout.split()

    def wait_ports(self, *ports: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not set(ports) <= set(self.ports()):
            assert time.monotonic() < deadline, f"JACK ports {ports} never appeared: {self.ports()}"
            time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Jalv:
    """jalv (console) hosting the plugin; its stdin is a FIFO we hold open, so it never exits on EOF and takes
    commands ("monitors" prints the output ports)."""

    def __init__(self, tmp: Path, jack: Jack, endpoint: str, controls: dict):
        self.fifo = tmp / "jalv.stdin"
        os.mkfifo(self.fifo)
        self.log_path = tmp / "jalv.log"
        self.log = open(self.log_path, "w")
        args = ["stdbuf", "-oL", "jalv", "-x", "-n", "swplug"]
        for name, value in controls.items():
            args += ["-c", f"{name}={value}"]
        env = dict(jack.env, LV2_PATH=str(LV2_DIR), STEMWEAVE_ENDPOINT=endpoint)
        keep = os.open(self.fifo, os.O_RDWR)  # a writer exists from here on: opening to read does not block
        reader = os.open(self.fifo, os.O_RDONLY)
        self.writer = os.fdopen(os.open(self.fifo, os.O_WRONLY), "w")  # held open: jalv never sees EOF
        os.close(keep)
        self.proc = subprocess.Popen([*args, URI], stdin=reader, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        os.close(reader)

    def status(self) -> int | None:
        """The plugin's status port, read with jalv's `monitors` command."""
        mark = self.log_path.stat().st_size
        self.writer.write("monitors\n")
        self.writer.flush()
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            text = self.log_path.read_text()[mark:]
            match = re.search(r"status = ([0-9.]+)", text)
            if match and "captured = " in text[match.start():]:
                return int(float(match.group(1)))
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.writer.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def test_jalv_real_time_passes_through_when_the_server_stops_mid_job(bundle, tmp_path):
    """In real time on JACK: the plugin captures a region and submits it; the server is stopped while the job
    runs. The status goes working -> server offline, and every sample that went in comes out untouched, with no
    gap (a dropout would break the exact match of the recording against the source)."""
    need("jackd", "jalv", "jack_rec", "jack_transport", "jack_connect", "sndfile-jackplay", "stdbuf")
    pytest.importorskip("stemweave.bridge.server", reason="the bridge (stemweave serve) is not in this checkout")
    serve = Serve(tmp_path)
    slow = tmp_path / "presets" / "separate-fast.toml"  # a job long enough to stop the server under it
    serve.start()
    slow.write_text(FAST_PRESETS["separate-fast"].replace("steps = 6", "steps = 20000"))
    rate, seconds = 48000, 4.0
    song = np.concatenate([test_region(rate, 1.0, seed=s) for s in range(int(seconds))])
    sf.write(tmp_path / "play.wav", song, rate, subtype="FLOAT")
    jack = Jack(tmp_path, rate)
    jalv = rec = play = None
    try:
        jalv = Jalv(tmp_path, jack, serve.endpoint, {"capture": 1, "mark_start": 0.2, "mark_end": 0.7, "separate": 1})
        jack.wait_ports("swplug:in_l", "swplug:out_r")
        assert jalv.status() in (0, 5)  # idle (or not yet connected)
        jack.run(["jack_transport"], input="stop\nlocate 0\n")
        play = subprocess.Popen(["sndfile-jackplay", "-w", str(tmp_path / "play.wav")], env=jack.env,
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        jack.wait_ports("jackplay:out_2")
        # the plugin's output and its input, recorded in the same JACK cycles: whatever JACK or the players drop
        # under load is dropped from both alike
        rec = subprocess.Popen(["jack_rec", "-f", str(tmp_path / "rec.wav"), "-d", str(seconds + 2), "-b", "32",
                                "swplug:out_l", "swplug:out_r", "jackplay:out_1", "jackplay:out_2"], env=jack.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        jack.wait_ports("jackrec:input4")
        for src, dst in (("jackplay:out_1", "swplug:in_l"), ("jackplay:out_2", "swplug:in_r")):
            assert jack.run(["jack_connect", src, dst]).returncode == 0
        jack.run(["jack_transport"], input="play\n")
        play.stdin.write("\n")  # start playing
        play.stdin.flush()
        seen = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and 2 not in seen:
            seen.append(jalv.status())
        assert 2 in seen, f"the job never started: statuses {seen}\n{jalv.log_path.read_text()[-2000:]}"
        serve.stop()  # mid-job
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and seen[-1] != 5:
            seen.append(jalv.status())
        assert seen[-1] == 5, f"status never said the server is offline: {seen}"
        play.wait(timeout=seconds + 15)
        rec.wait(timeout=seconds + 15)
    finally:
        for proc in (play, rec):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        if jalv is not None:
            jalv.close()
        jack.close()
        serve.stop()
    recorded, rec_rate = sf.read(tmp_path / "rec.wav", dtype="float32")
    assert rec_rate == rate and recorded.shape[1] == 4
    output, heard_input = recorded[:, :2], recorded[:, 2:]
    # Nothing but the input ever came out: every output frame is a frame of the source (no stem, no gain).
    # jack_rec writes 32-bit PCM: compare at 24-bit resolution.
    for ch in range(2):
        values = np.sort(song[:, ch].astype(np.float64))
        heard = output[:, ch].astype(np.float64)
        at = np.clip(np.searchsorted(values, heard), 1, len(values) - 1)
        nearest = np.minimum(np.abs(values[at] - heard), np.abs(values[at - 1] - heard))
        foreign = np.flatnonzero((heard != 0) & (nearest > 1e-8))  # 32-bit PCM is exact to ~5e-10
        assert not foreign.size, f"channel {ch}: {foreign.size} output samples are not input samples ({foreign[:5]})"
    # No dropout: the output is the input the plugin was given in the same cycles, frame for frame (after the
    # plugin's constant latency, if any). A player's underrun silences the input and the output alike. What load
    # can spoil is a cycle in which jalv was late: JACK (the dummy driver is not real time here, and CI's cores are
    # shared) logs an xrun naming it and passes that cycle's output on unfinished. So a mismatched cycle counts
    # as a dropout of the plugin's own unless JACK logged that many late cycles of jalv, and never as part of a
    # run of consecutive cycles: a plugin that stalled while the server went away would leave such a run.
    log = (tmp_path / "jackd.log").read_text()
    xruns, late = log.count("XRun"), log.count("client = swplug was not finished")
    first_in, first_out = (int(np.argmax(np.abs(x[:, 0]) > 0)) for x in (heard_input, output))
    assert np.abs(heard_input).max() > 0 and np.abs(output).max() > 0, "nothing was played or nothing came out"
    latency = first_out - first_in
    assert 0 <= latency < rate // 10, f"the output starts {latency} frames after the input"
    n = len(output) - latency
    mismatch = np.flatnonzero(np.any(output[latency:] != heard_input[:n], axis=1))
    cycles = np.unique((mismatch + latency) // jack.period)
    longest = max((len(run) for run in np.split(cycles, np.flatnonzero(np.diff(cycles) > 1) + 1)), default=0)
    assert len(cycles) <= late and longest <= 2, (
        f"{mismatch.size} output frames in {len(cycles)} cycles (at most {longest} in a row) differ from the input "
        f"the plugin was given (first at {mismatch[:5] + latency}; latency {latency}; JACK logged {xruns} xruns, "
        f"{late} of them jalv late): a dropout")


# ---------------------------------------------------------------------------------------------------------------
# The VST3 (JUCE 7.0.5) in pedalboard

VST3 = BUILD / "vst3" / "StemweaveVST3_artefacts" / "Release" / "VST3" / "Stemweave.vst3"


@pytest.fixture(scope="module")
def vst3() -> Path:
    """The VST3, built with `make -C plugin_stub vst3` (skips when JUCE 7.0.5 is not installed)."""
    need("cmake")
    if not Path("/usr/lib/x86_64-linux-gnu/cmake/JUCE-7.0.5").is_dir() and not list(Path("/usr").glob("lib*/cmake/JUCE-7.0.5")):
        pytest.skip("JUCE 7.0.5 is not installed (Debian: juce-modules-source)")
    binary = VST3 / "Contents" / "x86_64-linux" / "Stemweave.so"  # the bundle folder exists from configure on
    if not binary.exists():
        if os.environ.get("STEMWEAVE_BUILD_VST3") != "1":
            pytest.skip("the VST3 is not built: `make -C plugin_stub vst3` (compiling JUCE takes ~20 min on 2 "
                        "cores), or set STEMWEAVE_BUILD_VST3=1 to build it here")
        build = subprocess.run(["make", "-C", str(STUB), "vst3"], capture_output=True, text=True, timeout=3600)
        assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    return VST3


def test_vst3_in_pedalboard_round_trips_through_the_server(vst3, server):
    """pedalboard loads the VST3; a region processed through it reaches the server, and the bass stem comes back
    looped from the region's start, aligned to the frame (pedalboard has no play head: the plugin counts frames)."""
    pedalboard = pytest.importorskip("pedalboard", reason="pip install pedalboard")
    os.environ["STEMWEAVE_ENDPOINT"] = server.endpoint  # read when the plugin is created, in this process
    try:
        plugin = pedalboard.load_plugin(str(vst3))
    finally:
        os.environ.pop("STEMWEAVE_ENDPOINT", None)
    rate, length = 48000, 48000
    region = test_region(rate, 1.0, seed=4)
    names = set(plugin.parameters)
    assert {"capture", "separate", "region_end_s", "play_stem", "loop_result"} <= names, names
    plugin.capture = True
    plugin.region_end_s = 1.0
    plugin.separate = True
    plugin.loop_result = True
    plugin.play_stem = "bass"
    out = plugin.process(np.ascontiguousarray(region.T), rate, buffer_size=512, reset=False)
    np.testing.assert_array_equal(out[:, : length - 1], region.T[:, : length - 1])  # a wire while capturing
    bass = server_stems(server.endpoint, region, rate)["bass"]  # (2, frames): the server's cache of the same job
    silence = np.zeros((2, length), np.float32)
    deadline = time.monotonic() + 60
    while True:  # each pass is one more region length of timeline: the looped stem lines up with it
        out = plugin.process(silence, rate, buffer_size=512, reset=False)
        if np.abs(out).max() > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    np.testing.assert_allclose(out, bass, atol=1e-6)

def load_vst3(path: Path, endpoint: str):
    pedalboard = pytest.importorskip("pedalboard", reason="pip install pedalboard")
    os.environ["STEMWEAVE_ENDPOINT"] = endpoint  # read when the plugin is created, in this process
    try:
        return pedalboard.load_plugin(str(path))
    finally:
        os.environ.pop("STEMWEAVE_ENDPOINT", None)


def test_vst3_loop_mode_plays_the_server_loop(vst3, loop_server):
    """The VST3's loop mode in pedalboard (no play head: the loop's own bars from the first frame): the render waits
    for the server's loop, then plays it exactly, pass after pass, on top of the input."""
    rate = 48000
    loop = make_loop(loop_server, 150.0, 2)
    plugin = load_vst3(vst3, loop_server.endpoint)
    assert "loop_mode" in set(plugin.parameters)
    plugin.loop_mode = True
    song = test_region(rate, 7.0, seed=7)
    out = plugin.process(np.ascontiguousarray(song.T), rate, buffer_size=512, reset=False)
    looped = bar_synced(loop, len(song), loop.bar_frames)
    np.testing.assert_allclose(out.T, song + looped, atol=1e-6)
    assert np.abs(looped).max() > 0.05


def test_vst3_state_keeps_the_capture_and_the_stems(vst3, server):
    """getStateInformation / setStateInformation through pedalboard's raw_state: a plugin that has only captured a
    region hands its capture to a fresh instance, which separates it without hearing it again; that one's state
    then carries the stems too, and a third instance plays them in place. A state that is not Stemweave's is
    ignored."""
    rate, length = 48000, 48000
    region = test_region(rate, 1.0, seed=8)
    first = load_vst3(vst3, server.endpoint)
    first.capture = True
    first.region_end_s = 1.0
    out = first.process(np.ascontiguousarray(region.T), rate, buffer_size=512, reset=False)
    np.testing.assert_array_equal(out, region.T)  # captured, nothing asked of the server
    captured = first.raw_state
    assert len(captured) > length * 2 * 4  # the capture itself: 1 s of stereo float

    second = load_vst3(vst3, server.endpoint)
    second.play_stem = "drums"
    garbage = (b"not a Stemweave state at all", captured[: len(captured) // 2], captured[:-1], b"")

    def unchanged(before):  # after each garbage state: the same state and the same parameters as before it
        parameters = {name: str(value) for name, value in second.parameters.items()}
        for state in garbage:
            second.raw_state = state  # refused, changes nothing
            assert second.raw_state == before
            assert {name: str(value) for name, value in second.parameters.items()} == parameters

    fresh = second.raw_state
    assert fresh != captured and len(fresh) < len(captured)  # no capture in it
    unchanged(fresh)
    second.raw_state = captured
    unchanged(second.raw_state)  # a damaged state does not replace a good one either
    second.play_stem = "bass"
    second.separate = True  # the restored capture is complete: it is sent at once
    silence = np.zeros((2, length), np.float32)
    out = second.process(silence, rate, buffer_size=512, reset=False)  # non-realtime: waits for the stems
    bass = server_stems(server.endpoint, region, rate)["bass"]
    np.testing.assert_allclose(out, bass, atol=1e-6)  # the stem of the captured region, where it was captured

    third = load_vst3(vst3, server.endpoint)
    third.raw_state = second.raw_state
    third.play_stem = "bass"
    out = third.process(silence, rate, buffer_size=512, reset=False)
    np.testing.assert_allclose(out, bass, atol=1e-6)
