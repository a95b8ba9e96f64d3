"""Issue 20, a new user's first hour: the progress bar's total and ETA, loops on the loop preset, generated audio in a
DAW session's format, accompany outputs named by their stem, honest provenance, and the quality warning."""

import json

import numpy as np
import pytest
import soundfile as sf

from stemweave import api
from stemweave.cli import main
from stemweave.cli.tasks import _ProgressBar
from stemweave.engine.analytic import GaussianStemPrior, example_spectra
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region

STEMS = ("bass", "drums", "guitar", "piano")
QUIET = ["--no-progress", "--resamples", "0"]
PRIOR = ["--method", "prior"]  # accompany / generate with a prior (the accompanist is the default method)


@pytest.fixture
def prior(monkeypatch):
    """The analytic prior as the shipped model (4 kHz, 256-sample windows); records the presets it ran with."""
    model = GaussianStemPrior.independent(example_spectra(256, rate=4000.0), STEMS)
    model.rate, model.window, model.card = 4000, 256, {"name": "analytic", "kind": "msdm"}
    monkeypatch.setattr(api, "load_task_model", lambda name, task, device, *rest: (model, name or "analytic"))
    return model


def tiny_models(tmp_path, below_bar=False):
    """A tiny untrained regression separator and MSDM prior as model files; the prior's card may say it measures
    below the quality bar (as the shipped priors' cards do)."""
    from stemweave.engine.checkpoints import save_model
    from stemweave.engine.unet import UNet1d

    base = dict(channels=8, patch_factor=4, multipliers=[2, 2], factors=[2], num_blocks=1, attentions=[False],
                attention_heads=2, attention_features=8)
    for name, unet, kind in (("sep", {**base, "conditioning": False, "in_channels": 1, "out_channels": 4}, "regression"),
                             ("pri", {**base, "in_channels": 4, "out_channels": 4}, "msdm")):
        save_model(tmp_path, UNet1d(unet).eval(), name=name, kind=kind, stems=list(STEMS),
                   config={"name": name, "rate": 8000, "window": 256, "unet": unet})
    if below_bar:
        card = json.loads((tmp_path / "pri.json").read_text())
        card["quality"] = {"below_bar": True, "note": "generated stems 7-11 dB above real (test card)"}
        (tmp_path / "pri.json").write_text(json.dumps(card))
    return tmp_path / "sep.json", tmp_path / "pri.json"


def test_the_progress_bar_has_the_real_total_and_an_eta(prior):
    bar = _ProgressBar(disable=False)
    seen = []

    def feed(update):
        bar(update)
        seen.append((update["stage"], bar.bar.n, bar.bar.total, bar.bar.format_dict["elapsed"]))

    audio = 0.1 * np.random.default_rng(0).standard_normal((2, 4000)).astype(np.float32)
    report = {}
    run_region("separate", prior, audio, 8000, load_preset("separate-fast").with_overrides(steps=5), progress=feed,
               report=report)
    bar.close()
    windows = report["windows"] // 2  # stereo: one region window is two channel items
    assert seen[0][2] == 1  # the first update (load/resample) comes before the plan...
    assert seen[-1][2] == windows * 5 > 1  # ...then the total is the plan's: windows x steps
    middle = [n for stage, n, total, _ in seen if total == windows * 5 and 0 < n < total]
    assert middle and seen[-1][1] == seen[-1][2]  # it counts up to the total, never 100 % halfway


def test_a_loop_uses_the_loop_preset_and_takes_accompany_presets(tmp_path, prior):
    assert main(["generate", *PRIOR, "--loop-bars", "1", "--bpm", "240", "--rate", "8000", "-o", str(tmp_path / "a"),
                 *QUIET]) == 0
    info = json.loads((tmp_path / "a" / "loop.stemweave.json").read_text())
    loop = load_preset("loop")
    assert info["preset"]["name"] == "loop" and info["preset"]["sampler"]["steps"] == loop.sampler.steps == 24
    assert main(["generate", *PRIOR, "--loop-bars", "1", "--bpm", "240", "--preset", "accompany-fast", "--steps", "2",
                 "-o", str(tmp_path / "b"), *QUIET]) == 0
    assert main(["generate", *PRIOR, "--loop-bars", "1", "--bpm", "240", "--preset", "separate-fast", "-o",
                 str(tmp_path / "c"), *QUIET]) == 2
    assert main(["generate", *PRIOR, "--seconds", "0.2", "--steps", "2", "-o", str(tmp_path / "d"), *QUIET]) == 0
    assert json.loads((tmp_path / "d" / "generated.stemweave.json").read_text())["preset"]["name"] == "generate"


def test_generate_writes_a_daw_sessions_format_or_a_files(tmp_path, prior, capsys):
    assert main(["generate", *PRIOR, "--seconds", "0.2", "--steps", "2", "--stems", "bass", "-o", str(tmp_path / "d"),
                 *QUIET]) == 0
    info = sf.info(str(tmp_path / "d" / "generated_bass.wav"))
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 8820)
    sf.write(tmp_path / "session.wav", np.zeros((100, 1), np.float32), 48000)
    assert main(["generate", *PRIOR, "--seconds", "0.2", "--steps", "2", "--stems", "bass", "--like",
                 str(tmp_path / "session.wav"), "-o", str(tmp_path / "l"), *QUIET]) == 0
    info = sf.info(str(tmp_path / "l" / "generated_bass.wav"))
    assert (info.samplerate, info.channels) == (48000, 1)
    assert main(["generate", *PRIOR, "--like", str(tmp_path / "session.wav"), "--rate", "8000", "-o", str(tmp_path / "x"),
                 *QUIET]) == 2
    assert "--like" in capsys.readouterr().err
    from stemweave.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    help_text = " ".join(commands["generate"].format_help().split())
    assert "default 44100, what a DAW session expects" in help_text and "default 2" in help_text
    assert "loops: loop (24 steps)" in help_text


def test_accompany_names_outputs_by_the_generated_stem(tmp_path, prior):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "drums.wav", 0.1 * rng.standard_normal((2000, 2)), 8000, subtype="FLOAT")
    sf.write(tmp_path / "song_drums.wav", 0.1 * rng.standard_normal((2000, 2)), 8000, subtype="FLOAT")
    assert main(["accompany", *PRIOR, str(tmp_path / "drums.wav"), "--generate", "bass,piano", "--steps", "2", "-o",
                 str(tmp_path / "a"), *QUIET]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["bass.wav", "drums.stemweave.json", "piano.wav"]
    assert main(["accompany", *PRIOR, str(tmp_path / "song_drums.wav"), "--generate", "bass", "--steps", "2", "-o",
                 str(tmp_path / "b"), *QUIET]) == 0
    assert (tmp_path / "b" / "song_bass.wav").is_file()


def test_provenance_of_the_regression_separator_and_of_a_refinement(tmp_path, capsys):
    separator, prior = tiny_models(tmp_path, below_bar=True)
    sf.write(tmp_path / "s.wav", 0.1 * np.random.default_rng(2).standard_normal((3000, 1)), 16000, subtype="FLOAT")
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--model", str(separator),
                 "--no-refine", "--no-progress"]) == 0
    first = json.loads((tmp_path / "o" / "s.stemweave.json").read_text())
    assert first["model"]["kind"] == "regression" and first["preset"]["name"] is None
    assert "sampler" not in first["preset"] and "constrained" not in json.dumps(first["preset"])
    assert "quality bar" not in capsys.readouterr().err  # the separator's card has no quality entry
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "r"), "--model", str(separator),
                 "--refine", "--prior", str(prior), "--steps", "2", "--no-progress"]) == 0
    refined = json.loads((tmp_path / "r" / "s.stemweave.json").read_text())
    assert refined["stage"] == "refined" and refined["model"]["kind"] == "regression"
    assert refined["refine"]["preset"] == "refine-fast" == refined["preset"]["name"]
    assert refined["refine"]["prior"]["kind"] == "msdm" and "quality bar" in refined["refine"]["prior"]["warning"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "quality bar" in line]
    assert len(warnings) == 1 and "7-11 dB" in warnings[0]  # one line, for the prior


def test_the_quality_warning_on_the_cli_for_a_below_bar_prior(tmp_path, capsys):
    _separator, prior = tiny_models(tmp_path, below_bar=True)
    assert main(["generate", *PRIOR, "--model", str(prior), "--seconds", "0.1", "--rate", "8000", "--steps", "2", "-o",
                 str(tmp_path / "g"), *QUIET]) == 0
    err = capsys.readouterr().err
    assert sum("quality bar" in line for line in err.splitlines()) == 1
    provenance = json.loads((tmp_path / "g" / "generated.stemweave.json").read_text())
    assert "quality bar" in provenance["model"]["warning"]
