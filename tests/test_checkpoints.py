"""Model files (safetensors + card, fp16), and the published MSDM Lightning checkpoint loader."""

from __future__ import annotations

import os
import pickle
import sys
import types

import pytest
import torch

from stemweave.engine.checkpoints import (
    load_lightning_checkpoint,
    load_lightning_unet,
    load_model,
    read_card,
    save_model,
)
from stemweave.engine.unet import UNet1d

TINY = dict(channels=8, patch_factor=4, multipliers=[2, 2, 2], factors=[2, 2], num_blocks=1,
            attentions=[False, True], attention_heads=2, attention_features=8, fourier_features=8)
CONFIG = {"name": "tiny", "rate": 22050, "window": 256, "sigma_data": 0.2, "clamp": True, "unet": TINY}


def tiny_net(in_channels=4, out_channels=4, seed=0, **extra):
    torch.manual_seed(seed)
    net = UNet1d(dict(TINY, in_channels=in_channels, out_channels=out_channels, **extra))
    with torch.no_grad():  # the zero-initialised layers would make round trips trivially pass
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def outputs(net, channels=4):
    torch.manual_seed(1)
    x, c = torch.randn(2, channels, 64), torch.randn(2)
    with torch.no_grad():
        return net(x, c)


def test_round_trip_float32(tmp_path):
    net = tiny_net()
    w, card_path = save_model(tmp_path, net, name="m", kind="msdm", stems=["bass", "drums", "guitar", "piano"],
                              config=CONFIG, training={"steps": 3}, metrics={"si_sdri": 1.5})
    assert w.name == "m.safetensors" and card_path.name == "m.json"
    card = read_card(w)
    assert card["kind"] == "msdm" and card["stems"][0] == "bass" and card["rate"] == 22050
    assert card["metrics"] == {"si_sdri": 1.5} and card["training"]["steps"] == 3 and card["dtype"] == "float32"
    loaded = load_model(card_path)
    assert torch.equal(outputs(loaded.net), outputs(net))


def test_round_trip_fp16_is_close(tmp_path):
    net = tiny_net()
    save_model(tmp_path / "h.safetensors", net, name="h", kind="msdm", stems=list("abcd"), config=CONFIG, fp16=True)
    loaded = load_model(tmp_path / "h")
    assert loaded.card["dtype"] == "float16"
    assert next(loaded.net.parameters()).dtype == torch.float32
    torch.testing.assert_close(outputs(loaded.net), outputs(net), atol=2e-2, rtol=1e-2)


def test_isdm_one_file_per_stem_prefixes(tmp_path):
    nets = {s: tiny_net(1, 1, seed=i) for i, s in enumerate(["bass", "drums"])}
    save_model(tmp_path, nets, name="i", kind="isdm", stems=["bass", "drums"], config=CONFIG)
    loaded = load_model(tmp_path / "i.json")
    assert set(loaded.nets) == {"bass", "drums"}
    for s in nets:
        assert torch.equal(outputs(loaded.nets[s], 1), outputs(nets[s], 1))
    with pytest.raises(ValueError):
        loaded.net


def test_save_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        save_model(tmp_path, tiny_net(), name="x", kind="gan", stems=["a"], config=CONFIG)


def _lightning_file(path, net, fake_module):
    """A file shaped like a published MSDM checkpoint: model.unet.* + model.diffusion.net.* + a pickled class."""

    class LogNormalDistribution:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

    LogNormalDistribution.__module__ = fake_module.__name__
    LogNormalDistribution.__qualname__ = "LogNormalDistribution"
    fake_module.LogNormalDistribution = LogNormalDistribution
    state = {}
    for k, v in net.state_dict().items():
        state[f"model.unet.{k}"] = v
        state[f"model.diffusion.net.{k}"] = v.clone()
    checkpoint = {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "1.6.0",
        "state_dict": state,
        "hyper_parameters": {"learning_rate": 1e-4, "diffusion_sigma_distribution": LogNormalDistribution(-3.0, 1.0),
                             "distribution_class": LogNormalDistribution},
    }
    torch.save(checkpoint, path)


def test_published_lightning_checkpoint_loads_without_its_classes(tmp_path):
    fake = types.ModuleType("fake_audio_diffusion_pytorch_diffusion")
    sys.modules[fake.__name__] = fake
    try:
        net = tiny_net()
        _lightning_file(tmp_path / "msdm.ckpt", net, fake)
    finally:
        del sys.modules[fake.__name__]  # the training code is absent at load time, as on a user's machine
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "msdm.ckpt", weights_only=True)  # the reason a restricted unpickler is needed
    checkpoint = load_lightning_checkpoint(tmp_path / "msdm.ckpt")
    assert checkpoint["global_step"] == 1000
    assert "Inert" in type(checkpoint["hyper_parameters"]["diffusion_sigma_distribution"]).__mro__[1].__name__
    loaded, config = load_lightning_unet(tmp_path / "msdm.ckpt", config=CONFIG)
    assert config["unet"]["in_channels"] == 4
    assert torch.equal(outputs(loaded), outputs(net))


def test_lightning_loader_reports_wrong_config(tmp_path):
    torch.save({"state_dict": {f"model.unet.{k}": v for k, v in tiny_net().state_dict().items()}}, tmp_path / "c.ckpt")
    other = dict(CONFIG, unet=dict(TINY, channels=16))
    with pytest.raises(ValueError, match="missing|unexpected"):
        load_lightning_unet(tmp_path / "c.ckpt", config=other)
    torch.save({"state_dict": {"model.other.w": torch.zeros(1)}}, tmp_path / "d.ckpt")
    with pytest.raises(ValueError, match="model.unet"):
        load_lightning_unet(tmp_path / "d.ckpt", config=CONFIG)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    net = tiny_net()
    checkpoint = {
        "state_dict": {f"model.unet.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"payload": _Exploit(marker)},
    }
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_lightning_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        load_lightning_unet(tmp_path / "evil.ckpt", config=CONFIG)
    assert not marker.exists()
