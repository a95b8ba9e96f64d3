"""Procedural songs: deterministic per seed, inside the documented ranges, coherent parts, valid MIDI."""

import io

import mido
import pytest

from stemweave.engine.data.songs import STEMS, TEMPO_RANGE, make_song, song_midi


def test_same_seed_gives_the_same_song():
    first, second = make_song(11, 20.0), make_song(11, 20.0)
    assert first.plan.to_dict() == second.plan.to_dict()
    assert first.notes == second.notes
    assert make_song(12, 20.0).plan.to_dict() != first.plan.to_dict()


def test_plans_stay_in_range_and_every_section_has_two_parts():
    meters = set()
    for seed in range(40):
        plan = make_song(seed, 30.0).plan
        meters.add(plan.meter)
        assert TEMPO_RANGE[0] <= plan.tempo <= TEMPO_RANGE[1]
        assert len(plan.chords) == plan.bars == sum(s.bars for s in plan.sections)
        assert plan.bars * plan.beats_per_bar * plan.seconds_per_beat >= 30.0
        assert all(len(section.parts) >= 2 for section in plan.sections)
    assert meters == {"4/4", "3/4", "6/8"}


def test_parts_follow_the_plan_and_rest_where_it_says():
    song = make_song(5, 30.0)
    plan, bar_beats = song.plan, song.plan.beats_per_bar
    for stem in STEMS:
        for note in song.notes[stem]:
            bar = min(int((note.start + 0.1) // bar_beats), plan.bars - 1)
            section = plan.section_of_bar(bar)
            playing = stem in section.parts or stem in plan.section_of_bar(max(bar - 1, 0)).parts
            assert playing, f"{stem} plays in bar {bar} where the plan rests it"
            assert 0 < note.velocity <= 127 and 0 <= note.pitch <= 127


def test_midi_has_the_parts_with_drums_on_channel_ten():
    song = make_song(3, 10.0)
    buffer = io.BytesIO()
    song_midi(song).save(file=buffer)
    midi = mido.MidiFile(file=io.BytesIO(buffer.getvalue()))
    names = [track.name for track in midi.tracks[1:]]
    assert names == list(STEMS)
    drum_channels = {m.channel for m in midi.tracks[2] if m.type == "note_on"}
    assert drum_channels == {9}
    tempo = next(m.tempo for m in midi.tracks[0] if m.type == "set_tempo")
    assert abs(mido.tempo2bpm(tempo) - song.plan.tempo) < 0.01


def test_sparse_arrangement_has_solo_and_duo_sections_and_leaves_full_songs_alone():
    counts = [len(section.parts) for seed in range(20) for section in make_song(seed, 30.0, "sparse").plan.sections]
    assert 1 in counts and 2 in counts and max(counts) <= len(STEMS)
    assert sum(c <= 2 for c in counts) / len(counts) > 0.4  # the full band has no one-part sections at all
    full = make_song(3, 30.0)
    assert full.plan.to_dict() == make_song(3, 30.0, "full").plan.to_dict()
    assert make_song(3, 30.0, "sparse").plan.tempo == full.plan.tempo  # same song, other arrangement


def test_an_unknown_arrangement_is_refused():
    with pytest.raises(ValueError, match="unknown arrangement 'solo'"):
        make_song(3, 30.0, "solo")
