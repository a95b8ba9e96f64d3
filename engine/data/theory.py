"""Music theory for the song generator: keys, diatonic chords, common progressions and voicings."""

from __future__ import annotations

from dataclasses import dataclass

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALE_STEPS = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PENTATONIC_STEPS = {"major": (0, 2, 4, 7, 9), "minor": (0, 3, 5, 7, 10)}
CHORD_INTERVALS = {
    "maj": (0, 4, 7), "min": (0, 3, 7), "dim": (0, 3, 6),
    "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10), "m7b5": (0, 3, 6, 10),
}
CHORD_SUFFIX = {"maj": "", "min": "m", "dim": "dim", "7": "7", "maj7": "maj7", "min7": "m7", "m7b5": "m7b5"}

# Common progressions as 0-based scale degrees; "V" in minor is raised to a major chord
# (harmonic minor) where the progression asks for it with the degree written as 4.5.
PROGRESSIONS = {
    "major": (
        (0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (0, 3, 4, 3), (1, 4, 0, 0),
        (0, 3, 5, 4), (0, 2, 3, 4), (3, 0, 4, 5), (0, 4, 3, 4), (0, 3, 0, 4),
        (0, 0, 0, 0, 3, 3, 0, 0, 4, 3, 0, 4),  # twelve-bar blues
    ),
    "minor": (
        (0, 5, 2, 6), (0, 3, 4.5, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4.5),
        (0, 3, 0, 4.5), (0, 2, 6, 3), (0, 5, 6, 0),
    ),
}


@dataclass(frozen=True)
class Chord:
    """A chord as a root pitch class and a quality; `tones` are its pitch classes, root first."""

    root: int
    quality: str

    @property
    def tones(self) -> tuple[int, ...]:
        return tuple((self.root + step) % 12 for step in CHORD_INTERVALS[self.quality])

    @property
    def symbol(self) -> str:
        return NOTE_NAMES[self.root] + CHORD_SUFFIX[self.quality]


def key_name(tonic: int, mode: str) -> str:
    """'A minor', 'Eb major'."""
    return f"{NOTE_NAMES[tonic]} {mode}"


def scale_pitch_classes(tonic: int, mode: str) -> tuple[int, ...]:
    return tuple((tonic + step) % 12 for step in SCALE_STEPS[mode])


def diatonic_chord(tonic: int, mode: str, degree: float, sevenths: bool = False) -> Chord:
    """The chord on a scale degree of the key, stacked in thirds from the scale."""
    raised_dominant = degree == 4.5
    degree = int(degree)
    scale = scale_pitch_classes(tonic, mode)
    root, third, fifth, seventh = (scale[(degree + k) % 7] for k in (0, 2, 4, 6))
    if raised_dominant:
        third = (root + 4) % 12  # harmonic minor: V is major, V7 is dominant
        seventh = (root + 10) % 12
    intervals = ((third - root) % 12, (fifth - root) % 12, (seventh - root) % 12)
    triads = {(4, 7): "maj", (3, 7): "min", (3, 6): "dim"}
    quality = triads[intervals[:2]]
    if sevenths:
        quality = {
            ("maj", 11): "maj7", ("maj", 10): "7", ("min", 10): "min7", ("dim", 10): "m7b5", ("dim", 9): "m7b5",
        }.get((quality, intervals[2]), quality)
    return Chord(root, quality)


def nearest_pitch(pitch_class: int, target: float, low: int, high: int) -> int:
    """The MIDI pitch of `pitch_class` closest to `target` inside [low, high]."""
    candidates = [p for p in range(low, high + 1) if p % 12 == pitch_class]
    return min(candidates, key=lambda p: abs(p - target))


def close_voicing(chord: Chord, previous: tuple[int, ...] | None, low: int, high: int) -> tuple[int, ...]:
    """A close-position voicing in [low, high] whose centre moves least from the previous voicing."""
    tones = chord.tones
    centre_target = sum(previous) / len(previous) if previous else (low + high) / 2
    best: tuple[int, ...] | None = None
    for inversion in range(len(tones)):
        ordered = tones[inversion:] + tones[:inversion]
        for base in range(low, high):
            if base % 12 != ordered[0]:
                continue
            voicing = [base]
            for pc in ordered[1:]:
                nxt = voicing[-1] + 1
                while nxt % 12 != pc:
                    nxt += 1
                voicing.append(nxt)
            if voicing[-1] > high:
                continue
            score = abs(sum(voicing) / len(voicing) - centre_target)
            if best is None or score < abs(sum(best) / len(best) - centre_target):
                best = tuple(voicing)
    assert best is not None, "range too narrow for a close voicing"
    return best


def guitar_voicing(chord: Chord, power: bool = False) -> tuple[int, ...]:
    """A guitar-like open voicing low to high: root (E2-D#3), fifth, octave, then third and fifth above."""
    root = nearest_pitch(chord.root, 45, 40, 51)
    fifth_interval = 7 if chord.quality not in ("dim", "m7b5") else 6
    if power:
        return (root, root + fifth_interval, root + 12)
    third_interval = 3 if chord.quality in ("min", "dim", "min7", "m7b5") else 4
    voicing = [root, root + fifth_interval, root + 12, root + 12 + third_interval, root + 12 + fifth_interval]
    if chord.quality in ("7", "min7", "m7b5"):
        voicing[2] = root + 10  # the seventh instead of the octave
    elif chord.quality == "maj7":
        voicing[2] = root + 11
    return tuple(voicing)
