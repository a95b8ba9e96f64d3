"""StemChunks, list_tracks and fixed_windows over tiny Slakh2100 and MUSDB18-HQ layouts written here."""

import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave.engine.data import datasets
from stemweave.engine.data.datasets import (
    MUSDB_STEMS, StemChunks, fixed_windows, list_tracks, mixture_captions, read_window,
)

SLAKH_METADATA = """UUID: 1a81ae092884234f3264e2f45927f00a
audio_dir: stems
midi_dir: MIDI
normalized: true
stems:
  S00:
    audio_rendered: true
    inst_class: Guitar
    is_drum: false
    midi_program_name: Distortion Guitar
    program_num: 30
  S01:
    audio_rendered: true
    inst_class: Bass
    program_num: 33
  S02:
    audio_rendered: true
    inst_class: Strings
    program_num: 48
  S03:
    audio_rendered: true
    inst_class: Guitar
    program_num: 25
  S04:
    audio_rendered: false
    inst_class: Piano
    program_num: 0
target_peak: -1.0
"""


def tone(frequency, seconds, rate, amplitude=0.2, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    mono = (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.fixture
def slakh(tmp_path):
    """Two real-Slakh-style tracks at 44.1 kHz stereo: two guitars (summed), bass, strings (dropped), no piano."""
    root = tmp_path / "slakh2100" / "train"
    for number in (1, 2):
        track = root / f"Track0000{number}"
        (track / "stems").mkdir(parents=True)
        (track / "metadata.yaml").write_text(SLAKH_METADATA)
        for stem_id, frequency in (("S00", 440), ("S01", 55), ("S02", 880), ("S03", 330)):
            sf.write(track / "stems" / f"{stem_id}.flac", tone(frequency, 2.0, 44_100, channels=2), 44_100)
    return root


@pytest.fixture
def musdb(tmp_path):
    root = tmp_path / "musdb18hq"
    for split, song in (("train", "A Song"), ("test", "Another Song")):
        folder = root / split / song
        folder.mkdir(parents=True)
        for stem, frequency in zip(MUSDB_STEMS, (55, 110, 220, 440)):
            sf.write(folder / f"{stem}.wav", tone(frequency, 1.5, 22_050), 22_050)
        sf.write(folder / "mixture.wav", tone(100, 1.5, 22_050), 22_050)
    return root


def test_slakh_layout_maps_classes_and_sums_duplicates(slakh):
    tracks = list_tracks(slakh.parent)
    assert [t.name for t in tracks] == ["train/Track00001", "train/Track00002"]
    track = tracks[0]
    assert track.rate == 44_100 and set(track.sources) == {"guitar", "bass", "strings"}
    assert len(track.sources["guitar"]) == 2
    window = read_window(track, 2_000, 8_000)  # resampled 44.1 -> 22.05 kHz on the fly
    assert window.shape == (4, 8_000) and window.dtype == np.float32
    bass, drums, guitar, piano = window
    assert not drums.any() and not piano.any()
    assert 0.15 < np.abs(bass).max() < 0.25 and 0.3 < np.abs(guitar).max() < 0.45  # 440 + 330 Hz summed
    assert mixture_captions(window) == ["bass", "guitar"]


def test_stem_chunks_stream_slakh_windows_through_a_dataloader(slakh):
    dataset = StemChunks(slakh, window=4_096, augment=True, seed=3, min_active_stems=2)
    chunks = list(itertools.islice(iter(dataset), 5))
    assert all(c.shape == (4, 4_096) and c.dtype == torch.float32 for c in chunks)
    again = list(itertools.islice(iter(StemChunks(slakh, window=4_096, augment=True, seed=3,
                                                  min_active_stems=2)), 5))
    assert all(torch.equal(a, b) for a, b in zip(chunks, again))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2)
    batches = list(itertools.islice(iter(loader), 2))
    assert batches[0].shape == (2, 4, 4_096)
    assert not torch.equal(batches[0], batches[1])  # the two workers draw different windows


def test_min_active_stems_rejects_windows_and_says_when_none_exist(slakh, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_DRAWS_PER_WINDOW", 20)
    with pytest.raises(RuntimeError, match="min_active_stems"):
        next(iter(StemChunks(slakh, window=2_048, min_active_stems=3)))


def test_augmentation_is_one_gain_and_polarity_per_stem(slakh):
    dataset = StemChunks(slakh, window=2_048)
    window = read_window(dataset.tracks[0], 1_000, 2_048)
    augmented = dataset.augmented(window, np.random.default_rng(0))
    for original, changed in zip(window, augmented):
        if original.any():
            ratio = changed[original != 0] / original[original != 0]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # no time shift, one gain
            assert 10 ** (-6.1 / 20) <= abs(ratio[0]) <= 10 ** (2.1 / 20)


def test_musdb_layout_and_fixed_windows(musdb):
    dataset = StemChunks(musdb, window=8_000, stems=MUSDB_STEMS)
    chunk = next(iter(dataset))
    assert chunk.shape == (4, 8_000) and all(chunk[k].abs().max() > 0.1 for k in range(4))
    windows = list(fixed_windows(musdb / "test", window=8_000, hop=4_000, stems=MUSDB_STEMS))
    assert [(name, offset) for name, offset, _ in windows] == [("Another Song", 0), ("Another Song", 4_000),
                                                               ("Another Song", 8_000),
                                                               ("Another Song", 12_000),
                                                               ("Another Song", 16_000),
                                                               ("Another Song", 20_000),
                                                               ("Another Song", 24_000)]
    again = list(fixed_windows(musdb / "test", window=8_000, hop=4_000, stems=MUSDB_STEMS))
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(windows, again))
    reference = sf.read(musdb / "test" / "Another Song" / "drums.wav", dtype="float32")[0]
    np.testing.assert_array_equal(windows[1][2][1], reference[4_000:12_000])


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no tracks found"):
        StemChunks(tmp_path, window=1_024)
