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
    """The network's own fold and unfold, element by element: patch_in sees channel c * P + j at position i holding
    x[c, i * P + j], and output channel c, sample i * P + j comes from patch_out's channel c * P + j at position i."""
    net = UNet1d(dict(TINY, in_channels=2, out_channels=3, conditioning=False))
    p, b, t = 4, 2, 32
    x = torch.randn(b, 2, t, generator=torch.Generator().manual_seed(0))
    seen = {}
    net.patch_in.register_forward_hook(lambda module, args, out: seen.update(input=args[0].clone()))
    planted = torch.randn(b, 3 * p, t // p, generator=torch.Generator().manual_seed(1))
    net.patch_out.register_forward_hook(lambda module, args, out: planted)
    out = net(x)
    folded = seen["input"]
    assert folded.shape == (b, 2 * p, t // p) and out.shape == (b, 3, t)
    for c in range(2):
        for j in range(p):
            for i in range(t // p):
                assert folded[:, c * p + j, i].tolist() == x[:, c, i * p + j].tolist()
    for c in range(3):
        for j in range(p):
            for i in range(t // p):
                assert out[:, c, i * p + j].tolist() == planted[:, c * p + j, i].tolist()


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
    """Every parameter gets a non-zero gradient (the zero-initialised output layers are perturbed first, since at
    zero they block the gradient to everything upstream), conditioned and unconditioned."""
    torch.manual_seed(0)
    for conditioning in (True, False):
        net = UNet1d(dict(TINY, conditioning=conditioning))
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        net(torch.randn(2, 4, 64), torch.randn(2) if conditioning else None).pow(2).mean().backward()
        names = [name for name, _ in net.named_parameters()]
        dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert len(names) > 20 and dead == [], dead
        assert any("embedding" in name for name in names) == conditioning


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
