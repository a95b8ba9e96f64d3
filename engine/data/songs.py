"""Seeded procedural songs: a plan (tempo, meter, key, chords, sections) and four parts that follow it, as MIDI."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import mido
import numpy as np

from stemweave.engine.data import parts
from stemweave.engine.data.theory import PROGRESSIONS, Chord, diatonic_chord, key_name

STEMS = ("bass", "drums", "guitar", "piano")
TICKS_PER_BEAT = 480  # MIDI ticks per quarter note
DRUM_CHANNEL = 9  # General MIDI channel 10, zero-based

METERS = {"4/4": 4.0, "3/4": 3.0, "6/8": 3.0}  # bar length in quarter notes
METER_WEIGHTS = {"4/4": 0.76, "3/4": 0.12, "6/8": 0.12}
TEMPO_RANGE = (70, 170)  # quarter-note BPM (in 6/8 the felt pulse is the dotted quarter)

# Several General MIDI programs per class, as Slakh uses many patches per class.
PROGRAMS = {
    "bass": (32, 33, 34, 35, 36, 38, 39),
    "piano": (0, 1, 2, 3, 4, 5, 7),
    "guitar": (24, 25, 26, 27, 28, 29, 30),
    "drums": (0, 8, 16, 24, 25, 32, 40),  # drum kits (bank 128)
}
# A song lacks a whole instrument this often (Slakh: 5.3% of songs lack bass, 0.7% drums / piano).
SONG_ABSENCE = {"bass": 0.04, "drums": 0.01, "guitar": 0.0, "piano": 0.02}
# "full": the band mostly plays together (MSDM's data); "sparse": sections of one to four players.
ARRANGEMENTS = ("full", "sparse")
SPARSE_PLAYERS = (0.35, 0.3, 0.2, 0.15)  # p(1, 2, 3, 4 parts play in a section)
SECTION_FORM = (("intro", 4), ("verse", 8), ("chorus", 8), ("verse", 8), ("chorus", 8), ("bridge", 8),
                ("chorus", 8), ("outro", 4))


@dataclass
class Note:
    """One note of a part; times in quarter-note beats from the start of the song."""

    start: float
    length: float
    pitch: int
    velocity: int


@dataclass
class Section:
    name: str
    first_bar: int
    bars: int
    progression: list[str]
    parts: list[str]  # the parts that play in this section
    intensity: int  # 0 sparse, 1 normal, 2 full


@dataclass
class SongPlan:
    """Everything shared by the parts of one song: what makes its stems coherent."""

    seed: int
    tempo: float
    meter: str
    tonic: int
    mode: str
    swing: float  # offbeat eighths are delayed by this many beats (0 = straight)
    bars: int
    sections: list[Section]
    chords: list[Chord]  # one per bar
    programs: dict[str, int]
    styles: dict[str, list[str]]  # per part, its style in each section
    seconds: float

    @property
    def beats_per_bar(self) -> float:
        return METERS[self.meter]

    @property
    def seconds_per_beat(self) -> float:
        return 60.0 / self.tempo

    @property
    def key(self) -> str:
        return key_name(self.tonic, self.mode)

    def section_of_bar(self, bar: int) -> Section:
        return next(s for s in self.sections if s.first_bar <= bar < s.first_bar + s.bars)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed, "tempo": round(self.tempo, 3), "meter": self.meter, "key": self.key,
            "tonic": self.tonic, "mode": self.mode, "swing": round(self.swing, 4), "bars": self.bars,
            "seconds": self.seconds, "chords": [c.symbol for c in self.chords],
            "sections": [asdict(s) for s in self.sections], "programs": dict(self.programs),
            "styles": {k: list(v) for k, v in self.styles.items()},
        }


@dataclass
class Song:
    plan: SongPlan
    notes: dict[str, list[Note]] = field(default_factory=dict)  # per stem


def make_plan(seed: int, seconds: float, arrangement: str = "full") -> SongPlan:
    """Draw a song plan from the seed: tempo, meter, key, progressions, sections and who plays where."""
    check_arrangement(arrangement)
    rng = np.random.default_rng([seed, 1])
    meter = str(rng.choice(list(METER_WEIGHTS), p=list(METER_WEIGHTS.values())))
    tempo = float(rng.uniform(*TEMPO_RANGE))
    if meter == "6/8":
        tempo = float(rng.uniform(105, 165))  # dotted-quarter pulse of 70-110
    mode = "major" if rng.random() < 0.6 else "minor"
    tonic = int(rng.integers(12))
    bar_seconds = METERS[meter] * 60.0 / tempo
    bars = max(2, math.ceil(seconds / bar_seconds))
    swing = float(rng.uniform(0.08, 0.16)) if meter != "6/8" and rng.random() < 0.2 else 0.0

    progressions = [PROGRESSIONS[mode][i] for i in rng.permutation(len(PROGRESSIONS[mode]))[:3]]
    sevenths = rng.random() < 0.25
    by_section = {"verse": progressions[0], "chorus": progressions[1], "bridge": progressions[2]}
    by_section["intro"] = by_section["outro"] = progressions[int(rng.integers(2))]

    present = [s for s in STEMS if rng.random() >= SONG_ABSENCE[s]]
    sections, chords, bar = [], [], 0
    form = list(SECTION_FORM)
    if rng.random() < 0.4:
        form = form[1:]  # start straight in the verse
    for name, length in form:
        if bar >= bars:
            break
        length = min(length, bars - bar)
        degrees = by_section[name]
        section_chords = [diatonic_chord(tonic, mode, degrees[i % len(degrees)], sevenths) for i in range(length)]
        playing = _section_parts(name, present, rng, arrangement)
        intensity = {"intro": 0, "verse": 1, "chorus": 2, "bridge": 1, "outro": 0}[name]
        sections.append(Section(name, bar, length, [c.symbol for c in section_chords], playing, intensity))
        chords += section_chords
        bar += length
    if bar < bars:  # a long song: repeat the last chorus and verse pair
        while bar < bars:
            for name in ("verse", "chorus"):
                length = min(8, bars - bar)
                if length <= 0:
                    break
                degrees = by_section[name]
                section_chords = [diatonic_chord(tonic, mode, degrees[i % len(degrees)], sevenths) for i in range(length)]
                sections.append(Section(name, bar, length, [c.symbol for c in section_chords],
                                        _section_parts(name, present, rng, arrangement), 1 + (name == "chorus")))
                chords += section_chords
                bar += length
    programs = {stem: int(rng.choice(PROGRAMS[stem])) for stem in STEMS}
    plan = SongPlan(seed, tempo, meter, tonic, mode, swing, bars, sections, chords, programs, {}, float(seconds))
    plan.styles = parts.choose_styles(plan, rng)
    return plan


def check_arrangement(arrangement: str) -> None:
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"unknown arrangement {arrangement!r}: use one of {', '.join(ARRANGEMENTS)}")


def _section_parts(name: str, present: list[str], rng: np.random.Generator, arrangement: str = "full") -> list[str]:
    """Who plays in a section: everyone mostly; intros, bridges and outros thin out; never fewer than two.

    The sparse arrangement draws how many play first (solos and duos are common), so that a mixture-only
    model such as GMSDI hears every label alone and in small groups, not only in the full band."""
    if arrangement == "sparse":
        count = min(len(present), 1 + int(rng.choice(len(SPARSE_PLAYERS), p=SPARSE_PLAYERS)))
        chosen = rng.permutation(len(present))[:count]
        return [s for s in STEMS if s in {present[i] for i in chosen}]
    drop_chance = {"intro": 0.3, "verse": 0.07, "chorus": 0.02, "bridge": 0.15, "outro": 0.2}[name]
    playing = [s for s in present if rng.random() >= drop_chance]
    while len(playing) < min(2, len(present)):
        missing = [s for s in present if s not in playing]
        playing.append(missing[int(rng.integers(len(missing)))])
    return [s for s in STEMS if s in playing]


def make_song(seed: int, seconds: float = 30.0, arrangement: str = "full") -> Song:
    """A whole song: its plan and the notes of its four parts (humanised), deterministic for the seed."""
    plan = make_plan(seed, seconds, arrangement)
    song = Song(plan)
    for index, stem in enumerate(STEMS):
        rng = np.random.default_rng([seed, 2, index])
        song.notes[stem] = parts.PART_WRITERS[stem](plan, rng)
    return song


def part_track(song: Song, stem: str) -> mido.MidiTrack:
    """One MIDI track for a part: program change, then its notes (drums on channel 10)."""
    channel = DRUM_CHANNEL if stem == "drums" else STEMS.index(stem)
    track = mido.MidiTrack([mido.MetaMessage("track_name", name=stem, time=0)])
    events = []  # (tick, order, message): note-offs sort before note-ons at the same tick
    # For drums the program number selects the kit (FluidSynth reads channel 10 as the percussion bank).
    events.append((0, 0, mido.Message("program_change", channel=channel, program=song.plan.programs[stem])))
    for note in song.notes[stem]:
        on = max(0, round(note.start * TICKS_PER_BEAT))
        off = max(on + 1, round((note.start + note.length) * TICKS_PER_BEAT))
        events.append((on, 2, mido.Message("note_on", channel=channel, note=note.pitch, velocity=note.velocity)))
        events.append((off, 1, mido.Message("note_off", channel=channel, note=note.pitch, velocity=0)))
    append_events(track, events)
    return track


def append_events(track, events: list) -> None:
    """(tick, order, message) events in time order onto a MIDI track as delta times, then its end (note-offs,
    order 1, before note-ons, order 2, at the same tick, so a repeated note is not cut)."""
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for tick, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))


def conductor_track(plan: SongPlan) -> mido.MidiTrack:
    numerator, denominator = (int(x) for x in plan.meter.split("/"))
    key = plan.key.split()[0] + ("m" if plan.mode == "minor" else "")
    return mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(plan.tempo), time=0),
        mido.MetaMessage("time_signature", numerator=numerator, denominator=denominator, time=0),
        mido.MetaMessage("key_signature", key=key, time=0),
        mido.MetaMessage("end_of_track", time=0),
    ])


def song_midi(song: Song, stems: tuple[str, ...] = STEMS) -> mido.MidiFile:
    """A type-1 MIDI file with the conductor track and the given parts."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    midi.tracks.append(conductor_track(song.plan))
    for stem in stems:
        midi.tracks.append(part_track(song, stem))
    return midi
