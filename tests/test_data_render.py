"""FluidSynth stems: identical audio for a seed whatever was rendered before, the mixture is the exact sum."""

import numpy as np
import pytest
import soundfile as sf

from stemweave.engine.data.layout import read_metadata, render_settings, track_metadata, write_track
from stemweave.engine.data.render import DEFAULT_SOUNDFONT, render_song
from stemweave.engine.data.songs import STEMS, make_song

pytestmark = pytest.mark.skipif(not __import__("os").path.exists(DEFAULT_SOUNDFONT), reason="no GM soundfont")


def test_same_seed_gives_identical_audio_in_any_order():
    first = render_song(make_song(21, 4.0), rate=16_000)
    render_song(make_song(22, 3.3), rate=16_000)  # something else in between
    again = render_song(make_song(21, 4.0), rate=16_000)
    for stem in STEMS:
        np.testing.assert_array_equal(first.stems[stem], again.stems[stem])
    assert first.mixture.size == 4 * 16_000


def test_stems_sum_exactly_to_the_mixture_and_never_clip():
    rendered = render_song(make_song(23, 4.0))
    total = np.zeros_like(rendered.mixture)
    for stem in STEMS:
        total += rendered.stems[stem]
        assert np.abs(rendered.stems[stem]).max() <= 10 ** (-1 / 20) + 1e-4
    np.testing.assert_array_equal(total, rendered.mixture)
    assert 0 < np.abs(rendered.mixture).max() <= 10 ** (-1 / 20) + 1e-4


def test_track_folder_on_disk_sums_and_carries_the_plan(tmp_path):
    song = make_song(24, 3.0)
    rendered = render_song(song)
    settings = render_settings(24, 22_050, 3.0, "flac", DEFAULT_SOUNDFONT)
    folder = write_track(tmp_path, "Track00024", song, rendered, track_metadata(song, rendered, settings, "train"))
    stems = [sf.read(folder / "stems" / f"S{k:02d}.flac", dtype="float32")[0] for k in range(4)]
    mixture, rate = sf.read(folder / "mix.flac", dtype="float32")
    assert rate == 22_050
    np.testing.assert_array_equal(stems[0] + stems[1] + stems[2] + stems[3], mixture)
    metadata = read_metadata(folder)
    assert metadata["stems"]["S01"]["inst_class"] == "Drums" and metadata["stems"]["S01"]["is_drum"] is True
    assert metadata["stemweave"]["key"] == song.plan.key
    assert (folder / "all_src.mid").is_file() and (folder / "MIDI" / "S03.mid").is_file()
    assert not list(tmp_path.glob(".*"))  # no partial folder left behind
