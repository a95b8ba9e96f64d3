"""A stand-in for stemweave.engine.accompanist with its API (Controls, analyse, accompany, generate_loop), for the
surface tests while the real module is absent: kick onsets from the drums' low band, one bass note per onset,
rendered as a decaying sine, and the notes as a MIDI file. `module()` returns the real accompanist when it is
installed, else this one."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import mido
import numpy as np

STEMS = ("bass", "drums", "guitar", "piano")
STYLES = ("default", "straight", "busy")


@dataclass
class Controls:
    bpm: float | None = None
    meter: int | None = None
    key: str | None = None
    chords: list[str] | None = None
    style: str = "default"
    density: float = 0.5
    intensity: float = 0.5
    seed: int = 0
    programs: dict[str, int] | None = None


@dataclass
class Analysis:
    bpm: float = 120.0
    meter: int = 4
    beats: list = field(default_factory=list)
    downbeats: list = field(default_factory=list)
    key: str = "A minor"
    chords: list = field(default_factory=list)
    kick_onsets: list = field(default_factory=list)
    snare_onsets: list = field(default_factory=list)


@dataclass
class Accompaniment:
    stems: dict
    midi: mido.MidiFile
    analysis: Analysis


def kick_onsets(drums: np.ndarray, rate: int) -> list[float]:
    """Seconds where the low band's energy jumps (a crude kick detector: enough for synthetic kicks)."""
    mono = np.asarray(drums, np.float64).mean(0)
    hop = rate // 100
    low = np.convolve(mono, np.ones(rate // 200) / (rate // 200), mode="same")  # a crude low-pass
    energy = np.array([np.sum(low[i: i + hop] ** 2) for i in range(0, len(low) - hop, hop)])
    rise = np.diff(energy, prepend=0.0)
    threshold = 0.3 * rise.max() if rise.max() > 0 else np.inf
    onsets, last = [], -1.0
    for i in np.flatnonzero(rise > threshold):
        t = i * hop / rate
        if t - last > 0.1:
            onsets.append(t)
            last = t
    return onsets


def analyse(given, rate, controls=Controls()) -> Analysis:
    drums = given.get("drums")
    kicks = kick_onsets(drums, rate) if drums is not None else []
    return Analysis(bpm=controls.bpm or 120.0, meter=controls.meter or 4, key=controls.key or "A minor",
                    chords=list(controls.chords or ["Am"]), kick_onsets=kicks)


def _render(onsets: list[float], frames: int, channels: int, rate: int, seed: int) -> np.ndarray:
    out = np.zeros(frames, np.float32)
    length = int(0.25 * rate)
    t = np.arange(length) / rate
    note = (0.3 * np.sin(2 * np.pi * (55.0 + seed % 3) * t) * np.exp(-t * 8)).astype(np.float32)
    for onset in onsets:
        start = int(round(onset * rate))
        n = max(0, min(length, frames - start))
        out[start: start + n] += note[:n]
    return np.repeat(out[None], channels, 0)


def _midi(onsets: list[float], bpm: float) -> mido.MidiFile:
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack([mido.MetaMessage("track_name", name="bass"),
                            mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))])
    now = 0
    for onset in onsets:
        tick = int(round(mido.second2tick(onset, 480, mido.bpm2tempo(bpm))))
        track.append(mido.Message("note_on", note=33, velocity=100, time=max(0, tick - now)))
        track.append(mido.Message("note_off", note=33, velocity=0, time=120))
        now = tick + 120
    midi.tracks.append(track)
    return midi


def accompany(given, rate, generate, controls=Controls()) -> Accompaniment:
    analysis = analyse(given, rate, controls)
    first = next(iter(given.values()))
    channels, frames = first.shape
    stems = {name: _render(analysis.kick_onsets, frames, channels, rate, controls.seed) for name in generate}
    return Accompaniment(stems, _midi(analysis.kick_onsets, analysis.bpm), analysis)


def generate_loop(bars, rate, channels, stems, controls, given=None) -> Accompaniment:
    bpm = controls.bpm or 120.0
    meter = controls.meter or 4
    frames = int(round(rate * 60 * meter / bpm)) * bars
    beats = [i * 60 / bpm for i in range(bars * meter)]
    analysis = Analysis(bpm=bpm, meter=meter, key=controls.key or "A minor", chords=list(controls.chords or ["Am"]),
                        kick_onsets=beats)
    audio = {name: _render(beats, frames, channels, rate, controls.seed) for name in stems}
    return Accompaniment(audio, _midi(beats, bpm), analysis)


def fake_module() -> types.ModuleType:
    return sys.modules[__name__]


def module():
    """The real accompanist when it is installed whole (accompany and generate_loop), else this fake."""
    try:
        from stemweave.engine import accompanist
    except ImportError:
        return fake_module()
    if callable(getattr(accompanist, "accompany", None)) and callable(getattr(accompanist, "generate_loop", None)):
        return accompanist
    return fake_module()


def is_real(module) -> bool:
    return module is not fake_module()
