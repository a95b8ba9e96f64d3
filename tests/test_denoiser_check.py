"""The denoiser check against closed forms: the exact Wiener denoiser passes, trivial and broken ones do not."""

import pytest
import torch

from stemweave.engine.denoiser_check import denoiser_table, preset_sigmas
from stemweave.engine.sampler import SamplerSettings

SIGMAS = [0.003, 0.03, 0.3, 3.0]


@pytest.fixture
def windows(independent_prior):
    return independent_prior.sample(64, torch.Generator().manual_seed(0)).float()  # (64, 4, 512)


def test_the_scalar_shrink_matches_its_closed_form_on_white_noise():
    clean = torch.randn(64, 1, 4096, generator=torch.Generator().manual_seed(1)) * 0.5
    rows = denoiser_table(lambda x, s: x, clean, [0.5], sigma_data=0.5)
    v, s2 = 0.25, 0.25
    assert rows[0].alpha == pytest.approx(v / (v + s2), rel=0.02)
    assert rows[0].shrink == pytest.approx(v * s2 / (v + s2), rel=0.02)  # the Wiener error of a white signal
    assert rows[0].prior == pytest.approx(s2, rel=0.02)  # the identity's error is sigma^2
    assert rows[0].zero == pytest.approx(v, rel=0.02)
    assert rows[0].skip == pytest.approx((1 - 0.5) ** 2 * v + 0.5**2 * s2, rel=0.02)  # c_skip = 1/2 here


def test_the_exact_denoiser_of_a_coloured_prior_beats_every_trivial_one(independent_prior, windows):
    denoise = lambda x, s: independent_prior.denoise(x.double(), s).float()  # noqa: E731
    rows = denoiser_table(denoise, windows, SIGMAS, sigma_data=float(windows.std()))
    assert all(r.passes and r.ratio < 1 for r in rows)


def test_the_zero_output_only_ties_where_the_noise_swamps_the_music(windows):
    rows = denoiser_table(lambda x, s: torch.zeros_like(x), windows, SIGMAS, sigma_data=0.1)
    assert windows.std() < 0.25  # so sigma 3 is the only level where the noise swamps the music
    assert [r.passes for r in rows] == [False, False, False, True]


def test_a_denoiser_that_adds_a_little_garbage_fails(independent_prior, windows):
    def broken(x, s):  # the exact answer plus an offset 0.6 of the music's level
        return independent_prior.denoise(x.double(), s).float() + 0.6 * windows.std() * torch.ones_like(x)

    rows = denoiser_table(broken, windows, [0.3], sigma_data=float(windows.std()))
    assert not rows[0].passes


def test_the_grid_spans_every_preset_range():
    samplers = [SamplerSettings(steps=10, sigma_min=1e-4, sigma_max=1.0), SamplerSettings(steps=10, sigma_min=0.01, sigma_max=3.0)]
    sigmas = preset_sigmas(samplers)
    assert sigmas[0] == pytest.approx(1e-3) and sigmas[-1] == pytest.approx(3.0)
    assert all(b / a < 10**0.5 * 1.01 for a, b in zip(sigmas, sigmas[1:]))
