"""Hearing the given stems: tempo, beat and downbeat grid, meter, kick and snare onsets, key and chords per bar.

Written on numpy/scipy rather than on librosa: on this 2-core machine librosa's numba functions cost about
7 CPU-seconds per process even with numba's cache (20 s wall while the cores are shared), which alone breaks
"well under real time" for a 12 s region from the command line; benchmarks/accompany.py measures both
(docs/accompanist.md). The beat grid is a constant-tempo comb fitted to the drums' onset envelope, which is
what DAW-made drums are; key and chords come from a pitch-class profile of the pitched stems.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from scipy.signal import find_peaks, stft

from stemweave.engine.data.theory import (
    Chord, diatonic_chord, key_name,
)

DEFAULT_BPM = 120.0  # when nothing rhythmic is given and no --bpm
DEFAULT_METER = 4
DEFAULT_KEY = "A minor"  # with drums alone and no --key: the stated default (docs/accompanist.md)
DEFAULT_DEGREES = {"minor": (0, 5, 2, 6), "major": (0, 4, 5, 3)}  # i-VI-III-VII, I-V-vi-IV when no --chords
TEMPO_RANGE = (55.0, 210.0)
TEMPO_PRIOR_CENTRE = 115.0  # log-normal prior on the tempo, one octave wide: resolves double/half ambiguity
PITCHED = ("bass", "guitar", "piano")

# Krumhansl-Kessler key profiles (major, minor), tonic first.
KEY_PROFILES = {
    "major": np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
    "minor": np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
}


@dataclass
class Controls:
    """What the producer fixes; None means: hear it from the given stems (or use the stated default)."""

    bpm: float | None = None
    meter: int | None = None  # beats per bar
    key: str | None = None  # "A minor", "C major", "F#m", "Bb"
    chords: list[str] | None = None  # one per bar, cycled: ["Am", "F", "C", "G"]
    style: str = "default"
    density: float = 0.5
    intensity: float = 0.5
    seed: int = 0
    programs: dict[str, int] | None = None  # GM program per generated stem


@dataclass
class Analysis:
    bpm: float
    meter: int
    beats: np.ndarray  # seconds from the region start
    downbeats: np.ndarray  # seconds
    key: str
    chords: list[str]  # one per bar; bar 0 holds the region's start and may begin before it (writer.grid_of)
    kick_onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    snare_onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))
    onsets: np.ndarray = field(default_factory=lambda: np.zeros(0))  # every drum onset, seconds
    sources: dict[str, str] = field(default_factory=dict)  # per quantity: "given", "heard" or "default"

    @property
    def seconds_per_beat(self) -> float:
        return 60.0 / self.bpm


# --- parsing what the producer types -------------------------------------------------------------------------

_PITCH = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_QUALITY = {"": "maj", "maj": "maj", "M": "maj", "m": "min", "min": "min", "-": "min", "dim": "dim", "o": "dim",
            "7": "7", "maj7": "maj7", "M7": "maj7", "m7": "min7", "min7": "min7", "-7": "min7", "m7b5": "m7b5",
            "ø": "m7b5", "5": "maj", "sus2": "maj", "sus4": "maj", "add9": "maj", "6": "maj", "m6": "min", "9": "7"}


def _pitch_class(text: str) -> int:
    pc = _PITCH[text[0].upper()]
    for accidental in text[1:]:
        pc += 1 if accidental in "#♯" else -1
    return pc % 12


def parse_chord(symbol: str) -> Chord:
    """'Am', 'F#m7', 'Bb', 'Cmaj7', 'Bdim' -> Chord; ValueError naming what is accepted."""
    match = re.fullmatch(r"\s*([A-Ga-g][#b♯♭]?)(.*?)\s*", symbol)
    if not match or match.group(2) not in _QUALITY:
        raise ValueError(f"unknown chord {symbol!r}: write a root A-G (with # or b) and one of "
                         f"'', m, 7, maj7, m7, dim, m7b5 (e.g. Am, F#m7, Bb)")
    return Chord(_pitch_class(match.group(1)), _QUALITY[match.group(2)])


def parse_key(text: str) -> tuple[int, str]:
    """'A minor', 'Am', 'C major', 'C', 'F# min' -> (tonic pitch class, mode); ValueError otherwise."""
    match = re.fullmatch(r"\s*([A-Ga-g][#b♯♭]?)\s*(major|maj|minor|min|m|M)?\s*", text or "")
    if not match:
        raise ValueError(f"unknown key {text!r}: write a tonic and a mode, e.g. 'A minor', 'C major', 'F#m'")
    mode = "minor" if match.group(2) in ("minor", "min", "m") else "major"
    return _pitch_class(match.group(1)), mode


def triad_class(chord: Chord) -> tuple[int, str]:
    """(root, maj/min/dim): what chord accuracy compares (sevenths count as their triad)."""
    return chord.root, {"7": "maj", "maj7": "maj", "min7": "min", "m7b5": "dim"}.get(chord.quality, chord.quality)


# --- onset envelopes -----------------------------------------------------------------------------------------

@dataclass
class Envelopes:
    """Band-wise spectral flux of a mono signal; frame k is at times[k] seconds."""

    rate: float  # frames per second
    times: np.ndarray
    full: np.ndarray
    low: np.ndarray  # 30-150 Hz: kick
    mid: np.ndarray  # 150-4000 Hz without the lows: snare body and noise
    high: np.ndarray  # above 4 kHz: hats and cymbals
    wash: np.ndarray  # level (not flux) above 4 kHz: a crash rings on where a hat stops


def _mono(given: Mapping[str, np.ndarray], names) -> np.ndarray | None:
    parts = [np.asarray(given[s], np.float64).reshape(-1, np.asarray(given[s]).shape[-1]).mean(0)
             for s in names if s in given]
    return None if not parts else np.sum(parts, axis=0)


def envelopes(audio: np.ndarray, rate: int) -> Envelopes:
    """Log-magnitude spectral flux per band, hop ~5.8 ms (256 samples at 44.1 kHz)."""
    n_fft = 1 << int(round(np.log2(rate * 0.046)))
    hop = n_fft // 8
    freqs, times, spec = stft(audio, fs=rate, nperseg=n_fft, noverlap=n_fft - hop, boundary=None, padded=True)
    mag = np.log1p(100.0 * np.abs(spec) / (np.abs(spec).max() + 1e-12))
    flux = np.maximum(0.0, np.diff(mag, axis=1, prepend=mag[:, :1]))

    def band(lo, hi):
        rows = (freqs >= lo) & (freqs < hi)
        return flux[rows].sum(0)

    # frame times are window centres: measured on rendered drums, the flux peaks within a few ms of the note-on
    hi_rows = freqs >= 4000
    wash = mag[hi_rows].sum(0)
    return Envelopes(rate / hop, times, flux.sum(0), band(30, 150), band(150, 4000), band(4000, rate / 2), wash)


def onset_times(env: np.ndarray, env_rate: float, times: np.ndarray, threshold: float = 0.12,
                min_gap: float = 0.045) -> np.ndarray:
    """Peaks of an onset envelope above `threshold` x its loud peaks' level, at least `min_gap` s apart."""
    if env.size < 3 or env.max() <= 0:
        return np.zeros(0)
    smooth = np.convolve(env, np.hanning(5) / np.hanning(5).sum(), mode="same")
    peaks, props = find_peaks(smooth, distance=max(1, int(min_gap * env_rate)))
    if peaks.size == 0:
        return np.zeros(0)
    level = np.percentile(smooth[peaks], 95)
    # adaptive: above the threshold and above the local median (so a cymbal's wash does not count again)
    local = np.array([np.median(smooth[max(0, p - int(0.2 * env_rate)):p + int(0.2 * env_rate) + 1]) for p in peaks])
    keep = (smooth[peaks] > threshold * level) & (smooth[peaks] > 1.5 * local)
    return times[peaks[keep]]


# --- tempo and beat grid -------------------------------------------------------------------------------------

def _grid_score(env: np.ndarray, env_rate: float, period: float, phases: np.ndarray) -> np.ndarray:
    """Mean envelope at phase + k * period, for each phase (seconds)."""
    count = int((env.size / env_rate - phases.max()) / period)
    if count < 2:
        return np.zeros_like(phases)
    positions = (phases[:, None] + period * np.arange(count)[None]) * env_rate  # (phases, beats)
    return np.interp(positions, np.arange(env.size), env).mean(1)


def fit_grid(env: np.ndarray, env_rate: float, bpm: float | None = None) -> tuple[float, float]:
    """(bpm, phase in seconds) of the constant-tempo beat comb that best fits the onset envelope.

    Tempo candidates come from the envelope's autocorrelation weighted by a log-normal prior around 115 BPM;
    each is then refined to 0.02 % together with its phase by maximising the mean envelope on the comb.
    """
    env = env - np.convolve(env, np.ones(int(env_rate)) / int(env_rate), mode="same")  # remove the slow trend
    env = np.maximum(env, 0.0)
    if bpm is None:
        centred = env - env.mean()
        ac = np.correlate(centred, centred, mode="full")[centred.size - 1:]
        lags = np.arange(ac.size) / env_rate
        valid = (lags >= 60 / TEMPO_RANGE[1]) & (lags <= 60 / TEMPO_RANGE[0])
        tempi = 60.0 / lags[valid]
        weight = np.exp(-0.5 * (np.log2(tempi / TEMPO_PRIOR_CENTRE) / 0.9) ** 2)
        strength = ac[valid] * weight
        # candidates: the best lag, and its double and half, judged by the comb fit with the same prior
        best = tempi[int(np.argmax(strength))]
        candidates = [best * f for f in (0.5, 2 / 3, 1.0, 1.5, 2.0) if TEMPO_RANGE[0] <= best * f <= TEMPO_RANGE[1]]
    else:
        candidates = [float(bpm)]
    results = []
    for candidate in candidates:
        spread = 0.0 if bpm is not None else 0.03
        best_fit = (-1.0, candidate, 0.0)
        for tempo in candidate * (1 + np.linspace(-spread, spread, 1 if bpm is not None else 121)):
            period = 60.0 / tempo
            phases = np.arange(0.0, period, 1.0 / env_rate)
            scores = _grid_score(env, env_rate, period, phases)
            k = int(np.argmax(scores))
            if scores[k] > best_fit[0]:
                best_fit = (float(scores[k]), float(tempo), float(phases[k]))
        score, tempo, phase = best_fit
        # the comb score favours slower tempi (only the strongest hits); weigh by density and the prior
        prior = np.exp(-0.5 * (np.log2(tempo / TEMPO_PRIOR_CENTRE) / 0.9) ** 2)
        results.append((score * prior * (tempo / 60.0) ** 0.5, tempo, phase))
    _, tempo, phase = max(results)
    period = 60.0 / tempo
    # sub-frame phase: parabolic peak of the comb score
    fine = np.arange(phase - 2 / env_rate, phase + 2 / env_rate, 0.1 / env_rate)
    phase = float(fine[int(np.argmax(_grid_score(env, env_rate, period, fine % period + 1e-9)))]) % period
    return tempo, phase


def _strength_at(env: np.ndarray, env_rate: float, times: np.ndarray, width: float = 0.035) -> np.ndarray:
    """The envelope's maximum within +-width s of each time."""
    out = np.zeros(times.size)
    half = int(width * env_rate)
    for k, t in enumerate(times):
        c = int(round(t * env_rate))
        lo, hi = max(0, c - half), min(env.size, c + half + 1)
        out[k] = env[lo:hi].max() if hi > lo else 0.0
    return out


def meter_and_downbeat(env: Envelopes, beats: np.ndarray, meter: int | None) -> tuple[int, int]:
    """(beats per bar, index of the first downbeat among `beats`) from the kick and snare pattern.

    Bars repeat: beat-level (kick, snare, hats) profiles are compared at a lag of one and two bars for 3 and 4
    beats; the downbeat is the bar position where kicks are strongest against snares (kick on one, backbeat).
    """
    kick = _strength_at(env.low, env.rate, beats)
    snare = _strength_at(env.mid, env.rate, beats)
    hat = _strength_at(env.high, env.rate, beats)
    feats = np.stack([kick / (kick.max() + 1e-9), snare / (snare.max() + 1e-9), hat / (hat.max() + 1e-9)], 1)
    if meter is None:
        def similarity(lag):
            if feats.shape[0] <= lag + 1:
                return 0.0
            diff = np.abs(feats[lag:] - feats[:-lag]).sum(1)
            return -float(diff.mean())
        scores = {m: similarity(m) + similarity(2 * m) for m in (3, 4)}
        meter = 3 if scores[3] > scores[4] + 0.02 else 4
    # kick on one against the backbeat; a crash (a hat-band hit well above the hats' usual level) marks a new
    # section, which starts on a downbeat: it breaks the tie of grooves that look the same every two beats
    ring = np.array([env.wash[int((t + 0.1) * env.rate):int((t + 0.4) * env.rate)].mean()
                     if int((t + 0.1) * env.rate) < env.wash.size - 1 else 0.0 for t in beats])
    ring = ring / (ring.max() + 1e-9)
    crash = np.maximum(0.0, ring - np.median(ring) - 0.1)
    contrast = feats[:, 0] - feats[:, 1] + 0.7 * crash
    phase_scores = [contrast[p::meter].mean() if contrast[p::meter].size else -9 for p in range(meter)]
    return int(meter), int(np.argmax(phase_scores))


# --- key and chords ------------------------------------------------------------------------------------------

def chroma_frames(audio: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(times (F,), chroma (F, 12)) from a 0.19 s STFT: magnitude of 55-2000 Hz bins folded to pitch classes."""
    n_fft = 1 << int(round(np.log2(rate * 0.186)))
    hop = n_fft // 4
    freqs, times, spec = stft(audio, fs=rate, nperseg=n_fft, noverlap=n_fft - hop)
    rows = (freqs >= 40) & (freqs <= 2000)
    pcs = np.round(12 * np.log2(freqs[rows] / 440.0) + 9).astype(int) % 12  # A = 9
    mag = np.abs(spec[rows]) ** 1.0
    chroma = np.zeros((12, mag.shape[1]))
    np.add.at(chroma, pcs, mag)
    return times, chroma.T


def detect_key(chroma: np.ndarray, bar_chords: list[Chord] | None = None) -> tuple[int, str]:
    """Krumhansl-Schmuckler correlation of the total chroma, plus, when bar chords are known, how many of them are
    diatonic to the key and how often its tonic chord sounds (songs dwell on and return to the tonic)."""
    total = chroma.sum(0)
    best = (-9.0, 0, "major")
    heard = [triad_class(c) for c in bar_chords or []]
    for mode, profile in KEY_PROFILES.items():
        for tonic in range(12):
            score = np.corrcoef(total, np.roll(profile, tonic))[0, 1]
            if heard:
                diatonic = {triad_class(diatonic_chord(tonic, mode, d)) for d in range(7)}
                if mode == "minor":
                    diatonic.add(triad_class(diatonic_chord(tonic, mode, 4.5)))
                tonic_triad = (tonic, "maj" if mode == "major" else "min")
                score += np.mean([c in diatonic for c in heard]) + 0.6 * np.mean([c == tonic_triad for c in heard])
                score += 0.3 * (heard[0] == tonic_triad)
            if score > best[0]:
                best = (score, tonic, mode)
    return best[1], best[2]


def detect_chords(bar_chroma: np.ndarray, bass_chroma: np.ndarray | None, tonic: int | None, mode: str) -> list[Chord]:
    """One triad per bar by template matching, diatonic chords of the key preferred, the bass's note as root."""
    templates = []
    diatonic = set() if tonic is None else {triad_class(diatonic_chord(tonic, mode, d)) for d in range(7)}
    if mode == "minor" and tonic is not None:
        diatonic.add(triad_class(diatonic_chord(tonic, mode, 4.5)))
    for root in range(12):
        for quality in ("maj", "min", "dim"):
            vec = np.zeros(12)
            vec[list(Chord(root, quality).tones)] = 1.0
            vec[root] += 0.5
            templates.append((Chord(root, quality), vec / np.linalg.norm(vec), (root, quality) in diatonic))
    chords = []
    for k, c in enumerate(bar_chroma):
        c = c / (np.linalg.norm(c) + 1e-12)
        b = None if bass_chroma is None else bass_chroma[k] / (np.linalg.norm(bass_chroma[k]) + 1e-12)
        scores = []
        for chord, vec, in_key in templates:
            s = float(c @ vec) + (0.08 if in_key else 0.0) - (0.05 if chord.quality == "dim" else 0.0)
            if b is not None:
                s += 0.3 * float(b[chord.root])
            scores.append(s)
        chords.append(templates[int(np.argmax(scores))][0])
    return chords


def default_chords(tonic: int, mode: str) -> list[Chord]:
    return [diatonic_chord(tonic, mode, d) for d in DEFAULT_DEGREES[mode]]


# --- the whole analysis --------------------------------------------------------------------------------------

def analyse(given: Mapping[str, np.ndarray], rate: int, controls: Controls | None = None) -> Analysis:
    """Tempo, grid, meter, onsets, key and chords of the given stems, with the controls' values taking precedence.

    given: stem -> (channels, frames) or (frames,) float audio at `rate`, all the same length.
    """
    controls = controls or Controls()
    check_controls(controls)
    frames = max((np.asarray(a).shape[-1] for a in given.values()), default=0)
    seconds = frames / rate if frames else 0.0
    sources: dict[str, str] = {}
    rhythm = _mono(given, ["drums"]) if "drums" in given else _mono(given, list(given))
    kick = snare = onsets = np.zeros(0)
    env = None
    if rhythm is not None and np.abs(rhythm).max() > 1e-5 and seconds >= 1.0:
        env = envelopes(rhythm, rate)
        onsets = onset_times(env.full, env.rate, env.times)
        if "drums" in given:
            kick = onset_times(env.low, env.rate, env.times, threshold=0.25, min_gap=0.08)
            snare = onset_times(env.mid, env.rate, env.times, threshold=0.35, min_gap=0.08)
            snare = snare[[np.abs(kick - t).min(initial=1.0) > 0.03 or _louder(env, t) for t in snare]] \
                if snare.size else snare
    if env is not None and onsets.size >= 4:
        bpm, phase = fit_grid(env.full + 2.0 * env.low + 1.0 * env.mid, env.rate, controls.bpm)
        phase += float(env.times[0])  # envelope frame k sits at times[k], not k / rate
        sources["bpm"] = "given" if controls.bpm else "heard"
    else:
        bpm, phase = float(controls.bpm or DEFAULT_BPM), 0.0
        sources["bpm"] = "given" if controls.bpm else "default"
    period = 60.0 / bpm
    first = phase - period * np.floor(phase / period)
    beats = first + period * np.arange(int(np.ceil((seconds - first) / period)) if seconds > first else 0)
    if env is not None and beats.size >= 8:
        meter, downbeat_index = meter_and_downbeat(env, beats, controls.meter)
        sources["meter"] = "given" if controls.meter else "heard"
    else:
        meter, downbeat_index = int(controls.meter or DEFAULT_METER), 0
        sources["meter"] = "given" if controls.meter else "default"
    downbeats = beats[downbeat_index::meter]
    if beats.size and downbeats.size == 0:
        downbeats = beats[:1]

    # key and chords
    # harmony from the chordal stems when there are any: a bass's fifth harmonic is a major third two octaves
    # up and made every minor chord sound major; the bass still votes for the root
    chordal = [s for s in ("guitar", "piano") if s in given and np.abs(given[s]).max() > 1e-5]
    pitched = _mono(given, chordal or [s for s in PITCHED if s in given])
    bar_starts = _bar_starts(downbeats, meter * period, seconds)
    bar_chroma = bass_bar_chroma = None
    if pitched is not None and np.abs(pitched).max() > 1e-5 and seconds >= 1.0:
        times, chroma = chroma_frames(pitched, rate)
        bar_chroma = _per_bar(times, chroma, bar_starts)
        if "bass" in given:
            bt, bc = chroma_frames(_mono(given, ["bass"]), rate)
            bass_bar_chroma = _per_bar(bt, bc, bar_starts)
            if chordal:  # bars where the chordal stems rest: the bass alone
                energy = bar_chroma.sum(1)
                quiet = energy < 0.05 * energy.max()
                bar_chroma[quiet] = bass_bar_chroma[quiet]
    if controls.key:
        tonic, mode = parse_key(controls.key)
        sources["key"] = "given"
    elif bar_chroma is not None and bar_chroma.sum() > 0:
        tonic, mode = detect_key(bar_chroma, detect_chords(bar_chroma, bass_bar_chroma, None, "major"))
        sources["key"] = "heard"
    else:
        tonic, mode = parse_key(DEFAULT_KEY)
        sources["key"] = "default"
    bars = max(1, len(bar_starts))
    if controls.chords:
        cycle = [parse_chord(c) for c in controls.chords]
        chords = [cycle[k % len(cycle)] for k in range(bars)]
        sources["chords"] = "given"
    elif bar_chroma is not None and bar_chroma.sum() > 0:
        chords = detect_chords(bar_chroma, bass_bar_chroma, tonic, mode)
        sources["chords"] = "heard"
    else:
        cycle = default_chords(tonic, mode)
        chords = [cycle[k % len(cycle)] for k in range(bars)]
        sources["chords"] = "default"
    return Analysis(float(bpm), int(meter), beats, downbeats, key_name(tonic, mode), [c.symbol for c in chords],
                    kick, snare, onsets, sources)


def _louder(env: Envelopes, t: float) -> bool:
    k = int(round(t * env.rate))
    return env.mid[max(0, k - 2):k + 3].max(initial=0) > 2 * env.low[max(0, k - 2):k + 3].max(initial=0)


def _bar_starts(downbeats: np.ndarray, bar: float, seconds: float) -> np.ndarray:
    """Every bar start covering the region: a partial bar before the first downbeat starts at a negative time."""
    first = downbeats[0] if downbeats.size else 0.0
    first -= bar * np.ceil(first / bar - 1e-9)
    count = int(np.ceil((seconds - first) / bar - 1e-9))
    return first + bar * np.arange(max(count, 1))


def _per_bar(times: np.ndarray, chroma: np.ndarray, starts: np.ndarray) -> np.ndarray:
    bar = starts[1] - starts[0] if starts.size > 1 else np.inf
    out = np.zeros((starts.size, 12))
    for k, s in enumerate(starts):
        rows = (times >= s) & (times < s + bar)
        if rows.any():
            out[k] = chroma[rows].sum(0)
    return out


def check_controls(controls: Controls) -> None:
    """ValueError with what to type, for every control a user can get wrong."""
    if controls.bpm is not None and not 20 <= controls.bpm <= 400:
        raise ValueError(f"--bpm {controls.bpm}: give a tempo between 20 and 400")
    if controls.meter is not None and not 2 <= controls.meter <= 12:
        raise ValueError(f"--meter {controls.meter}: give 2 to 12 beats per bar")
    if controls.key is not None:
        parse_key(controls.key)
    for c in controls.chords or []:
        parse_chord(c)
    if controls.chords is not None and not controls.chords:
        raise ValueError("--chords needs at least one chord, e.g. \"Am F C G\"")
    for name in ("density", "intensity"):
        value = getattr(controls, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} {value}: give a value from 0 to 1")
    for stem, program in (controls.programs or {}).items():
        if not 0 <= int(program) <= 127:
            raise ValueError(f"--program {stem}={program}: a General MIDI program is 0-127")


__all__ = ["Analysis", "Controls", "analyse", "parse_chord", "parse_key"]
