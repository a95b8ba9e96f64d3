"""EDM preconditioning (Karras et al. 2022, Table 1): a raw network F becomes a denoiser D(x, sigma)."""

from __future__ import annotations


import torch
from torch import nn


class EDMDenoiser(nn.Module):
    """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise), optionally clamped to [-1, 1].

    `net(x, c_noise)` maps (batch, channels, time) and c_noise (batch,) to the
    same shape. MSDM's waveform models use sigma_data 0.2 and clamp the output;
    MSLDM's latent models use sigma_data 0.4 and no clamp (reference-notes.md).
    """

    def __init__(self, net: nn.Module, sigma_data: float = 0.2, clamp: bool = True):
        super().__init__()
        self.net = net
        self.sigma_data = sigma_data
        self.clamp = clamp

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for sigma shaped (batch,)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        c_skip, c_out, c_in, c_noise = (c[:, None, None] for c in self.coefficients(sigma))
        out = c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1))
        return out.clamp(-1.0, 1.0) if self.clamp else out

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2, which makes the loss unit-variance at every sigma."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2


def shown_clean(clean: torch.Tensor, sigma: torch.Tensor | float, sigma_data: float) -> torch.Tensor:
    """A clean stem scaled so that c_in(sigma) x, the network's input, is clean / sigma_data at every sigma: how a
    prior trained with given stems (`edm_loss(..., given=...)`) hears them, through the unchanged D(x, sigma)."""
    if torch.is_tensor(sigma) and sigma.ndim:  # one sigma per item
        sigma = sigma.reshape(-1, *([1] * (clean.ndim - 1)))
    return clean * (sigma**2 + sigma_data**2) ** 0.5 / sigma_data


def edm_loss(denoiser: EDMDenoiser, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor | None = None,
             given: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted denoising loss E[lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2] (EDM Eq. 8).

    given: bool (batch, K, 1), stems shown clean (`shown_clean`) instead of noised, and left out of the loss: the
    prior learns p(unknown stems | given stems) as well as the joint (docs/priors.md, "Hearing the given stems").
    """
    noise = torch.randn_like(x0) if noise is None else noise
    noisy = x0 + sigma[:, None, None] * noise
    if given is not None:
        noisy = torch.where(given, shown_clean(x0, sigma, denoiser.sigma_data), noisy)
    error = (denoiser(noisy, sigma) - x0).pow(2)
    if given is None:
        per_item = error.flatten(1).mean(1)
    else:
        unknown = (~given).expand_as(error)
        per_item = (error * unknown).flatten(1).sum(1) / unknown.flatten(1).sum(1).clamp_min(1)
    return (denoiser.loss_weight(sigma) * per_item).mean()


def sample_given_stems(batch: int, stems: int, share: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """bool (batch, stems, 1): for `share` of the items a uniformly drawn subset of the stems, neither none nor
    all, is given; the other items have none (they train the joint prior as before)."""
    subset = torch.randint(1, 2**stems - 1, (batch,), generator=generator)
    bits = (subset[:, None] >> torch.arange(stems)) & 1
    chosen = torch.rand(batch, generator=generator) < share
    return (bits.bool() & chosen[:, None])[:, :, None]


def sample_training_sigma(batch: int, mean: float = -3.0, std: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma ~ LogNormal(mean, std), the MSDM reference's training distribution."""
    return (mean + std * torch.randn(batch, generator=generator)).exp()


__all__ = ["EDMDenoiser", "edm_loss", "sample_given_stems", "sample_training_sigma", "shown_clean"]
