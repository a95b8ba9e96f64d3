"""SourceVAE: shapes, the 320 T - 8 <-> T mapping, DAC-layout weight names and loading, losses, a tiny training run."""

import math

import pytest
import torch

from stemweave.engine.latent.vae import (
    Discriminator, LossConfig, SourceVAE, VAEConfig, WNConv1d, WNConvTranspose1d, config_from_dac_state,
    discriminator_loss, generator_losses, load_config, load_dac_file, load_dac_state, multiresolution_stft_loss,
    multiscale_mel_loss,
)

TINY = dict(encoder_dim=4, latent_dim=8, decoder_dim=32)  # hop 320 like the paper, ~0.1M parameters


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on two shared cores run these small models ~20x slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def paper_vae():
    return SourceVAE(load_config("paper")["vae"]).eval()


def test_paper_config_maps_320T_minus_8_samples_to_T_frames_and_back(paper_vae):
    vae = paper_vae
    assert vae.hop == 320 and vae.latent_dim == 80
    for frames in (1, 2, 5, 64, 1024):
        assert vae.samples_for(frames) == 320 * frames - 8
        assert vae.frames_of(320 * frames - 8) == frames
    assert vae.samples_for(1024) == 327672  # the reference's latent window
    x = torch.randn(1, 1, 320 * 3 - 8)
    with torch.no_grad():
        posterior = vae.posterior(x)
        assert posterior.mean.shape == (1, 80, 3)
        assert vae.decode(posterior.mean).shape == (1, 1, 320 * 3 - 8)


def test_tiny_vae_shapes_and_any_length_padding():
    vae = SourceVAE(TINY)
    for frames in (1, 4, 9):
        x = torch.randn(2, 1, vae.samples_for(frames))
        out = vae(x)
        assert out["z"].shape == (2, 8, frames) and out["audio"].shape == x.shape and out["kl"].shape == (2,)
    audio = torch.randn(3, 2, 1000)  # any leading shape, any length
    with torch.no_grad():
        z = vae.encode_audio(audio)
        assert z.shape == (3, 2, 8, vae.frames_for(1000)) and vae.samples_for(z.shape[-1]) >= 1000
        assert vae.decode_latents(z, 1000).shape == (3, 2, 1000)
        assert vae.encode_audio(audio, multiple=8).shape[-1] == 8


def test_posterior_logvar_is_clamped_and_kl_is_finite():
    vae = SourceVAE(TINY)
    with torch.no_grad():
        vae.encoder.block[-1].bias[8:] = 1e4  # huge log-variances
        posterior = vae.posterior(torch.randn(1, 1, vae.samples_for(4)))
    assert float(posterior.logvar.max()) == 20.0
    assert torch.isfinite(posterior.kl()).all()


def dac_layout(encoder_dim, encoder_rates, latent_dim, decoder_dim, decoder_rates):
    """Key -> shape of a DAC-format encoder/decoder state dict, written from DAC's module layout (not from our code)."""
    shapes = {}

    def conv(prefix, cin, cout, k, transposed=False):
        shapes[f"{prefix}.weight_v"] = (cin, cout, k) if transposed else (cout, cin, k)
        shapes[f"{prefix}.weight_g"] = (cin, 1, 1) if transposed else (cout, 1, 1)
        shapes[f"{prefix}.bias"] = (cout,)

    def residual(prefix, dim):
        shapes[f"{prefix}.block.0.alpha"] = (1, dim, 1)
        conv(f"{prefix}.block.1", dim, dim, 7)
        shapes[f"{prefix}.block.2.alpha"] = (1, dim, 1)
        conv(f"{prefix}.block.3", dim, dim, 1)

    d = encoder_dim
    conv("encoder.block.0", 1, d, 7)
    for i, s in enumerate(encoder_rates, start=1):
        for j in range(3):
            residual(f"encoder.block.{i}.block.{j}", d)
        shapes[f"encoder.block.{i}.block.3.alpha"] = (1, d, 1)
        conv(f"encoder.block.{i}.block.4", d, 2 * d, 2 * s)
        d *= 2
    n = len(encoder_rates)
    shapes[f"encoder.block.{n + 1}.alpha"] = (1, d, 1)
    conv(f"encoder.block.{n + 2}", d, 2 * latent_dim, 3)
    conv("decoder.model.0", latent_dim, decoder_dim, 7)
    for i, s in enumerate(decoder_rates, start=1):
        cin, cout = decoder_dim // 2 ** (i - 1), decoder_dim // 2**i
        shapes[f"decoder.model.{i}.block.0.alpha"] = (1, cin, 1)
        conv(f"decoder.model.{i}.block.1", cin, cout, 2 * s, transposed=True)
        for j in range(3):
            residual(f"decoder.model.{i}.block.{j + 2}", cout)
    m = len(decoder_rates)
    shapes[f"decoder.model.{m + 1}.alpha"] = (1, decoder_dim // 2**m, 1)
    conv(f"decoder.model.{m + 2}", decoder_dim // 2**m, 1, 7)
    return shapes


def test_parameter_names_follow_the_dac_layout_in_the_paper_config(paper_vae):
    vae = paper_vae
    expected = dac_layout(64, [2, 4, 5, 8], 80, 1536, [8, 5, 4, 2])
    own = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert own == expected
    assert 55e6 < sum(p.numel() for p in vae.parameters()) < 70e6


def test_weight_norm_matches_torch_weight_norm():
    torch.manual_seed(0)
    for ours, plain, x in (
        (WNConv1d(3, 5, 7, padding=3), torch.nn.Conv1d(3, 5, 7, padding=3), torch.randn(2, 3, 20)),
        (WNConvTranspose1d(5, 3, 10, stride=5, padding=3), torch.nn.ConvTranspose1d(5, 3, 10, stride=5, padding=3),
         torch.randn(2, 5, 6)),
    ):
        with pytest.warns(FutureWarning):
            reference = torch.nn.utils.weight_norm(plain)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
        reference.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), reference(x))


def test_a_dac_format_checkpoint_loads_into_the_paper_config(tmp_path):
    layout = dac_layout(64, [2, 4, 5, 8], 80, 1536, [8, 5, 4, 2])
    generator = torch.Generator().manual_seed(1)
    state = {k: 0.01 * torch.randn(shape, generator=generator) for k, shape in layout.items()}
    state.update({f"quantizer.quantizers.0.in_proj.{n}": torch.zeros(3) for n in ("weight_v", "weight_g")})
    path = tmp_path / "sourcevae.pth"
    kwargs = dict(encoder_dim=64, encoder_rates=[2, 4, 5, 8], latent_dim=80, decoder_dim=1536,
                  decoder_rates=[8, 5, 4, 2], sample_rate=22050)
    torch.save({"state_dict": state, "metadata": {"kwargs": kwargs}}, path)  # DAC's own file layout
    vae = load_dac_file(path)
    assert vae.config.latent_dim == 80 and list(vae.config.encoder_rates) == [2, 4, 5, 8]
    loaded = vae.state_dict()
    for key in ("encoder.block.0.weight_v", "decoder.model.1.block.1.weight_g", "encoder.block.6.bias"):
        torch.testing.assert_close(loaded[key], state[key])
    # without metadata the config is inferred from the shapes
    assert config_from_dac_state(state).to_dict() == VAEConfig().to_dict()
    # a wrong config is refused with a message, never half-loaded
    with pytest.raises(ValueError, match="do not fit"):
        load_dac_state(SourceVAE(dict(TINY)), {"generator": state})


def test_losses_are_finite_and_zero_for_a_perfect_reconstruction():
    x = torch.randn(2, 4000)
    config = LossConfig()
    assert float(multiscale_mel_loss(x, x, 22050, config)) == 0.0
    assert float(multiresolution_stft_loss(x, x, config)) == 0.0
    noisy = x + 0.3 * torch.randn_like(x)
    assert 0 < float(multiscale_mel_loss(noisy, x, 22050, config)) < math.inf
    silent = torch.zeros(2, 4000)
    assert math.isfinite(float(multiscale_mel_loss(silent, x, 22050, config)))


def test_discriminator_losses_are_finite():
    disc = Discriminator(periods=(2, 3), fft_sizes=(256,))
    real, fake = torch.randn(2, 1, 4096), torch.randn(2, 1, 4096)
    out_real, out_fake = disc(real), disc(fake)
    adversarial, features = generator_losses(out_real, out_fake)
    for value in (discriminator_loss(out_real, out_fake), adversarial, features):
        assert torch.isfinite(value)


def test_a_tiny_training_run_lowers_the_reconstruction_loss():
    from stemweave.engine.latent.train import VAETrainSettings, train_vae

    torch.manual_seed(0)
    t = torch.arange(3 * 2552) / 22050
    stems = torch.stack([torch.sin(2 * math.pi * f * t) * 0.3 for f in (110, 220, 330, 440)])  # (K, N)
    dataset = [stems[:, i : i + 2552] for i in range(0, 2 * 2552, 200)]
    config = {"name": "test", "vae": dict(TINY), "vae_train": {"segment_frames": 8, "batch": 8, "lr": 3e-3},
              "vae_loss": {"mel_windows": [64, 256], "mel_bands": [10, 40], "stft_windows": [256], "kl": 0.1}}
    settings = VAETrainSettings(config=config, steps=40, run_dir="", progress=False, log_every=1000, seed=0, threads=1)
    import tempfile

    with tempfile.TemporaryDirectory() as run_dir:
        settings.run_dir = run_dir
        summary = train_vae(settings, dataset=dataset, log=lambda *_: None)
    assert summary["step"] == 40
    assert summary["loss"] < 0.8 * summary["first_loss"]
