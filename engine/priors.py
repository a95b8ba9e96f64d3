"""Priors over K stems: what every task asks of a model, whatever its architecture.

A prior turns the noisy K-stem state x (batch, K, time) at noise level sigma
into a denoised estimate D(x, sigma); the tasks only ever use that (through
`derivative`, the ODE direction (x - D) / sigma of MSDM's Eq. 3). MSDM is one
K-channel denoiser (`JointPrior`), ISDM K one-channel denoisers
(`IndependentPrior`); GMSDI's text prior and MSLDM's latent prior implement
the same two methods.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]


class Prior(Protocol):
    stems: tuple[str, ...]

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D(x, sigma): the estimate of the clean stems, shaped like x (batch, K, time)."""
        ...


def derivative(prior: Prior, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """dx/dsigma = (x - D(x, sigma)) / sigma = -sigma * score (MSDM Eq. 3 in Karras form)."""
    return (x - prior.denoise(x, sigma)) / sigma


class JointPrior:
    """MSDM: one denoiser over all K stems as channels, so each stem's score sees the others.

    given_sigma_data: set when the prior was also trained with some stems shown clean (`train --given-share`):
    accompaniment then shows whole given stems clean at this sigma_data's scale (`denoiser.shown_clean`).
    """

    def __init__(self, denoiser: Denoiser, stems: Sequence[str], given_sigma_data: float | None = None):
        self.denoiser = denoiser
        self.stems = tuple(stems)
        self.given_sigma_data = given_sigma_data

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.denoiser(x, sigma)


class IndependentPrior:
    """ISDM: p(x_1..x_K) = prod_k p_k(x_k), one single-stem denoiser per stem."""

    def __init__(self, denoisers: Sequence[Denoiser], stems: Sequence[str]):
        if len(denoisers) != len(stems):
            raise ValueError(f"{len(denoisers)} denoisers for {len(stems)} stems")
        self.denoisers = list(denoisers)
        self.stems = tuple(stems)

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.cat([d(x[:, k : k + 1], sigma) for k, d in enumerate(self.denoisers)], dim=1)
