"""GMSDI on audio regions: presets (presets/gmsdi-*.toml), a model file + prompts -> TextPrior, and `run`.

`run(task, model, ...)` is what a CLI or the server calls: separate (the
Separator, Eq. 13; the Extractor, Eq. 14; or their ensemble), accompany
(Eq. 12) or generate (Eq. 10) on a region of any rate, channel count and
length, with one prompt per stem and optional negative prompts. It returns
{prompt: float32 (channels, frames)} at the region's rate.

Long regions are cut into model windows. Separation cross-fades windows
with weights that sum to one (engine/windows.py) and then spreads the
residual input - sum(stems) equally over the stems, so the stems sum to the
input. Accompaniment and generation sample window after window, the first
`overlap` samples of each known from the previous one (Eq. 12 with a mask
over time, tasks.accompany). Stereo: separation runs per channel; the parts
of accompaniment and generation are mono, placed in every channel.

A GMSDI preset is an ordinary preset file (task, [sampler]; engine/presets.py
reads it too) plus a [gmsdi] table (method, guidance w, constrained stem,
gamma_x, gamma_y, alpha, beta) and a [negative] table: the negative prompt of
a stem label (Fig. 2 of the paper), used when the caller gives none. An
ensemble preset names its two presets and, in [choice], the method per label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from stemweave.engine.gmsdi import tasks
from stemweave.engine.gmsdi.prior import Prompt, TextPrior
from stemweave.engine.presets import TASKS, read_preset
from stemweave.engine.sampler import SamplerSettings

SEPARATION_METHODS = ("separator", "extractor", "ensemble")
GMSDI_KEYS = {"method": str, "guidance": float, "constrained": str, "gamma_x": float, "gamma_y": float, "alpha": float,
              "beta": float, "separator": str, "extractor": str}
DEFAULT_PRESETS = {"separate": "gmsdi-extract", "accompany": "gmsdi-accompany", "generate": "gmsdi-generate"}


@dataclass(frozen=True)
class GMSDIPreset:
    name: str
    task: str
    description: str
    sampler: SamplerSettings
    method: str | None = None  # separate: separator | extractor | ensemble
    guidance: float = 0.0  # w, Sec. 2.1
    constrained: str | None = None  # the Separator's constrained stem (Eq. 13)
    gamma_x: float = 1.0  # γ_x in Eqs. 10-12 (times sigma)
    gamma_y: float = math.inf  # γ_y in Eqs. 10-12; inf: the mixture ignores the stems
    alpha: float = 1.0  # α in Eq. 12
    beta: float = 1.0  # β in Eq. 12
    negatives: dict[str, str] = field(default_factory=dict)  # label -> negative prompt
    choice: dict[str, str] = field(default_factory=dict)  # ensemble: label -> separator | extractor
    parts: tuple["GMSDIPreset", ...] = ()  # ensemble: (separator preset, extractor preset)

    def negative_for(self, prompt: str) -> str | None:
        return self.negatives.get(prompt.strip().lower())


def list_gmsdi_presets() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("stemweave.presets").iterdir()
                  if p.name.startswith("gmsdi-") and p.name.endswith(".toml"))


def load_gmsdi_preset(name_or_path: str | Path) -> GMSDIPreset:
    """A shipped GMSDI preset by name ('gmsdi-separate') or a .toml file by path."""
    name, data, sampler, folder = read_preset(name_or_path, list_gmsdi_presets)
    task = data["task"]
    options = dict(data.get("gmsdi", {}))
    for key, value in options.items():
        kind = GMSDI_KEYS.get(key)
        if kind is None:
            raise ValueError(f"preset {name!r}: {key!r} is not a GMSDI setting (known: {', '.join(GMSDI_KEYS)})")
        if key in ("gamma_x", "gamma_y") and value == "inf":
            options[key] = math.inf
        elif not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ValueError(f"preset {name!r}: {key} must be a {kind.__name__}, got {value!r}")
    method = options.pop("method", "separator" if task == "separate" else None)
    if task == "separate" and method not in SEPARATION_METHODS:
        raise ValueError(f"preset {name!r}: method must be one of {', '.join(SEPARATION_METHODS)}, got {method!r}")
    parts: tuple[GMSDIPreset, ...] = ()
    if method == "ensemble":
        def part(key):
            ref = options.pop(key, {"separator": "gmsdi-separate", "extractor": "gmsdi-extract"}[key])
            candidate = folder / f"{ref}.toml" if folder is not None else None
            return load_gmsdi_preset(candidate if candidate is not None and candidate.is_file() else ref)
        parts = (part("separator"), part("extractor"))
    options.pop("separator", None), options.pop("extractor", None)
    numbers = {k: float(v) for k, v in options.items() if k != "constrained"}
    return GMSDIPreset(name=name, task=task, description=data.get("description", ""), sampler=sampler, method=method,
                       constrained=options.get("constrained"), negatives={k.lower(): v for k, v in data.get("negative", {}).items()},
                       choice=dict(data.get("choice", {})), parts=parts, **numbers)


# --------------------------------------------------------------------------- model + prompts -> prior


@dataclass
class GMSDIModel:
    """A loaded GMSDI model: its denoiser, card and text encoder (`load`), or any compatible stand-in."""

    denoiser: Callable
    encoder: Any
    null: torch.Tensor
    rate: int
    window: int
    vocabulary: tuple[str, ...] = ()
    card: dict = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "GMSDIModel":
        from stemweave.engine.gmsdi.train import load_gmsdi

        denoiser, card, encoder = load_gmsdi(path, device)
        return cls(denoiser, encoder, denoiser.null_text.detach(), int(card["rate"]), int(card["window"]),
                   tuple(card["text"].get("vocabulary", ())), card, torch.device(device))

    def prior(self, prompts: Sequence[str], negatives: Sequence[str | None] | None, preset: GMSDIPreset,
              allow_unknown: bool = False) -> TextPrior:
        """The TextPrior of the prompts; a prompt without a negative takes the preset's for its label, if any."""
        given = list(negatives) if negatives is not None else [None] * len(prompts)
        if len(given) != len(prompts):
            raise ValueError(f"{len(given)} negative prompts for {len(prompts)} prompts: give one per prompt ('' for none)")
        chosen = [n if n is not None else preset.negative_for(p) for p, n in zip(prompts, given)]
        return TextPrior(self.denoiser, self.encoder, [Prompt(p, n or None) for p, n in zip(prompts, chosen)], null=self.null,
                         guidance=preset.guidance, vocabulary=self.vocabulary, allow_unknown=allow_unknown)


# --------------------------------------------------------------------------- regions


def run(
    task: str,
    model: GMSDIModel | str | Path,
    *,
    prompts: Sequence[str],
    negatives: Sequence[str | None] | None = None,
    audio: np.ndarray | None = None,
    rate: int | None = None,
    given: Mapping[str, np.ndarray] | None = None,
    seconds: float | None = None,
    preset: GMSDIPreset | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    overlap: float = 0.25,
    channels: int = 1,
    allow_unknown: bool = False,
    device: str | torch.device = "cpu",
    progress: Callable[[dict], None] | None = None,
) -> dict[str, np.ndarray]:
    """Run a GMSDI task on a region; returns {prompt: float32 (channels, frames)} at `rate`.

    separate: `audio` (channels, frames) is the mixture, `prompts` name its stems.
    accompany: `given` = {prompt: (channels, frames)} are the known stems;
    `prompts` name the stems to generate (the mixture's prompt joins both).
    generate: `seconds` of the `prompts`' stems at `rate` (default the model's).
    `overrides` replace sampler settings (steps, s_churn, ...) or GMSDI
    settings (guidance, constrained, gamma_x, gamma_y, alpha, beta).
    """
    from stemweave.engine.resample import resample

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    if not isinstance(model, GMSDIModel):
        model = GMSDIModel.load(model, device)
    preset = with_overrides(load_gmsdi_preset(preset or DEFAULT_PRESETS[task]) if not isinstance(preset, GMSDIPreset)
                             else preset, overrides or {})
    if preset.task != task:
        raise ValueError(f"preset {preset.name!r} is for {preset.task}, not {task}")
    prompts = [str(p).strip() for p in prompts]
    if not prompts:
        raise ValueError(f"{task} needs --prompts: one text per stem ('bass' 'drums' ...)")
    generator = torch.Generator().manual_seed(seed)
    rate = int(rate or model.rate)
    report = _Reporter(progress)

    if task == "separate":
        mixture = _audio(audio, "audio")
        signals = resample(mixture, rate, model.rate)  # (channels, samples) at the model rate
        stems = _separate_windows(model, prompts, negatives, preset, signals, overlap, generator, allow_unknown, report)
        out = resample(stems, model.rate, rate)[..., : mixture.shape[-1]]  # (K, channels, frames)
        out = np.pad(out, ((0, 0), (0, 0), (0, mixture.shape[-1] - out.shape[-1])))
        out += (mixture - out.sum(0)) / len(prompts)  # the stems sum to the input exactly
        return {p: out[k].astype(np.float32) for k, p in enumerate(prompts)}

    known_names = list(given or {})
    if task == "accompany" and not known_names:
        raise ValueError("accompany needs at least one given stem: given={'drums': audio, ...}")
    known_audio = [_audio(given[n], f"given stem {n!r}") for n in known_names]
    if task == "accompany":
        shapes = {a.shape for a in known_audio}
        if len(shapes) != 1:
            raise ValueError(f"the given stems must be aligned (same channels and frames), got {sorted(shapes)}")
        channels, frames = known_audio[0].shape
    else:
        if seconds is None or seconds <= 0:
            raise ValueError("generate needs a positive length in seconds")
        frames = int(round(seconds * rate))
    length = max(1, int(round(frames * model.rate / rate)))
    all_prompts = known_names + prompts
    prior = model.prior(all_prompts, [None] * len(known_names) + list(negatives or [None] * len(prompts)), preset,
                        allow_unknown)
    known = np.zeros((len(all_prompts), length), np.float32)
    mask = np.zeros((len(all_prompts), length), bool)
    for k, a in enumerate(known_audio):
        mid = resample(a.mean(0), rate, model.rate)[:length]
        known[k, : mid.shape[-1]], mask[k, : mid.shape[-1]] = mid, True
    parts = _continue_windows(prior, preset, known, mask, model, overlap, generator, report)  # (K, length)
    parts = resample(parts[len(known_names):], model.rate, rate)[..., :frames]
    parts = np.pad(parts, ((0, 0), (0, frames - parts.shape[-1])))
    return {p: np.repeat(parts[j][None], channels, 0).astype(np.float32) for j, p in enumerate(prompts)}


def choose_methods(model: GMSDIModel, prompts: Sequence[str], valid_roots, *, ensemble: GMSDIPreset | str = "gmsdi-ensemble",
                   tracks: int | None = 8, seconds: float | None = 12.0, seed: int = 0,
                   overrides: Mapping[str, Any] | None = None) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """Table 2's ensemble rule on validation data: SI-SDRi per stem of the Separator and the Extractor (MSDM
    protocol, engine/evaluate.py), and per stem the better one. Returns (choice {prompt: method}, scores)."""
    from stemweave.engine.evaluate import evaluate_separation, test_tracks

    preset = with_overrides(load_gmsdi_preset(ensemble) if not isinstance(ensemble, GMSDIPreset) else ensemble,
                             overrides or {})
    labels = tuple(prompts)
    references = test_tracks(valid_roots, model.window, labels, model.rate, tracks=tracks, seconds=seconds)
    scores = {}
    for part in preset.parts:
        separate = window_separator(model, list(prompts), None, part, allow_unknown=False)
        generator = torch.Generator().manual_seed(seed)

        def method(mixtures, _references, separate=separate, generator=generator):
            y = torch.from_numpy(mixtures).to(model.device)
            return separate(y, generator, None).detach().cpu().numpy()

        report = evaluate_separation(part.method, method, references, model.window, model.rate, labels)
        scores[part.method] = report.per_stem
    return tasks.choose_ensemble(scores), scores


def _separate_windows(model, prompts, negatives, preset, signals, overlap, generator, allow_unknown, report) -> np.ndarray:
    """(channels, samples) at the model rate -> (K, channels, samples): each window separated, cross-faded."""
    from stemweave.engine.windows import crossfade, plan_windows

    plan = plan_windows(signals.shape[-1], model.window, overlap)
    padded = np.pad(signals, ((0, 0), (0, plan.padded - signals.shape[-1])))
    out = np.zeros((len(prompts), *padded.shape), np.float64)
    separate = window_separator(model, prompts, negatives, preset, allow_unknown)
    report.plan(plan.count * len(signals), preset.sampler.steps)
    for i in range(plan.count):
        at = slice(plan.start(i), plan.start(i) + plan.window)
        y = torch.from_numpy(np.ascontiguousarray(padded[:, at])).to(model.device)  # (channels, window): a batch
        stems = separate(y, generator, report.callback(len(signals)))  # (channels, K, window)
        out[:, :, at] += stems.detach().cpu().double().numpy().transpose(1, 0, 2) * crossfade(plan, i)
    return out[..., : signals.shape[-1]].astype(np.float32)


def window_separator(model, prompts, negatives, preset, allow_unknown=False):
    """(mixture (B, T), generator, callback) -> stems (B, K, T) by the preset's method."""
    if preset.method == "ensemble":
        separator, extractor = preset.parts
        sep_prior = model.prior(prompts, negatives, separator, allow_unknown)
        ext_prior = model.prior(prompts, negatives, extractor, allow_unknown)
        choice = {p: preset.choice.get(p.lower(), "separator") for p in prompts}
        return lambda y, g, cb: tasks.ensemble(sep_prior, ext_prior, y, choice, separator.sampler, extractor.sampler,
                                               constrained=_constrained(separator, prompts), generator=g, callback=cb)
    prior = model.prior(prompts, negatives, preset, allow_unknown)
    if preset.method == "extractor":
        return lambda y, g, cb: tasks.extract_all(prior, y, preset.sampler, generator=g, callback=cb)
    return lambda y, g, cb: tasks.separate(prior, y, preset.sampler, constrained=_constrained(preset, prompts), generator=g,
                                           callback=cb)


def _constrained(preset: GMSDIPreset, prompts: Sequence[str]) -> int:
    """The preset's constrained label if it is one of the prompts, else the last stem (the paper's choice)."""
    lowered = [p.lower() for p in prompts]
    return lowered.index(preset.constrained.lower()) if preset.constrained and preset.constrained.lower() in lowered else -1


def _continue_windows(prior, preset, known, mask, model, overlap, generator, report) -> np.ndarray:
    """Eq. 12 window by window: window i+1 knows its first `overlap` samples of every stem from window i."""
    from stemweave.engine.windows import plan_windows

    plan = plan_windows(known.shape[-1], model.window, overlap)
    state = np.pad(known, ((0, 0), (0, plan.padded - known.shape[-1])))
    known_mask = np.pad(mask, ((0, 0), (0, plan.padded - mask.shape[-1])), mode="edge")  # a given stem stays given
    report.plan(plan.count, preset.sampler.steps)
    for i in range(plan.count):
        at = slice(plan.start(i), plan.start(i) + plan.window)
        window_mask = known_mask[:, at].copy()
        if i > 0:
            window_mask[:, : plan.overlap] = True  # the previous window's output, exactly
        x = tasks.accompany(prior, torch.from_numpy(state[:, at].copy())[None].to(model.device),
                            torch.from_numpy(window_mask)[None].to(model.device), preset.sampler, alpha=preset.alpha,
                            beta=preset.beta, gamma_x=preset.gamma_x, gamma_y=preset.gamma_y, generator=generator,
                            callback=report.callback(1))
        state[:, at] = x[0].detach().cpu().numpy()
    return state[:, : known.shape[-1]]


def with_overrides(preset: GMSDIPreset, overrides: Mapping[str, Any]) -> GMSDIPreset:
    """The preset with the CLI's or a job's settings (None = keep); unknown keys are a ValueError."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    sampler_keys = set(SamplerSettings.__dataclass_fields__)
    sampler = {k: v for k, v in overrides.items() if k in sampler_keys}
    rest = {k: v for k, v in overrides.items() if k not in sampler_keys}
    unknown = set(rest) - {"guidance", "constrained", "gamma_x", "gamma_y", "alpha", "beta", "method"}
    if unknown:
        raise ValueError(f"unknown GMSDI setting(s) {', '.join(sorted(unknown))}")
    new = replace(preset, sampler=replace(preset.sampler, **sampler), **rest)
    if new.parts:  # an ensemble: sampler settings and w apply to both of its methods
        shared = {**sampler, **({"guidance": rest["guidance"]} if "guidance" in rest else {})}
        new = replace(new, parts=tuple(with_overrides(p, shared) for p in new.parts))
    return new


def _audio(audio, what: str) -> np.ndarray:
    if audio is None:
        raise ValueError(f"{what} is missing")
    a = np.asarray(audio, dtype=np.float32)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.shape[-1] == 0 or not np.isfinite(a).all():
        raise ValueError(f"{what} must be finite float audio shaped (channels, frames), got shape {a.shape}")
    return a


class _Reporter:
    """Per-step progress {"stage", "step", "steps", "fraction"} over all windows."""

    def __init__(self, progress):
        self.progress, self.total, self.done = progress, 1, 0

    def plan(self, windows: int, steps: int) -> None:
        self.total, self.done = max(1, windows * steps), 0

    def callback(self, items: int):
        if self.progress is None:
            return None

        def on_step(info: dict) -> None:
            self.done += items
            self.progress({"stage": "sampling", "step": info["step"], "steps": info["steps"],
                           "fraction": min(1.0, self.done / self.total)})

        return on_step


__all__ = ["DEFAULT_PRESETS", "GMSDIModel", "GMSDIPreset", "list_gmsdi_presets", "load_gmsdi_preset", "run",
           "window_separator"]
