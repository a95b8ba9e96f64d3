"""The live loop engine: an N-bar loop at tempo T keeps playing while the next variation is made, then swaps in on a bar.

Three threads, each owning its part, in the shape of the LV2 sampler
(docs/osc.md, "How the loop engine works"):

* the audio thread runs `LoopPlayer.callback` (sounddevice's contract, or a
  `VirtualStream` on a machine without a sound card). It only reads prepared
  buffers, mixes into preallocated scratch arrays and advances positions: no
  array is allocated, no lock is taken, nothing is freed there.
* the producer thread (`LoopEngine`) asks the server's job queue, at
  interactive priority, for the next loop (by default one accompanist job:
  parts written at the loop's tempo, key and chords, with their MIDI; method
  prior: the model with the preset), builds a `Loop` (every stem a
  contiguous (frames, channels) float32 block, the bar length in frames) and
  hands it over by assigning one attribute, `LoopPlayer._pending`. Old loops
  are freed by the garbage collector in whichever thread drops the last
  reference; the audio thread keeps the previous one alive through its fade.
* control threads (OSC, MIDI clock) change settings and gain targets.

Bar-synced swap: the player plays the current loop from `_pos`; while a newer
pending loop exists it renders only up to the next bar boundary of the current
loop ((-pos) mod bar_frames frames), takes the pending loop there, and goes on
in the new loop at the same bar (bar b of the old loop -> bar b mod bars of the
new one), so the swap lands on the boundary to the sample whatever the block
size. A short equal-power fade (SWAP_FADE_S, 0 for none) starts at that sample
because two different loops do not continue each other; the loop's own wrap
point is never faded: loops are made seamless there (the accompanist writes
and renders loops as loops; the prior: engine/regions.py for generation, and
for accompaniment the region around the wrap is regenerated with the wrap in
the middle, see `accompaniment_loop`).

Gains: every stem name has a slot; OSC writes a target, the audio thread moves
the gain towards it linearly at most 1.0 per GAIN_RAMP_S, per sample. Start
and stop ramp a master gain the same way.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

BEATS_PER_BAR = 4
MAX_SLOTS = 32  # stem names with a gain slot (the model's stems plus the input stem)
MAX_BLOCK = 4096  # frames rendered per inner pass of the callback (a longer callback is split)
GAIN_RAMP_S = 0.02  # a gain moves at most 1.0 per this many seconds
SWAP_FADE_S = 0.004  # equal-power fade from the old loop to the new one, starting exactly on the bar
WRAP_GAP_S = 0.25  # accompaniment loops: seconds regenerated on each side of the wrap point
TEMPO_RANGE = (20.0, 300.0)
BARS_RANGE = (1, 64)
GAIN_RANGE = (0.0, 4.0)
SOURCES = ("generate", "input")


METHODS = ("accompanist", "prior")
MIDI_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # a file name for a saved loop MIDI: no folders


def default_method() -> str:
    """The loops' default method: the accompanist where this installation has it, else the prior."""
    from stemweave.bridge import accompanist_jobs

    return "accompanist" if accompanist_jobs.available() else "prior"


def loop_name(loop: "Loop") -> str:
    """The file stem a loop is written under: loop-0003-120bpm-4bars."""
    return f"loop-{loop.serial:04d}-{loop.tempo:g}bpm-{loop.bars}bars"


def bar_frames(tempo: float, rate: int, beats: int = BEATS_PER_BAR) -> int:
    """Frames in one bar at `tempo` BPM (rounded to a whole frame, so every bar boundary is a sample)."""
    return int(round(rate * 60.0 * beats / tempo))


@dataclass(frozen=True, eq=False)
class Loop:
    """A prepared loop, immutable once handed to the player."""

    serial: int
    stems: tuple[str, ...]
    data: np.ndarray  # (K, frames, channels) float32, C-contiguous
    slots: tuple[int, ...]  # the gain slot of each stem
    bar_frames: int
    bars: int
    tempo: float
    info: dict = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return self.data.shape[1]


class LoopPlayer:
    """The audio-thread half: plays the current loop, swaps to a pending one on a bar boundary, ramps gains."""

    def __init__(self, rate: int, channels: int, *, gain_ramp_s: float = GAIN_RAMP_S,
                 swap_fade_s: float = SWAP_FADE_S, max_block: int = MAX_BLOCK):
        self.rate, self.channels, self.max_block = int(rate), int(channels), int(max_block)
        # Shared, written by one side only.
        self._pending: Loop | None = None  # producer writes; the callback reads
        self._run = False  # control writes: play or stop
        self._target = np.ones(MAX_SLOTS, np.float32)  # control writes: gain targets
        # Audio-thread state.
        self._current: Loop | None = None
        self._pos = 0
        self._old: Loop | None = None  # the loop being faded out after a swap
        self._old_pos = 0
        self._fade_done = 0
        self._running = False
        self._master = 0.0
        self._gain = np.ones(MAX_SLOTS, np.float32)
        self._ramping = np.zeros(MAX_SLOTS, bool)
        self.slots_used = 0  # control raises it when it names a new slot
        # Preallocated buffers.
        fade = max(0, int(round(swap_fade_s * self.rate)))
        self._fade = (np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / max(1, fade)) ** 2).astype(np.float32)[:, None]
        self._step = np.float32(1.0 / max(1.0, gain_ramp_s * self.rate))  # gain change per sample
        self._ramp_index = np.arange(1, self.max_block + 1, dtype=np.float32)  # 1..max_block
        self._ramp = np.zeros((MAX_SLOTS, self.max_block, 1), np.float32)
        self._master_ramp = np.zeros((self.max_block, 1), np.float32)
        self._a = np.zeros((self.max_block, self.channels), np.float32)
        self._b = np.zeros((self.max_block, self.channels), np.float32)
        self._tmp = np.zeros((self.max_block, self.channels), np.float32)
        # What the callback reports (read by status and tests).
        self.frames = 0  # stream frames rendered
        self.swaps = np.zeros((256, 4), np.int64)  # ring: (stream frame, loop serial, bar, loop start frame)
        self.swap_count = 0
        self.started_at = -1  # stream frame where the current run began
        self.status_flags = 0  # callbacks that reported an under/overflow

    # Control side ------------------------------------------------------------------------------------------
    def hand_over(self, loop: Loop) -> None:
        """Make `loop` the next one: it plays from the next bar boundary (at once when nothing plays)."""
        if loop.data.shape[2] != self.channels or loop.data.dtype != np.float32 or not loop.data.flags.c_contiguous:
            raise ValueError(f"a loop must be float32 (stems, frames, {self.channels}) C-contiguous")
        if loop.bar_frames < 1 or loop.frames < loop.bar_frames:
            raise ValueError(f"a loop of {loop.frames} frames cannot have bars of {loop.bar_frames} frames")
        self.slots_used = max(self.slots_used, max(loop.slots, default=-1) + 1)
        self._pending = loop  # the single reference the audio thread picks up

    def set_gain(self, slot: int, gain: float) -> None:
        self.slots_used = max(self.slots_used, slot + 1)
        self._target[slot] = gain

    def play(self, run: bool = True) -> None:
        self._run = bool(run)

    @property
    def current(self) -> Loop | None:
        return self._current

    @property
    def position(self) -> int:
        return self._pos

    @property
    def playing(self) -> bool:
        """Audible now (a stop fades out first)."""
        return self._running

    @property
    def started(self) -> bool:
        """Asked to play: what the controller last set with play()."""
        return self._run

    # Audio thread --------------------------------------------------------------------------------------------
    def callback(self, outdata: np.ndarray, frames: int, time_info=None, status=None) -> None:
        """sounddevice's output callback: fill outdata (frames, channels) float32."""
        if status:
            self.status_flags += 1
        done = 0
        while done < frames:
            n = min(frames - done, self.max_block)
            self._render(outdata[done : done + n], n)
            done += n

    def _render(self, out: np.ndarray, n: int) -> None:
        out.fill(0)
        self._transport()
        if not self._running:
            self.frames += n
            return
        self._prepare_gains(n)
        done = 0
        while done < n:
            cur = self._current
            if cur is None:
                break
            count = n - done
            pending = self._pending
            if pending is not None and pending.serial > cur.serial:
                to_bar = (-self._pos) % cur.bar_frames  # frames until the next bar boundary of the current loop
                if to_bar == 0:
                    self._swap(pending, self.frames + done)
                    continue
                count = min(count, to_bar)
            if self._old is not None:  # the fade after a swap: new * w + old * (1 - w)
                count = min(count, len(self._fade) - self._fade_done)
                a, b = self._a[:count], self._b[:count]
                a.fill(0)
                b.fill(0)
                self._pos = self._mix(cur, self._pos, a, done)
                self._old_pos = self._mix(self._old, self._old_pos, b, done)
                w = self._fade[self._fade_done : self._fade_done + count]
                np.subtract(a, b, out=a)
                np.multiply(a, w, out=a)
                np.add(a, b, out=a)
                np.add(out[done : done + count], a, out=out[done : done + count])
                self._fade_done += count
                if self._fade_done >= len(self._fade):
                    self._old = None
            else:
                self._pos = self._mix(cur, self._pos, out[done : done + count], done)
            done += count
        self._apply_master(out, n)
        self.frames += n

    def _transport(self) -> None:
        if self._run and not self._running:
            pending = self._pending
            if pending is not None and (self._current is None or pending.serial > self._current.serial):
                self._current = pending
            if self._current is None:
                return  # nothing to play yet: silence until the first loop arrives
            self._running, self._pos, self._old, self._master = True, 0, None, 0.0
            self.started_at = self.frames
            self._log_swap(self.frames, self._current, 0)

    def _swap(self, loop: Loop, at: int) -> None:
        old = self._current
        bar = (self._pos // old.bar_frames) % old.bars
        if len(self._fade):
            self._old, self._old_pos, self._fade_done = old, self._pos, 0
        self._current = loop
        self._pos = (bar % loop.bars) * loop.bar_frames
        self._log_swap(at, loop, bar)

    def _log_swap(self, at: int, loop: Loop, bar: int) -> None:
        row = self.swaps[self.swap_count % len(self.swaps)]
        row[0], row[1], row[2], row[3] = at, loop.serial, bar, self._pos
        self.swap_count += 1

    def _mix(self, loop: Loop, pos: int, dest: np.ndarray, offset: int) -> int:
        """Add loop's gain-weighted stems from `pos` (wrapping) into dest; returns the new position."""
        count, length, written = len(dest), loop.frames, 0
        while written < count:
            c = min(count - written, length - pos)
            d, tmp = dest[written : written + c], self._tmp[:c]
            for k, slot in enumerate(loop.slots):
                src = loop.data[k, pos : pos + c]
                if self._ramping[slot]:
                    np.multiply(src, self._ramp[slot, offset + written : offset + written + c], out=tmp)
                    np.add(d, tmp, out=d)
                else:
                    g = self._gain[slot]
                    if g == 1.0:
                        np.add(d, src, out=d)
                    elif g != 0.0:
                        np.multiply(src, g, out=tmp)
                        np.add(d, tmp, out=d)
            written += c
            pos = (pos + c) % length
        return pos

    def _prepare_gains(self, n: int) -> None:
        """Per-sample gain ramps for this block: linear, at most self._step per sample, ending on the target."""
        for slot in range(self.slots_used):
            target, gain = self._target[slot], self._gain[slot]
            if gain == target:
                self._ramping[slot] = False
                continue
            ramp = self._ramp[slot, :n, 0]
            if target > gain:
                np.multiply(self._ramp_index[:n], self._step, out=ramp)
                np.add(ramp, gain, out=ramp)
                np.minimum(ramp, target, out=ramp)
            else:
                np.multiply(self._ramp_index[:n], -self._step, out=ramp)
                np.add(ramp, gain, out=ramp)
                np.maximum(ramp, target, out=ramp)
            self._gain[slot] = ramp[n - 1]
            self._ramping[slot] = True

    def _apply_master(self, out: np.ndarray, n: int) -> None:
        target = 1.0 if self._run else 0.0
        if self._master == target:
            if target == 0.0:
                out.fill(0)
        else:
            ramp = self._master_ramp[:n, 0]
            sign = 1.0 if target > self._master else -1.0
            np.multiply(self._ramp_index[:n], sign * self._step, out=ramp)
            np.add(ramp, self._master, out=ramp)
            np.clip(ramp, 0.0, 1.0, out=ramp)
            np.multiply(out, self._master_ramp[:n], out=out)
            self._master = float(ramp[n - 1])
        if self._master == 0.0 and not self._run:
            self._running, self._pos, self._old = False, 0, None

    # Reports (any thread) -------------------------------------------------------------------------------------
    def swap_log(self) -> list[dict]:
        """The last swaps: stream frame, loop serial, the bar it happened on and the new loop's position."""
        count = self.swap_count
        rows = [self.swaps[i % len(self.swaps)] for i in range(max(0, count - len(self.swaps)), count)]
        return [{"frame": int(r[0]), "serial": int(r[1]), "bar": int(r[2]), "position": int(r[3])} for r in rows]


# ---------------------------------------------------------------------------------------------------------------
# Tempo from MIDI clock


class MidiClock:
    """A smoothed tempo from MIDI clock (24 pulses per quarter note): a least-squares line through the last
    `window` pulse times, reported when it moves by at least `min_change` BPM (knob noise does not regenerate)."""

    PPQN = 24

    def __init__(self, on_tempo: Callable[[float], None], *, window: int = 48, min_change: float = 0.5,
                 on_start: Callable[[], None] | None = None, on_stop: Callable[[], None] | None = None,
                 timeout_s: float = 0.5):
        self.on_tempo, self.on_start, self.on_stop = on_tempo, on_start, on_stop
        self.window, self.min_change, self.timeout_s = window, min_change, timeout_s
        self._ticks: deque[float] = deque(maxlen=window)
        self.tempo: float | None = None  # the last reported tempo
        self.estimate: float | None = None  # the current estimate

    def feed(self, message, at: float | None = None) -> float | None:
        """Take one mido message received at `at` (seconds, monotonic); returns the estimate after it."""
        at = time.monotonic() if at is None else at
        kind = getattr(message, "type", None)
        if kind == "clock":
            if self._ticks and at - self._ticks[-1] > self.timeout_s:
                self._ticks.clear()  # the clock stopped and restarted: do not average across the gap
            self._ticks.append(at)
            if len(self._ticks) >= self.PPQN:  # a quarter note of pulses before the first estimate
                times = np.asarray(self._ticks, np.float64)
                index = np.arange(len(times), dtype=np.float64)
                slope = np.polyfit(index, times - times[0], 1)[0]  # seconds per pulse
                if slope > 0:
                    self.estimate = 60.0 / (self.PPQN * slope)
                    if self.tempo is None or abs(self.estimate - self.tempo) >= self.min_change:
                        self.tempo = round(self.estimate, 2)
                        self.on_tempo(self.tempo)
        elif kind == "start":
            self._ticks.clear()
            if self.on_start:
                self.on_start()
        elif kind == "continue":
            if self.on_start:
                self.on_start()
        elif kind == "stop":
            if self.on_stop:
                self.on_stop()
        return self.estimate


def open_midi_clock(port: str, clock: MidiClock, backend: str | None = None):
    """Listen to MIDI clock on a mido input port (python-rtmidi); "virtual:NAME" opens a virtual port other
    programs connect to. backend: a mido backend such as "mido.backends.rtmidi/UNIX_JACK" (default: mido's)."""
    import mido

    api = mido.Backend(backend) if backend else mido
    callback = lambda message: clock.feed(message, time.monotonic())  # noqa: E731 - rtmidi's thread
    try:
        if port.startswith("virtual:"):
            return api.open_input(port[len("virtual:"):], virtual=True, callback=callback)
        return api.open_input(port, callback=callback)
    except (OSError, IOError, SystemError, ImportError) as error:
        names = []
        try:
            names = api.get_input_names()
        except Exception:  # noqa: BLE001
            pass
        raise ValueError(f"cannot open MIDI clock input {port!r}: {error} (inputs here: "
                         f"{', '.join(names) or 'none'}; python-rtmidi needs ALSA's /dev/snd/seq or a JACK server)") \
            from None


# ---------------------------------------------------------------------------------------------------------------
# Making loops through the server's job queue


def sampler_params_for(task: str, preset) -> tuple[str, dict]:
    """(the preset to name in a `task` job, sampler overrides) for a Preset. A shipped preset of the job's task
    is named as it is; any other (another task's, e.g. the `loop` preset for a generated loop, or one from a
    presets folder the server does not know) lends its sampler settings to the task's default preset."""
    from dataclasses import asdict

    from stemweave.api import DEFAULT_PRESETS  # the same defaults the server uses
    from stemweave.engine.presets import list_presets

    if preset.task == task and preset.name in list_presets():
        return preset.name, {}
    return DEFAULT_PRESETS[task], dict(asdict(preset.sampler))


class Presets:
    """The presets loops may use, by name only (never a path): the shipped ones plus an optional folder's."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None

    def names(self) -> list[str]:
        from stemweave.engine.presets import list_presets

        extra = {p.stem for p in self.folder.glob("*.toml")} if self.folder and self.folder.is_dir() else set()
        return sorted(set(list_presets()) | extra)

    def load(self, name: str):
        from stemweave.engine.presets import load_preset

        if name not in self.names():
            raise ValueError(f"unknown preset {name!r:.70}: one of {', '.join(self.names())}")
        if self.folder is not None and (self.folder / f"{name}.toml").is_file():
            preset = load_preset(self.folder / f"{name}.toml")
        else:
            preset = load_preset(name)
        if preset.task == "separate":
            raise ValueError(f"preset {name!r} is for separation; loops need a generate or accompany preset")
        return preset


class QueueBackend:
    """Makes loops through `stemweave serve`'s job queue at interactive priority, over its ZeroMQ socket.

    One Client, used only by the engine's producer thread (a Client is not thread-safe)."""

    def __init__(self, address: str, *, server_key=None, timeout: float = 60.0, model: str | None = None,
                 presets: Presets | None = None):
        self.address, self.server_key, self.timeout, self.model = address, server_key, timeout, model
        self.presets = presets or Presets()
        self._client = None

    def _connect(self):
        if self._client is None:
            from stemweave.bridge.client import Client

            self._client = Client(self.address, timeout=self.timeout, server_key=self.server_key)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stems(self) -> tuple[str, ...] | None:
        """The stems of the model loops use, once the server has it warm (None before)."""
        listing = self._connect().list()
        for entry in listing["models"]:
            if (entry.get("name") == self.model if self.model else entry.get("default")) and entry.get("stems"):
                return tuple(entry["stems"])
        return None

    def run(self, task: str, rate: int, *, preset: str, seed: int, params: dict, given=None,
            cancel: threading.Event | None = None) -> dict[str, np.ndarray]:
        """The job's stems; its MIDI and info stay in last_files / last_info (an accompanist job's)."""
        client = self._connect()
        if params.get("method") == "accompanist":  # no model, no preset: the server's accompanist
            stems = client.run(task, None, rate, given=given, seed=seed, priority="interactive", params=params,
                               cancel=cancel)
        else:
            name, overrides = sampler_params_for(task, self.presets.load(preset))
            stems = client.run(task, None, rate, given=given, model=self.model, preset=name, seed=seed,
                               priority="interactive", params={**overrides, **params}, cancel=cancel)
        result = client.last_result
        self.last_files, self.last_info = dict(result.files), dict(result.info or {})
        return stems


class LocalBackend:
    """Makes loops in this process with engine.regions.run_region (tests, benchmarks, offline rendering); the
    server uses QueueBackend instead, so loops queue with everything else."""

    def __init__(self, model, presets: Presets | None = None):
        self.model, self.presets = model, presets or Presets()

    def stems(self) -> tuple[str, ...]:
        return tuple(self.model.stems)

    def run(self, task: str, rate: int, *, preset: str, seed: int, params: dict, given=None, cancel=None):
        from stemweave.engine.regions import run_region
        from stemweave.engine.sampler import Cancelled

        if params.get("method") == "accompanist":  # as the server runs it (bridge/accompanist_jobs.py)
            from stemweave.bridge import accompanist_jobs

            job = accompanist_jobs.validate(task, "accompanist", params, given or {}, rate, seed)
            stems, self.last_files, self.last_info = accompanist_jobs.run({"accompanist": job}, given, rate,
                                                                          lambda update: None)
            return stems
        name, overrides = sampler_params_for(task, self.presets.load(preset))
        settings = self.presets.load(name).with_overrides(**overrides)
        params = dict(params)
        if "regenerate" in params:
            params["regenerate"] = tuple(params["regenerate"])
        try:
            return run_region(task, self.model, None, rate, settings, given=given, seed=seed, cancel=cancel, **params)
        except Cancelled:
            from stemweave.bridge.client import JobCancelled

            raise JobCancelled("cancelled", "cancelled") from None


def generated_loop(backend, frames: int, rate: int, channels: int, stems: list[str] | None, preset: str, seed: int,
                   cancel=None) -> dict[str, np.ndarray]:
    """A seamless loop of `frames` frames: total generation of `stems` (engine/regions.py makes the wrap)."""
    params = {"loop_frames": int(frames), "channels": int(channels)}
    if stems:
        params["stems"] = list(stems)
    return backend.run("generate", rate, preset=preset, seed=seed, params=params, cancel=cancel)


def accompaniment_loop(backend, given: dict[str, np.ndarray], rate: int, stems: list[str] | None, preset: str,
                       seed: int, cancel=None) -> dict[str, np.ndarray]:
    """New stems under a given loop ({stem: (channels, frames)}), seamless at their wrap point. Two jobs: the
    accompaniment of the region, then, in a view rotated by half a loop so the wrap sits in the middle, the
    samples around it regenerated (an inpainting in time, with everything else known): the new stems' end then
    continues into their start. The given stems are never changed."""
    frames = next(iter(given.values())).shape[-1]
    params = {"stems": list(stems)} if stems else {}
    first = backend.run("accompany", rate, preset=preset, seed=seed, params=params, given=given, cancel=cancel)
    half = frames // 2
    gap = max(1, min(frames // 4, int(WRAP_GAP_S * rate)))
    rolled = {name: np.roll(a, half, axis=-1) for name, a in {**given, **first}.items()}  # loop sample 0 at `half`
    again = backend.run("accompany", rate, preset=preset, seed=seed + 1,
                        params={"stems": list(first), "regenerate": [half - gap, half + gap]}, given=rolled,
                        cancel=cancel)
    return {name: np.roll(a, -half, axis=-1) for name, a in again.items()}


def accompanist_loop(backend, settings: "LoopSettings", rate: int, channels: int, stems: list[str] | None, seed: int,
                     given: dict[str, np.ndarray] | None = None, cancel=None) -> tuple[dict, bytes | None, dict]:
    """One accompanist job (issue 21): `settings.bars` bars at the engine's tempo, key and chords, seamless at the
    wrap (the accompanist writes the loop as a loop), under the given loop when there is one. Returns (stems, the
    MIDI file's bytes, the job's info with the analysis)."""
    params = {"method": "accompanist", "bars": int(settings.bars), "bpm": float(settings.tempo),
              "meter": BEATS_PER_BAR, "midi": True, "style": settings.style, "density": float(settings.density),
              "intensity": float(settings.intensity)}
    if settings.key:
        params["key"] = settings.key
    if settings.chords:
        params["chords"] = list(settings.chords)
    if stems:
        params["stems"] = list(stems)
    if given:
        made = backend.run("accompany", rate, preset=settings.preset, seed=seed, params=params, given=given,
                           cancel=cancel)
    else:
        made = backend.run("generate", rate, preset=settings.preset, seed=seed, params={**params, "channels": channels},
                           cancel=cancel)
    files, info = getattr(backend, "last_files", None) or {}, getattr(backend, "last_info", None) or {}
    return made, files.get("midi"), info


def fit_loop(audio: np.ndarray, frames: int) -> np.ndarray:
    """An input loop (channels, n) brought to `frames` frames by periodic (FFT) resampling: the tempo changes
    with the pitch (a resample, not a time stretch), and a loop seamless at its wrap stays seamless."""
    if audio.shape[-1] == frames:
        return audio
    import scipy.signal

    return scipy.signal.resample(audio.astype(np.float64), frames, axis=-1).astype(np.float32)


def capture_input(device, frames: int, rate: int, channels: int) -> np.ndarray:
    """Record `frames` frames from an input device (blocking; the producer thread calls it). (channels, frames)."""
    try:
        import sounddevice as sd

        audio = sd.rec(frames, samplerate=rate, channels=channels, dtype="float32", device=device, blocking=True)
    except Exception as error:  # noqa: BLE001 - no PortAudio, no device, device busy
        raise ValueError(f"cannot record from input device {device!r}: {error}") from None
    return np.ascontiguousarray(audio.T)


# ---------------------------------------------------------------------------------------------------------------
# The engine: settings, the producer thread, the output


@dataclass
class LoopSettings:
    tempo: float = 120.0
    bars: int = 4
    stems: tuple[str, ...] = ()  # empty: every stem of the model
    source: str = "generate"
    preset: str = "loop"  # presets/loop.toml: made in time for the bar swap on 2 CPU cores (method prior)
    tempo_source: str = "osc"  # osc | midi
    # accompanist (parts written on the tempo, key and chords; the default where installed) | prior (the model)
    method: str = field(default_factory=lambda: default_method())
    style: str = "default"  # the accompanist's controls (engine/accompanist, Controls)
    density: float = 0.5
    intensity: float = 0.5
    key: str | None = None  # None: the accompanist's default (or what it hears in an input loop)
    chords: tuple[str, ...] = ()  # one per bar, cycled; empty: the accompanist's

    def shape(self) -> tuple:
        """Everything that makes one loop differ from another (not the preset, which only changes its speed)."""
        return (self.tempo, self.bars, self.stems, self.source, self.method, self.style, self.density,
                self.intensity, self.key, self.chords)


class LoopEngine:
    """Plays loops through an audio output and makes the next one in the background, on request.

    backend: a QueueBackend (or anything with its `run` / `stems`). output: a sounddevice device (None: the
    default), or "virtual" for the paced virtual clock; with no device it falls back to the virtual clock and
    says so. render_dir: every finished loop is written there (the mix and one file per stem)."""

    def __init__(self, backend, *, rate: int = 48000, channels: int = 2, settings: LoopSettings | None = None,
                 output=None, render_dir: str | Path | None = None, blocksize: int = 512,
                 input_loop: np.ndarray | None = None, input_stem: str = "drums", input_device=None,
                 swap_fade_s: float = SWAP_FADE_S, gain_ramp_s: float = GAIN_RAMP_S,
                 log: Callable[[str], None] = print):
        self.backend, self.rate, self.channels = backend, int(rate), int(channels)
        self.settings = settings or LoopSettings()
        self.render_dir = Path(render_dir) if render_dir else None
        self.input_stem, self.input_device = input_stem, input_device
        self._input = None if input_loop is None else np.asarray(input_loop, np.float32)
        self.log = log
        self.player = LoopPlayer(self.rate, self.channels, swap_fade_s=swap_fade_s, gain_ramp_s=gain_ramp_s)
        self._slots: dict[str, int] = {}
        self._gains: dict[str, float] = {}
        self._lock = threading.Condition()
        self._requested = 0  # generations asked for
        self._made = 0  # generations started
        self._serial = 0
        self._seed = 0
        self._cancel = threading.Event()
        self._closed = False
        self.generating = False
        self.last_error: str | None = None
        self.last_loop_s: float | None = None  # seconds the last loop took to make
        self.loops_made = 0
        self.model_stems: tuple[str, ...] | None = None
        self.midi_port = None
        self._capture = False  # the next input-sourced loop records the input device first
        self.stream, self.output_name = self._open_output(output, blocksize)
        self._producer = threading.Thread(target=self._produce, name="stemweave-loop-producer", daemon=True)
        self._producer.start()

    # Output ------------------------------------------------------------------------------------------------
    def _open_output(self, output, blocksize):
        from stemweave.bridge.audio_out import NoAudioDevice, VirtualStream, open_output

        if output != "virtual":
            try:
                stream = open_output(self.player.callback, self.rate, self.channels, blocksize=blocksize, device=output)
                stream.start()
                name = getattr(stream, "device", output)
                try:
                    import sounddevice as sd

                    name = sd.query_devices(stream.device)["name"]
                except Exception:  # noqa: BLE001
                    pass
                self.log(f"loop audio: playing through {name} at {self.rate} Hz")
                return stream, str(name)
            except NoAudioDevice as error:
                where = f"writing loops to {self.render_dir}" if self.render_dir else \
                        "loops are not saved (give --render-dir to write them to files)"
                self.log(f"loop audio: {error}; running on a virtual clock instead, {where}")
        stream = VirtualStream(self.player.callback, self.rate, self.channels, blocksize=blocksize)
        stream.start()
        return stream, stream.name

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._cancel.set()
            self._lock.notify_all()
        for closing in (self.stream, self.midi_port):
            try:
                if closing is not None:
                    closing.stop() if hasattr(closing, "stop") else None
                    closing.close()
            except Exception:  # noqa: BLE001 - closing on shutdown: nothing to tell anyone
                pass
        self._producer.join(5)
        close = getattr(self.backend, "close", None)
        if close:
            close()

    # Control (any thread) -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Play; makes the first loop if there is none yet (silence until it is ready)."""
        if self.player.current is None and self.player._pending is None and not self.generating:
            self.next()
        self.player.play(True)

    def stop(self) -> None:
        self.player.play(False)

    def next(self) -> None:
        """Make the next variation; it swaps in at the first bar boundary after it is ready."""
        with self._lock:
            self._requested += 1
            self._lock.notify_all()

    def _changed(self) -> None:
        """A setting that shapes the loop changed: make a new one if loops are in use."""
        if self.player.current is not None or self.player._pending is not None or self.generating:
            self._cancel.set()  # the loop being made is already out of date
            self.next()

    def set_tempo(self, bpm: float, source: str = "osc") -> None:
        bpm = float(bpm)
        if not (TEMPO_RANGE[0] <= bpm <= TEMPO_RANGE[1]) or not math.isfinite(bpm):
            raise ValueError(f"tempo must be {TEMPO_RANGE[0]:g}..{TEMPO_RANGE[1]:g} BPM, got {bpm:g}")
        with self._lock:
            unchanged = abs(self.settings.tempo - bpm) < 1e-6
            self.settings.tempo, self.settings.tempo_source = bpm, source
        if not unchanged:
            self._changed()

    def set_bars(self, bars: int) -> None:
        if not BARS_RANGE[0] <= bars <= BARS_RANGE[1]:
            raise ValueError(f"bars must be {BARS_RANGE[0]}..{BARS_RANGE[1]}, got {bars}")
        with self._lock:
            unchanged, self.settings.bars = self.settings.bars == bars, int(bars)
        if not unchanged:
            self._changed()

    def set_stems(self, stems: list[str]) -> None:
        known = self.known_stems()
        if known is not None:
            unknown = [s for s in stems if s not in known]
            if unknown:
                raise ValueError(f"unknown stem(s) {', '.join(unknown)}: the model's stems are {', '.join(known)}")
        with self._lock:
            self.settings.stems = tuple(dict.fromkeys(stems))
        self._changed()

    def set_source(self, source: str) -> None:
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        if source == "input" and self._input is None and self.input_device is None:
            raise ValueError("no input loop: start the server with --loop-input FILE or --loop-input-device DEVICE")
        with self._lock:
            unchanged, self.settings.source = self.settings.source == source, source
        if not unchanged:
            self._changed()

    def set_preset(self, name: str) -> None:
        presets = getattr(self.backend, "presets", None) or Presets()
        presets.load(name)  # ValueError names the presets there are
        with self._lock:
            self.settings.preset = name

    def set_method(self, method: str) -> None:
        """accompanist (parts written on the loop's tempo, key and chords) or prior (the model, with the preset)."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r:.40}")
        self._set(method=method)

    def set_style(self, style: str) -> None:
        from stemweave.bridge import accompanist_jobs

        try:
            styles = getattr(accompanist_jobs.engine(), "STYLES", None)
        except ImportError:
            styles = None
        if not MIDI_NAME.match(style) or (styles and style not in styles):
            raise ValueError(f"unknown style {style!r:.40}" + (f": one of {', '.join(styles)}" if styles else ""))
        self._set(style=style)

    def set_density(self, density: float) -> None:
        self._set(density=self._unit(density, "density"))

    def set_intensity(self, intensity: float) -> None:
        self._set(intensity=self._unit(intensity, "intensity"))

    def set_key(self, key: str) -> None:
        """A key ("A minor", "C major", "F#m"); "" or "auto": the accompanist's default, or what it hears."""
        from stemweave.bridge.accompanist_jobs import KEY

        key = key.strip()
        if key in ("", "auto"):
            self._set(key=None)
            return
        if not KEY.match(key):
            raise ValueError(f"key {key!r:.40}: a key such as \"A minor\", \"C major\", \"F#m\" (or \"auto\")")
        self._set(key=key)

    def set_chords(self, chords) -> None:
        """Chords, one per bar, cycled: a list of names or one string ("Am F C G"); none: the accompanist's."""
        from stemweave.bridge.accompanist_jobs import chords_of

        empty = not chords or (isinstance(chords, str) and not chords.strip()) or \
            (isinstance(chords, (list, tuple)) and not "".join(chords).strip())
        if empty:
            self._set(chords=())
            return
        if isinstance(chords, (list, tuple)):
            chords = " ".join(chords)
        self._set(chords=tuple(chords_of(chords)))

    @staticmethod
    def _unit(value: float, what: str) -> float:
        value = float(value)
        if not (0.0 <= value <= 1.0):  # NaN fails too
            raise ValueError(f"{what} must be 0..1, got {value:g}")
        return value

    def _set(self, **changes) -> None:
        """Change loop settings; a change makes a new loop when loops are in use."""
        with self._lock:
            unchanged = all(getattr(self.settings, k) == v for k, v in changes.items())
            for name, value in changes.items():
                setattr(self.settings, name, value)
        if not unchanged:
            self._changed()

    def save_midi(self, name: str | None = None) -> Path:
        """Write the newest loop's MIDI (one track per generated stem, time 0 = the loop's start) to the render
        folder as NAME.mid (default: the loop's own name); returns the path. Names only: OSC never names a folder."""
        if self.render_dir is None:
            raise ValueError("no folder to save MIDI in: start the server with --render-dir DIR")
        newest = self.newest_loop()
        if newest is None or not newest[0].info.get("midi"):
            raise ValueError("no loop with MIDI yet: the accompanist's loops have it (/stemweave/loop/method "
                             "accompanist, then /stemweave/loop/start)")
        loop = newest[0]
        name = name or loop_name(loop)
        if name.endswith(".mid"):
            name = name[:-4]
        if not MIDI_NAME.match(name):
            raise ValueError(f"{name!r:.40} is not a file name (letters, digits, _ . + -; no folders)")
        path = self.render_dir / f"{name}.mid"
        self._write_midi(loop, path)
        self.log(f"loop: wrote {path}")
        return path

    def _write_midi(self, loop: Loop, path: Path) -> None:
        """Write the loop's MIDI bytes atomically (a temporary file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.part")
        temporary.write_bytes(loop.info["midi"])
        temporary.replace(path)

    def set_gain(self, stem: str, gain: float) -> None:
        gain = float(gain)
        if not (GAIN_RANGE[0] <= gain <= GAIN_RANGE[1]) or not math.isfinite(gain):
            raise ValueError(f"gain must be {GAIN_RANGE[0]:g}..{GAIN_RANGE[1]:g} (linear), got {gain:g}")
        known = self.known_stems()
        if known is not None and stem not in known and stem != self.input_stem:
            raise ValueError(f"unknown stem {stem!r}: the model's stems are {', '.join(known)}")
        self.player.set_gain(self._slot(stem), gain)
        self._gains[stem] = gain

    def set_input(self, audio: np.ndarray) -> None:
        """The input loop (channels, frames) at the engine's rate, e.g. recorded drums."""
        self._input = np.asarray(audio, np.float32)

    def capture(self) -> None:
        """Record `bars` bars at the tempo from the input device, then accompany them (source becomes input)."""
        if self.input_device is None:
            raise ValueError("no input device: start the server with --loop-input-device DEVICE")
        with self._lock:
            self._capture = True
            self.settings.source = "input"
        self.next()

    def known_stems(self) -> tuple[str, ...] | None:
        return self.model_stems

    def newest_loop(self) -> tuple[Loop, tuple[float, ...]] | None:
        """The newest finished loop (the pending one while it waits for its bar, else the one playing) and the gain
        target of each of its stems, or None before the first loop. Any thread; reads one reference each."""
        player = self.player
        current, pending = player.current, player._pending
        loop = pending if pending is not None and (current is None or pending.serial > current.serial) else current
        if loop is None:
            return None
        return loop, tuple(float(player._target[slot]) for slot in loop.slots)

    @staticmethod
    def mix(loop: Loop, gains: tuple[float, ...]) -> np.ndarray:
        """The loop's stems summed at `gains`: (channels, frames) float32, C-contiguous."""
        mixed = np.tensordot(np.asarray(gains, np.float32), loop.data, axes=1)  # (frames, channels)
        return np.ascontiguousarray(mixed.T, dtype=np.float32)

    def _slot(self, stem: str) -> int:
        if stem not in self._slots:
            if len(self._slots) >= MAX_SLOTS:
                raise ValueError(f"too many stem names (at most {MAX_SLOTS})")
            self._slots[stem] = len(self._slots)
        return self._slots[stem]

    def status(self) -> dict:
        with self._lock:
            s = self.settings
            status = {"playing": self.player.started, "tempo": s.tempo, "bars": s.bars,
                      "beats_per_bar": BEATS_PER_BAR, "stems": list(s.stems) or list(self.model_stems or ()),
                      "source": s.source, "preset": s.preset, "tempo_source": s.tempo_source,
                      "method": s.method, "style": s.style, "density": s.density, "intensity": s.intensity,
                      "key": s.key or "", "chords": list(s.chords)}
        current = self.player.current
        status.update({
            "audible": self.player.playing, "rate": self.rate, "channels": self.channels, "output": self.output_name,
            "bar": (self.player.position // current.bar_frames) if current is not None else 0,
            "loop": current.serial if current is not None else 0,
            "loop_tempo": current.tempo if current is not None else 0.0,
            "loop_bars": current.bars if current is not None else 0,
            "loop_method": current.info.get("method", "") if current is not None else "",
            "loop_key": ((current.info.get("analysis") or {}).get("key") or "") if current is not None else "",
            "loop_midi": int(bool(current is not None and current.info.get("midi"))),
            "pending": self.player._pending is not None and (current is None or
                                                             self.player._pending.serial > current.serial),
            "generating": self.generating, "loops_made": self.loops_made,
            "last_loop_s": round(self.last_loop_s, 3) if self.last_loop_s is not None else -1.0,
            "render_dir": str(self.render_dir) if self.render_dir else "",
            "error": self.last_error or "",
            "gains": {stem: self._gains.get(stem, 1.0) for stem in dict.fromkeys([*(self.model_stems or ()),
                                                                                   *self._slots])},
        })
        return status

    # Producer thread -------------------------------------------------------------------------------------------
    def _produce(self) -> None:
        try:
            self.model_stems = self.backend.stems()  # known early, so OSC can check stem names
        except Exception:  # noqa: BLE001 - the server may still be loading: asked again with the first loop
            pass
        while True:
            with self._lock:
                while self._made >= self._requested and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                self._made = self._requested
                settings = LoopSettings(**vars(self.settings))
                self._cancel.clear()
                self.generating = True
                self._seed += 2
                seed = self._seed
            try:
                self._make(settings, seed)
            except Exception as error:  # noqa: BLE001 - reported in /status; the current loop keeps playing
                from stemweave.bridge.client import JobCancelled

                if isinstance(error, JobCancelled) and self._cancel.is_set():
                    continue  # superseded by newer settings
                self.last_error = str(error)
                self.log(f"loop: could not make the next loop: {error}")
            finally:
                self.generating = False

    def _make(self, settings: LoopSettings, seed: int) -> None:
        started = time.monotonic()
        if self.model_stems is None:
            try:
                self.model_stems = self.backend.stems()
            except Exception:  # noqa: BLE001 - asked again next time
                pass
        bar = bar_frames(settings.tempo, self.rate)
        frames = bar * settings.bars
        stems = list(settings.stems) or None
        midi, info = None, {}
        if settings.source == "input":
            if self._capture or self._input is None:
                self._capture = False
                self._input = capture_input(self.input_device, frames, self.rate, self.channels)
            given = {self.input_stem: self._channels(fit_loop(self._input, frames))}
            if stems:
                stems = [s for s in stems if s != self.input_stem] or None
            if settings.method == "accompanist":
                made, midi, info = accompanist_loop(self.backend, settings, self.rate, self.channels, stems, seed,
                                                    given, self._cancel)
            else:
                made = accompaniment_loop(self.backend, given, self.rate, stems, settings.preset, seed, self._cancel)
            made = {**given, **made}
        elif settings.method == "accompanist":
            made, midi, info = accompanist_loop(self.backend, settings, self.rate, self.channels, stems, seed,
                                                None, self._cancel)
        else:
            made = generated_loop(self.backend, frames, self.rate, self.channels, stems, settings.preset, seed,
                                  self._cancel)
        if self._cancel.is_set():
            return
        if self.model_stems is None:
            try:
                self.model_stems = self.backend.stems()
            except Exception:  # noqa: BLE001
                pass
        with self._lock:
            if settings.shape() != self.settings.shape():
                return  # out of date: a newer request is already waiting
            self._serial += 1
            serial = self._serial
        loop = self.make_loop(serial, made, bar, settings.bars, settings.tempo,
                              info={"seed": seed, "preset": settings.preset, "source": settings.source,
                                    "method": settings.method, "midi": midi, "analysis": info.get("analysis") or {}})
        self.last_loop_s = time.monotonic() - started
        self.player.hand_over(loop)
        if self.render_dir is not None:
            self.render(loop)
        self.loops_made += 1
        self.last_error = None

    def _channels(self, audio: np.ndarray) -> np.ndarray:
        audio = np.atleast_2d(audio)
        if audio.shape[0] == self.channels:
            return audio
        mono = audio.mean(0, keepdims=True)
        return np.repeat(mono, self.channels, axis=0)

    def make_loop(self, serial: int, stems: dict[str, np.ndarray], bar: int, bars: int, tempo: float,
                  info: dict | None = None) -> Loop:
        """A player-ready Loop from {stem: (channels, frames)}: (K, frames, channels) float32, contiguous."""
        names = tuple(stems)
        data = np.ascontiguousarray(np.stack([self._channels(np.asarray(stems[n], np.float32)).T for n in names]),
                                    dtype=np.float32)
        return Loop(serial, names, data, tuple(self._slot(n) for n in names), bar, bars, float(tempo), info or {})

    def render(self, loop: Loop) -> None:
        """Write the loop (its mix at unit gains, and each stem) to render_dir."""
        from stemweave.engine.audio_io import write_audio

        stem = loop_name(loop)
        write_audio(self.render_dir / f"{stem}.wav", loop.data.sum(0).T, self.rate, bit_depth="32f")
        for k, name in enumerate(loop.stems):
            write_audio(self.render_dir / stem / f"{name}.wav", loop.data[k].T, self.rate, bit_depth="32f")
        if loop.info.get("midi"):
            self._write_midi(loop, self.render_dir / f"{stem}.mid")
        self.log(f"loop: wrote {self.render_dir / stem}.wav")

    def follow_midi_clock(self, port: str, backend: str | None = None) -> MidiClock:
        """Take the tempo (and start/stop) from MIDI clock on `port`."""
        clock = MidiClock(lambda bpm: self.set_tempo(min(max(bpm, TEMPO_RANGE[0]), TEMPO_RANGE[1]), source="midi"),
                          on_start=self.start, on_stop=self.stop)
        self.midi_port = open_midi_clock(port, clock, backend)
        return clock
