"""Writing the parts on the heard grid and harmony: a bass locked to the kick, and drums, guitar, piano when asked.

The bass is written here because it must follow the *heard* kick (the renderer's writers only know their own
groove); drums, guitar and piano reuse the renderer's part writers (engine/data/parts.py) on a one-section song
plan built from the analysis, so the accompanist plays what the training data plays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemweave.engine.accompanist.analysis import Analysis, Controls, parse_chord, parse_key
from stemweave.engine.data import parts
from stemweave.engine.data.songs import Note, Section, SongPlan
from stemweave.engine.data.theory import nearest_pitch, scale_pitch_classes

BASS_RANGE = (28, 55)  # E1-G3
ROOT_RANGE = (28, 47)  # roots sit in the lower part so fifths and octaves stay in range
STEMS = ("bass", "drums", "guitar", "piano")
DEFAULT_PROGRAMS = {"bass": 33, "drums": 0, "guitar": 27, "piano": 0}  # finger bass, standard kit, clean guitar, grand

# style -> (drum groove in 4/4, in 3/4; bass; piano; guitar). "locked" basses follow the heard or written kick.
STYLES = {
    "default": ("rock", "waltz", "locked", "comp", "strum"),
    "rock": ("rock", "rock3", "locked", "block", "power"),
    "funk": ("funk", "rock3", "locked", "comp", "muted"),
    "ballad": ("ballad", "waltz", "roots", "ballad", "arpeggio"),
    "dance": ("four", "rock3", "eighths", "block", "muted"),
    "halftime": ("halftime", "rock3", "locked", "pads", "arpeggio"),
    "walking": ("shuffle", "waltz", "walking", "comp", "arpeggio"),
}


@dataclass
class Grid:
    """Where bars are: bar k starts at first_bar + k * bar_seconds (bar 0 may start before the region)."""

    first_bar: float
    beat_seconds: float
    meter: int
    bars: int

    @property
    def bar_seconds(self) -> float:
        return self.meter * self.beat_seconds

    def seconds(self, beats: float) -> float:
        """Beats from the start of bar 0 -> seconds from the region start."""
        return self.first_bar + beats * self.beat_seconds


def grid_of(analysis: Analysis, seconds: float) -> Grid:
    """The bar grid that covers [0, seconds), aligned with the analysis' downbeats."""
    beat = analysis.seconds_per_beat
    bar = beat * analysis.meter
    first = float(analysis.downbeats[0]) if analysis.downbeats.size else 0.0
    first -= bar * np.ceil(first / bar - 1e-9)
    bars = max(1, int(np.ceil((seconds - first) / bar - 1e-9)))
    return Grid(first, beat, analysis.meter, bars)


def check_style(style: str) -> None:
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")


def song_plan(analysis: Analysis, grid: Grid, controls: Controls, stems) -> SongPlan:
    """A one-section plan for the renderer's part writers: tempo, meter, key, the bar chords, the chosen styles."""
    if grid.meter not in (3, 4):
        raise ValueError(f"the drum, guitar and piano writers play 3 or 4 beats per bar, not {grid.meter}")
    tonic, mode = parse_key(analysis.key)
    chords = [parse_chord(analysis.chords[k % len(analysis.chords)]) for k in range(grid.bars)]
    meter = "4/4" if grid.meter == 4 else "3/4"
    groove4, groove3, bass, piano, guitar = STYLES[controls.style]
    intensity = 0 if controls.intensity < 0.34 else 1 if controls.intensity < 0.67 else 2
    section = Section("chorus" if intensity == 2 else "verse", 0, grid.bars, [c.symbol for c in chords],
                      list(STEMS), intensity)
    programs = {**DEFAULT_PROGRAMS, **(controls.programs or {})}
    styles = {"drums": [groove4 if meter == "4/4" else groove3],
              "bass": [bass if bass in parts.BASS_STYLES[meter] else "roots"], "piano": [piano], "guitar": [guitar]}
    return SongPlan(int(controls.seed), 60.0 / grid.beat_seconds, meter, tonic, mode, 0.0, grid.bars, [section],
                    chords, programs, styles, grid.bars * grid.bar_seconds)


def _in_seconds(notes: list[Note], grid: Grid) -> list[Note]:
    """Notes in beats from bar 0 -> notes in seconds from the region start."""
    return [Note(grid.seconds(n.start), n.length * grid.beat_seconds, n.pitch, n.velocity) for n in notes]


def write_parts(analysis: Analysis, seconds: float, stems, controls: Controls,
                has_drums: bool) -> dict[str, list[Note]]:
    """Notes (times in seconds from the region start) of each stem in `stems`."""
    check_style(controls.style)
    grid = grid_of(analysis, seconds)
    plan = song_plan(analysis, grid, controls, stems) if any(s != "bass" for s in stems) else None
    out: dict[str, list[Note]] = {}
    for index, stem in enumerate(s for s in STEMS if s in stems and s != "bass"):
        rng = np.random.default_rng([int(controls.seed), 21, STEMS.index(stem)])
        out[stem] = _in_seconds(parts.PART_WRITERS[stem](plan, rng), grid)
    if "bass" in stems:
        kicks = analysis.kick_onsets
        if "drums" in out:
            kicks = np.array(sorted(n.start for n in out["drums"] if n.pitch == parts.KICK))
        elif not has_drums:
            kicks = np.zeros(0)
        rng = np.random.default_rng([int(controls.seed), 21, 0])
        style = STYLES[controls.style][2]
        if style == "locked" and kicks.size:
            out["bass"] = locked_bass(analysis, grid, kicks, controls, rng)
        else:
            plan = plan or song_plan(analysis, grid, controls, stems)
            plan.styles["bass"] = [style if style in parts.BASS_STYLES[plan.meter] else "roots"]
            out["bass"] = _in_seconds(parts.write_bass(plan, rng), grid)
        out["bass"] = [n for n in out["bass"] if BASS_RANGE[0] <= n.pitch <= BASS_RANGE[1]]
    return {stem: out[stem] for stem in stems}


def locked_bass(analysis: Analysis, grid: Grid, kicks: np.ndarray, controls: Controls,
                rng: np.random.Generator) -> list[Note]:
    """A bass line on the kick: the chord's root on the downbeat and on kicks, fifths and octaves by density,
    a diatonic approach note into a chord change, every note in the key and in E1-G3.

    Kick notes sound at the heard kick's time (not the grid's), so the bass lands with the drummer's feel."""
    tonic, mode = parse_key(analysis.key)
    scale = scale_pitch_classes(tonic, mode)
    density, intensity = float(controls.density), float(controls.intensity)
    sixteenth = grid.beat_seconds / 4
    steps = grid.meter * 4
    level = 70 + 45 * intensity
    notes: list[Note] = []
    previous = 36
    chords = [parse_chord(analysis.chords[k % len(analysis.chords)]) for k in range(grid.bars + 1)]
    for bar in range(grid.bars):
        chord, following = chords[bar], chords[bar + 1]
        start = grid.first_bar + bar * grid.bar_seconds
        root = nearest_pitch(chord.root, previous, *ROOT_RANGE)
        fifth_pc = chord.tones[2] if len(chord.tones) > 2 else (chord.root + 7) % 12
        fifth = root + (fifth_pc - chord.root) % 12
        octave = root + 12
        events: dict[int, float] = {}  # sixteenth step -> onset time
        for t in kicks[(kicks >= start - sixteenth / 2) & (kicks < start + grid.bar_seconds - sixteenth / 2)]:
            step = int(round((t - start) / sixteenth))
            on_beat = step % 4 == 0
            if density < 0.25 and not on_beat:
                continue
            if density < 0.5 and step % 2 == 1:
                continue  # sixteenth-note kicks only at high density
            events.setdefault(step, float(t))
        events.setdefault(0, start)
        if density >= 0.7:  # fill the offbeat eighths after a kick where the drummer leaves space
            for step in range(2, steps, 4):
                if step not in events and step - 2 in events and rng.random() < density - 0.4:
                    events[step] = start + step * sixteenth
        approach = density >= 0.4 and following.root != chord.root and rng.random() < 0.3 + 0.6 * density
        if approach:
            events[steps - 2] = events.get(steps - 2, start + (steps - 2) * sixteenth)
        ordered = sorted(events.items())
        for k, (step, onset) in enumerate(ordered):
            end = ordered[k + 1][1] if k + 1 < len(ordered) else start + grid.bar_seconds
            if k == 0:
                pitch = root
            elif approach and step == steps - 2:
                target = nearest_pitch(following.root, root, *ROOT_RANGE)
                pitch = _scale_neighbour(target, scale, above=rng.random() < 0.5)
            else:
                r = rng.random()
                pitch = octave if r < 0.25 * density else fifth if r < 0.6 * density else root
            accent = 1.0 if step == 0 else 0.9 if step % 4 == 0 else 0.8
            gate = 0.92 - 0.35 * intensity * (step % 4 != 0)  # harder playing: shorter offbeat notes
            velocity = level * accent + rng.normal(0, 4)
            notes.append(Note(onset, max(0.06, (end - onset) * gate), int(np.clip(pitch, *BASS_RANGE)),
                              int(np.clip(round(velocity), 1, 127))))
        previous = root
    return notes


def _scale_neighbour(target: int, scale, above: bool) -> int:
    """The scale note just above or below `target` (a diatonic approach), kept in the bass range."""
    direction = 1 if above else -1
    pitch = target + direction
    while pitch % 12 not in scale:
        pitch += direction
    if not BASS_RANGE[0] <= pitch <= BASS_RANGE[1]:
        pitch = target - direction
        while pitch % 12 not in scale:
            pitch -= direction
    return pitch


def loop_analysis(bars: int, controls: Controls) -> Analysis:
    """The grid and harmony of a loop made from controls alone (tempo 120, 4/4 and A minor unless given)."""
    from stemweave.engine.accompanist.analysis import DEFAULT_BPM, DEFAULT_KEY, DEFAULT_METER, default_chords

    bpm = float(controls.bpm or DEFAULT_BPM)
    meter = int(controls.meter or DEFAULT_METER)
    key = controls.key or DEFAULT_KEY
    tonic, mode = parse_key(key)
    cycle = controls.chords or [c.symbol for c in default_chords(tonic, mode)]
    beats = np.arange(bars * meter) * 60.0 / bpm
    from stemweave.engine.data.theory import key_name

    return Analysis(bpm, meter, beats, beats[::meter], key_name(tonic, mode),
                    [cycle[k % len(cycle)] for k in range(bars)],
                    sources={"bpm": "given" if controls.bpm else "default", "meter": "given" if controls.meter else
                             "default", "key": "given" if controls.key else "default",
                             "chords": "given" if controls.chords else "default"})

