"""The Karras noise schedule and the samplers shared by every task: Euler with churn and correction steps
(MSDM Algorithm 1) and Heun (EDM Algorithm 2, Karras et al. 2022), which at equal network evaluations takes
about half the steps. MSDM's correction (resampling) steps are kept in both: with R > 0 each noise level is
stepped R + 1 times, renoised back up in between."""

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


METHODS = ("euler", "heun")


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
    method: str = "euler"  # euler (MSDM Algorithm 1) | heun (EDM Algorithm 2: 2 evaluations per step)

    def __post_init__(self):
        if self.steps < 1 or self.resamples < 0 or self.s_churn < 0:
            raise ValueError(f"invalid sampler settings {self}: steps >= 1, resamples >= 0, s_churn >= 0")
        if self.method not in METHODS:
            raise ValueError(f"invalid sampler settings {self}: method must be one of {', '.join(METHODS)}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"invalid sampler settings {self}: need 0 < sigma_min < sigma_max")

    def sigmas(self) -> torch.Tensor:
        return karras_sigmas(self.steps, self.sigma_min, self.sigma_max, self.rho)

    @property
    def evaluations(self) -> int:
        """Network evaluations per window."""
        if self.method == "heun":
            return heun_evaluations(self.steps, self.resamples)
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


def sample_heun(
    derivative: Derivative,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    s_churn: float = 0.0,
    resamples: int = 0,
    randn: Randn = torch.randn_like,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Heun sampler with churn: EDM Algorithm 2 (S_tmin = 0, S_tmax = inf, S_noise = 1), plus R correction steps."""
    num_steps = len(sigmas) - 1
    gamma = min(s_churn / num_steps, math.sqrt(2) - 1)  # gamma_i, line 4 (every sigma is in [S_tmin, S_tmax])
    for i in range(num_steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        for r in range(resamples, -1, -1):
            # Increase noise temporarily (lines 5-7).
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * randn(x)
            # Euler step from sigma_hat to sigma_next (lines 8-9).
            d = derivative(x, sigma_hat)
            x_next = x + (sigma_next - sigma_hat) * d
            # Apply the second-order correction (lines 10-12).
            if sigma_next > 0:
                d_next = derivative(x_next, sigma_next)
                x_next = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
            x = x_next
            # MSDM's correction: go back up to sigma and take the step again.
            if r > 0:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * randn(x)
        if callback is not None:
            callback({"step": i + 1, "steps": num_steps, "sigma": sigma_next, "x": x})
    return x


def heun_evaluations(steps: int, resamples: int = 0) -> int:
    """Network evaluations of `sample_heun` per window: 2 per step but 1 for the last, times (R + 1)."""
    return (2 * steps - 1) * (resamples + 1)


def heun_steps_for(evaluations: int, resamples: int = 0) -> int:
    """The step count whose Heun run costs at most `evaluations` (at least 1 step)."""
    return max(1, (evaluations // (resamples + 1) + 1) // 2)


def run_sampler(settings: SamplerSettings, derivative: Derivative, x: torch.Tensor, *, randn: Randn,
                callback: Callback | None = None) -> torch.Tensor:
    """Integrate `derivative` from settings.sigma_max to 0 with the settings' method: the one call every task makes."""
    sample = sample_heun if settings.method == "heun" else sample_euler
    return sample(derivative, x, settings.sigmas(), s_churn=settings.s_churn, resamples=settings.resamples,
                  randn=randn, callback=callback)
