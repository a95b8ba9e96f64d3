"""The accompanist's render refined by a prior (SDEdit): noise the rendered parts to a small sigma and sample down
with the given stems inpainted, so the prior can pull the soundfont's timbre towards what it learned while the
notes, timing and key stay the accompanist's."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from stemweave.engine.accompanist.core import Accompaniment
from stemweave.engine.accompanist.render import level_match, to_channels
from stemweave.engine.data.loudness import integrated_loudness
from stemweave.engine.priors import derivative
from stemweave.engine.resample import resample
from stemweave.engine.sampler import SamplerSettings, run_sampler, seeded_randn

REFINE_SIGMA = 0.05  # as separation's refine presets: the prior beats the zero output there (DESIGN.md)
REFINE_STEPS = 12


def _attribute(model, name: str):
    return getattr(model, name, None) or (getattr(model, "card", None) or {}).get(name)


@torch.inference_mode()
def refine(result: Accompaniment, given: Mapping[str, np.ndarray], rate: int, prior, *, sigma: float = REFINE_SIGMA,
           steps: int = REFINE_STEPS, seed: int = 0) -> dict[str, np.ndarray]:
    """Refined copies of `result.stems` (same shapes), level-matched to the accompanist's render.

    Mono at the prior's rate, in windows of the prior's length overlapping by a quarter and cross-faded with
    weights that sum to one; each window: x = render + sigma * noise, then the sampler from sigma to 0 with the
    given stems replaced by their noised copies at every step (MSDM's imputation, Sec. 4.2.2)."""
    model_rate, window = int(_attribute(prior, "rate")), int(_attribute(prior, "window"))
    names = list(prior.stems)
    missing = [s for s in [*given, *result.stems] if s not in names]
    if missing:
        raise ValueError(f"the prior has no stem {', '.join(missing)}: it knows {', '.join(names)}")
    signals = {s: resample(np.asarray(a, np.float32).mean(0), rate, model_rate) for s, a in given.items()}
    signals.update({s: resample(a.mean(0), rate, model_rate) for s, a in result.stems.items()})
    length = next(iter(signals.values())).size
    x0 = np.zeros((len(names), length), np.float32)
    for s, a in signals.items():
        x0[names.index(s), : a.size] = a[:length]
    known = torch.zeros(1, len(names), 1, dtype=torch.bool)
    for s in given:
        known[0, names.index(s)] = True
    hop = window * 3 // 4
    fade = window - hop
    out = np.zeros_like(x0)
    weight = np.zeros(length, np.float32)
    settings = SamplerSettings(steps=steps, sigma_min=1e-4, sigma_max=sigma, rho=7.0, s_churn=0.0)
    generator = torch.Generator().manual_seed(int(seed))
    randn = seeded_randn(generator)
    starts = list(range(0, max(1, length - fade), hop)) or [0]
    for start in starts:
        piece = np.zeros((len(names), window), np.float32)
        chunk = x0[:, start:start + window]
        piece[:, : chunk.shape[1]] = chunk
        clean = torch.from_numpy(piece)[None]  # (1, K, window)
        mask = known.expand_as(clean)

        def with_known(x: torch.Tensor, s: float) -> torch.Tensor:
            return torch.where(mask, clean + s * randn(clean), x)

        x = clean + sigma * randn(clean)
        x = run_sampler(settings, lambda x, s: derivative(prior, with_known(x, s), s), x, randn=randn)
        x = torch.where(mask, clean, x)[0].numpy()
        w = np.ones(window, np.float32)
        if start > 0:
            w[:fade] = np.linspace(0.0, 1.0, fade, dtype=np.float32)
        if start + hop < length - fade:
            w[-fade:] = np.linspace(1.0, 0.0, fade, dtype=np.float32)
        n = chunk.shape[1]
        out[:, start:start + n] += x[:, :n] * w[:n]
        weight[start:start + n] += w[:n]
    out /= np.maximum(weight, 1e-6)
    refined = {}
    for stem, audio in result.stems.items():
        back = resample(out[names.index(stem)], model_rate, rate)[: audio.shape[1]]
        back = np.pad(back, (0, audio.shape[1] - back.size))
        target = integrated_loudness(audio.mean(0).astype(np.float64), rate)
        refined[stem] = to_channels(level_match(back.astype(np.float32), rate, target), audio.shape[0])
    return refined
