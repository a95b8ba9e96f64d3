"""MSLDM (kind msldm) through the model registry, the region layer, the task CLI, evaluate --generation and the server,
with a tiny randomly initialised model file built here (no trained weights)."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave.engine import models
from stemweave.engine.latent.prior import LatentPrior
from stemweave.engine.latent.train import save_msldm
from stemweave.engine.latent.vae import SourceVAE
from stemweave.engine.unet import UNet1d

STEMS = ("bass", "drums", "guitar", "piano")
C = 4
TINY_VAE = dict(encoder_dim=4, latent_dim=C, decoder_dim=32)
TINY_UNET = dict(in_channels=4 * C, out_channels=4 * C, channels=8, patch_factor=1, multipliers=[2, 2, 2],
                 factors=[2, 2], num_blocks=1, attentions=[False, True], attention_heads=2, attention_features=8,
                 resnet_groups=4, conditioning=True)
WINDOW_FRAMES = 16  # 5112 samples (0.23 s at 22.05 kHz): regions of a second take several windows
RATE = 22050


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    """A model folder holding a tiny msldm model `msldm-tiny`, installed as the shipped models' folder."""
    torch.manual_seed(0)
    folder = tmp_path / "models"
    save_msldm(SourceVAE(TINY_VAE), UNet1d(TINY_UNET), STEMS, folder, "msldm-tiny", window_frames=WINDOW_FRAMES,
               config_name="test")
    monkeypatch.setattr(models, "MODEL_DIR", folder)
    return folder


def _write(path, audio, rate):
    sf.write(path, np.asarray(audio, np.float32).T, rate, subtype="FLOAT")


def test_the_registry_knows_msldm_models(model_dir):
    assert models.list_models("msldm") == ["msldm-tiny"] and "msldm-tiny" in models.list_models()
    assert models.model_kind("msldm-tiny") == "msldm"
    prior = models.load_prior("msldm-tiny")
    assert isinstance(prior, LatentPrior) and prior.stems == STEMS and prior.card["window"] == 5112
    assert prior.vae is not None and prior.channels == C
    with pytest.raises(ValueError, match="not a regression separator"):
        models.load_separator("msldm-tiny")
    from stemweave import api

    with pytest.raises(ValueError, match="separation with a latent prior is not built"):
        api.load_task_model("msldm-tiny", "separate")
    with pytest.raises(ValueError, match="torch backend only"):
        api.load_task_model("msldm-tiny", "generate", backend="onnx")
    assert api.default_preset("generate", prior) == "msldm-generate"
    assert api.default_preset("accompany", prior) == "msldm-accompany-fast"
    assert api.default_preset("accompany", object()) == "accompany-fast"


def test_the_msldm_alias_names_the_default(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    save_msldm(SourceVAE(TINY_VAE), UNet1d(TINY_UNET), STEMS, folder, models.DEFAULT_MSLDM, window_frames=WINDOW_FRAMES)
    monkeypatch.setattr(models, "MODEL_DIR", folder)
    assert models.resolve_model("msldm") == folder / f"{models.DEFAULT_MSLDM}.json"


def test_save_refuses_a_unet_of_the_wrong_width():
    with pytest.raises(ValueError, match="K \\* C"):
        save_msldm(SourceVAE(TINY_VAE), UNet1d(dict(TINY_UNET, in_channels=8, out_channels=8)), STEMS, "/nonexistent",
                   "x")


def test_cli_generate_writes_stems_of_the_asked_length_over_several_windows(model_dir, tmp_path):
    from stemweave.cli import main

    out = tmp_path / "gen"
    assert main(["generate", "--model", "msldm-tiny", "--seconds", "0.8", "--steps", "2", "--rate", "16000",
                 "--channels", "2", "--bit-depth", "32f", "-o", str(out), "--threads", "1", "--no-progress"]) == 0
    for stem in STEMS:
        audio, rate = sf.read(out / f"generated_{stem}.wav", dtype="float32")
        assert rate == 16000 and audio.shape == (int(0.8 * 16000), 2) and np.isfinite(audio).all()
        np.testing.assert_array_equal(audio[:, 0], audio[:, 1])  # one centred part
    provenance = json.loads((out / "generated.stemweave.json").read_text())
    assert provenance["model"]["kind"] == "msldm" and provenance["preset"]["name"] == "msldm-generate"
    assert provenance["preset"]["sampler"]["sigma_max"] == 3.0 and provenance["preset"]["sampler"]["steps"] == 2
    assert provenance["plan"]["window"] == 5112 and provenance["plan"]["windows"] >= 3  # several windows, continued


def test_cli_accompany_keeps_the_given_stem_and_fills_the_others(model_dir, tmp_path):
    from stemweave.cli import main

    rng = np.random.default_rng(0)
    drums = (0.3 * rng.standard_normal((2, int(0.7 * 44100)))).astype(np.float32)
    _write(tmp_path / "song_drums.wav", drums, 44100)
    out = tmp_path / "acc"
    assert main(["accompany", str(tmp_path / "song_drums.wav"), "--model", "msldm-tiny", "--steps", "2",
                 "--bit-depth", "32f", "-o", str(out), "--threads", "1", "--no-progress"]) == 0
    for stem in ("bass", "guitar", "piano"):
        audio, rate = sf.read(out / f"song_{stem}.wav", dtype="float32")  # named by the generated stem
        assert rate == 44100 and audio.shape == drums.T.shape and np.isfinite(audio).all()
    assert not (out / "song_drums.wav").exists()
    assert json.loads((out / "song_drums.stemweave.json").read_text())["preset"]["name"] == "msldm-accompany-fast"

    # regenerating a range of a given stem: outside the range the given audio comes back sample-exact
    out = tmp_path / "range"
    assert main(["accompany", str(tmp_path / "song_drums.wav"), "--model", "msldm-tiny", "--range", "0.2:0.4",
                 "--steps", "2", "--bit-depth", "32f", "-o", str(out), "--threads", "1", "--no-progress"]) == 0
    redone, _ = sf.read(out / "song_drums.wav", dtype="float32")
    start, end = int(0.2 * 44100), int(0.4 * 44100)
    np.testing.assert_array_equal(redone[:start], drums.T[:start])
    np.testing.assert_array_equal(redone[end:], drums.T[end:])
    assert not np.array_equal(redone[start + 500 : end - 500], drums.T[start + 500 : end - 500])


def test_region_inpainting_with_a_latent_prior_puts_known_samples_back_exactly(model_dir):
    """The region layer's window step (the latent wrapper with a time mask) at the model rate: the known part of
    every stem, given or continued from the previous window, is returned exactly."""
    from stemweave.engine.presets import load_preset
    from stemweave.engine.regions import _Job, _Progress, describe_model

    prior = models.load_prior("msldm-tiny")
    info = describe_model(prior)
    assert (info.kind, info.rate, info.window) == ("prior", RATE, 5112)
    job = _Job("accompany", prior, info, RATE, load_preset("msldm-accompany-fast").with_overrides(steps=2), 0,
               _Progress(None, None, "accompany"), None, "hann", {})
    rng = np.random.default_rng(1)
    known = (0.2 * rng.standard_normal((4, 5112))).astype(np.float32)
    mask = np.zeros((4, 5112), bool)
    mask[1] = True  # drums given
    mask[:, :1000] = True  # the previous window's samples
    out = job._inpaint(known, mask, 2, 0)
    assert out.shape == known.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out[mask], known[mask])
    assert not np.allclose(out[~mask], known[~mask])


def test_separation_with_an_msldm_model_is_refused_clearly(model_dir, tmp_path, capsys):
    from stemweave.cli import main
    from stemweave.engine.presets import load_preset
    from stemweave.engine.regions import run_region

    _write(tmp_path / "mix.wav", np.zeros((1, 4410)), RATE)
    assert main(["separate", str(tmp_path / "mix.wav"), "--model", "msldm-tiny", "-o", str(tmp_path / "sep"),
                 "--no-progress"]) != 0
    assert "separation with a latent prior is not built" in capsys.readouterr().err
    assert not (tmp_path / "sep").exists() or not any((tmp_path / "sep").iterdir())
    with pytest.raises(ValueError, match="separation with it is not built"):
        run_region("separate", models.load_prior("msldm-tiny"), np.zeros((1, 4410), np.float32), RATE,
                   load_preset("separate-fast"))


def test_evaluate_generation_scores_msldm_on_the_waveform_priors_windows(model_dir, tmp_path):
    from stemweave.cli import main

    data = tmp_path / "test"
    rng = np.random.default_rng(2)
    for t in range(2):
        (data / f"Track{t:05d}").mkdir(parents=True)
        for stem in STEMS:
            _write(data / f"Track{t:05d}" / f"{stem}.wav", 0.2 * rng.standard_normal((1, 6000)), RATE)
    report = tmp_path / "gen.json"
    assert main(["evaluate", "--generation", "--model", "msldm-tiny", "--data", str(data), "--windows", "2",
                 "--window", "2048", "--batch", "2", "--threads", "1", "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["window"] == 2048 and result["presets"] == {"msldm-tiny": "msldm-accompany-fast"}
    rows = result["generation"]["msldm-tiny"]
    assert len(rows) == 15 and rows[-1]["generated"] == list(STEMS)
    assert all(np.isfinite(r["frechet"]) and r["clips"] == 2 and set(r["silent"]) == set(r["generated"]) for r in rows)
    assert main(["evaluate", "--model", "msldm-tiny", "--data", str(data)]) != 0  # separation: refused


def test_the_server_runs_msldm_generate_and_accompany_and_refuses_separate(model_dir):
    from stemweave.bridge.client import Client, ServerError
    from stemweave.bridge.server import Server, default_model_loader

    server = Server("tcp://127.0.0.1:*", model_loader=default_model_loader, model_names=["msldm-tiny"],
                    heartbeat_s=0.2, max_seconds=5.0, preload=False).start()
    try:
        with Client(server.endpoint, timeout=60) as client:
            generated = client.generate(16000, seconds=0.5, model="msldm-tiny", steps=2)
            assert set(generated) == set(STEMS)
            assert all(s.shape == (1, 8000) and np.isfinite(s).all() for s in generated.values())
            assert client.last_result.info["preset"] == "msldm-generate"
            bass = (0.2 * np.random.default_rng(3).standard_normal((2, 9000))).astype(np.float32)
            accompanied = client.accompany({"bass": bass}, 16000, model="msldm-tiny", steps=2)
            assert set(accompanied) == {"drums", "guitar", "piano"}
            assert all(s.shape == bass.shape for s in accompanied.values())
            assert client.last_result.info["preset"] == "msldm-accompany-fast"
            with pytest.raises(ServerError, match="separation with a latent prior is not built"):
                client.separate(bass, 16000, model="msldm-tiny")
    finally:
        server.stop()


def test_vae_evaluate_scores_each_stem_and_writes_listening_examples(tmp_path):
    from stemweave.cli import main
    from stemweave.engine.latent.train import save_vae

    torch.manual_seed(0)
    save_vae(SourceVAE(TINY_VAE), tmp_path / "models", "vae-tiny")
    data = tmp_path / "test"
    rng = np.random.default_rng(4)
    for t in range(2):
        (data / f"Track{t:05d}").mkdir(parents=True)
        for stem in STEMS:
            audio = np.zeros((1, 30000)) if (t, stem) == (0, "piano") else 0.2 * rng.standard_normal((1, 30000))
            _write(data / f"Track{t:05d}" / f"{stem}.wav", audio, RATE)
    report = tmp_path / "recon.json"
    assert main(["vae", "evaluate", "--vae", str(tmp_path / "models" / "vae-tiny.json"), "--data", str(data),
                 "--seconds", "1", "--examples", str(tmp_path / "ex"), "--example-tracks", "1", "--json", str(report),
                 "--threads", "1"]) == 0
    result = json.loads(report.read_text())
    assert result["tracks"] == 2 and result["per_stem"]["bass"]["pieces"] == 2
    assert result["per_stem"]["piano"]["pieces"] == 1  # the silent piano of track 0 is not scored
    assert all(np.isfinite(v["si_sdr"]) and v["mel"] > 0 for v in result["per_stem"].values())
    written = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert written == sorted(f"Track00000_{s}_{kind}.wav" for s in STEMS for kind in ("original", "reconstructed"))
    assert main(["vae", "evaluate", "--vae", str(tmp_path / "models" / "vae-tiny.json"), "--data",
                 str(tmp_path / "missing")]) != 0


def test_the_waveform_loss_term_is_an_l1_on_samples_when_weighted():
    from stemweave.engine.latent.train import vae_loss
    from stemweave.engine.latent.vae import LossConfig

    torch.manual_seed(0)
    vae = SourceVAE(TINY_VAE)
    audio = 0.1 * torch.randn(2, 1, vae.samples_for(8))
    _, plain, _ = vae_loss(vae, audio, LossConfig(kl=0.0), torch.Generator().manual_seed(1))
    total, terms, recon = vae_loss(vae, audio, LossConfig(kl=0.0, waveform=10.0), torch.Generator().manual_seed(1))
    assert "waveform" not in plain
    torch.testing.assert_close(terms["waveform"], (recon[:, 0] - audio[:, 0]).abs().mean())
    torch.testing.assert_close(total, 15.0 * terms["mel"] + terms["stft"] + 10.0 * terms["waveform"])


def test_encode_takes_the_first_seconds_of_the_first_tracks(tmp_path):
    from stemweave.cli import main
    from stemweave.engine.latent.train import save_vae

    save_vae(SourceVAE(TINY_VAE), tmp_path / "models", "vae-tiny")
    data = tmp_path / "train"
    for t in range(3):
        (data / f"Track{t:05d}").mkdir(parents=True)
        for stem in STEMS:
            _write(data / f"Track{t:05d}" / f"{stem}.wav", 0.1 * np.ones((1, 22050)), RATE)
    vae = str(tmp_path / "models" / "vae-tiny.json")
    assert main(["vae", "encode", "--vae", vae, "--data", str(data), "--out", str(tmp_path / "lat"), "--limit", "2",
                 "--seconds", "0.5", "--threads", "1"]) == 0
    manifest = json.loads((tmp_path / "lat" / "latents.json").read_text())
    assert len(manifest["tracks"]) == 2 and manifest["seconds_per_track"] == 0.5
    assert all(t["frames"] == SourceVAE(TINY_VAE).frames_for(11025) for t in manifest["tracks"].values())
    assert main(["vae", "encode", "--vae", vae, "--data", str(data), "--out", str(tmp_path / "x"), "--seconds",
                 "0"]) != 0
