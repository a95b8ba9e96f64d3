"""The Karras schedule and the Euler sampler against hand computation and the exact probability-flow ODE."""

import math

import pytest
import torch

from stemweave.engine.sampler import Cancelled, SamplerSettings, karras_sigmas, sample_euler


def test_karras_schedule_matches_its_formula():
    steps, smin, smax, rho = 7, 1e-4, 20.0, 7.0
    sigmas = karras_sigmas(steps, smin, smax, rho)
    assert len(sigmas) == steps + 1 and sigmas[-1] == 0
    for i in range(steps):
        expected = (smax ** (1 / rho) + i / (steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        assert sigmas[i].item() == pytest.approx(expected, rel=1e-12)
    assert torch.all(sigmas[:-1] > sigmas[1:])


def test_two_steps_with_churn_and_correction_match_hand_computation():
    # A scalar Gaussian prior with variance a: D(x, s) = a x / (a + s^2); direction d = (x - D) / s.
    a = 0.3
    denoise = lambda x, s: a * x / (a + s**2)  # noqa: E731
    direction = lambda x, s: (x - denoise(x, s)) / s  # noqa: E731
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    s_churn, resamples = 0.2, 1
    noises = iter([0.7, -1.1, 0.3, 0.9, -0.4, 1.5, 0.2, -0.8])
    randn = lambda like: torch.full_like(like, next(noises))  # noqa: E731
    out = sample_euler(direction, torch.tensor([1.3], dtype=torch.float64), sigmas, s_churn=s_churn, resamples=resamples, randn=randn)

    gamma = min(s_churn / 2, math.sqrt(2) - 1)
    eps = iter([0.7, -1.1, 0.3, 0.9, -0.4, 1.5, 0.2, -0.8])
    x = 1.3
    for sigma, sigma_next in [(2.0, 0.5), (0.5, 0.0)]:
        for r in (1, 0):
            s_hat = sigma * (1 + gamma)
            x = x + math.sqrt(s_hat**2 - sigma**2) * next(eps)
            x = x + (sigma_next - s_hat) * (x - a * x / (a + s_hat**2)) / s_hat
            if r > 0:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * next(eps)
    assert out.item() == pytest.approx(x, rel=1e-12)


def test_churn_zero_without_resampling_is_a_deterministic_ode_solve():
    # Probability-flow ODE of N(0, a): x(s) = x(s0) sqrt((a + s^2) / (a + s0^2)); the last step lands on D(x, sigma_min).
    a = torch.tensor([0.01, 0.04, 0.2], dtype=torch.float64)
    denoise = lambda x, s: a * x / (a + s**2)  # noqa: E731
    direction = lambda x, s: (x - denoise(x, s)) / s  # noqa: E731
    settings = SamplerSettings(steps=400, sigma_min=1e-3, sigma_max=10.0, s_churn=0.0)
    x0 = torch.tensor([5.0, -8.0, 12.0], dtype=torch.float64)
    loud_noise = lambda like: 1e6 * torch.ones_like(like)  # noqa: E731  (must never be used)
    out = sample_euler(direction, x0, settings.sigmas(), randn=loud_noise)
    at_min = x0 * ((a + 1e-6) / (a + 100.0)).sqrt()
    exact = denoise(at_min, 1e-3)
    assert torch.allclose(out, exact, rtol=0.01)


def test_callback_reports_every_step_and_can_cancel():
    seen = []

    def callback(info):
        seen.append((info["step"], info["steps"]))
        if info["step"] == 3:
            raise Cancelled

    settings = SamplerSettings(steps=10, sigma_max=1.0)
    with pytest.raises(Cancelled):
        sample_euler(lambda x, s: x / s, torch.ones(2), settings.sigmas(), callback=callback)
    assert seen == [(1, 10), (2, 10), (3, 10)]


@pytest.mark.parametrize("bad", [dict(steps=0), dict(resamples=-1), dict(sigma_min=2.0, sigma_max=1.0), dict(s_churn=-1)])
def test_invalid_settings_are_refused(bad):
    with pytest.raises(ValueError):
        SamplerSettings(**bad)
