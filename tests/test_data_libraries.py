"""PyYAML for metadata.yaml and pyloudnorm for BS.1770 (issue 20): they agree with what they replaced.

The reference meter below is the hand-written BS.1770 the project used before pyloudnorm (K-weighting from the
standard's analogue prototype at any rate, 400 ms blocks with 75 % overlap, -70 LUFS absolute and -10 LU relative
gates); pyloudnorm must agree with it within 0.1 LU, and the rendered data must not change.
"""

import math

import numpy as np
import pytest
import yaml

from stemweave.engine.data import loudness, render
from stemweave.engine.data.layout import parse_yaml, read_metadata, render_settings, to_yaml, track_metadata, write_track
from stemweave.engine.data.render import DEFAULT_SOUNDFONT, render_song
from stemweave.engine.data.songs import STEMS, make_song


def reference_loudness(audio, rate):
    import scipy.signal

    def biquad(f0, q, gain_db=None):
        k = math.tan(math.pi * f0 / rate)
        a0 = 1 + k / q + k * k
        a = np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
        if gain_db is None:
            return np.array([1.0, -2.0, 1.0]), a
        vh = 10 ** (gain_db / 20)
        vb = vh ** 0.4996667741545416
        return np.array([vh + vb * k / q + k * k, 2 * (k * k - vh), vh - vb * k / q + k * k]) / a0, a

    filters = [biquad(1681.974450955533, 0.7071752369554196, 3.999843853973347), biquad(38.13547087602444, 0.5003270373238773)]
    sos = np.concatenate([np.concatenate([b, a])[None] for b, a in filters])
    weighted = scipy.signal.sosfilt(sos, np.asarray(audio, np.float64).reshape(-1))
    block, hop = int(0.4 * rate), int(0.1 * rate)
    weighted = np.pad(weighted, (0, max(0, block - weighted.size)))
    power = np.concatenate([[0.0], np.cumsum(weighted**2)])
    starts = np.arange(0, weighted.size - block + 1, hop)
    mean_square = (power[starts + block] - power[starts]) / block
    with np.errstate(divide="ignore"):
        level = -0.691 + 10 * np.log10(mean_square)
    gated = mean_square[level > -70.0]
    if gated.size == 0:
        return -math.inf
    gate = -0.691 + 10 * math.log10(gated.mean()) - 10.0
    return -0.691 + 10 * math.log10(mean_square[level > max(-70.0, gate)].mean())


def _signals(rate):
    rng = np.random.default_rng(0)
    t = np.arange(5 * rate) / rate
    return {"sine 1 kHz": 0.1 * np.sin(2 * np.pi * 1000 * t), "sine 60 Hz": 0.3 * np.sin(2 * np.pi * 60 * t),
            "sine 6 kHz": 0.1 * np.sin(2 * np.pi * 6000 * t), "noise": 0.05 * rng.standard_normal(t.size),
            "bursts": np.where(t % 1 < 0.3, 0.3, 0.001) * rng.standard_normal(t.size),
            "short": 0.1 * rng.standard_normal(rate // 10)}


@pytest.mark.parametrize("rate", [16_000, 22_050, 44_100, 48_000])
def test_pyloudnorm_agrees_with_the_reference_meter_within_a_tenth_of_a_lu(rate):
    for name, audio in _signals(rate).items():
        ours, reference = loudness.integrated_loudness(audio, rate), reference_loudness(audio, rate)
        assert abs(ours - reference) < 0.1, (name, ours, reference)
    assert loudness.integrated_loudness(np.zeros(rate), rate) == -math.inf


def test_a_mono_sine_at_minus_20_dbfs_reads_minus_23_lufs():
    """BS.1770: K-weighting is ~0 dB at 1 kHz (the -0.691 offsets it); a mono sine's mean square is A^2 / 2."""
    rate = 48_000
    t = np.arange(10 * rate) / rate
    value = loudness.integrated_loudness(10 ** (-20 / 20) * np.sin(2 * np.pi * 997 * t), rate)
    assert value == pytest.approx(-20 - 10 * math.log10(2), abs=0.05)


@pytest.mark.skipif(not __import__("os").path.exists(DEFAULT_SOUNDFONT), reason="no GM soundfont")
def test_rendered_audio_is_identical_with_either_meter(monkeypatch):
    song = make_song(31, 3.0)
    with_pyloudnorm = render_song(song)
    monkeypatch.setattr(render, "integrated_loudness", reference_loudness)
    with_reference = render_song(song)
    for stem in STEMS:
        np.testing.assert_array_equal(with_pyloudnorm.stems[stem], with_reference.stems[stem])
    for name, value in with_pyloudnorm.loudness.items():
        assert value == pytest.approx(with_reference.loudness[name], abs=1e-6)


@pytest.mark.skipif(not __import__("os").path.exists(DEFAULT_SOUNDFONT), reason="no GM soundfont")
def test_metadata_yaml_is_pyyaml_and_round_trips(tmp_path):
    song = make_song(32, 2.0)
    rendered = render_song(song)
    metadata = track_metadata(song, rendered, render_settings(32, 22_050, 2.0, "flac", DEFAULT_SOUNDFONT), "train")
    folder = write_track(tmp_path, "Track00032", song, rendered, metadata)
    text = (folder / "metadata.yaml").read_text()
    assert yaml.safe_load(text) == metadata == read_metadata(folder)
    assert text.index("UUID") < text.index("stems:")  # Slakh's key order kept


def test_parse_yaml_reads_slakh_style_files_and_refuses_objects():
    slakh = 'UUID: Track00001\nstems:\n  S00:\n    inst_class: "Bass"  # a comment\n    program_num: 33\n' \
            "    is_drum: false\n    integrated_loudness: null\nlicense:\n  - CC BY 4.0\n"
    data = parse_yaml(slakh)
    assert data["stems"]["S00"] == {"inst_class": "Bass", "program_num": 33, "is_drum": False,
                                    "integrated_loudness": None}
    assert data["license"] == ["CC BY 4.0"]
    assert parse_yaml(to_yaml({"a": {"b": 1.5, "c": "x: y"}})) == {"a": {"b": 1.5, "c": "x: y"}}
    with pytest.raises(yaml.YAMLError):
        parse_yaml("!!python/object/apply:os.system ['true']\n")
