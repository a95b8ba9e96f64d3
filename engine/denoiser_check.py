"""Is a prior a denoiser at all? Its denoising error per sigma next to the trivial denoisers.

A prior that loses to outputting zero is broken, not undertrained (DESIGN.md: the first 4-stem priors
could not represent their own output and lost from sigma 0.1 up). For clean windows x0 and fixed noise
n, x = x0 + sigma n, this measures the mean squared error of

- the prior, D(x, sigma);
- the zero output (the music's power);
- c_skip * x, the EDM skip branch alone (the prior with its network silenced);
- the best scalar shrink alpha* x with alpha* = <x, x0> / <x, x> fitted on the same windows, an oracle
  that is at least as good as both of the above.

The rule (`passes`): the prior must beat the best scalar shrink at every sigma its presets sample. It may
tie (within `TIE`) only where the shrink is itself nearly optimal: where the noise swamps the music
(the shrink is within 5 % of the zero output) or the music swamps the noise (within 5 % of the identity,
whose error is sigma^2): no denoiser can do much better there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

TIE = 1.05  # a tie: at most 5 % above the best scalar shrink (fp16 weights alone cost 2 % at the identity end)
NEAR_TRIVIAL = 0.95  # the shrink is within 5 % of the zero output or of the identity


@dataclass
class SigmaRow:
    sigma: float
    prior: float  # MSE of D(x, sigma)
    zero: float
    skip: float  # c_skip * x
    shrink: float  # the best scalar shrink
    alpha: float  # its factor

    @property
    def ratio(self) -> float:
        """The prior's error over the best scalar shrink's (< 1: it beats it)."""
        return self.prior / self.shrink

    @property
    def tie_allowed(self) -> bool:
        identity = self.sigma**2
        return self.shrink >= NEAR_TRIVIAL * min(self.zero, identity)

    @property
    def passes(self) -> bool:
        return self.ratio < 1 or (self.tie_allowed and self.ratio <= TIE)

    def as_dict(self) -> dict:
        return asdict(self) | {"ratio": self.ratio, "passes": self.passes}


def preset_sigmas(samplers: Iterable, points_per_decade: int = 2) -> list[float]:
    """Log-spaced sigmas over the union of the samplers' [sigma_min, sigma_max], both ends included.

    Below 1e-3 every denoiser is the identity to within the music's own noise floor, so the grid starts there.
    """
    samplers = list(samplers)
    low = max(1e-3, min(s.sigma_min for s in samplers))
    high = max(s.sigma_max for s in samplers)
    count = max(2, int(np.ceil(np.log10(high / low) * points_per_decade)) + 1)
    return [float(s) for s in np.geomspace(low, high, count)]


@torch.no_grad()
def denoiser_table(
    denoise: Callable[[torch.Tensor, float], torch.Tensor],
    clean: torch.Tensor,
    sigmas: Sequence[float],
    sigma_data: float,
    seed: int = 0,
    batch: int = 8,
) -> list[SigmaRow]:
    """One row per sigma for `denoise(x, sigma)` on `clean` windows (windows, channels, time)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(clean.shape, generator=generator)
    power = clean.pow(2).mean().item()
    rows = []
    for sigma in sigmas:
        noisy = clean + sigma * noise
        denoised = torch.cat([denoise(noisy[i : i + batch], sigma) for i in range(0, len(noisy), batch)])
        alpha = (noisy * clean).sum().item() / noisy.pow(2).sum().item()
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        rows.append(SigmaRow(
            sigma=float(sigma),
            prior=(denoised - clean).pow(2).mean().item(),
            zero=power,
            skip=(c_skip * noisy - clean).pow(2).mean().item(),
            shrink=(alpha * noisy - clean).pow(2).mean().item(),
            alpha=alpha,
        ))
    return rows


def presets_of(kind: str) -> list[str]:
    """The shipped presets a model kind samples with: gmsdi-*, msldm-*, or the waveform priors' (the rest)."""
    from stemweave.engine.presets import list_presets

    prefixes = {"gmsdi": ("gmsdi-",), "msldm": ("msldm-",)}
    own = prefixes.get(kind)
    if own:
        return [p for p in list_presets() if p.startswith(own)]
    return [p for p in list_presets() if not p.startswith(("gmsdi-", "msldm-"))]


def check_model(name: str, data: str = "data/test", tracks: int = 5, seconds: float = 12.0,
                sigmas: Sequence[float] | None = None, seed: int = 0) -> tuple[list[SigmaRow], dict]:
    """The denoiser table of a model file on the first `seconds` of `tracks` songs of a rendered split.

    Waveform priors (msdm, isdm) denoise the K stems; MSLDM its stems' latents (the SourceVAE's encoding of
    the same windows); GMSDI the mixture prompted with the caption of all its labels, unguided. The sigmas
    default to the grid over the model's presets (`preset_sigmas`).
    """
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.evaluate import test_tracks
    from stemweave.engine.models import load_prior, model_kind, resolve_model
    from stemweave.engine.presets import list_presets, read_preset

    kind = model_kind(name)
    card = read_card(resolve_model(name))
    stems = tuple(card.get("stems") or ("bass", "drums", "guitar", "piano"))
    rate, window = card["rate"], card["window"]
    tracks_audio = test_tracks(data, window, stems, rate, tracks, seconds)
    clean = torch.from_numpy(np.stack([c for _, audio in tracks_audio
                                       for c in audio.reshape(len(stems), -1, window).transpose(1, 0, 2)]))
    clean = clean.float()  # (windows, K, window)
    if kind in ("msdm", "isdm"):
        prior = load_prior(name)
        denoise, sigma_data = prior.denoise, card["sigma_data"]
    elif kind == "msldm":
        prior = load_prior(name)
        latents = torch.cat([prior.encode(clean[i : i + 4]) for i in range(0, len(clean), 4)])  # (B, K, C, T)
        clean = latents.reshape(latents.shape[0], latents.shape[1], -1)
        denoise, sigma_data = prior.denoise, card["sigma_data"]
    elif kind == "gmsdi":
        from stemweave.engine.gmsdi.text import caption
        from stemweave.engine.gmsdi.train import load_gmsdi

        denoiser, card, encoder = load_gmsdi(name)
        text = encoder.embed([caption(stems)])  # (1, D)
        clean = clean.sum(1, keepdim=True)  # the mixtures (windows, 1, window)
        denoise = lambda y, sigma: denoiser(y, sigma, text.expand(y.shape[0], -1))  # noqa: E731
        sigma_data = card["sigma_data"]
    else:
        raise ValueError(f"{name} is a {kind} model, not a prior: the denoiser check applies to priors")
    if sigmas is None:
        sigmas = preset_sigmas(read_preset(p, list_presets)[2] for p in presets_of(kind))
    rows = denoiser_table(denoise, clean, sigmas, sigma_data, seed)
    return rows, {"model": name, "kind": kind, "windows": int(clean.shape[0]), "data": data, "tracks": tracks,
                  "seconds": seconds, "sigma_data": sigma_data}


def format_table(name: str, rows: Sequence[SigmaRow]) -> str:
    lines = [f"{name}: denoising MSE x 1e3 (lower is better)",
             "| sigma | prior | zero | c_skip x | best scalar shrink | prior / shrink | |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "beats" if r.ratio < 1 else ("ties" if r.passes else "**LOSES**")
        lines.append(f"| {r.sigma:.3g} | {1e3 * r.prior:.4g} | {1e3 * r.zero:.4g} | {1e3 * r.skip:.4g} | "
                     f"{1e3 * r.shrink:.4g} | {r.ratio:.3f} | {verdict} |")
    return "\n".join(lines)


__all__ = ["SigmaRow", "check_model", "denoiser_table", "format_table", "preset_sigmas", "presets_of", "TIE"]
