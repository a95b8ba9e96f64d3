"""The Heun sampler (EDM Algorithm 2) against the exact probability-flow ODE and against Euler at equal evaluations."""

import math

import pytest
import torch

from stemweave.engine.priors import derivative
from stemweave.engine.sampler import heun_evaluations, heun_steps_for, karras_sigmas, sample_euler, sample_heun


def test_one_step_matches_hand_computation():
    a = 0.3  # a scalar Gaussian prior with variance a: D(x, s) = a x / (a + s^2)
    direction = lambda x, s: (x - a * x / (a + s**2)) / s  # noqa: E731
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    noises = iter([0.7, -0.4])
    out = sample_heun(direction, torch.tensor([1.3], dtype=torch.float64), sigmas, s_churn=0.2,
                      randn=lambda like: torch.full_like(like, next(noises)))
    gamma, x = min(0.2 / 2, math.sqrt(2) - 1), 1.3
    eps = iter([0.7, -0.4])
    for sigma, sigma_next in [(2.0, 0.5), (0.5, 0.0)]:
        s_hat = sigma * (1 + gamma)
        x = x + math.sqrt(s_hat**2 - sigma**2) * next(eps)
        d = direction(x, s_hat)
        x_next = x + (sigma_next - s_hat) * d
        if sigma_next > 0:
            x_next = x + (sigma_next - s_hat) * 0.5 * (d + direction(x_next, sigma_next))
        x = x_next
    assert math.isclose(out.item(), x, rel_tol=1e-12)



def test_one_correction_step_renoises_and_repeats_the_step_by_hand():
    """resamples=1 (MSDM's correction): each noise level is stepped twice, renoised from sigma_next back to sigma in
    between, with the noise drawn in the order churn, (step), renoise, churn, (step)."""
    a = 0.3
    direction = lambda x, s: (x - a * x / (a + s**2)) / s  # noqa: E731
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    draws = [0.7, -1.1, 0.3, 0.9, -0.4, 1.5]  # per level: churn, renoise, churn
    noises = iter(draws)
    out = sample_heun(direction, torch.tensor([1.3], dtype=torch.float64), sigmas, s_churn=0.2, resamples=1,
                      randn=lambda like: torch.full_like(like, next(noises)))
    gamma, x, eps = 0.1, 1.3, iter(draws)
    for sigma, sigma_next in [(2.0, 0.5), (0.5, 0.0)]:
        for r in (1, 0):
            s_hat = sigma * (1 + gamma)
            x = x + math.sqrt(s_hat**2 - sigma**2) * next(eps)
            d = direction(x, s_hat)
            x_next = x + (sigma_next - s_hat) * d
            if sigma_next > 0:
                x_next = x + (sigma_next - s_hat) * 0.5 * (d + direction(x_next, sigma_next))
            x = x_next
            if r > 0:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * next(eps)
    assert next(noises, None) is None and next(eps, None) is None  # all six draws used, by both
    assert math.isclose(out.item(), x, rel_tol=1e-12)
    # the same run without churn still renoises between the two passes: 2 draws, both renoising
    noises = iter([0.5, -0.25])
    out = sample_heun(direction, torch.tensor([1.3], dtype=torch.float64), sigmas, resamples=1,
                      randn=lambda like: torch.full_like(like, next(noises)))
    x = 1.3
    renoise = iter([0.5, -0.25])
    for sigma, sigma_next in [(2.0, 0.5), (0.5, 0.0)]:
        for r in (1, 0):
            d = direction(x, sigma)
            x_next = x + (sigma_next - sigma) * d
            if sigma_next > 0:
                x_next = x + (sigma_next - sigma) * 0.5 * (d + direction(x_next, sigma_next))
            x = x_next
            if r > 0:
                x = x + math.sqrt(sigma**2 - sigma_next**2) * next(renoise)
    assert math.isclose(out.item(), x, rel_tol=1e-12)

def test_heun_beats_euler_on_the_exact_ode_at_equal_evaluations(independent_prior):
    # Probability-flow ODE of a Gaussian prior: per frequency x(0) = sqrt(S / (S + smax^2)) x(smax).
    prior, smax = independent_prior, 1.0
    x = smax * torch.randn(2, 4, prior.length, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gain = torch.sqrt(prior.cov / (prior.cov + smax**2 * torch.eye(4, dtype=torch.float64)))
    exact = prior._apply(torch.nan_to_num(gain), x)
    evaluations = 63  # second order pays off from ~30 evaluations: at 63 the error is 6x smaller
    calls = []

    def direction(x, s):
        calls.append(s)
        return derivative(prior, x, s)

    steps = heun_steps_for(evaluations)
    heun = sample_heun(direction, x, karras_sigmas(steps, 1e-3, smax))
    assert len(calls) == heun_evaluations(steps) == evaluations
    euler = sample_euler(lambda x, s: derivative(prior, x, s), x, karras_sigmas(evaluations, 1e-3, smax))
    heun_error, euler_error = (heun - exact).norm() / exact.norm(), (euler - exact).norm() / exact.norm()
    assert heun_error < euler_error / 4, (heun_error, euler_error)


def test_resamples_and_callback_count():
    calls, steps = [], []
    out = sample_heun(lambda x, s: calls.append(s) or x * 0, torch.zeros(3), karras_sigmas(4, 1e-3, 1.0),
                      resamples=2, callback=lambda state: steps.append(state["step"]))
    assert len(calls) == heun_evaluations(4, 2) == 21 and steps == [1, 2, 3, 4] and out.shape == (3,)


def test_a_preset_chooses_heun_and_its_evaluation_count_is_what_the_tasks_spend(independent_prior, tmp_path):
    from stemweave.engine import tasks
    from stemweave.engine.presets import load_preset

    (tmp_path / "heun.toml").write_text('task = "separate"\n[sampler]\nsteps = 5\nsigma_max = 1.0\nmethod = "heun"\n'
                                        'resamples = 1\n[options]\nlikelihood = "dirac"\n')
    preset = load_preset(tmp_path / "heun.toml")
    calls = []
    denoise = independent_prior.denoise
    independent_prior.denoise = lambda x, s: calls.append(s) or denoise(x, s)
    mixture = torch.randn(1, independent_prior.length, dtype=torch.float64)
    stems = tasks.separate(independent_prior, mixture, preset, generator=torch.Generator().manual_seed(0))
    assert len(calls) == preset.sampler.evaluations == heun_evaluations(5, 1) == 18
    assert torch.allclose(stems.sum(1), mixture)
    (tmp_path / "bad.toml").write_text('task = "separate"\n[sampler]\nmethod = "rk4"\n')
    with pytest.raises(ValueError, match="method must be one of euler, heun"):
        load_preset(tmp_path / "bad.toml")
