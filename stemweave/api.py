"""The public facade for scripts: separate, accompany and generate on files or arrays, in one call each.

    from stemweave import api
    stems = api.separate("song.wav")                     # {stem: (channels, frames) float32}, at the file's rate
    bass = api.accompany({"drums": "drums.wav"}, generate=["bass"])
    loop = api.generate(seconds=8, rate=44100)

Everything goes through `engine.regions.run_region`, the same path the CLI
and the server take.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from stemweave.engine import models
from stemweave.engine.audio_io import read_audio
from stemweave.engine.checkpoints import read_card
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region

DEFAULT_PRESETS = {"separate": "separate-fast", "accompany": "accompany-fast", "generate": "generate"}
# MSLDM's latent prior samples Karras(0.01, 3) (its training range), not MSDM's (1e-4, 20): its own defaults.
MSLDM_PRESETS = {"accompany": "msldm-accompany-fast", "generate": "msldm-generate"}
# The warm-start preset `stemweave separate` refines a regression separator's first answer with, by default;
# None: the first answer is the answer (README, results: the refinement must measurably improve it first).
DEFAULT_REFINE: str | None = None


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' (CUDA when there is one), 'cpu', 'cuda', 'cuda:N', 'mps'; ValueError naming what exists otherwise."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use auto, cpu or cuda (available here: "
                         f"{', '.join(available_devices())})") from None
    ok = chosen.type == "cpu"
    if chosen.type == "cuda":
        ok = torch.cuda.is_available() and (chosen.index or 0) < torch.cuda.device_count()
    elif chosen.type == "mps":
        ok = torch.backends.mps.is_available()
    if not ok:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ValueError(f"device {device!r} is not available on this machine (torch {torch.__version__}, {build}); "
                         f"available devices: {', '.join(available_devices())}")
    return chosen


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def default_model(task: str) -> str:
    """The shipped model a task uses by default: for separation the regression separator when one ships, else a
    prior; for accompaniment the prior that hears given stems, else the default prior; for generation and for
    refining a separation ("refine") the default prior. ValueError when nothing suitable ships."""
    named = {"separate": ["DEFAULT_SEPARATOR"], "accompany": ["DEFAULT_ACCOMPANY_PRIOR", "DEFAULT_PRIOR"]}
    shipped = models.list_models()
    for attribute in named.get(task, ["DEFAULT_PRIOR"]):
        if getattr(models, attribute, None) in shipped:
            return getattr(models, attribute)
    kinds = (("regression", "msdm", "isdm") if task == "separate" else ("msdm", "isdm"))
    for kind in kinds:
        found = models.list_models(kind)
        if found:
            return found[0]
    raise ValueError(f"no shipped model can {task} yet (shipped: {', '.join(shipped) or 'none'}); "
                     "train one (`stemweave train ... --export-model NAME`) or pass --model PATH to a model file")


def load_task_model(name: str | None, task: str, device: str | torch.device = "cpu", backend: str = "torch",
                    threads: int | None = None):
    """(model, name): a prior or (for separation) a regression separator, by shipped name or model-file path.

    A prior's denoisers run on `backend` (torch, onnx, torchscript or auto: export/backends.py); a regression
    separator is one network evaluation per window and always runs on torch.
    """
    name = name or default_model(task)
    card = read_card(models.resolve_model(name))
    if card.get("kind") == "gmsdi":
        raise ValueError(f"model {name!r} is a GMSDI model: its stems are named by prompts, so use "
                         f"`stemweave gmsdi {'separate' if task == 'refine' else task} --model {name} --prompts ...` "
                         "(docs/gmsdi.md)")
    if card.get("kind") == "msldm":
        if task in ("separate", "refine"):
            raise ValueError(f"model {name!r} is an MSLDM latent prior: it generates and accompanies, but separation "
                             "with a latent prior is not built (docs/msldm.md); separate with "
                             f"{models.DEFAULT_SEPARATOR} or an msdm prior")
        if backend not in ("torch", "auto"):
            raise ValueError(f"model {name!r} (msldm) runs on the torch backend only, not {backend}")
        return models.load_prior(name, device=device), name
    if card.get("kind") == "regression":
        if task != "separate":
            raise ValueError(f"model {name!r} is a regression separator: it can only separate; "
                             f"{task} needs a prior (shipped priors: {', '.join(_priors()) or 'none'})")
        return models.load_separator(name, device=device), name
    if backend == "torch":
        return models.load_prior(name, device=device), name
    from stemweave.export.backends import load_prior_with_backend

    return load_prior_with_backend(name, backend=backend, device=device, threads=threads), name


def _priors() -> list[str]:
    return models.list_models("msdm") + models.list_models("isdm") + models.list_models("msldm")


def default_preset(task: str, model=None) -> str:
    """The preset a task uses when none is named: MSLDM's own for a latent prior (its sigma range), else
    DEFAULT_PRESETS."""
    card = getattr(model, "card", None) or {}
    if card.get("kind") == "msldm" and task in MSLDM_PRESETS:
        return MSLDM_PRESETS[task]
    return DEFAULT_PRESETS[task]


def _audio(source, rate: int | None) -> tuple[np.ndarray, int]:
    if isinstance(source, (str, os.PathLike)):
        return read_audio(source)
    if rate is None:
        raise ValueError("pass rate= with an array")
    audio = np.asarray(source, dtype=np.float32)
    return (audio[None] if audio.ndim == 1 else audio), int(rate)


def _preset(task: str, preset, overrides: dict[str, Any], model=None):
    if preset is None or isinstance(preset, str):
        preset = load_preset(preset or default_preset(task, model))
    return preset.with_overrides(**overrides) if overrides else preset


def separate(source, *, rate: int | None = None, model=None, preset=None, stems=None, seed: int = 0,
             device: str = "auto", overrides: dict | None = None, **kwargs) -> dict[str, np.ndarray]:
    """Separate a file path or a (channels, frames) array; stems sum to the input. kwargs go to run_region."""
    audio, rate = _audio(source, rate)
    if model is None or isinstance(model, str):
        model, _ = load_task_model(model, "separate", resolve_device(device))
    return run_region("separate", model, audio, rate, _preset("separate", preset, overrides or {}), stems=stems,
                      seed=seed, **kwargs)


def accompany(given: dict, *, generate=None, rate: int | None = None, model=None, preset=None, seed: int = 0,
              device: str = "auto", overrides: dict | None = None, **kwargs) -> dict[str, np.ndarray]:
    """Generate stems under the given ones ({stem: path or array}); kwargs (regenerate=...) go to run_region."""
    arrays, rates = {}, set()
    for stem, source in given.items():
        arrays[stem], r = _audio(source, rate)
        rates.add(r)
    if len(rates) != 1:
        raise ValueError(f"the given stems have different sample rates {sorted(rates)}: resample them to one")
    if model is None or isinstance(model, str):
        model, _ = load_task_model(model, "accompany", resolve_device(device))
    return run_region("accompany", model, None, rates.pop(), _preset("accompany", preset, overrides or {}, model),
                      stems=generate, given=arrays, seed=seed, **kwargs)


def generate(*, seconds: float | None = None, rate: int | None = None, stems=None, model=None, preset=None,
             seed: int = 0, device: str = "auto", overrides: dict | None = None, **kwargs) -> dict[str, np.ndarray]:
    """Generate `seconds` of stems (or loop_frames=... for a loop) at `rate` (default: the model's)."""
    if model is None or isinstance(model, str):
        model, _ = load_task_model(model, "generate", resolve_device(device))
    rate = rate or getattr(model, "rate", None) or (getattr(model, "card", None) or {}).get("rate")
    return run_region("generate", model, None, rate, _preset("generate", preset, overrides or {}, model), stems=stems,
                      seconds=seconds, seed=seed, **kwargs)
