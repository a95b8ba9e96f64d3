"""An analytic text-conditioned mixture model: a prompt selects stationary Gaussian stems, the denoiser is their Wiener filter.

The stand-in for a trained GMSDI model in tests and examples. Each stem label
has a power spectrum (engine/analytic.py); a prompt is encoded as the
multi-hot vector of its labels, z in {0, 1}^L, and the mixture of the
selected (independent) stems is Gaussian with spectrum sum_l z_l S_l, so

    D(y, sigma, z)_f = P_f / (P_f + sigma^2) Y_f,      P = sum_l z_l S_l

is the exact denoiser of p(y | z). The null embedding z* is the all-halves
vector (each stem present half the time, in expectation).
"""

from __future__ import annotations

from typing import Sequence

import torch

from stemweave.engine.gmsdi.text import UnknownPromptError, labels_of


class MultiHotEncoder:
    """prompt -> multi-hot vector over `labels`; an unknown label raises UnknownPromptError."""

    def __init__(self, labels: Sequence[str]):
        self.labels = tuple(labels)
        self.calls = 0

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        out = torch.zeros(len(prompts), len(self.labels))
        for i, prompt in enumerate(prompts):
            for label in labels_of(prompt):
                if label not in self.labels:
                    raise UnknownPromptError(f"unknown label {label!r}; known: {', '.join(self.labels)}")
                out[i, self.labels.index(label)] = 1.0
        return out


class WienerTextDenoiser:
    """D(y, sigma, z) for y (N, 1, T): the Wiener filter of the mixture of the stems z selects (spectra (L, F))."""

    def __init__(self, spectra: torch.Tensor, labels: Sequence[str]):
        self.spectra = spectra.to(torch.float64)  # (L, F)
        self.labels = tuple(labels)
        self.length = 2 * (spectra.shape[1] - 1)
        self.null_text = torch.full((len(labels),), 0.5)
        self.seen: list[torch.Tensor] = []  # the text rows of every call (tests look at them)

    def __call__(self, y: torch.Tensor, sigma: float, text: torch.Tensor) -> torch.Tensor:
        self.seen.append(text.detach().cpu())
        power = text.to(torch.float64) @ self.spectra  # (N, F)
        spectrum = torch.fft.rfft(y.to(torch.float64), norm="ortho")  # (N, 1, F)
        gain = power / (power + float(sigma) ** 2)
        return torch.fft.irfft(gain[:, None] * spectrum, n=y.shape[-1], norm="ortho").to(y.dtype)


__all__ = ["MultiHotEncoder", "WienerTextDenoiser"]
