"""The accompanist behind the server (issue 21, item 4), over a real ZeroMQ socket on loopback: accompany and
generate jobs default to it, its stems are aligned with the region, its MIDI file comes back as a named frame,
its analysis is in the result's info; method prior still reaches the model; bad requests get bad-request."""

from __future__ import annotations

import io

import mido
import numpy as np
import pytest

from stemweave.bridge import accompanist_jobs
from stemweave.bridge import protocol as P
from stemweave.bridge.client import Client, ServerError
from stemweave.bridge.server import Server, analytic_model

RATE = 22050
BPM = 120.0


def drum_loop(bars: int = 4, rate: int = RATE, bpm: float = BPM, channels: int = 2) -> tuple[np.ndarray, list[float]]:
    """Drums (channels, frames): a kick on beats 1 and 3, a noise snare on 2 and 4, hats on eighths; and the kick
    times in seconds."""
    beat = 60.0 / bpm
    frames = int(round(rate * beat * 4)) * bars
    out = np.zeros(frames, np.float32)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.2 * rate)) / rate
    kick = (0.8 * np.sin(2 * np.pi * (50 + 60 * np.exp(-t * 30)) * t) * np.exp(-t * 18)).astype(np.float32)
    noise = np.diff(rng.standard_normal(t.size + 2), 2)  # differenced twice: high-passed, no kick band
    snare = (0.3 * noise * np.exp(-t * 25)).astype(np.float32)
    hat = (0.02 * noise * np.exp(-t * 80)).astype(np.float32)
    kicks = []
    for eighth in range(bars * 8):
        start = int(round(eighth * beat / 2 * rate))
        n = min(t.size, frames - start)
        out[start: start + n] += hat[:n]
        if eighth % 4 == 0:
            out[start: start + n] += kick[:n]
            kicks.append(start / rate)
        elif eighth % 4 == 2:
            out[start: start + n] += snare[:n]
    return np.repeat(out[None], channels, 0), kicks


def note_on_seconds(midi: mido.MidiFile) -> list[float]:
    """Note-on times in seconds from the file's start (mido applies the file's tempo map)."""
    now, times = 0.0, []
    for message in midi:
        now += message.time
        if message.type == "note_on" and message.velocity > 0:
            times.append(now)
    return times


@pytest.fixture
def accompanist():
    return accompanist_jobs.engine()  # stemweave.engine.accompanist


@pytest.fixture
def server(accompanist):
    served = Server("tcp://127.0.0.1:*", model_loader=lambda name, device: analytic_model(rate=4000, window=256),
                    model_names=["analytic"], default_model="analytic", preload=False, check_device=False,
                    log=lambda text: None).start()
    yield served
    served.stop()


def test_accompany_defaults_to_the_accompanist_bass_locked_to_the_kick_with_its_midi(server):
    drums, kicks = drum_loop()
    with Client(server.endpoint, timeout=120) as client:
        stems = client.accompany({"drums": drums}, RATE, seed=3, params={"stems": ["bass"], "midi": True,
                                                                          "key": "A minor"})
        result = client.last_result
    assert list(stems) == ["bass"]  # the given drums are untouched and not sent back
    bass = stems["bass"]
    assert bass.shape == drums.shape and bass.dtype == np.float32 and np.isfinite(bass).all()
    assert np.abs(bass).max() > 0.01
    assert result.info["method"] == "accompanist" and result.info["model"] is None
    assert result.info["analysis"]["key"] and result.info["analysis"]["bpm"] > 0
    midi = mido.MidiFile(file=io.BytesIO(result.files["midi"]))
    onsets = note_on_seconds(midi)
    assert onsets, "the MIDI file holds no notes"
    near = [min(abs(o - k) for k in kicks) <= 0.05 for o in onsets]
    assert np.mean(near) >= 0.6, (onsets[:8], kicks[:8])  # locked to the kick (chance is far lower here)
    # The audio is aligned with the region: the bass's first sound is at (or after) the first kick, not before.
    envelope = np.abs(bass).max(0)
    first = np.flatnonzero(envelope > 0.1 * envelope.max())[0] / RATE
    assert first >= kicks[0] - 0.05 and first - min(o for o in onsets) <= 0.06


def test_the_midi_frame_comes_only_when_asked_and_the_cache_keeps_it(server):
    drums, _ = drum_loop(bars=2)
    with Client(server.endpoint, timeout=120) as client:
        client.accompany({"drums": drums}, RATE, params={"stems": ["bass"]})
        assert client.last_result.files == {}  # an older client counts one frame per stem: nothing more by default
        client.accompany({"drums": drums}, RATE, params={"stems": ["bass"], "midi": True})
        first = client.last_result.files["midi"]
        client.accompany({"drums": drums}, RATE, params={"stems": ["bass"], "midi": True})
        assert client.last_result.cached and client.last_result.files["midi"] == first
        again = client.fetch(client.last_job)
        assert list(again) == ["bass"] and client.last_result.files["midi"] == first


def test_generate_bars_is_a_whole_number_of_bars_at_the_tempo(server):
    with Client(server.endpoint, timeout=120) as client:
        stems = client.generate(RATE, params={"bars": 2, "bpm": 100.0, "stems": ["bass"], "channels": 2,
                                              "midi": True, "style": "default", "density": 0.7})
        result = client.last_result
    bar = round(RATE * 60 * 4 / 100.0)
    assert stems["bass"].shape == (2, 2 * bar)
    assert result.info["method"] == "accompanist" and result.info["analysis"]["bpm"] == pytest.approx(100.0, rel=0.04)
    assert mido.MidiFile(file=io.BytesIO(result.files["midi"])).tracks


def test_method_prior_and_a_named_model_reach_the_model(server):
    drums, _ = drum_loop(bars=1, rate=4000, channels=1)
    with Client(server.endpoint, timeout=120) as client:
        for params in ({"method": "prior", "stems": ["bass"], "steps": 2}, {"stems": ["bass"], "steps": 2}):
            stems = client.accompany({"drums": drums}, 4000, params=params)
            assert list(stems) == ["bass"] and client.last_result.info["model"] == "analytic"
            assert "method" not in client.last_result.info
        client.accompany({"drums": drums}, 4000, model="analytic", params={"stems": ["bass"]})
        assert client.last_result.info["model"] == "analytic"


@pytest.mark.parametrize("params, says", [
    ({"method": "kazoo"}, "unknown method"),
    ({"method": "accompanist", "steps": 4}, "sampler parameters go with method prior"),
    ({"key": "H dorian"}, "key"),
    ({"chords": "Am Q7"}, "not a chord"),
    ({"density": 1.5}, "outside"),
    ({"bpm": 900.0}, "outside"),
    ({"stems": ["drums"]}, "given"),
    ({"stems": ["kazoo"]}, "not kazoo"),
    ({"programs": {"bass": 300}}, "programs"),
    ({"method": "refine"}, "refine"),
    ({"frames": 100}, "goes with generate"),
])
def test_bad_accompanist_requests_get_bad_request(server, accompanist, params, says):
    if params.get("method") == "refine" and callable(getattr(accompanist, "refine", None)):
        pytest.skip("this accompanist offers refine")
    drums, _ = drum_loop(bars=1)
    with Client(server.endpoint, timeout=60) as client:
        with pytest.raises(ServerError) as raised:
            client.accompany({"drums": drums}, RATE, params=params)
    assert raised.value.code == "bad-request" and says in raised.value.message, raised.value.message


def test_a_model_with_method_accompanist_is_refused(server):
    drums, _ = drum_loop(bars=1)
    with Client(server.endpoint, timeout=60) as client:
        with pytest.raises(ServerError, match="takes no model or preset"):
            client.accompany({"drums": drums}, RATE, model="analytic", params={"method": "accompanist"})


def test_result_files_round_trip_and_malformed_files_are_refused():
    stems = {"bass": np.zeros((1, 8), np.float32)}
    message = P.Result(job="a" * 32, rate=8000, stems_audio=stems, files={"midi": b"MThd\x00"})
    frames = message.to_frames()
    decoded = P.decode(frames)
    assert decoded.files == {"midi": b"MThd\x00"} and list(decoded.stems_audio) == ["bass"]
    assert "files" not in P.decode(P.Result(job="a" * 32, rate=8000, stems_audio=stems).to_frames()).header()
    with pytest.raises(P.ProtocolError):
        P.decode([frames[0], frames[1]])  # the midi frame is missing


def test_without_the_whole_accompanist_the_default_is_the_prior_and_asking_for_it_is_refused(monkeypatch,
                                                                                                   accompanist):
    import types

    monkeypatch.setattr(accompanist_jobs, "engine", lambda: types.SimpleNamespace(Controls=accompanist.Controls))
    served = Server("tcp://127.0.0.1:*", model_loader=lambda name, device: analytic_model(rate=4000, window=256),
                    model_names=["analytic"], default_model="analytic", preload=False, check_device=False,
                    log=lambda text: None).start()
    try:
        drums, _ = drum_loop(bars=1, rate=4000, channels=1)
        with Client(served.endpoint, timeout=120) as client:
            assert list(client.accompany({"drums": drums}, 4000, params={"stems": ["bass"]})) == ["bass"]
            assert client.last_result.info["model"] == "analytic"
            with pytest.raises(ServerError, match="not installed"):
                client.accompany({"drums": drums}, 4000, params={"method": "accompanist"})
    finally:
        served.stop()


def test_client_command_reaches_the_accompanist_with_its_controls_and_writes_the_midi(server, tmp_path):
    """`stemweave client accompany` sends the direct command's accompanist options (--key, --chords, --style ...)
    and writes each stem's MIDI beside it; --method prior reaches the model; a bad control is exit 2."""
    import json

    import soundfile as sf

    from stemweave.cli import main

    drums, kicks = drum_loop(bars=4)
    sf.write(tmp_path / "drums.wav", drums.T, RATE, subtype="FLOAT")
    common = ["--server", server.endpoint, "--no-progress", "--bit-depth", "32f", "--timeout", "120"]
    assert main(["client", "accompany", str(tmp_path / "drums.wav"), "--given", "drums", "--generate", "bass",
                 "--key", "D minor", "--chords", "Dm Bb", "--style", "rock", "-o", str(tmp_path / "out"), *common]) == 0
    wavs = sorted((tmp_path / "out").glob("*.wav"))
    mids = sorted((tmp_path / "out").glob("*.mid"))
    assert len(wavs) == 1 and "bass" in wavs[0].name and [m.stem for m in mids] == [wavs[0].stem]
    bass, rate = sf.read(wavs[0], dtype="float32", always_2d=True)
    assert rate == RATE and bass.shape == drums.T.shape
    provenance = json.loads(next((tmp_path / "out").glob("*.stemweave.json")).read_text())
    assert provenance["info"]["method"] == "accompanist" and provenance["info"]["analysis"]["key"] == "D minor"
    assert provenance["info"]["analysis"]["chords"][:2] == ["Dm", "Bb"] and provenance["midi"]
    onsets = note_on_seconds(mido.MidiFile(mids[0]))
    assert onsets and np.mean([min(abs(o - k) for k in kicks) <= 0.05 for o in onsets]) >= 0.6

    small, _ = drum_loop(bars=1, rate=4000, channels=1)
    sf.write(tmp_path / "small.wav", small.T, 4000, subtype="FLOAT")
    assert main(["client", "accompany", str(tmp_path / "small.wav"), "--given", "drums", "--generate", "bass",
                 "--method", "prior", "--steps", "2", "-o", str(tmp_path / "prior"), *common]) == 0
    provenance = json.loads(next((tmp_path / "prior").glob("*.stemweave.json")).read_text())
    assert provenance["info"]["model"] == "analytic" and not list((tmp_path / "prior").glob("*.mid"))
    assert main(["client", "accompany", str(tmp_path / "drums.wav"), "--given", "drums", "--generate", "bass",
                 "--key", "H dorian", "-o", str(tmp_path / "bad"), *common]) == 2


def test_client_generate_loop_bars_is_an_accompanist_loop_with_midi(server, tmp_path):
    import soundfile as sf

    from stemweave.cli import main

    assert main(["client", "generate", "--loop-bars", "2", "--bpm", "100", "--stems", "bass", "--rate", "22050",
                 "--channels", "2", "-o", str(tmp_path / "g"), "--server", server.endpoint, "--no-progress",
                 "--timeout", "120"]) == 0
    wav = next((tmp_path / "g").glob("*bass*.wav"))
    audio, rate = sf.read(wav, dtype="float32", always_2d=True)
    assert rate == 22050 and audio.shape == (2 * round(22050 * 60 * 4 / 100), 2)
    assert wav.with_suffix(".mid").is_file()


def test_generate_seconds_is_that_many_frames_with_its_midi(server):
    with Client(server.endpoint, timeout=120) as client:
        stems = client.generate(RATE, seconds=3.3, params={"stems": ["bass", "drums"], "midi": True, "bpm": 90.0})
        result = client.last_result
    assert {k: v.shape for k, v in stems.items()} == {"bass": (1, round(3.3 * RATE)), "drums": (1, round(3.3 * RATE))}
    assert all(np.abs(v).max() > 0.01 for v in stems.values())
    assert result.info["method"] == "accompanist" and len(mido.MidiFile(file=io.BytesIO(result.files["midi"])).tracks) >= 2
