"""Varied timbres, held-out timbres, Hydrogen kits and a producer's effects (issue 22): deterministic, exact sums."""

import subprocess
import sys

import numpy as np
import pytest

from stemweave.engine.data.build import plan_jobs, render_track, timbres_for
from stemweave.engine.data.layout import read_metadata
from stemweave.engine.data.render import render_song
from stemweave.engine.data.songs import Note, make_song
from stemweave.engine.data.timbres import KITS, PALETTES, HydrogenKit, check_timbres

pytestmark = pytest.mark.skipif(any(not p.exists() for p in (KITS["Audiophob"], KITS["The Black Pearl 1.0"])),
                                reason="hydrogen-drumkits is not installed")


def test_held_out_timbres_never_appear_in_training_palettes():
    def used(palette):
        return {f"font:{f}" for f in palette.fonts} | set(palette.drums)

    assert used(PALETTES["unseen"]) and not used(PALETTES["unseen"]) & used(PALETTES["varied"])
    assert any(d.startswith("kit:") for d in PALETTES["varied"].drums)  # real sampled kits in training


def test_the_unseen_split_forces_the_held_out_palette():
    assert timbres_for("unseen", "gm") == "unseen"
    assert timbres_for("train", "varied") == "varied"
    with pytest.raises(ValueError):
        timbres_for("unseen", "varied")
    with pytest.raises(ValueError):
        timbres_for("train", "unseen")
    with pytest.raises(ValueError):
        check_timbres("nonsense")


def test_a_hydrogen_kit_plays_gm_notes_louder_with_velocity_and_chokes_the_open_hat():
    kit = HydrogenKit(KITS["The Black Pearl 1.0"], 44_100)
    loud = kit.render_part([Note(0.0, 0.25, 36, 120)], 0.5, 44_100)
    soft = kit.render_part([Note(0.0, 0.25, 36, 40)], 0.5, 44_100)
    assert np.abs(loud).max() > 2 * np.abs(soft).max() > 0
    assert np.abs(loud[:50]).max() > 0 and not np.any(kit.render_part([Note(2.0, 0.25, 36, 100)], 0.5, 44_100))
    open_hat = kit.render_part([Note(0.0, 1.0, 46, 100)], 0.5, 44_100)
    choked = kit.render_part([Note(0.0, 1.0, 46, 100), Note(0.25, 0.25, 44, 100)], 0.5, 44_100)
    pedal = kit.render_part([Note(0.25, 0.25, 44, 100)], 0.5, 44_100)
    after = slice(int(0.125 * 44_100) + 300, int(0.125 * 44_100) + 3000)  # 5 ms after the pedal hat
    np.testing.assert_allclose(choked[after], pedal[after], atol=1e-6)  # the open hat stopped ringing
    assert np.abs(open_hat[after]).max() > 1e-3


@pytest.mark.parametrize("timbres,effects", [("varied", False), ("varied", True), ("unseen", False)])
def test_renders_are_deterministic_and_stems_sum_to_the_mixture(timbres, effects):
    song = make_song(2, 6.0)
    first, again = (render_song(song, timbres=timbres, effects=effects) for _ in range(2))
    assert first.sources == again.sources and len(first.sources) == 4
    for stem in first.stems:
        np.testing.assert_array_equal(first.stems[stem], again.stems[stem])
    np.testing.assert_array_equal(sum(first.stems[s] for s in ("bass", "drums", "guitar", "piano")), first.mixture)
    assert bool(first.effects) == effects


def test_effects_change_the_stems_but_not_the_song():
    song = make_song(2, 6.0)
    dry, wet = render_song(song, timbres="varied"), render_song(song, timbres="varied", effects=True)
    assert dry.sources == wet.sources
    changed = [s for s in dry.stems if np.any(dry.stems[s]) and not np.allclose(dry.stems[s], wet.stems[s], atol=1e-3)]
    assert changed == [s for s in dry.stems if np.any(dry.stems[s])]
    assert {name for chain in wet.effects.values() for name, _ in chain} >= {"HighpassFilter", "PeakFilter"}


def test_varied_timbres_draw_fonts_and_kits_across_songs():
    sources = [render_song(make_song(seed, 1.0), timbres="varied").sources for seed in range(12)]
    drums = {s["drums"].split(":")[0] for s in sources}
    fonts = {s[stem] for s in sources for stem in ("bass", "guitar", "piano")}
    assert drums == {"font", "kit"} and len(fonts) >= 2


def test_an_unseen_track_is_written_with_its_sources_and_resumes(tmp_path):
    jobs = plan_jobs(tmp_path, "unseen", 0, 1, 22_050, 3.0, "flac", "/usr/share/sounds/sf2/FluidR3_GM.sf2")
    assert jobs[0].song_seed == 3_000_000 and jobs[0].timbres == "unseen"
    assert not render_track(jobs[0]).skipped and render_track(jobs[0]).skipped
    metadata = read_metadata(tmp_path / "Track00000")
    assert metadata["stemweave"]["timbres"] == "unseen"
    assert metadata["stems"]["S01"]["plugin_name"] == "kit:The Black Pearl 1.0"
    assert metadata["stems"]["S00"]["plugin_name"] == "font:musescore"


def test_the_cli_refuses_leaking_the_held_out_timbres(tmp_path):
    done = subprocess.run([sys.executable, "-m", "stemweave", "data", "render", "--out", str(tmp_path), "--songs", "1",
                           "--split", "unseen", "--timbres", "varied"], capture_output=True, text=True)
    assert done.returncode == 2 and "held-out" in done.stderr and done.stderr.count("\n") == 1
