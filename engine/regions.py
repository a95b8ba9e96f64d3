"""The region planner: a region of any rate, channel count and length in; mono model-rate windows through a task; stems out.

`run_region` is the one entry point (the CLI, the API facade and the server
call it). Three small pieces, as in demucs' `apply_model` but kept apart:

* planning (`engine/windows.py`): where the windows go, their cross-fade
  weights;
* running: the task on a batch of windows (a prior through `engine/tasks.py`,
  or a regression separator), with progress and cancellation hung on the
  sampler's per-step callback;
* stitching (`_Output`): finished model-rate samples are resampled back to
  the region's rate with a streaming resampler as soon as no later window
  can change them, so partial results can be handed out and nothing grows
  but the output itself.

Separation. Every window is separated on its own; window i's stems are
weighted by `crossfade(plan, i)`, weights that sum to one at every sample,
so at the model rate the stitched stems sum to the stitched mixture. The
model rate usually differs from the region's, and resampling each stem back
loses what lies above the model's Nyquist frequency (and adds the
resampler's own rounding), so after resampling back the residual
`input - sum(stems)` is split equally over the K stems (the same projection
the regression separator uses, `models.project_to_mixture`): the stems sum
to the input exactly, up to float32 rounding, and no single stem is ever
rescaled on its own. Stems the caller did not ask for are computed (they
are part of the sum) but not returned.

Accompaniment and generation. Window i+1 starts `hop` samples after window i
and shares `overlap` samples with it; those shared samples are known (the
previous window's output, exactly) and the rest is sampled by inpainting
(`tasks.accompany` with a mask over stems and time), so each window
continues the previous one. The overlap's first half is kept exactly; its
second half (CONTINUATION_BLEND) is sampled again with the new window and
cross-faded (sin^2) from the previous window's samples to the new ones,
which hides the small jump that inpainting by replacement can leave where
known samples meet sampled ones. Nothing is concatenated.
MSLDM latent priors (`engine/latent`, kind msldm) take the same windows: a
window's inpainting (`latent.prior.accompany_audio`) encodes the window's
known samples with the SourceVAE, inpaints the unknown latent frames (a
frame is known only if all its hop samples are), decodes, and puts the known
samples back exactly; the window is the model's training window (the card's
`window`: 128 latent frames, 40952 samples for cpu-small). Separation with a
latent prior is refused (not built).
Regenerating a time range is the same inpainting with the stem known outside
the range; only the windows that cover the range (plus `overlap` samples of
context on each side) are run, and at the region's rate the regenerated part
is blended into the untouched input over a few milliseconds.

Loops (`loop_frames`): the chain above generates L model-rate samples; then
one more window, rotated so that the loop's wrap point (L -> 0) sits in its
middle, is inpainted with the samples around the wrap unknown and the loop's
end (left) and start (right) known. The inpainted gap replaces the last and
first samples of the loop (its outer part cross-faded as above), which
therefore continue each other. The loop is
resampled to the region's rate with an FFT resampler, which treats it as
periodic, so the wrap stays seamless at any rate.

Channels. Separation: "independent" separates each channel; "mid-side"
separates (L+R)/2 and (L-R)/2 and decodes each stem back to L/R; either way
the stems keep the input's channel count. Accompaniment and generation
sample one (mono) part against the mid of the given stems, placed in the
centre of every channel (two independent draws would make two different
bass lines); given stems are never changed.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.signal
import soxr
import torch

from stemweave.engine import tasks
from stemweave.engine.latent.prior import LatentPrior, waveform_task
from stemweave.engine.refine import WarmStart
from stemweave.engine.resample import check_rate, resample
from stemweave.engine.sampler import Cancelled
from stemweave.engine.windows import SHAPES, WindowPlan, crossfade, plan_windows

TASKS = ("separate", "accompany", "generate")
CHANNEL_MODES = ("independent", "mid-side")
MAX_CHANNELS = 2
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of working memory for one batch of windows
BYTES_PER_WINDOW_SAMPLE = 2048  # rough activation memory of one window per sample of its length (U-Net, float32)
CONTINUATION_BLEND = 0.5  # share of the overlap that is re-sampled and cross-faded rather than kept exactly
RANGE_FADE_S = 0.005  # seconds over which a regenerated range is blended into the given audio


@dataclass(frozen=True)
class ModelInfo:
    kind: str  # "prior" (diffusion: has .denoise) | "separator" (regression: mixture -> stems)
    stems: tuple[str, ...]
    rate: int
    window: int
    device: torch.device


def describe_model(model) -> ModelInfo:
    """What the region layer needs from a model: kind, stems, rate, window length and device."""
    card = getattr(model, "card", None) or {}
    rate = getattr(model, "rate", None) or card.get("rate")
    window = getattr(model, "window", None) or card.get("window") or getattr(model, "length", None)
    if hasattr(model, "denoise"):
        kind = "prior"
    elif callable(model):
        kind = "separator"
    else:
        raise TypeError(f"{type(model).__name__} is neither a prior (.denoise) nor a separator (callable)")
    if not rate or not window:
        raise ValueError(f"model {type(model).__name__} does not say its sample rate and window length (.rate, .window)")
    return ModelInfo(kind, tuple(model.stems), check_rate(rate), int(window), _device_of(model))


def _device_of(model) -> torch.device:
    if getattr(model, "device", None) is not None:
        return torch.device(model.device)
    for holder in (model, getattr(model, "denoiser", None), *(getattr(model, "denoisers", None) or [])):
        if isinstance(holder, torch.nn.Module):
            for p in holder.parameters():
                return p.device
    return torch.device("cpu")


def batch_size_for(window: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Windows per batch that fit `memory_budget` bytes (a heuristic: BYTES_PER_WINDOW_SAMPLE per sample)."""
    return max(1, int(memory_budget // (window * BYTES_PER_WINDOW_SAMPLE)))


def run_region(
    task: str,
    model,
    audio: np.ndarray | None,
    rate: int,
    preset,
    *,
    stems: list[str] | None = None,
    given: dict[str, np.ndarray] | None = None,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    cancel: threading.Event | None = None,
    on_partial: Callable[[dict], None] | None = None,
    channel_mode: str = "independent",
    overlap: float = 0.25,
    frames: int | None = None,
    seconds: float | None = None,
    channels: int = 1,
    loop_frames: int | None = None,
    regenerate: tuple[int, int] | None = None,
    window_shape: str = "hann",
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    report: dict | None = None,
) -> dict[str, np.ndarray]:
    """Run `task` on a region; returns {stem: float32 (channels, frames)} at `rate`, aligned with the region.

    task: "separate" (audio = the mixture, (channels, frames) float32),
    "accompany" (given = {stem: (channels, frames)}, the known stems; stems =
    the stems to generate, by default every model stem not given;
    regenerate=(start, end) in frames regenerates only that range of the
    `stems`, which are then also given) or "generate" (audio None; length
    from frames or seconds, or loop_frames for a seamless loop; `channels`
    copies of a centred part). `model` is a prior or a regression separator
    (separation only). progress gets {"stage", "window", "windows", "step",
    "steps", "fraction", "eta_s"}; setting `cancel` stops the work within one
    sampler step with `Cancelled`; on_partial gets {"start", "end", "rate",
    "window", "windows", "stems": {stem: (channels, end - start)}} as soon as
    those frames are final. `report`, if given, is filled with the plan
    (windows, batch size, model rate, window, hop).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if channel_mode not in CHANNEL_MODES:
        raise ValueError(f"unknown channel mode {channel_mode!r}: choose one of {', '.join(CHANNEL_MODES)}")
    if window_shape not in SHAPES:
        raise ValueError(f"unknown window shape {window_shape!r}: choose one of {', '.join(SHAPES)}")
    rate = check_rate(rate)
    info = describe_model(model)
    if info.kind == "separator" and task != "separate":
        raise ValueError(f"a regression separator can only separate; {task} needs a diffusion prior")
    if isinstance(model, LatentPrior) and task == "separate":
        raise ValueError("an MSLDM latent prior generates and accompanies; separation with it is not built "
                         "(docs/msldm.md): separate with a regression separator or an msdm prior")
    wanted = _check_stems(stems, info.stems)
    job = _Job(task, model, info, rate, preset, seed, _Progress(progress, cancel, task), on_partial,
               window_shape, report if report is not None else {})
    try:
        if task == "separate":
            mixture = check_audio(audio, "audio")
            if channel_mode == "mid-side" and mixture.shape[0] != 2:
                channel_mode = "independent"  # mid/side of a mono region is the region itself
            if not 0 <= overlap < 1:
                raise ValueError(f"overlap must be in [0, 1) for separation, got {overlap}")
            batch = batch_size or batch_size_for(info.window, memory_budget)
            result = job.separate(mixture, channel_mode, overlap, batch)
        else:
            if not 0 < overlap < 1:
                raise ValueError(f"overlap must be in (0, 1) for {task}: windows continue each other through it")
            if task == "accompany":
                result = job.accompany(given, audio, wanted, overlap, regenerate)
            else:
                result = job.generate(frames, seconds, channels, overlap, loop_frames)
    except Cancelled:
        job = None  # drop every tensor the job held before the caller sees the exception
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise Cancelled("cancelled") from None
    job.progress.emit("done", 1.0, job.progress.windows, job.progress.steps)  # the last window, finished
    return {name: result[name] for name in (wanted or result)}


def check_audio(audio, what: str = "audio") -> np.ndarray:
    """`audio` as float32 (channels, frames), or ValueError saying what is wrong with it."""
    if audio is None:
        raise ValueError(f"{what} is missing")
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    if audio.ndim != 2:
        raise ValueError(f"{what} must be (channels, frames), got shape {audio.shape}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"{what} must be float audio in [-1, 1], got {audio.dtype}")
    if audio.shape[0] > MAX_CHANNELS:
        raise ValueError(f"{what} has {audio.shape[0]} channels; stemweave takes mono or stereo: "
                         "downmix it or split it into stereo pairs first")
    if audio.shape[0] < 1 or audio.shape[1] < 1:
        raise ValueError(f"{what} is empty (zero length)")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise ValueError(f"{what} contains NaN or infinite samples")
    return audio


def _check_stems(stems, model_stems) -> list[str] | None:
    if stems is None:
        return None
    stems = list(stems)
    unknown = [s for s in stems if s not in model_stems]
    if unknown or not stems:
        raise ValueError(f"unknown stem(s) {', '.join(unknown) or '(none given)'}: this model's stems are "
                         f"{', '.join(model_stems)}")
    return stems


def _seed_for(seed: int, *where: int) -> int:
    """A generator seed per (seed, task part, window): the same window gets the same noise however it is batched."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *where]).generate_state(1)[0])


# ---------------------------------------------------------------------------------------------------------------
# Progress and cancellation


class _Progress:
    """Turns per-step sampler callbacks into progress dicts with an ETA, and raises Cancelled when asked to."""

    def __init__(self, callback, cancel: threading.Event | None, stage: str):
        self.callback, self.cancel, self.stage = callback, cancel, stage
        self.windows, self.steps, self.done_windows, self.per_window = 1, 1, 0, 1
        self.started = time.monotonic()

    def plan(self, windows: int, steps: int, per_window: int = 1) -> None:
        """`windows` work items of `steps` steps; `per_window` items (one per channel) make one region window, the
        unit progress reports, as partial results do."""
        self.windows, self.steps, self.per_window = max(1, windows), max(1, steps), max(1, per_window)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled")

    def emit(self, stage: str, fraction: float, window: int = 0, step: int = 0) -> None:
        if self.callback is None:
            return
        fraction = float(min(1.0, fraction))  # before the ETA: a negative ETA is no message a client accepts
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        per = self.per_window
        self.callback({"stage": stage, "window": -(-window // per), "windows": -(-self.windows // per), "step": step,
                       "steps": self.steps, "fraction": fraction, "eta_s": eta})

    def sampler_callback(self, items: int):
        """The sampler callback for a batch of `items` windows: progress, and cancellation between steps."""

        def callback(state: dict) -> None:
            self.check()
            self.step(items, state["step"], state["steps"])
            self.check()

        return callback

    def step(self, items: int, step: int, steps: int) -> None:
        fraction = (self.done_windows + items * step / steps) / self.windows
        self.emit(self.stage, fraction, min(self.windows, self.done_windows + items), step)

    def windows_done(self, items: int) -> None:
        self.done_windows += items


# ---------------------------------------------------------------------------------------------------------------
# Stitching


class _Accumulator:
    """Sums weighted window outputs (signals, K, window) and hands out the prefix no later window adds to."""

    def __init__(self, signals: int, stems: int):
        self.buffer = np.zeros((signals, stems, 0))  # float64
        self.offset = 0  # region sample of buffer[..., 0]

    def add(self, signal: int, start: int, values: np.ndarray) -> None:
        end = start + values.shape[-1] - self.offset
        if end > self.buffer.shape[-1]:
            grow = np.zeros((*self.buffer.shape[:2], end - self.buffer.shape[-1]))
            self.buffer = np.concatenate([self.buffer, grow], axis=-1)
        self.buffer[signal, :, start - self.offset : end] += values

    def pop_until(self, end: int) -> np.ndarray:
        """(signals, K, end - offset) float32: the finished samples, removed from the buffer."""
        cut = min(max(0, end - self.offset), self.buffer.shape[-1])  # what it holds: the offset never runs ahead
        done, self.buffer = self.buffer[..., :cut].astype(np.float32), self.buffer[..., cut:]
        self.offset += cut
        return done


class _Output:
    """Region-rate stems (channels, frames), filled in order from finished model-rate chunks (signals, K, time).

    A streaming resampler per (signal, stem) gives exactly what resampling the
    whole stitched signal at once would; `fix(stems, start, end)` finishes a
    range in place (the sum projection, or blending a regenerated range).
    """

    def __init__(self, names, decode, channels: int, frames: int, rate_model: int, rate: int, signals: int,
                 fix=None, on_partial=None, windows: int = 1):
        self.names, self.decode, self.frames, self.rate = list(names), decode, frames, rate
        self.stems = {name: np.zeros((channels, frames), np.float32) for name in self.names}
        self.stream = None
        if rate_model != rate:
            self.stream = soxr.ResampleStream(rate_model, rate, signals * len(self.names), dtype="float32", quality="VHQ")
        self.fix, self.on_partial, self.windows, self.position = fix, on_partial, windows, 0

    def push(self, chunk: np.ndarray, last: bool, window: int) -> None:
        signals, stems, length = chunk.shape
        flat = chunk.reshape(signals * stems, length)
        if self.stream is not None:
            flat = self.stream.resample_chunk(np.ascontiguousarray(flat.T), last=last).T
        start = self.position
        end = min(self.frames, start + flat.shape[-1])
        decoded = self.decode(flat[:, : end - start].reshape(signals, stems, -1))  # (K, channels, end - start)
        for k, name in enumerate(self.names):
            self.stems[name][:, start:end] = decoded[k]
        if last:
            end = self.frames  # anything the resampler came short by stays zero before `fix`
        if self.fix is not None and end > start:
            self.fix(self.stems, start, end)
        self.position = end
        if self.on_partial is not None and end > start:
            self.on_partial({"start": start, "end": end, "rate": self.rate, "window": window, "windows": self.windows,
                             "stems": {name: s[:, start:end].copy() for name, s in self.stems.items()}})


def _encode(audio: np.ndarray, mode: str) -> np.ndarray:
    """(channels, frames) -> (signals, frames) the model sees: the channels, or mid and side."""
    if mode == "mid-side":
        left, right = audio.astype(np.float64)
        return np.stack([(left + right) / 2, (left - right) / 2]).astype(np.float32)
    return audio


def _decoder(mode: str, channels: int):
    """(signals, K, t) -> (K, channels, t), the inverse of `_encode` (or a centred copy of one signal)."""
    if mode == "mid-side":
        return lambda x: np.stack([x[0] + x[1], x[0] - x[1]], axis=1)
    if mode == "centre":
        return lambda x: np.repeat(x[0][:, None], channels, axis=1)
    return lambda x: x.transpose(1, 0, 2)


def _project_to_sum(mixture: np.ndarray):
    """fix(): add (mixture - sum of stems) / K to every stem over [start, end), in float64."""

    def fix(stems: dict[str, np.ndarray], start: int, end: int) -> None:
        parts = [s[:, start:end].astype(np.float64) for s in stems.values()]
        residual = (mixture[:, start:end] - sum(parts)) / len(parts)
        for s, part in zip(stems.values(), parts):
            s[:, start:end] = part + residual

    return fix


# ---------------------------------------------------------------------------------------------------------------
# Running


class _Job:
    def __init__(self, task, model, info: ModelInfo, rate, preset, seed, progress: _Progress, on_partial, shape, report):
        self.task, self.model, self.info, self.rate, self.preset, self.seed = task, model, info, rate, preset, seed
        self.progress, self.on_partial, self.shape, self.report = progress, on_partial, shape, report

    def _to_model_rate(self, signals: np.ndarray) -> np.ndarray:
        return resample(signals, self.rate, self.info.rate)

    def _report(self, plan: WindowPlan, windows: int, batch: int) -> None:
        self.report.update(windows=windows, batch_size=batch, model_rate=self.info.rate, window=plan.window,
                           hop=plan.hop, overlap=plan.overlap, window_shape=self.shape)

    # Separation ------------------------------------------------------------------------------------
    def separate(self, mixture: np.ndarray, mode: str, overlap: float, batch: int) -> dict[str, np.ndarray]:
        channels, frames = mixture.shape
        self.progress.emit("resample", 0.0)
        signals = self._to_model_rate(_encode(mixture, mode))  # (signals, samples) at the model rate
        plan = plan_windows(signals.shape[-1], self.info.window, overlap)
        items = [(i, s) for i in range(plan.count) for s in range(len(signals))]  # window-major
        self._report(plan, len(items), min(batch, len(items)))
        steps = 1 if self.info.kind == "separator" else self.preset.sampler.steps
        self.progress.plan(len(items), steps, per_window=len(signals))
        signals = np.pad(signals, ((0, 0), (0, plan.padded - signals.shape[-1])))
        accumulator = _Accumulator(len(signals), len(self.info.stems))
        output = _Output(self.info.stems, _decoder(mode, channels), channels, frames, self.info.rate, self.rate,
                         len(signals), fix=_project_to_sum(mixture.astype(np.float64)), on_partial=self.on_partial,
                         windows=plan.count)
        for first in range(0, len(items), batch):
            self.progress.check()
            chunk = items[first : first + batch]
            windows = np.stack([signals[s, plan.start(i) : plan.start(i) + plan.window] for i, s in chunk])
            stems = self._separate_batch(torch.from_numpy(windows)[:, None], chunk)  # (batch, K, window)
            for (i, s), x in zip(chunk, stems):
                accumulator.add(s, plan.start(i), x * crossfade(plan, i, self.shape))
            self.progress.windows_done(len(chunk))
            done = first + len(chunk) == len(items)
            finished = plan.padded if done else plan.start(items[first + len(chunk)][0])
            output.push(accumulator.pop_until(finished), last=done, window=chunk[-1][0] + 1)
        return output.stems

    def _separate_batch(self, mixture: torch.Tensor, chunk) -> np.ndarray:
        """(batch, 1, window) -> (batch, K, window) float64 stems that sum to each window's mixture."""
        mixture = mixture.to(self.info.device)
        if self.info.kind == "separator":
            with torch.inference_mode():
                stems = self.model(mixture)
            self.progress.step(len(chunk), 1, 1)
        else:
            generator = torch.Generator().manual_seed(_seed_for(self.seed, 1, chunk[0][0], chunk[0][1]))
            initial = self.model.first_estimate(mixture) if isinstance(self.model, WarmStart) else None
            stems = tasks.separate(self.model, mixture, self.preset, initial=initial, generator=generator,
                                   callback=self.progress.sampler_callback(len(chunk)))
        return stems.detach().to("cpu", torch.float64).numpy()

    # Accompaniment and generation --------------------------------------------------------------------
    def accompany(self, given, audio, wanted, overlap, regenerate) -> dict[str, np.ndarray]:
        if not given:
            raise ValueError("accompany needs at least one given stem: given={'drums': audio, ...}")
        given = {name: check_audio(a, f"given stem {name!r}") for name, a in given.items()}
        _check_stems(list(given), self.info.stems)
        shapes = {a.shape for a in given.values()} | ({check_audio(audio).shape} if audio is not None else set())
        if len(shapes) != 1:
            raise ValueError(f"the given stems must be aligned, with the same channels and frames; got {sorted(shapes)}")
        channels, frames = next(iter(shapes))
        if regenerate is not None:
            start, end = (int(v) for v in regenerate)
            if not 0 <= start < end <= frames:
                raise ValueError(f"regenerate range {start}:{end} is not inside the region's {frames} frames")
            wanted = wanted or [s for s in self.info.stems if s in given]
            missing = [s for s in wanted if s not in given]
            if missing:
                raise ValueError(f"to regenerate a range of {', '.join(missing)}, give that stem's audio too")
        else:
            wanted = wanted or [s for s in self.info.stems if s not in given]
            if not wanted:
                raise ValueError("every stem is given: name the stems to generate")
        self.progress.emit("resample", 0.0)
        known_stems = {name: self._to_model_rate(a.mean(0))  # the mid, at the model rate
                       for name, a in given.items() if regenerate is not None or name not in wanted}
        length = max(1, int(round(frames * self.info.rate / self.rate)))
        scale = self.info.rate / self.rate
        model_range = None if regenerate is None else (int(start * scale), min(length, math.ceil(end * scale)))
        fix = None if regenerate is None else _blend_range(given, start, end, int(RANGE_FADE_S * self.rate))
        return self._continue(length, channels, frames, overlap, known_stems, wanted, model_range, fix)

    def generate(self, frames, seconds, channels, overlap, loop_frames) -> dict[str, np.ndarray]:
        if loop_frames is not None:
            frames = int(loop_frames)
        elif frames is None:
            if seconds is None:
                raise ValueError("generate needs a length: frames, seconds or loop_frames")
            frames = int(round(float(seconds) * self.rate))
        if frames < 1:
            raise ValueError(f"generate needs a positive length, got {frames} frames")
        if channels not in (1, 2):
            raise ValueError(f"channels must be 1 or 2, got {channels}")
        length = max(1, int(round(frames * self.info.rate / self.rate)))
        if loop_frames is None:
            return self._continue(length, channels, frames, overlap, {}, list(self.info.stems), None, None)
        return self._loop(length, channels, frames, overlap)

    def _continue(self, length, channels, frames, overlap, known_stems, wanted, model_range, fix, output=True):
        """Sample windows in order, each continuing the previous one; returns region-rate stems (or the model-rate
        state (K, padded) when output is False)."""
        plan = plan_windows(length, self.info.window, overlap)
        stems = self.info.stems
        known = np.zeros((len(stems), plan.padded), np.float32)  # (K, padded): given, then generated samples
        mask = np.zeros((len(stems), plan.padded), bool)  # True where a sample is known
        for k, name in enumerate(stems):
            if name in known_stems:
                n = min(length, known_stems[name].shape[-1])
                known[k, :n] = known_stems[name][:n]
                mask[k, :] = True  # past the region's end too: the given stem is silent there, and wholly given
                if model_range is not None and name in wanted:
                    mask[k, model_range[0] : model_range[1]] = False
        first, last = 0, plan.count - 1
        if model_range is not None:  # only the windows covering the range, with `overlap` samples of context
            first = max(0, (model_range[0] - plan.overlap) // plan.hop)
            last = min(plan.count - 1, max(first, math.ceil((model_range[1] + plan.overlap - plan.window) / plan.hop)))
        windows = last - first + 1
        self._report(plan, windows + (1 if not output else 0), 1)
        self.progress.plan(windows + (1 if not output else 0), self.preset.sampler.steps)
        writer = None
        if output:
            writer = _Output(wanted, _decoder("centre", channels), channels, frames, self.info.rate, self.rate, 1,
                             fix=fix, on_partial=self.on_partial, windows=windows)
            rows = [stems.index(s) for s in wanted]
            pushed = 0
        keep = plan.overlap - int(CONTINUATION_BLEND * plan.overlap)  # known samples of the overlap
        fade_in = np.sin(0.5 * np.pi * (np.arange(plan.overlap - keep) + 0.5) / max(1, plan.overlap - keep)) ** 2
        for i in range(first, last + 1):
            self.progress.check()
            at = slice(plan.start(i), plan.start(i) + plan.window)
            window_mask = mask[:, at].copy()
            if i > first:
                window_mask[:, :keep] = True  # the previous window's output, exactly
            previous = known[:, at][:, keep : plan.overlap].copy()
            known[:, at] = self._inpaint(known[:, at], window_mask, 2, i)
            if i > first:  # cross-fade the re-sampled end of the overlap from the previous output to the new one
                zone = slice(plan.start(i) + keep, plan.start(i) + plan.overlap)
                known[:, zone] = previous * (1 - fade_in) + known[:, zone] * fade_in
            self.progress.windows_done(1)
            if writer is not None:
                end = plan.padded if i == last else plan.start(i + 1) + keep
                writer.push(known[rows, pushed:end][None], last=i == last, window=i - first + 1)
                pushed = end
        if writer is None:
            return known
        return writer.stems

    def _inpaint(self, known: np.ndarray, mask: np.ndarray, part: int, index: int) -> np.ndarray:
        """One window (K, window): sample the unknown samples given the known ones (tasks.accompany)."""
        generator = torch.Generator().manual_seed(_seed_for(self.seed, part, index))
        # tasks.accompany on waveform priors; MSLDM's encode / inpaint latents / decode wrapper on a LatentPrior
        # (the same signature; a sample mask becomes a latent-frame mask, given samples come back exactly)
        x = waveform_task(self.model, "accompany")(
            self.model,
            torch.from_numpy(np.ascontiguousarray(known))[None].to(self.info.device),
            torch.from_numpy(mask)[None].to(self.info.device),
            self.preset.sampler,
            guidance=self.preset.options.get("guidance", 0.0),
            generator=generator,
            callback=self.progress.sampler_callback(1),
        )
        return x[0].detach().to("cpu", torch.float32).numpy()

    def _loop(self, length, channels, frames, overlap) -> dict[str, np.ndarray]:
        """A loop of `length` model-rate samples whose end continues into its start (see the module docstring)."""
        state = self._continue(length, channels, frames, overlap, {}, list(self.info.stems), None, None, output=False)
        loop = state[:, :length]  # (K, L)
        window = self.info.window
        half = window // 2  # the wrap point sits in the middle of the wrap window
        gap = max(2, min(int(round(overlap * window)), length // 4))  # unknown samples on each side of the wrap
        blend = int(CONTINUATION_BLEND * gap)  # the outer ones are cross-faded with the loop as it was
        offsets = np.arange(window) - half  # position half is loop sample 0
        rotated = loop[:, offsets % length]  # (K, window), a rotated periodic view of the loop
        distance = np.abs((offsets + length // 2) % length - length // 2)  # to the nearest copy of the wrap
        mask = np.broadcast_to(distance >= gap, rotated.shape).copy()  # every copy of the wrap is unknown
        filled = self._inpaint(rotated, mask, 3, 0)
        self.progress.windows_done(1)
        near = np.arange(half - gap, half + gap)  # the samples around the wrap, in the rotated view
        weight = np.clip((gap - np.abs(offsets[near] + 0.5) + 0.5) / max(1, blend), 0, 1)  # 1 inside, ramps out
        weight = np.sin(0.5 * np.pi * weight) ** 2
        loop = loop.copy()
        loop[:, offsets[near] % length] = rotated[:, near] * (1 - weight) + filled[:, near] * weight
        looped = scipy.signal.resample(loop.astype(np.float64), frames, axis=-1)  # periodic: the wrap survives
        out = {name: np.repeat(looped[k][None], channels, axis=0).astype(np.float32)
               for k, name in enumerate(self.info.stems)}
        if self.on_partial is not None:
            self.on_partial({"start": 0, "end": frames, "rate": self.rate, "window": 1, "windows": 1, "stems": out})
        return out


def _blend_range(given: dict[str, np.ndarray], start: int, end: int, fade: int):
    """fix(): keep the given audio outside [start, end) exactly, the regenerated audio inside, faded over `fade`."""
    fade = max(1, min(fade, (end - start) // 4))

    def fix(stems: dict[str, np.ndarray], a: int, b: int) -> None:
        t = np.arange(a, b)
        inside = np.clip(np.minimum(t - start + 0.5, end - t - 0.5) / fade, 0, 1)  # 0 outside, ramps, 1 inside
        inside = np.sin(0.5 * np.pi * inside) ** 2
        for name, s in stems.items():
            s[:, a:b] = given[name][:, a:b] * (1 - inside) + s[:, a:b] * inside

    return fix
