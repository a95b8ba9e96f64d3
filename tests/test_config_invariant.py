"""The U-Net width invariant: every config the project ships can represent its own output (issue 19)."""

import pytest
import torch

from stemweave.engine.latent.train import prior_network_config
from stemweave.engine.latent.vae import load_config as load_latent_config
from stemweave.engine.unet import UNet1d, UNetConfig, list_configs, load_config

# (in, out) channel counts the project trains: MSDM over 4 stems, ISDM one stem, the regression separator 1 -> 4
CHANNELS = [(4, 4), (1, 1), (1, 4)]


@pytest.mark.parametrize("name", list_configs())
@pytest.mark.parametrize("channels", CHANNELS)
def test_every_waveform_config_builds_for_every_stem_count(name, channels):
    config = dict(load_config(name)["unet"], in_channels=channels[0], out_channels=channels[1])
    with torch.device("meta"):
        net = UNet1d(config)
    width = net.patch_out.in_channels
    assert width >= max(channels) * config["patch_factor"]
    assert net.patch_out.out_channels == channels[1] * config["patch_factor"]


def test_the_cpu_latent_prior_config_builds_for_four_stems():
    unet = prior_network_config(load_latent_config("cpu-small"), 4)
    with torch.device("meta"):
        net = UNet1d(unet)
    assert net.patch_out.in_channels >= unet["in_channels"] * unet["patch_factor"]


def test_the_paper_latent_config_breaks_the_invariant_only_by_its_explicit_flag():
    unet = prior_network_config(load_latent_config("paper"), 4)
    assert unet["legacy_narrow_patch"] is True  # the reference's numbers, for its published weights
    with pytest.raises(ValueError, match="512 \\* 1 = 512 wide"):
        UNetConfig.from_dict(dict(unet, legacy_narrow_patch=False)).validate()


def test_a_narrow_patch_level_is_refused_with_its_numbers():
    narrow = UNetConfig(in_channels=4, out_channels=4, channels=32, patch_factor=16, multipliers=(1, 2, 4, 6, 8),
                        factors=(4, 4, 2, 2), attentions=(False, False, True, True))
    with pytest.raises(ValueError, match=r"32 \* 1 = 32 wide.*= 64 numbers.*at least 2"):
        narrow.validate()
    UNetConfig(**{**narrow.__dict__, "multipliers": (2, 2, 4, 6, 8)}).validate()  # exactly wide enough


def test_the_bound_is_tight_on_both_channel_counts():
    base = dict(channels=8, patch_factor=4, factors=(2,), attentions=(False,))
    UNetConfig(in_channels=1, out_channels=4, multipliers=(2, 2), **base).validate()  # 16 for 1 -> 4 x 4
    with pytest.raises(ValueError):
        UNetConfig(in_channels=4, out_channels=1, multipliers=(1, 2), **base).validate()  # the input counts too
    UNetConfig(in_channels=2, out_channels=1, multipliers=(1, 2), **base).validate()  # 8 = 2 x 4


def test_legacy_files_load_only_when_flagged():
    legacy = dict(channels=8, patch_factor=4, multipliers=(1, 2), factors=(2,), attentions=(False,),
                  in_channels=4, out_channels=4)
    with pytest.raises(ValueError):
        UNetConfig(**legacy).validate()
    UNetConfig(**legacy, legacy_narrow_patch=True).validate()


def test_the_model_registry_imports_no_trainer():
    """Loading models must not pull in training code (issue 19 item 7: models -> latent.train -> train -> models)."""
    import subprocess
    import sys

    code = ("import sys, stemweave.engine.models as m; m.load_prior; "
            "print(sorted(k for k in sys.modules if k.startswith('stemweave.engine') and k.endswith('train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
