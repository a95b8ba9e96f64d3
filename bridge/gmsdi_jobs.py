"""GMSDI requests on the server: a text-conditioned model whose stems are named by prompts (issue 10).

A GMSDI model (kind "gmsdi") takes a `gmsdi-*` preset and, in the request's
params, `prompts` (one text per stem, default the model's labels),
`negatives` (one per prompt, "" for none; default the preset's Fig. 2
negatives) and `guidance` (w). Results are named by the prompts, made
protocol-safe ("guitar, piano" -> "guitar-piano"). Validation happens here,
at the edge; `run` is what a worker calls. Everything else (queue, cache,
cancel, progress) is the server's, as for any model.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

PARAMS = {"prompts": (list, None, None), "negatives": (list, None, None), "guidance": (float, 0.0, 100.0)}
SAMPLER_KEYS = ("steps", "sigma_min", "sigma_max", "rho", "s_churn", "resamples", "method")
REGION_KEYS = ("overlap", "seconds", "frames", "channels")
MAX_PROMPTS = 16
MAX_PROMPT = 64


def load(path, device: str, backend: str = "torch"):
    """The GMSDI model at `path` (a card); its network runs on torch (it is not exported)."""
    from stemweave.engine.gmsdi.inference import GMSDIModel

    if backend not in ("torch", "auto"):
        raise ValueError(f"GMSDI models run on the torch backend only, not {backend}")
    return GMSDIModel.load(path, device)


def stem_name(prompt: str) -> str:
    """A prompt as a protocol stem name: 'electric guitar' -> 'electric-guitar'."""
    return re.sub(r"[^A-Za-z0-9_.+]+", "-", prompt.strip().lower()).strip("-.") or "stem"


def validate(task: str, preset_name: str, params: dict[str, Any], vocabulary: list[str], given: list[str],
             has_audio: bool) -> dict[str, Any]:
    """The GMSDI part of a job spec, or ValueError with the message for the client."""
    from stemweave.engine.gmsdi.inference import list_gmsdi_presets, load_gmsdi_preset, with_overrides

    if preset_name not in list_gmsdi_presets():
        raise ValueError(f"a GMSDI model takes a GMSDI preset ({', '.join(list_gmsdi_presets())}), not {preset_name!r}")
    preset = load_gmsdi_preset(preset_name)
    if preset.task != task:
        raise ValueError(f"preset {preset_name!r} is for {preset.task}, not {task}")
    unsupported = sorted(set(params) - set(PARAMS) - set(SAMPLER_KEYS) - set(REGION_KEYS) - {"constrained"})
    if unsupported:
        raise ValueError(f"parameter(s) {', '.join(unsupported)} do not apply to a GMSDI model")
    if task == "separate" and not has_audio:
        raise ValueError("separate needs the region's audio (audio frames, one per channel)")
    if task == "accompany" and not given:
        raise ValueError("accompany needs at least one given stem, named by its prompt (given: [names] + frames)")
    prompts = params.get("prompts") or [label for label in vocabulary if label not in given]
    negatives = params.get("negatives")
    if not prompts:
        raise ValueError("no prompts: name the stems to make in params prompts")
    if len(prompts) > MAX_PROMPTS or not all(isinstance(p, str) and p.strip() and len(p) <= MAX_PROMPT for p in prompts):
        raise ValueError(f"params prompts must be 1 to {MAX_PROMPTS} non-empty texts of at most {MAX_PROMPT} characters")
    if negatives is not None and (len(negatives) != len(prompts) or
                                  not all(isinstance(n, str) and len(n) <= MAX_PROMPT for n in negatives)):
        raise ValueError(f"params negatives needs one text per prompt ({len(prompts)}; '' for none)")
    names = [stem_name(p) for p in prompts]
    if len(set(names)) != len(names) or set(names) & set(given):
        raise ValueError(f"the prompts {prompts} name the same stem twice (or a given one)")
    overrides = {k: params[k] for k in (*SAMPLER_KEYS, "guidance", "constrained") if k in params}
    try:
        preset = with_overrides(preset, overrides)
    except (ValueError, TypeError) as error:
        raise ValueError(f"bad preset parameters: {error}") from None
    return {"prompts": list(prompts), "negatives": list(negatives) if negatives is not None else None,
            "overrides": overrides, "names": names, "preset": preset}


def run(spec: dict[str, Any], model, audio: np.ndarray | None, given: dict[str, np.ndarray], rate: int,
        progress: Callable[[dict], None]) -> dict[str, np.ndarray]:
    """Run a validated GMSDI job; {stem name: (channels, frames)}. `progress` may raise to cancel."""
    from stemweave.engine.gmsdi.inference import run as run_gmsdi

    gmsdi, region = spec["gmsdi"], spec["region"]
    seconds = None
    if spec["task"] == "generate":
        seconds = (region.get("frames") or round(region.get("seconds", 0) * rate)) / rate
    stems = run_gmsdi(spec["task"], model, prompts=gmsdi["prompts"], negatives=gmsdi["negatives"], audio=audio,
                      rate=rate, given=given or None, seconds=seconds, preset=gmsdi["preset"], seed=spec["seed"],
                      overlap=region.get("overlap", 0.25), channels=region.get("channels", 1), progress=progress)
    return {name: stems[prompt] for name, prompt in zip(gmsdi["names"], gmsdi["prompts"])}


__all__ = ["PARAMS", "load", "run", "stem_name", "validate"]
