"""The Karras noise schedule and the Euler sampler with churn and correction steps shared by every task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

# A task's constrained ODE direction dx/dsigma at (x, sigma).
Derivative = Callable[[torch.Tensor, float], torch.Tensor]
# Returns standard normal noise shaped like its argument (injected for reproducibility).
Randn = Callable[[torch.Tensor], torch.Tensor]
# Called after every step with {"step", "steps", "sigma", "x"}; raising Cancelled stops the sampler.
Callback = Callable[[dict], None]


class Cancelled(Exception):
    """Raised (by a callback) to stop sampling between two steps."""


@dataclass(frozen=True)
class SamplerSettings:
    """Schedule and sampler hyper-parameters; presets (presets/*.toml) fill these in."""

    steps: int = 150
    sigma_min: float = 1e-4
    sigma_max: float = 1.0
    rho: float = 7.0
    s_churn: float = 0.0
    resamples: int = 0  # R correction steps per noise level

    def __post_init__(self):
        if self.steps < 1 or self.resamples < 0 or self.s_churn < 0:
            raise ValueError(f"invalid sampler settings {self}: steps >= 1, resamples >= 0, s_churn >= 0")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"invalid sampler settings {self}: need 0 < sigma_min < sigma_max")

    def sigmas(self) -> torch.Tensor:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)

    @property
    def evaluations(self) -> int:
        """Network evaluations per window."""
        return self.steps * (self.resamples + 1)


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < n, then a final 0 (EDM Eq. 5)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    inv_max, inv_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def seeded_randn(generator: torch.Generator | None) -> Randn:
    """Noise from `generator` (on the CPU, so a seed gives the same numbers on every device)."""

    def randn(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).to(like.device)

    return randn


def sample_euler(
    derivative: Derivative,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    resamples: int = 0,
    randn: Randn = torch.randn_like,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Euler sampler with churn and R correction steps: MSDM Algorithm 1, lines 2-20.

    Every task is this loop with its own `derivative` (the constraint lives
    there); from sigmas[0] down to sigmas[-1] = 0.
    """
    num_steps = len(sigmas) - 1
    gamma = min(s_churn / num_steps, math.sqrt(2) - 1)  # alpha, line 2
    for i in range(num_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        for r in range(resamples, -1, -1):
            # Increase noise temporarily (lines 5-6).
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * randn(x)
            # Euler step from sigma_hat to sigma_next (lines 7-13).
            x = x + (sigma_next - sigma_hat) * derivative(x, sigma_hat)
            # Correction: go back up to sigma and take the step again (lines 14-17).
            if r > 0:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * randn(x)
        if callback is not None:
            callback({"step": i + 1, "steps": num_steps, "sigma": sigma_next, "x": x})
    return x
