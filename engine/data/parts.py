"""The four parts of a procedural song (bass, drums, guitar, piano), each written from the shared song plan."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from stemweave.engine.data.theory import (
    PENTATONIC_STEPS, close_voicing, guitar_voicing, nearest_pitch, scale_pitch_classes,
)

if TYPE_CHECKING:
    from stemweave.engine.data.songs import Note, SongPlan

# General MIDI percussion keys
KICK, SIDESTICK, SNARE, CLAP, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 37, 38, 39, 42, 44, 46, 49, 51
TOMS = (50, 48, 47, 45, 43, 41)  # high to low

# Drum grooves on a sixteenth grid: 'X' accent, 'x' normal, 'o' ghost. 4/4 bars have 16 steps, 3/4 and 6/8 bars 12.
GROOVES = {
    "rock": {KICK: "x.......x.x.....", SNARE: "....X.......X...", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    "four": {KICK: "X...X...X...X...", SNARE: "....X.......X...", CLOSED_HAT: "x...x...x...x...",
             OPEN_HAT: "..x...x...x...x."},
    "halftime": {KICK: "x.....x...x.....", SNARE: "........X.......", CLOSED_HAT: "x.x.x.x.x.x.x.x."},
    "funk": {KICK: "x..x..x...x..x..", SNARE: "....X..o.o..X..o", CLOSED_HAT: "xoxoxoxoxoxoxoxo"},
    "shuffle": {KICK: "x.......x.......", SNARE: "....X.......X...", RIDE: "x.x.x.x.x.x.x.x."},
    "ballad": {KICK: "x.........x.....", SIDESTICK: "....x.......x...", CLOSED_HAT: "x...x...x...x..."},
    "waltz": {KICK: "x...........", SNARE: "....x...x...", CLOSED_HAT: "x.x.x.x.x.x."},
    "rock3": {KICK: "x.....x.....", SNARE: "........X...", CLOSED_HAT: "x.x.x.x.x.x."},
    "six8": {KICK: "x...........", SNARE: "......X.....", CLOSED_HAT: "x.x.x.x.x.x."},
    "six8rock": {KICK: "x...x.....x.", SNARE: "......X.....", CLOSED_HAT: "x.x.x.x.x.x."},
}
GROOVES_BY_METER = {"4/4": ("rock", "four", "halftime", "funk", "ballad"), "3/4": ("waltz", "rock3"),
                    "6/8": ("six8", "six8rock")}
STEP_VELOCITY = {"X": 112, "x": 92, "o": 42}

BASS_STYLES = {"4/4": ("roots", "root_fifth", "eighths", "locked", "walking", "syncopated"),
               "3/4": ("roots", "root_fifth", "walking", "locked"), "6/8": ("roots", "root_fifth", "locked")}
PIANO_STYLES = ("block", "comp", "arpeggio", "ballad", "pads")
GUITAR_STYLES_BY_PROGRAM = {
    24: ("strum", "arpeggio"), 25: ("strum", "arpeggio"), 26: ("strum", "arpeggio", "riff", "muted"),
    27: ("strum", "arpeggio", "riff", "muted"), 28: ("muted", "riff"), 29: ("power", "muted", "riff"),
    30: ("power", "muted", "riff"),
}


def choose_styles(plan: SongPlan, rng: np.random.Generator) -> dict[str, list[str]]:
    """A style per part per section: a main one (verses), a busier one for choruses, sparser ones for intros."""
    groove = "shuffle" if plan.swing > 0 and rng.random() < 0.5 else str(rng.choice(GROOVES_BY_METER[plan.meter]))
    bass_main, bass_alt = (str(s) for s in rng.choice(BASS_STYLES[plan.meter], 2))
    piano_main, piano_alt = (str(s) for s in rng.choice(PIANO_STYLES, 2, replace=False))
    guitar_options = GUITAR_STYLES_BY_PROGRAM[plan.programs["guitar"]]
    guitar_main, guitar_alt = (str(s) for s in rng.choice(guitar_options, 2))
    styles: dict[str, list[str]] = {"drums": [], "bass": [], "piano": [], "guitar": []}
    for section in plan.sections:
        chorus = section.name == "chorus"
        sparse = section.intensity == 0
        styles["drums"].append(groove)
        styles["bass"].append("roots" if sparse and rng.random() < 0.5 else bass_alt if chorus else bass_main)
        styles["piano"].append("pads" if sparse and rng.random() < 0.5 else piano_alt if chorus else piano_main)
        styles["guitar"].append(guitar_alt if chorus else guitar_main)
    return styles


# --- shared helpers -------------------------------------------------------------------------------------------

def _note(start: float, length: float, pitch: int, velocity: float) -> Note:
    from stemweave.engine.data.songs import Note

    return Note(float(start), float(max(length, 0.05)), int(np.clip(pitch, 0, 127)), int(np.clip(velocity, 1, 127)))


def _steps_per_bar(plan: SongPlan) -> int:
    return int(round(plan.beats_per_bar * 4))


def _bars_of_part(plan: SongPlan, stem: str):
    """(bar index, section index, section, position in section) for every bar where the part plays."""
    for index, section in enumerate(plan.sections):
        if stem not in section.parts:
            continue
        for offset in range(section.bars):
            yield section.first_bar + offset, index, section, offset


def groove_kick_steps(plan: SongPlan) -> list[int]:
    """The sixteenth steps of the kick in the song's groove: the bass can lock to them."""
    pattern = GROOVES[plan.styles["drums"][0]][KICK]
    return [step for step, char in enumerate(pattern) if char != "."]


def humanise(notes: list[Note], plan: SongPlan, rng: np.random.Generator, timing_ms: float, velocity_sd: float,
             push_ms: float = 0.0) -> list[Note]:
    """Shared swing, then per-note timing and velocity jitter and a per-part push or drag (in milliseconds)."""
    beats_per_ms = plan.tempo / 60_000.0
    for note in notes:
        if plan.swing and abs(note.start % 1.0 - 0.5) < 1e-6:
            note.start += plan.swing
        note.start = max(0.0, note.start + (push_ms + rng.normal(0.0, timing_ms)) * beats_per_ms)
        note.velocity = int(np.clip(round(note.velocity + rng.normal(0.0, velocity_sd)), 1, 127))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def _section_dynamics(section, rng: np.random.Generator) -> float:
    return {0: 0.82, 1: 0.92, 2: 1.0}[section.intensity] * rng.uniform(0.95, 1.05)


# --- drums ----------------------------------------------------------------------------------------------------

def write_drums(plan: SongPlan, rng: np.random.Generator) -> list[Note]:
    notes: list[Note] = []
    steps = _steps_per_bar(plan)
    for bar, index, section, position in _bars_of_part(plan, "drums"):
        groove = dict(GROOVES[plan.styles["drums"][index]])
        level = _section_dynamics(section, rng)
        if section.intensity == 0 and SNARE in groove:
            groove[SIDESTICK] = groove.pop(SNARE)
        if section.intensity == 2 and CLOSED_HAT in groove and rng.random() < 0.5:
            groove[RIDE] = groove.pop(CLOSED_HAT)
        start = bar * plan.beats_per_bar
        fill_from = steps
        if position == section.bars - 1 and section.bars >= 4 and rng.random() < 0.65:
            fill_from = steps - int(rng.choice([4, 8]))
        for key, pattern in groove.items():
            for step, char in enumerate(pattern[:steps]):
                if char == "." or (step >= fill_from and key != KICK):
                    continue
                accent = 1.0 if step % 4 == 0 else 0.9
                notes.append(_note(start + step / 4, 0.25, key, STEP_VELOCITY[char] * level * accent))
        if rng.random() < 0.15:  # an extra kick on an off step
            step = int(rng.integers(1, steps))
            notes.append(_note(start + step / 4, 0.25, KICK, 80 * level))
        if position == 0 and section.intensity > 0 and (section.first_bar > 0 or rng.random() < 0.5):
            notes.append(_note(start, 1.0, CRASH, 105 * level))
        if fill_from < steps:
            toms = list(TOMS) if rng.random() < 0.6 else [SNARE] * 6
            for k, step in enumerate(range(fill_from, steps)):
                if rng.random() < 0.15:
                    continue
                pitch = toms[min(len(toms) - 1, k * len(toms) // (steps - fill_from))]
                notes.append(_note(start + step / 4, 0.25, pitch, (80 + 30 * k / (steps - fill_from)) * level))
    return humanise(notes, plan, rng, timing_ms=4.0, velocity_sd=6.0, push_ms=float(rng.normal(0, 3)))


# --- bass -----------------------------------------------------------------------------------------------------

def write_bass(plan: SongPlan, rng: np.random.Generator) -> list[Note]:
    notes: list[Note] = []
    beats = plan.beats_per_bar
    scale = scale_pitch_classes(plan.tonic, plan.mode)
    previous = 40
    for bar, index, section, position in _bars_of_part(plan, "bass"):
        chord, start = plan.chords[bar], bar * beats
        following = plan.chords[bar + 1] if bar + 1 < plan.bars else chord
        style = plan.styles["bass"][index]
        level = _section_dynamics(section, rng) * 96
        root = nearest_pitch(chord.root, previous, 28, 47)
        fifth = root + (7 if root + 7 <= 55 else -5)
        if position == section.bars - 1 and rng.random() < 0.08:
            continue  # a rest before the next section
        if style == "roots":
            if plan.meter == "6/8":
                hits = [(0.0, 1.5), (1.5, 1.5)]
            elif rng.random() < 0.3:
                hits = [(0.0, beats)]
            else:
                hits = [(float(b), 1.0) for b in range(int(beats))]
            for t, length in hits:
                notes.append(_note(start + t, length * 0.9, root, level))
        elif style == "root_fifth":
            half = 1.5 if beats == 3 else 2.0
            notes.append(_note(start, half * 0.9, root, level))
            notes.append(_note(start + half, (beats - half) * 0.9, fifth, level * 0.9))
        elif style == "eighths":
            for k in range(int(beats * 2)):
                pitch = root + 12 if k in (3, 7) and rng.random() < 0.4 else root
                notes.append(_note(start + k / 2, 0.4, pitch, level * (1.0 if k % 2 == 0 else 0.85)))
        elif style == "locked":
            kicks = groove_kick_steps(plan)
            for k, step in enumerate(kicks):
                end = kicks[k + 1] if k + 1 < len(kicks) else int(beats * 4)
                pitch = root if k == 0 or rng.random() < 0.6 else fifth
                notes.append(_note(start + step / 4, (end - step) / 4 * 0.85, pitch, level))
        elif style == "walking":
            tones = [root, root + (chord.tones[1] - chord.root) % 12, fifth]
            target = nearest_pitch(following.root, root, 28, 50)
            line = [root] + [tones[int(rng.integers(1, 3))] for _ in range(int(beats) - 2)]
            line.append(target + (1 if rng.random() < 0.5 else -1))  # chromatic approach
            for k, pitch in enumerate(line):
                notes.append(_note(start + k, 0.85, pitch, level * (1.0 if k == 0 else 0.88)))
        else:  # syncopated
            pattern = (0, 3, 6, 10, 12, 14) if beats == 4 else (0, 3, 6, 10)
            for k, step in enumerate(pattern):
                pc = scale[int(rng.integers(7))] if k == len(pattern) - 1 and rng.random() < 0.4 else chord.root
                pitch = nearest_pitch(pc, root, 28, 50) if pc != chord.root else root
                notes.append(_note(start + step / 4, 0.6, pitch, level * (1.0 if k == 0 else 0.85)))
        previous = root
    return humanise(notes, plan, rng, timing_ms=6.0, velocity_sd=6.0, push_ms=float(rng.normal(0, 4)))


# --- piano ----------------------------------------------------------------------------------------------------

def write_piano(plan: SongPlan, rng: np.random.Generator) -> list[Note]:
    notes: list[Note] = []
    beats = plan.beats_per_bar
    voicing: tuple[int, ...] | None = None
    comp_pattern = (0, 6, 10) if beats == 4 else (0, 6)
    for bar, index, section, position in _bars_of_part(plan, "piano"):
        chord, start = plan.chords[bar], bar * beats
        style = plan.styles["piano"][index]
        level = _section_dynamics(section, rng) * 84
        voicing = close_voicing(chord, voicing, 55, 79)
        bass_note = nearest_pitch(chord.root, 43, 36, 52)
        if style == "block":
            pulse = 1.5 if plan.meter == "6/8" else 1.0
            for t in np.arange(0, beats, pulse):
                for pitch in voicing:
                    notes.append(_note(start + t, pulse * 0.8, pitch, level * (1.0 if t == 0 else 0.85)))
            notes.append(_note(start, beats * 0.95, bass_note, level * 0.9))
        elif style == "comp":
            for step in comp_pattern:
                for pitch in voicing:
                    notes.append(_note(start + step / 4, 0.7, pitch, level * 0.95))
        elif style == "arpeggio":
            line = list(voicing) + [p + 12 for p in voicing]
            line = line + line[-2:0:-1]
            for k in range(int(beats * 2)):
                notes.append(_note(start + k / 2, 0.9, line[k % len(line)], level * (0.95 if k % 2 == 0 else 0.8)))
            notes.append(_note(start, beats * 0.95, bass_note, level * 0.85))
        elif style == "ballad":
            half = 1.5 if beats == 3 else 2.0
            for t in (0.0, half):
                notes.append(_note(start + t, (beats - half if t else half) * 0.95, bass_note, level * 0.9))
                for pitch in voicing:
                    notes.append(_note(start + t + 0.02, (beats - half if t else half) * 0.9, pitch, level * 0.85))
        else:  # pads: one long chord per bar
            for pitch in (bass_note, *voicing):
                notes.append(_note(start, beats * 0.98, pitch, level * 0.8))
    return humanise(notes, plan, rng, timing_ms=7.0, velocity_sd=7.0, push_ms=float(rng.normal(0, 4)))


# --- guitar ---------------------------------------------------------------------------------------------------

def _strum(notes: list[Note], at: float, voicing: tuple[int, ...], length: float, velocity: float, down: bool,
           plan: SongPlan) -> None:
    """A strum: the strings sound one after another, about 12 ms apart, low to high on a downstroke."""
    spread = 0.012 * plan.tempo / 60.0
    strings = voicing if down else tuple(reversed(voicing[-4:]))
    for k, pitch in enumerate(strings):
        notes.append(_note(at + k * spread, length, pitch, velocity * (1.0 if down else 0.8)))


def _riff_motif(plan: SongPlan, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A one-bar single-note motif: (sixteenth step, pentatonic degree) pairs, reused over every chord."""
    steps = _steps_per_bar(plan)
    onsets = sorted(rng.choice(np.arange(0, steps, 2), size=int(rng.integers(3, 7)), replace=False).tolist())
    if onsets[0] != 0:
        onsets = [0] + onsets[:-1]
    return [(int(step), int(rng.integers(0, 5))) for step in onsets]


def write_guitar(plan: SongPlan, rng: np.random.Generator) -> list[Note]:
    notes: list[Note] = []
    beats = plan.beats_per_bar
    steps = _steps_per_bar(plan)
    motif = _riff_motif(plan, rng)
    strum_grid = "D.DU.UDU" if beats == 4 else "D.DUDU" if plan.meter == "3/4" else "D.UD.U"
    for bar, index, section, position in _bars_of_part(plan, "guitar"):
        chord, start = plan.chords[bar], bar * beats
        style = plan.styles["guitar"][index]
        level = _section_dynamics(section, rng) * 88
        if style == "strum":
            voicing = guitar_voicing(chord)
            for k, stroke in enumerate(strum_grid):
                if stroke != ".":
                    _strum(notes, start + k / 2, voicing, 0.9, level, stroke == "D", plan)
        elif style == "arpeggio":
            voicing = guitar_voicing(chord)
            order = (0, 2, 3, 4, 1, 3, 2, 4)
            for k in range(int(beats * 2)):
                notes.append(_note(start + k / 2, 1.2, voicing[order[k % len(order)]], level * 0.9))
        elif style == "muted":
            voicing = guitar_voicing(chord, power=True)[:2]
            for k in range(int(beats * 2)):
                accent = 1.0 if k % 2 == 0 else 0.8
                for pitch in voicing:
                    notes.append(_note(start + k / 2, 0.18, pitch, level * accent))
        elif style == "power":
            voicing = guitar_voicing(chord, power=True)
            half = 1.5 if beats == 3 else 2.0
            _strum(notes, start, voicing, half * 0.95, level, True, plan)
            for k in range(int(half * 2), int(beats * 2)):
                for pitch in voicing[:2]:
                    notes.append(_note(start + k / 2, 0.2, pitch, level * 0.85))
        else:  # riff: the song's motif on the chord's pentatonic
            root = nearest_pitch(chord.root, 57, 52, 63)
            pentatonic = PENTATONIC_STEPS["minor" if chord.quality in ("min", "min7", "dim", "m7b5") else "major"]
            for k, (step, degree) in enumerate(motif):
                end = motif[k + 1][0] if k + 1 < len(motif) else steps
                notes.append(_note(start + step / 4, (end - step) / 4 * 0.8, root + pentatonic[degree], level))
    return humanise(notes, plan, rng, timing_ms=7.0, velocity_sd=7.0, push_ms=float(rng.normal(0, 4)))


PART_WRITERS: dict[str, Callable[[SongPlan, np.random.Generator], list[Note]]] = {
    "bass": write_bass, "drums": write_drums, "guitar": write_guitar, "piano": write_piano,
}
