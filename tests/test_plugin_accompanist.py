"""The plugin's Accompany action reaches the accompanist (issue 21): the LV2 plugin in lv2file captures a drum
region, asks a real `stemweave serve` to accompany it (Capture is stem = drums, Generate stem = bass, no model or
preset named: the server's default method) and plays drums + the accompanist's bass in place on the next pass."""

from __future__ import annotations

import io

import mido
import numpy as np
import pytest

from test_accompanist_surfaces import drum_loop, note_on_seconds
from test_plugin_hosts import bundle, need, run_lv2file, server  # noqa: F401 - fixtures

sf = pytest.importorskip("soundfile")


def test_lv2file_accompany_plays_the_accompanists_bass_under_the_drums_in_place(bundle, server, tmp_path):  # noqa: F811
    need("lv2file")
    from stemweave.bridge import accompanist_jobs

    if not accompanist_jobs.available():
        pytest.skip("the accompanist (stemweave.engine.accompanist) is not installed whole")
    rate = 48000
    drums, kicks = drum_loop(bars=4, rate=rate, bpm=120.0)  # (2, 8 s): bars enough to hear the beat
    region = drums.T  # (frames, 2)
    length = region.shape[0]
    sf.write(tmp_path / "in.wav", np.concatenate([region, region]), rate, subtype="FLOAT")
    run = run_lv2file(server.endpoint, tmp_path / "in.wav", tmp_path / "out.wav", freewheel=1, capture=1,
                      mark_end=length / rate, accompany=1, capture_as=1, target=0, loop=1)
    assert run.returncode == 0, run.stdout + run.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    np.testing.assert_array_equal(out[: length - 1], region[: length - 1])  # a wire until the capture ends

    from stemweave.bridge.client import Client

    with Client(server.endpoint, timeout=120) as client:  # the plugin's request: seed 0, given drums, make bass
        made = client.accompany({"drums": np.ascontiguousarray(drums)}, rate, seed=0, params={"stems": ["bass"]})
        info = client.last_result.info
        client.accompany({"drums": np.ascontiguousarray(drums)}, rate, seed=0, params={"stems": ["bass"],
                                                                                       "midi": True})
        midi = mido.MidiFile(file=io.BytesIO(client.last_result.files["midi"]))
    assert info["method"] == "accompanist", info  # the server's default reached the accompanist
    bass = made["bass"].T
    second = out[length: 2 * length]
    np.testing.assert_allclose(second, region + bass, atol=1e-5)  # the drums kept, the bass added, aligned
    assert np.abs(bass).max() > 0.01
    spectrum = np.abs(np.fft.rfft(bass[:, 0])) ** 2
    freqs = np.fft.rfftfreq(length, 1 / rate)
    assert spectrum[freqs < 400].sum() / spectrum.sum() > 0.6  # a bass line, in the bass register
    onsets = note_on_seconds(midi)
    assert onsets and np.mean([min(abs(o - k) for k in kicks) <= 0.05 for o in onsets]) >= 0.6, (onsets, kicks)
