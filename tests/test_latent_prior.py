"""LatentPrior: the Prior interface on stem-major latents, unchanged tasks, waveform wrappers, the sigma ~ U(0, 3) loss,
latent datasets and msldm model files."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave.engine import tasks
from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.latent.prior import (
    LatentPrior, accompany_audio, from_state, generate_audio, latent_edm_loss, sample_training_sigma, stack_stems,
    to_state, waveform_task,
)
from stemweave.engine.latent.vae import SourceVAE
from stemweave.engine.sampler import SamplerSettings
from stemweave.engine.unet import UNet1d

STEMS = ("bass", "drums", "guitar", "piano")
C = 4
TINY_VAE = dict(encoder_dim=4, latent_dim=C, decoder_dim=32)
TINY_UNET = dict(in_channels=4 * C, out_channels=4 * C, channels=8, patch_factor=1, multipliers=[2, 2, 2],
                 factors=[2, 2], num_blocks=1, attentions=[False, True], attention_heads=2, attention_features=8,
                 resnet_groups=4)
FAST = SamplerSettings(steps=3, sigma_min=0.01, sigma_max=3.0, s_churn=20.0)


@pytest.fixture(autouse=True)
def one_thread():
    """Two threads on two shared cores run these small models ~20x slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def prior():
    torch.manual_seed(0)
    net = UNet1d(TINY_UNET)
    return LatentPrior(EDMDenoiser(net, sigma_data=0.4, clamp=False).eval(), STEMS, C, vae=SourceVAE(TINY_VAE).eval(),
                       stride=net.stride)


def test_state_layout_is_stem_major():
    z = torch.arange(2 * 4 * C * 5, dtype=torch.float32).reshape(2, 4, C, 5)  # (B, K, C, T)
    stacked = stack_stems(z)
    assert stacked.shape == (2, 4 * C, 5)
    torch.testing.assert_close(stacked[:, 1 * C + 2], z[:, 1, 2])  # channel k*C + c is stem k's channel c
    torch.testing.assert_close(from_state(to_state(z), C), z)


def test_denoise_feeds_the_network_stem_major_channels(prior):
    seen = {}

    def fake(x, sigma):
        seen["x"] = x
        return x * 2

    latent = LatentPrior(fake, STEMS, C)
    z = torch.randn(1, 4, C, 8)
    out = latent.denoise(to_state(z), 0.5)
    torch.testing.assert_close(seen["x"], stack_stems(z))
    torch.testing.assert_close(out, to_state(z) * 2)


def test_unchanged_tasks_run_on_latents(prior):
    frames = 8
    generator = torch.Generator().manual_seed(0)
    x = tasks.generate(prior, 2, C * frames, FAST, generator=generator)
    assert x.shape == (2, 4, C * frames) and torch.isfinite(x).all()
    known = torch.randn(1, 4, C * frames)
    mask = torch.tensor([True, False, True, False])[None, :, None]
    y = tasks.accompany(prior, known, mask, FAST, generator=generator)
    torch.testing.assert_close(y[:, [0, 2]], known[:, [0, 2]])


def test_generate_audio_decodes_each_stem_of_the_sampled_latents(prior):
    """generate_audio = the latents `tasks.generate` samples (same seed), cut per stem, scaled back and decoded
    one stem at a time by the VAE's own decoder, cropped to the asked length."""
    length = 5000
    prior.latent_scale = 2.5  # the card's scale: the decoder must see latents / 2.5
    audio = generate_audio(prior, 2, length, FAST, generator=torch.Generator().manual_seed(1))
    frames = prior.frames_for(length)
    state = tasks.generate(prior, 2, C * frames, FAST, generator=torch.Generator().manual_seed(1))
    latents = state.reshape(2, 4, C, frames) / prior.latent_scale
    with torch.no_grad():
        by_hand = torch.stack([prior.vae.decoder(latents[:, k])[:, 0, :length] for k in range(4)], dim=1)
    assert audio.shape == (2, 4, length)
    scale = float(by_hand.abs().max())  # an untrained decoder speaks at ~1e-6: compare relative to that
    assert scale > 0
    torch.testing.assert_close(audio, by_hand, rtol=1e-4, atol=1e-4 * scale)
    assert float((audio[:, 0] - audio[:, 1]).abs().max()) > 0.1 * scale  # each stem decodes its own latents
    assert waveform_task(prior, "generate") is generate_audio
    assert waveform_task(object(), "accompany") is tasks.accompany


def test_accompany_audio_gives_the_given_stems_back_exactly(prior):
    known = 0.1 * torch.randn(1, 4, 3000)
    mask = torch.tensor([False, True, False, True])[None, :, None]
    out = accompany_audio(prior, known, mask, FAST, generator=torch.Generator().manual_seed(2))
    assert out.shape == known.shape
    assert torch.equal(out[:, [1, 3]], known[:, [1, 3]])
    assert not torch.equal(out[:, 0], known[:, 0])


def test_accompany_audio_with_a_time_range(prior):
    known = 0.1 * torch.randn(1, 4, 3000)
    mask = torch.ones(1, 4, 3000, dtype=torch.bool)
    mask[:, 0, 1000:2000] = False  # regenerate 1000..2000 of the bass
    out = accompany_audio(prior, known, mask, FAST, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[mask], known[mask])
    assert not torch.equal(out[:, 0, 1000:2000], known[:, 0, 1000:2000])


def test_training_sigma_is_uniform_on_the_sampling_range():
    sigma = sample_training_sigma(10_000, generator=torch.Generator().manual_seed(0))
    assert float(sigma.min()) >= 0.01 and float(sigma.max()) <= 3.0
    assert abs(float(sigma.mean()) - 1.505) < 0.05


def test_f_space_loss_equals_the_edm_weighted_loss_and_stays_finite_near_zero():
    torch.manual_seed(0)
    net = UNet1d(dict(TINY_UNET)).double()
    with torch.no_grad():  # a non-trivial network output
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    denoiser = EDMDenoiser(net, sigma_data=0.4, clamp=False)
    x0, noise = 0.5 * torch.randn(3, 4 * C, 8, dtype=torch.float64), torch.randn(3, 4 * C, 8, dtype=torch.float64)
    sigma = torch.tensor([0.05, 0.7, 2.9], dtype=torch.float64)
    denoised = denoiser(x0 + sigma[:, None, None] * noise, sigma)
    weighted = (denoiser.loss_weight(sigma) * (denoised - x0).pow(2).flatten(1).mean(1)).mean()
    torch.testing.assert_close(latent_edm_loss(denoiser, x0, sigma, noise), weighted)
    # at sigma -> 0 the EDM weight is ~1/sigma^2, the F-space loss is not
    net32 = UNet1d(dict(TINY_UNET))
    denoiser32 = EDMDenoiser(net32, sigma_data=0.4, clamp=False)
    tiny = torch.full((3,), 1e-7)
    loss = latent_edm_loss(denoiser32, x0.float(), tiny, noise.float())
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() < 10
    assert all(torch.isfinite(p.grad).all() for p in net32.parameters() if p.grad is not None)


def _write_tracks(root, tracks=2, seconds=0.5, rate=22050):
    rng = np.random.default_rng(0)
    for i in range(tracks):
        folder = root / f"Track{i:05d}"
        folder.mkdir(parents=True)
        for stem in STEMS:
            sf.write(folder / f"{stem}.wav", (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32), rate)


def test_encode_train_export_load_generate_from_the_cli(tmp_path):
    from stemweave.cli import main
    from stemweave.engine.latent.train import (
        LatentChunks, PriorTrainSettings, encode_dataset, encode_long, export_msldm, save_vae, train_prior,
    )
    from stemweave.engine.models import load_msldm

    torch.manual_seed(0)
    vae = SourceVAE(TINY_VAE).eval()
    # chunked encoding with context equals encoding the whole signal (away from the padding)
    audio = 0.1 * torch.randn(vae.samples_for(40))
    with torch.no_grad():
        whole = vae.posterior(audio[None, None]).mean[0]
    torch.testing.assert_close(encode_long(vae, audio, chunk_frames=16, context_frames=8)[:, :38], whole[:, :38],
                               atol=1e-5, rtol=1e-4)

    save_vae(vae, tmp_path / "models", "vae-test")
    _write_tracks(tmp_path / "data")
    manifest = encode_dataset(tmp_path / "models" / "vae-test.json", tmp_path / "data", tmp_path / "latents",
                              log=lambda *_: None)
    chunks = LatentChunks(manifest.parent, frames=8)
    window = next(iter(chunks))
    assert window.shape == (4 * C, 8) and chunks.stems == STEMS

    config = {"name": "test", "vae": dict(TINY_VAE), "prior": {"window_frames": 8},
              "unet": {k: v for k, v in TINY_UNET.items() if k not in ("in_channels", "out_channels")},
              "prior_train": {"batch": 4, "lr": 1e-3}}
    settings = PriorTrainSettings(config=config, latents=str(manifest.parent), run_dir=str(tmp_path / "run"), steps=3,
                                  progress=False, log_every=1000)
    summary = train_prior(settings, valid_windows=chunks.fixed(2), log=lambda *_: None)
    assert summary["step"] == 3 and math.isfinite(summary["loss"])
    export_msldm(tmp_path / "run", tmp_path / "models" / "vae-test.json", "msldm-test", tmp_path / "models")
    loaded = load_msldm(tmp_path / "models" / "msldm-test.json")
    assert loaded.stems == STEMS and loaded.channels == C and loaded.vae.latent_dim == C

    model = str(tmp_path / "models" / "msldm-test.json")
    assert main(["latent", "generate", "--model", model, "--seconds", "0.2", "--steps", "2", "-o",
                 str(tmp_path / "gen"), "--threads", "1"]) == 0
    written, rate = sf.read(tmp_path / "gen" / "generated_bass.wav")
    assert rate == 22050 and len(written) == int(0.2 * 22050)
    given = tmp_path / "data" / "Track00000" / "drums.wav"
    assert main(["latent", "accompany", str(given), "--given", "drums", "--model", model, "--steps", "2", "-o",
                 str(tmp_path / "acc")]) == 0
    drums, _ = sf.read(tmp_path / "acc" / "accompanied_drums.wav", dtype="float32")
    original, _ = sf.read(given, dtype="float32")
    np.testing.assert_array_equal(drums, original)
