"""`stemweave gmsdi evaluate`: Table 1's rows are the paper's settings run as written, Table 2's ensemble takes per
stem the method that won on validation, Fig. 2 counts silent clips; bad input exits 2. A tiny model trained here."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave.engine import evaluate as ev
from stemweave.engine.gmsdi import evaluation, tasks
from stemweave.engine.gmsdi import train as gtrain
from stemweave.engine.gmsdi.inference import GMSDIModel, load_gmsdi_preset
from stemweave.engine.gmsdi.prior import Prompt, TextPrior
from tests.test_gmsdi_train import LABELS, TINY, Encoder, stem_windows

RATE = TINY["rate"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gmsdi-eval")
    settings = gtrain.GMSDISettings(config=TINY, run_dir=str(folder / "run"), steps=5, progress=False, labels=LABELS)
    gtrain.train_gmsdi(settings, dataset=gtrain.MixtureCaptions(stem_windows(40), LABELS), encoder=Encoder(LABELS),
                       log=lambda *_: None)
    gtrain.export_gmsdi(folder / "run", "tiny", folder)
    loaded = GMSDIModel.load(folder / "tiny.json")
    loaded.encoder = Encoder(LABELS)
    return loaded


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two MUSDB-style tracks of 5 s at the tiny model's rate."""
    root = tmp_path_factory.mktemp("tracks")
    rng = np.random.default_rng(7)
    for name in ("A", "B"):
        (root / name).mkdir()
        for stem in LABELS:
            sf.write(root / name / f"{stem}.wav", rng.normal(0, 0.1, RATE * 5).astype(np.float32), RATE)
    return root


def test_a_table1_separator_row_is_eq13_with_that_w_and_constrained_stem(model, data):
    tracks = ev.test_tracks(str(data), model.window, LABELS, RATE, tracks=2, seconds=5)
    rows = evaluation.table1(model, LABELS, tracks, guidances=[7.5], steps=3, log=lambda _: None)
    assert [r.method for r in rows] == ["Extractor w=7.5"] + [f"Separator w=7.5 constrained {c}" for c in LABELS]
    # the same row written out by hand from the prior and Eq. 13
    prior = TextPrior(model.denoiser, model.encoder, [Prompt(p) for p in LABELS], null=model.null, guidance=7.5)
    settings = load_gmsdi_preset("gmsdi-separate").sampler
    settings = type(settings)(**{**settings.__dict__, "steps": 3})
    generator = torch.Generator().manual_seed(0)

    def by_hand(mixtures, _refs):
        with torch.no_grad():
            return tasks.separate(prior, torch.from_numpy(mixtures), settings, constrained=2, generator=generator).numpy()

    expected = ev.evaluate_separation("x", by_hand, tracks, model.window, RATE, LABELS, batch=64)
    np.testing.assert_allclose(rows[3].scores, expected.scores, atol=1e-4)  # constrained guitar
    assert not np.allclose(rows[1].scores, expected.scores, atol=1e-3)  # another constrained stem differs


def test_table2_ensemble_takes_per_stem_the_validation_winner(model, monkeypatch):
    from stemweave.engine.evaluate import SeparationReport

    validation = {"separator": [1.0, 5.0, 1.0, 9.0], "extractor": [2.0, 3.0, 4.0, 0.0]}
    testing = {"separator": [10.0, 20.0, 30.0, 40.0], "extractor": [-1.0, -2.0, -3.0, -4.0]}

    def fake(_model, labels, preset, tracks, name, seed=0):
        table = validation if tracks == "valid" else testing
        return SeparationReport(name, tuple(labels), np.array([table[preset.method]]), 1.0, 12.0)

    monkeypatch.setattr(evaluation, "separation_report", fake)
    rows, choice = evaluation.table2(model, LABELS, "test", "valid", steps=2, log=lambda _: None)
    assert choice == {"bass": "extractor", "drums": "separator", "guitar": "extractor", "piano": "separator"}
    assert rows[2].per_stem == {"bass": -1.0, "drums": 20.0, "guitar": -3.0, "piano": 40.0}


def test_fig2_counts_silent_generations_and_uses_the_negative_prompts(model, monkeypatch):
    seen = []

    def generate(prior, batch, length, settings, **kw):
        seen.append(prior.prompts[0])
        silent = prior.prompts[0].negative is None
        return torch.zeros(batch, 1, length) if silent else 0.1 * torch.randn(batch, 1, length)

    monkeypatch.setattr(evaluation.tasks, "generate", generate)
    real = np.random.default_rng(0).normal(0, 0.1, (6, 4, model.window)).astype(np.float32)
    rows = evaluation.fig2(model, LABELS, real, clips=6, steps=2, log=lambda _: None)
    assert [(r["prompt"], r["negative"]) for r in rows][:2] == [("bass", ""), ("bass", "drums, guitar, piano")]
    assert [r["silent"] for r in rows] == [1.0, 0.0] * 4
    assert seen[1].negative == "drums, guitar, piano" and seen[3].negative == "bass"


@pytest.mark.parametrize("argv, message", [
    (["--guidance", "300"], "--guidance values must lie in [0, 100]"),
    (["--seconds", "2"], "scores 4 s windows"),
    (["--tracks", "0"], "--tracks must be at least 1"),
    (["--model", "/no/such/model.json"], "needs"),
])
def test_bad_input_exits_2(model, data, tmp_path, capsys, argv, message, monkeypatch):
    from stemweave.cli import main

    monkeypatch.setattr(GMSDIModel, "load", classmethod(lambda cls, path, device="cpu": model if "no/such" not in str(path)
                                                        else (_ for _ in ()).throw(FileNotFoundError("needs x.json"))))
    code = main(["gmsdi", "evaluate", "--data", str(data), "--valid", str(data), "--table", "1", "--steps", "1",
                 "--json", str(tmp_path / "out.json"), *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_the_command_writes_all_tables(model, data, tmp_path, capsys, monkeypatch):
    from stemweave.cli import main

    monkeypatch.setattr(GMSDIModel, "load", classmethod(lambda cls, path, device="cpu": model))
    other = tmp_path / "msdm.json"
    other.write_text(json.dumps({"results": [{"method": "msdm", "si_sdri": dict.fromkeys(LABELS, -1.0), "overall": -1.0}]}))
    code = main(["gmsdi", "evaluate", "--data", str(data), "--valid", str(data), "--tracks", "1", "--seconds", "5",
                 "--steps", "2", "--guidance", "3", "--clips", "3", "--compare", str(other), "--json",
                 str(tmp_path / "out.json")])
    assert code == 0
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["table1"]) == 5 and [r["method"] for r in out["table2"]][-1] == "msdm"
    assert len(out["fig2"]) == 8 and "Table 2" in capsys.readouterr().out
