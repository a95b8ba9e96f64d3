"""Silence in, silence out (issue 22): the shipped separator through the model, the API/region layer and the CLI."""

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave import api
from stemweave.engine.models import STEM_PEAK_BOUND, load_separator

BOUND = 2 * STEM_PEAK_BOUND + 1 / 4  # a returned stem's peak / the window's input peak, at most (K = 4)


@pytest.fixture(scope="module")
def separator():
    torch.set_num_threads(1)
    return load_separator("separator-cpu-small")


def sine(db, rate, seconds=3.0, channels=2, hz=440.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.repeat((10 ** (db / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None], channels, 0)


def test_without_level_normalisation_zeros_give_the_networks_offset(separator):
    """The cause: the network's biases alone put about -10 dBFS on each stem of a zero window."""
    raw = load_separator("separator-cpu-small")
    raw.level_normalise, raw.polarity_average = False, False
    with torch.inference_mode():
        stems = raw(torch.zeros(1, 1, raw.window))
        assert stems.abs().max() > 10 ** (-40 / 20)
        raw.polarity_average = True  # the odd part of the network has no offset: zeros in, zeros out
        assert torch.count_nonzero(raw(torch.zeros(1, 1, raw.window))) == 0


def test_digital_silence_gives_exactly_zero_stems_from_the_model(separator):
    with torch.inference_mode():
        stems = separator(torch.zeros(2, 1, separator.window))
    assert torch.count_nonzero(stems) == 0


@pytest.mark.parametrize("rate,channels", [(44_100, 2), (22_050, 1), (48_000, 2)])
def test_digital_silence_gives_exactly_zero_stems_through_the_api(separator, rate, channels):
    stems = api.separate(np.zeros((channels, rate * 3), np.float32), rate=rate, model=separator)
    assert set(stems) == set(separator.stems)
    for audio in stems.values():
        assert audio.shape == (channels, rate * 3)
        assert np.count_nonzero(audio) == 0


def test_silence_gives_silent_files_through_the_cli(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros((44_100 * 2, 2), np.float32), 44_100, subtype="PCM_16")
    done = subprocess.run([sys.executable, "-m", "stemweave", "separate", str(tmp_path / "silence.wav"), "-o",
                           str(tmp_path / "out"), "--no-progress", "--threads", "1"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "out").rglob("*.wav"))
    assert len(files) == 4
    for path in files:
        audio, rate = sf.read(path)
        assert rate == 44_100 and audio.shape == (44_100 * 2, 2)
        assert np.count_nonzero(audio) == 0, path.name


def test_a_minus_80_dbfs_sine_gives_no_click(separator):
    """Near silence: no stem sample far above the input's peak, and nothing at the start (the old click)."""
    rate = 44_100
    audio = sine(-80, rate)
    stems = api.separate(audio, rate=rate, model=separator)
    peak = np.abs(audio).max()
    for name, stem in stems.items():
        assert np.abs(stem).max() <= BOUND * peak, name
        assert np.abs(stem[:, : int(0.003 * rate)]).max() <= BOUND * peak, name
    total = sum(s.astype(np.float64) for s in stems.values())
    np.testing.assert_allclose(total, audio, atol=1e-7)


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float32", "bfloat16"])
def test_stems_scale_with_the_input(bfloat16):
    """Level normalisation: a mix 40 dB quieter gives the same stems 40 dB quieter (not an offset). In bfloat16
    the two network inputs, equal up to float32's last bits, can round apart: the same to bfloat16's rounding."""
    separator = load_separator("separator-cpu-small", bfloat16=bfloat16)
    gen = torch.Generator().manual_seed(0)
    mixture = 0.1 * torch.randn(1, 1, separator.window, generator=gen)
    with torch.inference_mode():
        loud, quiet = separator(mixture), separator(mixture * 0.01)
    if bfloat16:
        assert (quiet * 100 - loud).norm() < 0.01 * loud.norm()  # an offset would be -10 dBFS, 40 dB up
    else:
        torch.testing.assert_close(quiet * 100, loud, atol=2e-4, rtol=2e-3)


@pytest.mark.parametrize("kind", ["click", "noise", "square"])
def test_no_stem_peaks_far_above_the_input(separator, kind):
    rate = 22_050
    gen = np.random.default_rng(1)
    audio = np.zeros((1, rate * 3), np.float32)
    if kind == "click":
        audio[0, rate] = 0.9  # one click in silence: the worst crest factor
    elif kind == "noise":
        audio[0] = 0.3 * gen.standard_normal(audio.shape[1])
    else:
        audio[0] = 0.5 * np.sign(np.sin(2 * np.pi * 55 * np.arange(audio.shape[1]) / rate))
    stems = api.separate(audio, rate=rate, model=separator)
    for name, stem in stems.items():
        assert np.abs(stem).max() <= BOUND * np.abs(audio).max() * 1.05, (kind, name)  # 5%: resampling ripple
