"""The loop engine against a paced virtual device: JACK's dummy backend (Debian jackd2), headless, no sound card.

* audio: PortAudio's JACK host API drives the player's callback (in a subprocess, because PortAudio lists host
  APIs once per process and must see this test's JACK server); the swap lands on a bar boundary of the output
  stream to the sample;
* MIDI clock: mido + python-rtmidi's JACK API through a virtual port sets the loop tempo; the same parsing
  function is also fed directly (that part needs no host).
Each test skips with the reason when its host is missing.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest

from stemweave.bridge.loop import LoopSettings, MidiClock

JACK_RATE = 48000


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    """A private JACK server on the dummy backend: (name, environment for its clients)."""
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        pytest.skip("jackd2 is not installed (Debian package jackd2: scripts/install-system-packages --test)")
    name = f"stemweave-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "JACK_NO_AUDIO_RESERVATION": "1"}
    log = tmp_path_factory.mktemp("jack") / "jackd.log"
    with open(log, "wb") as output:  # a file, not a pipe: jackd must never block on its own log
        process = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(JACK_RATE),
                                    "-p", "256"], stdout=output, stderr=subprocess.STDOUT, env=env)
    try:
        ready = subprocess.run(["jack_wait", "-s", name, "-w", "-t", "10"], env=env, capture_output=True, timeout=20)
        if ready.returncode != 0 or process.poll() is not None:
            pytest.skip(f"jackd (dummy backend) did not start: {log.read_text()[-500:]}")
        yield name, env
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


AUDIO_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import sounddevice as sd
    from stemweave.bridge.audio_out import open_output, NoAudioDevice
    from stemweave.bridge.loop import Loop, LoopPlayer

    apis = [a["name"] for a in sd.query_hostapis()]
    if not any("JACK" in a for a in apis):
        print(json.dumps({"skip": "PortAudio was built without JACK (host APIs: " + ", ".join(apis) + ")"}))
        sys.exit(0)
    jack = next(i for i, a in enumerate(sd.query_hostapis()) if "JACK" in a["name"])
    device = sd.query_hostapis(jack)["default_output_device"]
    rate, bar = 48000, 4800
    player = LoopPlayer(rate, 2, swap_fade_s=0.0, gain_ramp_s=0.001)
    record = np.zeros((rate * 4, 2), np.float32)
    written = [0]
    def callback(outdata, frames, time_info, status):
        player.callback(outdata, frames, time_info, status)
        n = min(frames, len(record) - written[0])
        record[written[0]:written[0] + n] = outdata[:n]
        written[0] += n
    def loop(serial, offset, bars):
        frames = bar * bars
        ramp = offset + np.arange(frames) / frames
        return Loop(serial, ("a",), np.repeat(ramp[None, :, None], 2, axis=2).astype(np.float32), (0,), bar, bars, 120.0)
    stream = open_output(callback, rate, 2, blocksize=256, device=device)
    name = sd.query_devices(device)["name"]
    player.hand_over(loop(1, 0.0, 3))
    player.play()
    with stream:
        time.sleep(0.37)
        player.hand_over(loop(2, 10.0, 2))
        deadline = time.monotonic() + 20
        while (player.swap_count < 2 or player.frames < player.swaps[1][0] + 256) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the swap has happened and been rendered (slow on a busy machine)
    swaps = player.swap_log()
    at = swaps[-1]["frame"]
    print(json.dumps({"device": name, "frames": player.frames, "started": player.started_at, "swaps": swaps,
                      "around": record[at - 2:at + 2, 0].tolist()}))
""")


def test_audio_path_runs_on_jack_dummy_and_swaps_on_the_bar(jack_server):
    pytest.importorskip("sounddevice", reason="sounddevice is not installed (pip install sounddevice)")
    _name, env = jack_server
    done = subprocess.run([sys.executable, "-c", AUDIO_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(result["skip"])
    assert result["frames"] > 0.1 * JACK_RATE  # the device ran the callback (paced by JACK, slower on a busy machine)
    swaps = result["swaps"]
    assert [s["serial"] for s in swaps] == [1, 2]
    bar, started = 4800, result["started"]
    assert (swaps[1]["frame"] - started) % bar == 0
    around = result["around"]  # the output stream at swap - 2 .. swap + 1
    assert max(around[:2]) < 1.0 <= 10.0 <= min(around[2:])  # the old loop up to the boundary, the new one from it
    expected_bar = ((swaps[1]["frame"] - started) // bar) % 3
    assert around[2] == pytest.approx(10.0 + (expected_bar % 2) * bar / (2 * bar), abs=1e-5)


def clock_times(bpm, beats, jitter=0.0, seed=0):
    period = 60.0 / (bpm * 24)
    noise = np.random.default_rng(seed).uniform(-jitter, jitter, beats * 24)
    return np.arange(beats * 24) * period + noise


def test_midi_clock_parsing_sets_the_tempo():
    import mido

    reported = []
    clock = MidiClock(reported.append)
    for at in clock_times(100.0, 8, jitter=0.002):
        clock.feed(mido.Message("clock"), 10.0 + at)
    assert reported and reported[-1] == pytest.approx(100.0, abs=0.3)
    assert len(reported) <= 3  # jitter does not re-report (each report regenerates the loop)
    for at in clock_times(140.0, 4):  # after a pause, a new tempo
        clock.feed(mido.Message("clock"), 100.0 + at)
    assert reported[-1] == pytest.approx(140.0, abs=0.1)
    started = []
    clock.on_start = lambda: started.append(True)
    clock.feed(mido.Message("start"), 200.0)
    assert started


def test_midi_clock_through_a_virtual_port_sets_the_loop_tempo(jack_server, monkeypatch):
    pytest.importorskip("rtmidi", reason="python-rtmidi is not installed (pip install python-rtmidi)")
    import mido
    import rtmidi

    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        pytest.skip("python-rtmidi was built without its JACK API")
    name, _env = jack_server
    monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
    from test_osc_surface import InstantBackend
    from stemweave.bridge.loop import LoopEngine

    engine = LoopEngine(InstantBackend(), rate=8000, output="virtual", log=lambda text: None,
                        settings=LoopSettings(method="prior"))
    backend = "mido.backends.rtmidi/UNIX_JACK"
    port_name = f"clock-{uuid.uuid4().hex[:6]}"
    try:
        clock = engine.follow_midi_clock(f"virtual:{port_name}", backend=backend)
        api = mido.Backend(backend)
        target = next(n for n in api.get_output_names() if port_name in n)
        with api.open_output(target) as out:
            time.sleep(0.2)  # the connection settles
            period, start, sent = 60.0 / (90.0 * 24), time.monotonic(), []
            for i in range(24 * 6):  # six beats at 90 BPM, on absolute deadlines
                time.sleep(max(0.0, start + i * period - time.monotonic()))
                out.send(mido.Message("clock"))
                sent.append(time.monotonic())
            time.sleep(0.2)
        # The tempo this process really sent over the clock's window (a loaded machine delays some pulses).
        last = np.asarray(sent[-clock.window:])
        sent_tempo = 60.0 / (24 * np.polyfit(np.arange(len(last)), last - last[0], 1)[0])
        status = engine.status()
        assert status["tempo_source"] == "midi"
        assert sent_tempo == pytest.approx(90.0, abs=5.0), "the sender itself could not keep time"
        assert status["tempo"] == pytest.approx(sent_tempo, abs=1.5)
    finally:
        engine.close()
