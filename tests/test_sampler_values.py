"""The sampler's small print by hand: the churn cap, a one-step schedule, Heun's step budget, what run_sampler passes
on, and what the callback reports (mutation survivors of engine/sampler.py, issue 23)."""

import math

import pytest
import torch

from stemweave.engine.sampler import (SamplerSettings, heun_evaluations, heun_steps_for, karras_sigmas, run_sampler,
                                      sample_euler, sample_heun, seeded_randn)

A = 0.3  # a scalar Gaussian prior with variance A: D(x, s) = A x / (A + s^2)


def direction(x, s):
    return (x - A * x / (A + s**2)) / s


def test_heun_step_budget_by_hand():
    # 2 evaluations per step but 1 for the last: n steps cost 2n - 1, so e evaluations buy (e + 1) // 2 steps
    assert [heun_steps_for(e) for e in (1, 2, 3, 4, 5, 63, 64)] == [1, 1, 2, 2, 3, 32, 32]
    assert [heun_steps_for(e, resamples=1) for e in (2, 6, 18, 19)] == [1, 2, 5, 5]
    assert heun_steps_for(0) == 1  # at least one step
    for steps in (1, 2, 7, 32):
        assert heun_steps_for(heun_evaluations(steps)) == steps and heun_evaluations(steps) == 2 * steps - 1
    assert heun_evaluations(5, 2) == 27 and SamplerSettings(steps=5, resamples=2, method="heun").evaluations == 27
    assert SamplerSettings(steps=5, resamples=2).evaluations == 15


def test_a_one_step_schedule_is_sigma_max_then_zero():
    assert karras_sigmas(1, 1e-4, 2.5).tolist() == pytest.approx([2.5, 0.0], rel=1e-12)
    assert karras_sigmas(2, 0.01, 1.0, rho=1.0).tolist() == pytest.approx([1.0, 0.01, 0.0], rel=1e-12)
    assert SamplerSettings(steps=3, sigma_min=0.1, sigma_max=1.0, rho=1.0).sigmas().tolist() == pytest.approx(
        [1.0, 0.55, 0.1, 0.0], rel=1e-12)
    assert SamplerSettings().sigmas().shape == (151,)  # the defaults: 150 steps from 1.0 to 1e-4
    assert SamplerSettings().sigmas()[0] == 1.0 and SamplerSettings().sigmas()[-2].item() == pytest.approx(1e-4)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_churn_is_capped_at_sqrt2_minus_1(sampler):
    """gamma = min(S_churn / N, sqrt(2) - 1): with S_churn 100 over 2 steps the cap applies."""
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    noises = iter([0.7, -0.4])
    out = sampler(direction, torch.tensor([1.3], dtype=torch.float64), sigmas, s_churn=100.0,
                  randn=lambda like: torch.full_like(like, next(noises)))
    gamma, x, eps = math.sqrt(2) - 1, 1.3, iter([0.7, -0.4])
    for sigma, sigma_next in [(2.0, 0.5), (0.5, 0.0)]:
        s_hat = sigma * (1 + gamma)
        x = x + math.sqrt(s_hat**2 - sigma**2) * next(eps)  # = sigma * sqrt(gamma^2 + 2 gamma) = sigma
        d = direction(x, s_hat)
        x_next = x + (sigma_next - s_hat) * d
        if sampler is sample_heun and sigma_next > 0:
            x_next = x + (sigma_next - s_hat) * 0.5 * (d + direction(x_next, sigma_next))
        x = x_next
    assert out.item() == pytest.approx(x, rel=1e-12)


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_no_churn_and_no_correction_draws_no_noise(sampler):
    def never(like):
        raise AssertionError("noise drawn with s_churn 0 and no correction steps")

    out = sampler(direction, torch.tensor([1.3], dtype=torch.float64), karras_sigmas(3, 0.01, 1.0), randn=never)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", [sample_euler, sample_heun])
def test_callback_reports_step_steps_sigma_and_the_state(sampler):
    seen = []
    sigmas = torch.tensor([2.0, 0.5, 0.0], dtype=torch.float64)
    out = sampler(direction, torch.tensor([1.3], dtype=torch.float64), sigmas,
                  callback=lambda info: seen.append({k: (v.clone() if torch.is_tensor(v) else v) for k, v in info.items()}))
    assert [(s["step"], s["steps"], s["sigma"]) for s in seen] == [(1, 2, 0.5), (2, 2, 0.0)]
    assert set(seen[0]) == {"step", "steps", "sigma", "x"}
    assert torch.equal(seen[-1]["x"], out)
    half = sampler(direction, torch.tensor([1.3], dtype=torch.float64), torch.tensor([2.0, 0.5], dtype=torch.float64))
    assert torch.equal(seen[0]["x"], half)  # the state after the first step


@pytest.mark.parametrize("method,sampler", [("euler", sample_euler), ("heun", sample_heun)])
def test_run_sampler_passes_every_setting_on(method, sampler):
    settings = SamplerSettings(steps=3, sigma_min=0.01, sigma_max=2.0, rho=3.0, s_churn=1.5, resamples=1, method=method)

    def noise(seed):
        generator = torch.Generator().manual_seed(seed)
        return lambda like: torch.randn(like.shape, generator=generator, dtype=like.dtype)

    steps = []
    x0 = torch.tensor([1.3, -0.2], dtype=torch.float64)
    got = run_sampler(settings, direction, x0, randn=noise(5), callback=lambda info: steps.append(info["step"]))
    expected = sampler(direction, x0, karras_sigmas(3, 0.01, 2.0, 3.0), s_churn=1.5, resamples=1, randn=noise(5))
    assert torch.equal(got, expected) and steps == [1, 2, 3]
    other = sample_heun if sampler is sample_euler else sample_euler
    assert not torch.allclose(got, other(direction, x0, karras_sigmas(3, 0.01, 2.0, 3.0), s_churn=1.5, resamples=1,
                                         randn=noise(5)))
    no_churn = sampler(direction, x0, karras_sigmas(3, 0.01, 2.0, 3.0), resamples=1, randn=noise(5))
    assert not torch.allclose(got, no_churn)


def test_schedules_are_float64_by_hand_with_rho_7_by_default():
    middle = (1.0 + 0.5 * (0.01 ** (1 / 7) - 1.0)) ** 7
    assert karras_sigmas(3, 0.01, 1.0).tolist() == pytest.approx([1.0, middle, 0.01, 0.0], rel=1e-12)
    one = karras_sigmas(1, 1e-4, 0.7)  # 0.7 has no exact float32: a float32 schedule would miss it
    assert one.dtype == torch.float64 and one.tolist() == [0.7, 0.0]


def test_seeded_noise_follows_the_generator_and_the_tensor_it_is_like():
    like = torch.zeros(3, 5, dtype=torch.float64)
    first = seeded_randn(torch.Generator().manual_seed(4))(like)
    again = seeded_randn(torch.Generator().manual_seed(4))(like)
    other = seeded_randn(torch.Generator().manual_seed(5))(like)
    assert first.dtype == torch.float64 and first.shape == (3, 5)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first, torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64))


def test_settings_take_one_step_and_refuse_what_cannot_run():
    assert SamplerSettings(steps=1, sigma_min=0.5, sigma_max=0.6).sigmas().tolist() == [0.6, 0.0]
    for bad, says in ((dict(steps=0), "steps >= 1"), (dict(resamples=-1), "resamples >= 0"),
                      (dict(s_churn=-0.1), "s_churn >= 0"), (dict(sigma_min=0.0), "0 < sigma_min < sigma_max"),
                      (dict(sigma_min=1.0, sigma_max=1.0), "0 < sigma_min < sigma_max"),
                      (dict(method="dpm"), "euler")):
        with pytest.raises(ValueError, match="invalid sampler settings") as caught:
            SamplerSettings(**bad)
        assert says in str(caught.value)
