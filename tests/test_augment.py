"""On-the-fly remix augmentation (issue 22): stems from different songs, off by default, reproducible."""

import numpy as np
import pytest
import soundfile as sf

from stemweave.engine.data.datasets import StemChunks

RATE, SECONDS = 8000, 2


def fake_split(root, songs=6):
    """Songs whose stems are constants that encode (song, stem): where a remixed stem came from is visible."""
    for n in range(songs):
        folder = root / f"Song{n}"
        folder.mkdir(parents=True)
        for k, stem in enumerate(("bass", "drums", "guitar", "piano")):
            sf.write(folder / f"{stem}.wav", np.full(RATE * SECONDS, (n + 1) * 0.01 + k * 0.1, np.float32), RATE,
                     subtype="FLOAT")
    return root


def song_of(chunk, k):
    return int(round((float(chunk[k, 0]) - k * 0.1) / 0.01)) - 1


def test_without_remix_every_window_is_one_song(tmp_path):
    data = StemChunks(fake_split(tmp_path), 1000, rate=RATE, seed=0)
    stream = iter(data)
    for _ in range(30):
        chunk = next(stream).numpy()
        assert len({song_of(chunk, k) for k in range(4)}) == 1


def test_remix_draws_each_stem_from_its_own_song(tmp_path):
    data = StemChunks(fake_split(tmp_path), 1000, rate=RATE, seed=0, remix=1.0)
    stream = iter(data)
    mixed = 0
    for _ in range(40):
        chunk = next(stream).numpy()
        songs = [song_of(chunk, k) for k in range(4)]
        assert all(0 <= s < 6 for s in songs)  # every stem is its own class's stem of some song
        mixed += len(set(songs)) > 1
    assert mixed >= 35  # 4 stems from 6 songs: all from one song 1 in 216 times


def test_remix_share_and_reproducibility(tmp_path):
    root = fake_split(tmp_path)
    chunks = lambda seed: [next(it).numpy() for it in [iter(StemChunks(root, 500, rate=RATE, seed=seed, remix=0.5))]
                           for _ in range(200)]
    first, again = chunks(3), chunks(3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    remixed = sum(len({song_of(c, k) for k in range(4)}) > 1 for c in first)
    assert 70 <= remixed <= 120  # about half (a remix can land on one song by chance: 1/216)


def test_remix_with_gain_and_polarity_keeps_each_stems_class(tmp_path):
    data = StemChunks(fake_split(tmp_path), 1000, rate=RATE, seed=1, remix=1.0, augment=True)
    chunk = next(iter(data)).numpy()
    for k in range(4):
        magnitude = abs(float(chunk[k, 0]))
        assert k * 0.1 * 10 ** (-6 / 20) <= magnitude <= (k * 0.1 + 0.07) * 10 ** (2 / 20)


def test_remix_must_be_a_probability(tmp_path):
    with pytest.raises(ValueError, match="remix"):
        StemChunks(fake_split(tmp_path), 1000, rate=RATE, remix=1.5)
