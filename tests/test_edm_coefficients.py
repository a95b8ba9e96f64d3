"""EDM preconditioning against Karras et al. 2022, Table 1, written out by hand, and a golden D(x, sigma) of a
seeded tiny network (issue 23: `c_noise = ln sigma` without the 1/4, or `c_in` ignoring sigma, passed every
earlier test because export and latent tests compare the wrapper with itself)."""

import math

import pytest
import torch

from stemweave.engine.denoiser import EDMDenoiser, edm_loss, sample_training_sigma


def table_1(sigma, sd):
    """EDM Table 1, preconditioning column: (c_skip, c_out, c_in, c_noise)."""
    return (sd**2 / (sigma**2 + sd**2), sigma * sd / math.sqrt(sigma**2 + sd**2), 1 / math.sqrt(sigma**2 + sd**2),
            math.log(sigma) / 4)


@pytest.mark.parametrize("sd", [0.2, 0.4, 0.5])
def test_coefficients_are_table_1(sd):
    sigmas = [1e-4, 0.01, 0.2, 0.4, 1.0, 10.0, 80.0]
    got = EDMDenoiser(torch.nn.Identity(), sigma_data=sd).coefficients(torch.tensor(sigmas, dtype=torch.float64))
    for i, sigma in enumerate(sigmas):
        for name, value, expected in zip(("c_skip", "c_out", "c_in", "c_noise"), (c[i].item() for c in got),
                                         table_1(sigma, sd)):
            assert value == pytest.approx(expected, rel=1e-12), (name, sigma, sd)


def test_coefficients_at_hand_computed_points():
    # sigma = sigma_data = 0.2: sqrt(sigma^2 + sd^2) = 0.2 sqrt(2)
    c_skip, c_out, c_in, c_noise = (c.item() for c in EDMDenoiser(torch.nn.Identity()).coefficients(
        torch.tensor([0.2], dtype=torch.float64)))
    assert c_skip == pytest.approx(0.5, rel=1e-12)
    assert c_out == pytest.approx(0.2 / math.sqrt(2), rel=1e-12)  # 0.1414...
    assert c_in == pytest.approx(5 / math.sqrt(2), rel=1e-12)  # 3.5355...
    assert c_noise == pytest.approx(-0.4023594781, rel=1e-9)  # ln(0.2) / 4
    # sigma = 1 with sigma_data 0.4 (MSLDM): sqrt(1.16)
    c_skip, c_out, c_in, c_noise = (c.item() for c in EDMDenoiser(torch.nn.Identity(), sigma_data=0.4).coefficients(
        torch.tensor([1.0], dtype=torch.float64)))
    assert (c_skip, c_out, c_in, c_noise) == pytest.approx((0.16 / 1.16, 0.4 / 1.16**0.5, 1 / 1.16**0.5, 0.0), rel=1e-12)


class Affine(torch.nn.Module):
    """F(y, c) = a y + b c: D is then closed form in the coefficients."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b, self.seen = a, b, []

    def forward(self, y, c_noise):
        self.seen.append((y.clone(), c_noise.clone()))
        return self.a * y + self.b * c_noise[:, None, None]


def test_denoiser_feeds_the_network_c_in_x_and_c_noise_and_mixes_its_output():
    net = Affine(0.7, -0.3)
    denoiser = EDMDenoiser(net, sigma_data=0.2, clamp=False)
    x = torch.tensor([[[0.5, -0.25]], [[0.1, 0.3]]], dtype=torch.float64)
    sigmas = [0.05, 2.0]
    out = denoiser(x, torch.tensor(sigmas, dtype=torch.float64))
    y, c = net.seen[0]
    for i, sigma in enumerate(sigmas):
        c_skip, c_out, c_in, c_noise = table_1(sigma, 0.2)
        torch.testing.assert_close(y[i], c_in * x[i], rtol=1e-12, atol=0)
        assert c[i].item() == pytest.approx(c_noise, rel=1e-12)
        expected = c_skip * x[i] + c_out * (0.7 * c_in * x[i] - 0.3 * c_noise)
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=0)
    # a scalar sigma is broadcast over the batch
    torch.testing.assert_close(denoiser(x, 2.0)[1], out[1], rtol=1e-12, atol=0)


def test_clamp_bounds_the_output_to_minus_one_one_and_only_when_asked():
    big = torch.tensor([[[3.0, -3.0, 0.5]]], dtype=torch.float64)
    zero = Affine(0.0, 0.0)
    # F = 0: D = c_skip x, with c_skip = 0.04 / (0.0001 + 0.04) at sigma 0.01
    c_skip = 0.04 / 0.0401
    torch.testing.assert_close(EDMDenoiser(zero, clamp=True)(big, 0.01), torch.tensor([[[1.0, -1.0, 0.5 * c_skip]]],
                               dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(EDMDenoiser(zero, clamp=False)(big, 0.01), c_skip * big, rtol=1e-12, atol=0)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 2, 3, padding=1, dtype=torch.float64)
        self.film = torch.nn.Linear(1, 2, dtype=torch.float64)

    def forward(self, y, c):
        return torch.tanh(self.conv(y)) + self.film(c[:, None])[:, :, None]


# D(x, sigma) for Tiny() initialised after torch.manual_seed(0), x from Generator seed 1 (torch 2.13, CPU, float64),
# recorded from the implementation checked against Table 1 above; the last entry of the first row clamps to 1.
GOLDEN = [
    [[-0.3334076543372132, -0.7084594805121567, -0.7237516603951977, -0.26645608316396835],
     [-0.23759738976631656, -0.3747699499839231, 0.8588880192347866, 1.0783711008021852]],
    [[-0.004999979315859805, 0.1451467896133166, 0.0018111628323592421, 0.14759237912465029],
     [0.1764544893769014, -0.16944269624308494, -0.20132817666077343, -0.1730673563134298]],
    [[-0.08047822658386367, -0.11186952883708871, -0.03648576662901309, -0.011050948735039439],
     [-0.10812660932392135, -0.06752660760266081, -0.11557028952680393, -0.1240523125544764]],
]


def test_golden_denoiser_output_of_a_seeded_tiny_network():
    torch.manual_seed(0)
    net = Tiny()
    x = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.5, 3.0], dtype=torch.float64)
    golden = torch.tensor(GOLDEN, dtype=torch.float64)
    torch.testing.assert_close(EDMDenoiser(net, clamp=False)(x, sigma), golden, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(EDMDenoiser(net, clamp=True)(x, sigma), golden.clamp(-1, 1), rtol=1e-10, atol=1e-12)
    assert EDMDenoiser(net).sigma_data == 0.2 and EDMDenoiser(net).clamp  # MSDM's defaults


def test_loss_weight_makes_the_effective_target_unit_variance():
    denoiser = EDMDenoiser(Affine(0.0, 0.0), sigma_data=0.2)
    sigma = torch.tensor([0.01, 0.2, 5.0], dtype=torch.float64)
    weight = denoiser.loss_weight(sigma)
    torch.testing.assert_close(weight, (sigma**2 + 0.04) / (0.04 * sigma**2), rtol=1e-12, atol=0)
    _, c_out, _, _ = denoiser.coefficients(sigma)
    torch.testing.assert_close(weight * c_out**2, torch.ones(3, dtype=torch.float64), rtol=1e-12, atol=0)


def test_edm_loss_of_a_zero_network_is_closed_form():
    # F = 0, no clamp: D = c_skip (x0 + sigma n), so the loss is lambda * mean((c_skip (x0 + sigma n) - x0)^2).
    denoiser = EDMDenoiser(Affine(0.0, 0.0), sigma_data=0.2, clamp=False)
    x0 = torch.tensor([[[0.1, -0.2, 0.3]], [[0.0, 0.5, -0.5]]], dtype=torch.float64)
    noise = torch.tensor([[[1.0, 0.0, -1.0]], [[0.5, 0.5, 2.0]]], dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0], dtype=torch.float64)
    expected = 0.0
    for i, s in enumerate((0.1, 1.0)):
        c_skip = 0.04 / (s**2 + 0.04)
        per_item = sum((c_skip * (a + s * n) - a) ** 2 for a, n in zip(x0[i, 0].tolist(), noise[i, 0].tolist())) / 3
        expected += (s**2 + 0.04) / (0.04 * s**2) * per_item / 2
    assert edm_loss(denoiser, x0, sigma, noise).item() == pytest.approx(expected, rel=1e-12)
    # without explicit noise it draws standard normal noise: the same as passing torch's next draw
    torch.manual_seed(3)
    drawn = edm_loss(denoiser, x0, sigma)
    torch.manual_seed(3)
    assert drawn.item() == pytest.approx(edm_loss(denoiser, x0, sigma, torch.randn_like(x0)).item(), rel=1e-12)


def test_training_sigmas_are_lognormal_with_the_reference_defaults():
    got = sample_training_sigma(5, generator=torch.Generator().manual_seed(4))
    expected = (-3.0 + torch.randn(5, generator=torch.Generator().manual_seed(4))).exp()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    got = sample_training_sigma(5, mean=-1.0, std=0.5, generator=torch.Generator().manual_seed(4))
    expected = (-1.0 + 0.5 * torch.randn(5, generator=torch.Generator().manual_seed(4))).exp()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
