"""Accompany and generate jobs made by the accompanist (issue 21): method "accompanist" behind the same task interface.

The accompanist (stemweave.engine.accompanist) hears the given stems (tempo,
beat grid, kick onsets, key, chords), writes parts on them and renders them
through the soundfont synth, aligned with the region; it needs no model. A
request picks it with params `method` (docs/protocol.md, "Methods"):

* "accompanist": this module; the default for accompany and generate when the
  request names no model, preset or sampler parameter (so older clients that
  chose a prior keep getting one) and this installation has the accompanist;
* "prior": the model and preset, as before this parameter existed; the
  sampler integrators "euler" and "heun" also mean the prior (the parameter's
  older meaning);
* "refine": the accompanist's render refined by a prior, when the engine
  offers it (refused with a clear message otherwise).

Validation happens here, at the edge; `run` is what a worker calls. The
result holds only the generated stems (the given ones are untouched and not
sent back), the MIDI file as a named byte frame "midi" when params `midi` is
true, and the analysis in the result's info.
"""

from __future__ import annotations

import io
import math
import re
import threading
from typing import Any, Callable, Mapping

import numpy as np

METHODS = ("accompanist", "prior", "refine")
SAMPLER_METHODS = ("euler", "heun")  # `method`'s older meaning: the prior's integrator
DEFAULT_STEMS = ("bass", "drums", "guitar", "piano")
DEFAULT_BPM = 120.0  # generate with no bpm (accompany hears the tempo)
# Parameters an accompanist job takes: name -> (type, low, high).
PARAMS = {"method": (str, None, None), "bpm": (float, 20.0, 300.0), "meter": (int, 1, 16), "key": (str, None, None),
          "chords": (list, None, None), "style": (str, None, None), "density": (float, 0.0, 1.0),
          "intensity": (float, 0.0, 1.0), "programs": (dict, None, None), "bars": (int, 1, 64),
          "midi": (bool, None, None), "stems": (list, None, None), "channels": (int, 1, 2),
          "frames": (int, 1, 1 << 31), "seconds": (float, 0.0, 1e7), "loop_frames": (int, 1, 1 << 31)}
CONTROL_KEYS = ("bpm", "meter", "key", "chords", "style", "density", "intensity", "programs")
KEY = re.compile(r"^[A-Ga-g][#b]?m?( (major|minor|maj|min))?$")
CHORD = re.compile(r"^[A-G][#b]?[A-Za-z0-9#+°ø()-]{0,10}(/[A-G][#b]?)?$")
STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")
# One accompanist call at a time in this process: its soundfont synth is shared (engine/data/render.py) and
# FluidSynth renders one part at a time; a warm-up and a job, or two workers, take turns.
ENGINE_LOCK = threading.Lock()


def engine():
    """The accompanist module (imported on first use: the server starts without it)."""
    from stemweave.engine import accompanist

    return accompanist


def available() -> bool:
    """Whether this installation has the whole accompanist (it writes and renders parts)."""
    try:
        module = engine()
    except ImportError:
        return False
    return callable(getattr(module, "accompany", None)) and callable(getattr(module, "generate_loop", None))


def warm(rate: int) -> float:
    """Load what the accompanist's first job would (its imports, the soundfont synth at `rate`) by making a short
    loop and dropping it; returns the seconds it took. The live loop calls it at start, so the first loop is as
    quick as the next ones."""
    import time

    started = time.perf_counter()
    module = engine()
    controls = module.Controls(bpm=240.0)
    clicks = np.zeros((1, bar_frames(240.0, int(rate))), np.float32)
    clicks[0, :: clicks.shape[1] // 4] = 1.0  # a bar of clicks: the analysis runs too
    stems = [s for s in getattr(module, "STEMS", DEFAULT_STEMS) if s != "drums"]
    with ENGINE_LOCK:
        module.generate_loop(1, int(rate), 1, stems, controls, given={"drums": clicks})
        module.generate_loop(1, int(rate), 1, ["drums"], controls)
    return time.perf_counter() - started


def method_of(task: str, params: Mapping[str, Any], model: str | None, preset: str | None,
              prior_params: set[str]) -> str:
    """Which engine makes this request's stems: "accompanist", "prior" or "refine" (ValueError for another value).
    Separation is always the models'. Absent `method`, a request that names a model, a preset or any parameter
    only a prior reads (`prior_params`) goes to the prior, as it did before methods existed."""
    method = params.get("method")
    if task == "separate":
        return "prior"
    if method is None:
        if model or preset or set(params) & prior_params or not available():
            return "prior"
        return "accompanist"
    if not isinstance(method, str):
        raise ValueError(f"parameter method must be a string: one of {', '.join(METHODS + SAMPLER_METHODS)}")
    if method in SAMPLER_METHODS:
        return "prior"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r:.40}: one of {', '.join(METHODS)} (or the prior's sampler "
                         f"{' / '.join(SAMPLER_METHODS)})")
    return method


def chords_of(value) -> list[str]:
    """Chords as a list, from a list of names or one string ("Am F C G", "Am,F,C,G")."""
    if isinstance(value, str):
        value = [c for c in re.split(r"[\s,|]+", value) if c]
    if not isinstance(value, list) or not value or len(value) > 64:
        raise ValueError("parameter chords must be 1..64 chord names, one per bar (\"Am F C G\")")
    for chord in value:
        if not isinstance(chord, str) or not CHORD.match(chord):
            raise ValueError(f"{chord!r:.40} is not a chord name (A, Am, F#m7, Bb, C/E, ...)")
    return list(value)


def controls_from(params: Mapping[str, Any], seed: int) -> dict:
    """The Controls fields a request sets (checked), as plain data for the job spec and its cache key."""
    controls: dict[str, Any] = {"seed": int(seed) % (1 << 31)}
    for name in CONTROL_KEYS:
        if name not in params:
            continue
        value = params[name]
        if name == "key":
            if not KEY.match(value.strip()):
                raise ValueError(f"parameter key {value!r:.40}: a key such as \"A minor\", \"C major\", \"F#m\"")
            value = value.strip()
        elif name == "chords":
            value = chords_of(value)
        elif name == "style":
            styles = getattr(engine(), "STYLES", None)
            if styles and value not in styles:
                raise ValueError(f"unknown style {value!r:.40}: one of {', '.join(styles)}")
        elif name == "programs":
            if len(value) > 16 or not all(isinstance(k, str) and STEM.match(k) and isinstance(v, int)
                                          and not isinstance(v, bool) and 0 <= v <= 127 for k, v in value.items()):
                raise ValueError("parameter programs must map stem names to General MIDI programs 0..127")
            value = dict(value)
        elif name == "bpm":
            value = float(value)
        controls[name] = value
    return controls


def _check(name: str, value, rule) -> None:
    kind, low, high = rule
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is list and name == "chords" and isinstance(value, str):
        return  # one string of chords is fine: chords_of splits it
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"parameter {name} must be a {kind.__name__}, got {value!r:.40}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"parameter {name} must be finite")
    if low is not None and not low <= value <= high:
        raise ValueError(f"parameter {name}={value} is outside [{low:g}, {high:g}]")
    if kind is str and len(value) > 64:
        raise ValueError(f"parameter {name} is too long")


def validate(task: str, method: str, params: Mapping[str, Any], given: Mapping[str, np.ndarray], rate: int,
             seed: int) -> dict:
    """The job spec of an accompanist request, or ValueError with the message for the client."""
    if not available():
        raise ValueError("the accompanist is not installed whole in this version: use method prior")
    module = engine()
    if method == "refine" and not callable(getattr(module, "refine", None)):
        raise ValueError("method refine (the accompanist's render refined by a prior) is not offered by this "
                         "version's accompanist: use method accompanist or prior")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ValueError(f"parameter(s) {', '.join(unknown)} do not go with method {method} (it takes "
                         f"{', '.join(PARAMS)}); sampler parameters go with method prior")
    for name, value in params.items():
        _check(name, value, PARAMS[name])
    known = tuple(getattr(module, "STEMS", DEFAULT_STEMS))
    stems = params.get("stems")
    if stems is not None and (not stems or len(stems) > 16 or not all(isinstance(s, str) for s in stems)):
        raise ValueError("parameter stems must be a list of stem names")
    if task == "accompany":
        if not given:
            raise ValueError("accompany needs at least one given stem (given: [names] + frames)")
        stems = list(stems or [s for s in known if s not in given])
        clash = [s for s in stems if s in given]
        if clash:
            raise ValueError(f"stem(s) {', '.join(clash)} are given: the accompanist never changes a given stem")
        for name in ("frames", "seconds", "loop_frames"):
            if name in params:
                raise ValueError(f"parameter {name} goes with generate: accompany follows the given stems' length")
        channels, frames = next(iter(given.values())).shape
    else:
        stems = list(stems or known)
        channels = int(params.get("channels", 1))
        frames = 0
    unknown_stems = [s for s in stems if s not in known]
    if unknown_stems:
        raise ValueError(f"the accompanist writes {', '.join(known)}, not {', '.join(unknown_stems)}")
    if not stems:
        raise ValueError("nothing to generate: every stem the accompanist writes is given")
    controls = controls_from(params, seed)
    check = getattr(module, "check_controls", None) or getattr(getattr(module, "analysis", None), "check_controls",
                                                               None)
    if callable(check):  # the engine's own rules too (its messages name the CLI's flags: strip the dashes)
        try:
            check(module.Controls(**controls))
        except ValueError as error:
            raise ValueError(str(error).replace("--", "")) from None
    meter = int(controls.get("meter") or 4)
    bars = params.get("bars")
    if task == "generate":
        controls.setdefault("bpm", DEFAULT_BPM)
        bar = bar_frames(controls["bpm"], rate, meter)
        lengths = [n for n in ("frames", "seconds", "loop_frames") if n in params]
        if len(lengths) > 1:
            raise ValueError(f"give one length, not {' and '.join(lengths)}")
        if bars is not None and lengths:
            raise ValueError("give bars (a seamless loop of that many bars) or a length, not both")
        if bars is not None:
            frames = bars * bar
        elif "loop_frames" in params:
            bars = max(1, round(params["loop_frames"] / bar))
            frames = params["loop_frames"]
        elif lengths:
            frames = params.get("frames") or round(params["seconds"] * rate)
        if not frames:
            raise ValueError("generate needs a length: params bars (with bpm), frames, seconds or loop_frames")
    return {"task": task, "method": method, "stems": stems, "controls": controls, "bars": bars, "frames": int(frames),
            "channels": int(channels), "meter": meter, "midi": bool(params.get("midi", False))}


def bar_frames(bpm: float, rate: int, meter: int = 4) -> int:
    """Frames in one bar (as the loop engine counts them: every bar boundary is a sample)."""
    return int(round(rate * 60.0 * meter / bpm))


def fit(audio: np.ndarray, frames: int, periodic: bool) -> np.ndarray:
    """(channels, n) brought to `frames`: a loop by periodic (FFT) resampling, so it stays seamless; anything else
    cut or padded with silence at its end."""
    n = audio.shape[-1]
    if n == frames:
        return audio
    if periodic:
        import scipy.signal

        return scipy.signal.resample(audio.astype(np.float64), frames, axis=-1).astype(np.float32)
    if n > frames:
        return audio[..., :frames]
    return np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, frames - n)])


def midi_bytes(midi) -> bytes:
    """A mido.MidiFile as standard MIDI file bytes."""
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def analysis_info(analysis) -> dict:
    """What the result's info says of the analysis: plain JSON numbers and strings."""
    def number(x):
        return None if x is None else round(float(x), 3)

    chords = getattr(analysis, "chords", None)
    meter = getattr(analysis, "meter", None)
    return {"bpm": number(getattr(analysis, "bpm", None)), "meter": None if meter is None else int(meter),
            "key": getattr(analysis, "key", None),
            "chords": [str(c) for c in chords] if chords is not None else None}


def run(spec: dict, given: Mapping[str, np.ndarray] | None, rate: int,
        progress: Callable[[dict], None]) -> tuple[dict[str, np.ndarray], dict[str, bytes], dict]:
    """Make the stems: ({stem: (channels, frames) float32}, {"midi": bytes} when asked, info). `progress` may raise
    to cancel (the server's cancel check): it is called between the stages."""
    module = engine()
    job = spec["accompanist"]
    controls = module.Controls(**job["controls"])
    given = {name: np.asarray(a, np.float32) for name, a in (given or {}).items()}
    progress({"stage": "accompanist", "fraction": 0.05})
    with ENGINE_LOCK:
        if job["task"] == "accompany" and job["bars"]:
            made = module.generate_loop(job["bars"], rate, job["channels"], job["stems"], controls, given=given)
        elif job["task"] == "accompany":
            made = module.accompany(given, rate, job["stems"], controls)
        elif job["bars"]:
            made = module.generate_loop(job["bars"], rate, job["channels"], job["stems"], controls)
        elif callable(getattr(module, "generate_seconds", None)):  # not a loop: the end rings out
            made = module.generate_seconds(job["frames"] / rate, rate, job["channels"], job["stems"], controls)
        else:
            bars = max(1, math.ceil(job["frames"] / bar_frames(controls.bpm, rate, job["meter"])))
            made = module.generate_loop(bars, rate, job["channels"], job["stems"], controls)
    if job["method"] == "refine":
        progress({"stage": "refine", "fraction": 0.6})
        with ENGINE_LOCK:
            made = module.refine(made, given=given, rate=rate, controls=controls)
    progress({"stage": "accompanist", "fraction": 1.0})
    frames = job["frames"] or next(iter(given.values())).shape[-1]
    periodic = bool(job["bars"])
    stems = {}
    for name in job["stems"]:
        audio = np.asarray(made.stems[name], np.float32)
        if audio.ndim == 1:
            audio = audio[None]
        if audio.shape[0] != job["channels"]:
            audio = np.repeat(audio.mean(0, keepdims=True), job["channels"], axis=0)
        stems[name] = np.ascontiguousarray(fit(audio, frames, periodic), dtype="<f4")
    files = {"midi": midi_bytes(made.midi)} if job["midi"] else {}
    info = {"method": job["method"], "analysis": analysis_info(made.analysis)}
    return stems, files, info


__all__ = ["METHODS", "PARAMS", "analysis_info", "method_of", "midi_bytes", "run", "validate"]
