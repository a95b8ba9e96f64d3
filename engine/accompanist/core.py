"""The accompanist's two entry points: parts under given stems (accompany) and seamless bar loops (generate_loop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import mido
import numpy as np

from stemweave.engine.accompanist.analysis import Analysis, Controls, analyse, check_controls
from stemweave.engine.accompanist.render import (
    clip_to_region, level_match, parts_midi, render_notes, target_loudness, to_channels,
)
from stemweave.engine.accompanist.writer import DEFAULT_PROGRAMS, STEMS, check_style, loop_analysis, write_parts
from stemweave.engine.data.songs import Note

LOOP_TAIL_SECONDS = 3.0  # rendered past a loop's end and folded onto its start: releases ring into the next pass


@dataclass
class Accompaniment:
    stems: dict[str, np.ndarray]  # each generated stem (channels, frames) float32 at the input rate
    midi: mido.MidiFile  # one track per generated stem, time 0 = region start
    analysis: Analysis
    notes: dict[str, list[Note]] = field(default_factory=dict)  # the written notes, seconds from the region start


def _check_given(given: Mapping[str, np.ndarray]) -> tuple[int, int]:
    shapes = set()
    for name, audio in given.items():
        if name not in STEMS:
            raise ValueError(f"unknown given stem {name!r}: the accompanist hears {', '.join(STEMS)}")
        audio = np.asarray(audio)
        if audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
            raise ValueError(f"given stem {name!r} must be (channels 1 or 2, frames), got {audio.shape}")
        if not np.isfinite(audio).all():
            raise ValueError(f"given stem {name!r} has NaN or infinite samples")
        shapes.add(audio.shape)
    if len(shapes) != 1:
        raise ValueError(f"the given stems are not aligned: shapes {sorted(shapes)}")
    return shapes.pop()


def _check_generate(generate: Sequence[str], given) -> list[str]:
    generate = list(generate)
    if not generate:
        raise ValueError("nothing to generate: name at least one of " + ", ".join(STEMS))
    bad = [s for s in generate if s not in STEMS]
    if bad:
        raise ValueError(f"the accompanist writes {', '.join(STEMS)}, not {', '.join(bad)}")
    clash = [s for s in generate if s in (given or {})]
    if clash:
        raise ValueError(f"{', '.join(clash)} is given: the accompanist generates only stems that are not given")
    return generate


def _programs(controls: Controls, stems) -> dict[str, int]:
    return {s: int((controls.programs or {}).get(s, DEFAULT_PROGRAMS[s])) for s in stems}


def accompany(given: Mapping[str, np.ndarray], rate: int, generate: Sequence[str],
              controls: Controls | None = None) -> Accompaniment:
    """Hear the given stems, write the `generate` stems on their grid and harmony, render them aligned
    sample-for-sample with the region (same rate, channels, frames) and level-matched to the given stems.
    The given audio is only read."""
    controls = controls or Controls()
    check_controls(controls)
    check_style(controls.style)
    if not given:
        raise ValueError("accompany needs at least one given stem (use generate_loop to start from nothing)")
    channels, frames = _check_given(given)
    generate = _check_generate(generate, given)
    seconds = frames / rate
    analysis = analyse(given, rate, controls)
    notes = write_parts(analysis, seconds, generate, controls, has_drums="drums" in given)
    notes = {s: clip_to_region(n, seconds) for s, n in notes.items()}
    programs = _programs(controls, generate)
    stems = {}
    for stem in generate:
        mono = render_notes(notes[stem], programs[stem], stem == "drums", rate, frames)
        stems[stem] = to_channels(level_match(mono, rate, target_loudness(stem, dict(given), rate)), channels)
    midi = parts_midi(notes, programs, analysis.bpm, analysis.meter, analysis.key, seconds)
    return Accompaniment(stems, midi, analysis, notes)


def loop_frames(bars: int, rate: int, bpm: float, meter: int) -> int:
    return int(round(bars * meter * 60.0 / bpm * rate))


def generate_loop(bars: int, rate: int, channels: int, stems: Sequence[str], controls: Controls | None = None,
                  given: Mapping[str, np.ndarray] | None = None) -> Accompaniment:
    """A loop of exactly bars * meter * 60 / bpm seconds (rounded to frames) that repeats without a click: every
    part is rendered LOOP_TAIL_SECONDS past the end and the tail is folded back onto the start, so the loop played
    over and over sounds like the pattern played on (releases of the last bar ring into the first)."""
    if not isinstance(bars, int) or not 1 <= bars <= 64:
        raise ValueError(f"bars must be 1 to 64, got {bars!r}")
    return _generate(bars, rate, channels, stems, controls, given, seconds=None)


def generate_seconds(seconds: float, rate: int, channels: int, stems: Sequence[str],
                     controls: Controls | None = None) -> Accompaniment:
    """`seconds` of parts from the controls alone (not a loop: the end rings out, nothing is folded)."""
    controls = controls or Controls()
    if not 0 < seconds <= 3600:
        raise ValueError(f"seconds must be in (0, 3600], got {seconds}")
    bar = (controls.meter or 4) * 60.0 / (controls.bpm or 120.0)
    return _generate(max(1, int(np.ceil(seconds / bar - 1e-9))), rate, channels, stems, controls, None, seconds)


def _generate(bars, rate, channels, stems, controls, given, seconds: float | None) -> Accompaniment:
    controls = controls or Controls()
    check_controls(controls)
    check_style(controls.style)
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels!r}")
    stems = _check_generate(stems, given)
    analysis = loop_analysis(bars, controls)
    if given:
        _check_given(given)
        heard = analyse(given, rate, controls)
        analysis = Analysis(controls.bpm or heard.bpm, controls.meter or heard.meter, heard.beats, heard.downbeats,
                            heard.key, heard.chords, heard.kick_onsets, heard.snare_onsets, heard.onsets, heard.sources)
    loop = seconds is None
    frames = loop_frames(bars, rate, analysis.bpm, analysis.meter) if loop else int(round(seconds * rate))
    seconds = frames / rate
    notes = write_parts(analysis, seconds, stems, controls, has_drums=bool(given) and "drums" in given)
    notes = {s: [n for n in clip_to_region(ns, seconds)] for s, ns in notes.items()}
    programs = _programs(controls, stems)
    tail = int(LOOP_TAIL_SECONDS * rate) if loop else 0
    out = {}
    for stem in stems:
        long = render_notes(notes[stem], programs[stem], stem == "drums", rate, frames + tail)
        audio = long[:frames].copy()
        for start in range(frames, frames + tail, frames):  # fold the tail (several times for very short loops)
            piece = long[start:start + frames]
            audio[:piece.size] += piece
        target = target_loudness(stem, dict(given or {}), rate)
        out[stem] = to_channels(level_match(audio, rate, target), channels)
    midi = parts_midi(notes, programs, analysis.bpm, analysis.meter, analysis.key, seconds)
    return Accompaniment(out, midi, analysis, notes)
