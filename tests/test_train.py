"""The training loop: both objectives lower the loss on synthetic stems; resume, determinism, export, CLI errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stemweave.engine.models import load_prior, load_separator
from stemweave.engine.train import Objective, TrainSettings, export_model, resolve_config, train, validate

TINY = {
    "name": "tiny",
    "rate": 22050,
    "window": 256,
    "sigma_data": 0.2,
    "clamp": True,
    "unet": dict(channels=8, patch_factor=4, multipliers=[2, 2, 4], factors=[2, 2], num_blocks=1,
                 attentions=[False, True], attention_heads=2, attention_features=8, fourier_features=8),
    "train": {"batch": 8, "lr": 3e-3, "ema_decay": 0.5, "grad_clip": 1.0, "checkpoint_every": 1000, "valid_every": 1000},
}
STEMS = ("bass", "drums")


class SyntheticStems(torch.utils.data.IterableDataset):
    """Each stem a sinusoid in its own frequency band with a random amplitude and phase: separable, learnable."""

    def __init__(self, seed: int, stems=STEMS, window=256):
        self.seed, self.k, self.window = seed, len(stems), window

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        t = torch.arange(self.window, dtype=torch.float32)
        while True:
            freqs = torch.tensor([0.01, 0.2, 0.07, 0.33][: self.k]) * (1 + 0.1 * torch.rand(self.k, generator=g))
            amp = 0.1 + 0.3 * torch.rand(self.k, 1, generator=g)
            phase = 2 * math.pi * torch.rand(self.k, 1, generator=g)
            yield amp * torch.sin(2 * math.pi * freqs[:, None] * t + phase)  # (K, window)


def settings(tmp_path, objective="diffusion", **kw):
    base = dict(config=TINY, objective=objective, stems=STEMS, run_dir=str(tmp_path / "run"), steps=40,
                threads=None, progress=False, log_every=10, valid_windows=16)
    base.update(kw)
    return TrainSettings(**base)


def initial_validation(s: TrainSettings, valid):
    config = resolve_config(s)
    torch.manual_seed(s.seed)
    from stemweave.engine.unet import UNet1d

    model = Objective(UNet1d(config["unet"]), s.objective, config, s.model_stems())
    windows = torch.stack([w for _, w in zip(range(s.valid_windows), valid)])
    return validate(model, windows, 8, torch.device("cpu"), s.seed)


def test_diffusion_training_lowers_validation_loss(tmp_path):
    s = settings(tmp_path, "diffusion", steps=60)
    before = initial_validation(s, SyntheticStems(99))
    summary = train(s, SyntheticStems(0), SyntheticStems(99), log=lambda *_: None)
    after = summary["validation"]
    assert summary["step"] == 60
    assert set(after) >= {"loss", "loss@sigma=0.05", "loss@sigma=1"}
    assert after["loss"] < 0.8 * before["loss"], (before, after)


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float32", "bfloat16"])
def test_regression_training_improves_si_sdr(tmp_path, bfloat16):
    """Both precisions train the U-Net (`--bfloat16`: autocast, float32 weights): bfloat16 is another run, not none."""
    s = settings(tmp_path, "regression", steps=60, bfloat16=bfloat16)
    before = initial_validation(s, SyntheticStems(99))
    summary = train(s, SyntheticStems(0), SyntheticStems(99), log=lambda *_: None)
    after = summary["validation"]
    assert {"si_sdri/bass", "si_sdr/drums"} <= set(after)
    assert after["si_sdri"] > before["si_sdri"] + 3.0, (before, after)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0]
    weights = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["ema"]
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    if bfloat16:
        other = settings(tmp_path / "f32", "regression", steps=60)
        train(other, SyntheticStems(0), SyntheticStems(99), log=lambda *_: None)
        float32 = torch.load(tmp_path / "f32" / "run" / "checkpoints" / "last.pt", weights_only=True)["ema"]
        assert any((float32[k] - w).abs().max() > 1e-4 for k, w in weights.items() if w.is_floating_point())


def test_resume_continues_step_count(tmp_path):
    logs = []
    train(settings(tmp_path, steps=5), SyntheticStems(0), log=logs.append)
    summary = train(settings(tmp_path, steps=8), SyntheticStems(0), log=logs.append)
    assert summary["step"] == 8
    assert any("resumed" in line and "step 5" in line for line in logs)
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 8
    with pytest.raises(ValueError, match="objective"):
        train(settings(tmp_path, "regression", steps=9), SyntheticStems(0), log=lambda *_: None)


def test_same_seed_same_weights(tmp_path):
    a = train(settings(tmp_path / "a", steps=3), SyntheticStems(0), log=lambda *_: None)
    b = train(settings(tmp_path / "b", steps=3), SyntheticStems(0), log=lambda *_: None)
    sa = torch.load(a["checkpoint"], weights_only=True)["net"]
    sb = torch.load(b["checkpoint"], weights_only=True)["net"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_regression_and_priors(tmp_path):
    train(settings(tmp_path / "r", "regression", steps=3), SyntheticStems(0), log=lambda *_: None)
    export_model(tmp_path / "r" / "run", "sep", out_dir=tmp_path / "models", metrics={"note": "test"})
    separator = load_separator(tmp_path / "models" / "sep.safetensors")
    mixture = torch.randn(2, 1, 256)
    with torch.no_grad():
        stems = separator(mixture)
    assert stems.shape == (2, 2, 256) and separator.stems == STEMS
    torch.testing.assert_close(stems.sum(1, keepdim=True), mixture, atol=1e-5, rtol=0)
    card = json.loads((tmp_path / "models" / "sep.json").read_text())
    assert card["kind"] == "regression" and card["training"]["steps"] == 3 and card["metrics"]["note"] == "test"
    with pytest.raises(ValueError, match="load_separator"):
        load_prior(tmp_path / "models" / "sep.json")

    train(settings(tmp_path / "d", steps=2), SyntheticStems(0), log=lambda *_: None)
    export_model(tmp_path / "d" / "run", "msdm", out_dir=tmp_path / "models", fp16=True)
    prior = load_prior(tmp_path / "models" / "msdm")
    assert prior.stems == STEMS and prior.card["kind"] == "msdm"
    assert prior.denoise(torch.randn(1, 2, 256), 0.5).shape == (1, 2, 256)

    from stemweave.engine.models import combine_isdm

    for stem in STEMS:
        train(settings(tmp_path / stem, stem=stem, steps=2), SyntheticStems(0, stems=(stem,)), log=lambda *_: None)
        export_model(tmp_path / stem / "run", f"isdm-{stem}", out_dir=tmp_path / "models")
    combine_isdm([tmp_path / "models" / f"isdm-{s}.json" for s in STEMS], tmp_path / "models", "isdm")
    isdm = load_prior(tmp_path / "models" / "isdm.json")
    assert isdm.stems == STEMS and isdm.denoise(torch.randn(1, 2, 256), 0.5).shape == (1, 2, 256)
    (entry,) = isdm.card["training"]["ledger"]  # the merged file's one version: every stem's steps added up
    assert entry["per_stem_steps"] == {s: 2 for s in STEMS} and entry["steps"] == entry["total_steps"] == 2 * len(STEMS)
    assert isdm.card["training"]["total_steps"] == 2 * len(STEMS)


def test_unknown_model_name_lists_known():
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*known"):
        load_prior("no-such-model")


def test_cli_user_errors(tmp_path, capsys):
    from stemweave.cli import main

    assert main(["train", "--run-dir", str(tmp_path / "x"), "--data", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path / "x")]) == 2
    assert main(["train", "--run-dir", str(tmp_path / "x"), "--steps", "0", "--export-model", "m"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path / "x"), "--data", str(tmp_path), "--config", "nope"]) == 2
    assert "unknown config" in capsys.readouterr().err
    assert main(["train", "--combine-isdm", "no-such-model", "--export-model", "x"]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path)]) == 2
    assert "--run-dir" in capsys.readouterr().err
