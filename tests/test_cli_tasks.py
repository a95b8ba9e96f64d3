"""`stemweave separate | accompany | generate`: files per stem plus provenance; bad input -> exit 2, nothing written."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from stemweave import api
from stemweave.cli import main
from stemweave.engine.analytic import GaussianStemPrior, example_spectra

STEMS = ("bass", "drums", "guitar", "piano")
FAST = ["--steps", "3", "--resamples", "0", "--churn", "0", "--no-progress"]


@pytest.fixture
def prior(monkeypatch):
    """The analytic prior stands in for a shipped model (4 kHz, 256-sample windows)."""
    model = GaussianStemPrior.independent(example_spectra(256, rate=4000.0), STEMS)
    model.rate, model.window, model.card = 4000, 256, {"name": "analytic", "kind": "msdm"}
    monkeypatch.setattr(api, "load_task_model", lambda name, task, device, *backend: (model, name or "analytic"))
    return model


def write(path, frames=8820, channels=2, rate=44100, seed=0):
    audio = 0.2 * np.random.default_rng(seed).standard_normal((frames, channels))
    sf.write(path, audio, rate, subtype="FLOAT")
    return audio.T.astype(np.float32)


def test_help_lists_the_tasks():
    out = subprocess.run([sys.executable, "-m", "stemweave", "--help"], capture_output=True, text=True, check=True)
    for command in ("separate", "accompany", "generate"):
        assert command in out.stdout


def test_separate_writes_stems_that_sum_and_provenance(tmp_path, prior):
    audio = write(tmp_path / "song.wav")
    out = tmp_path / "out"
    assert main(["separate", str(tmp_path / "song.wav"), "-o", str(out), "--bit-depth", "32f", *FAST]) == 0
    stems = {s: sf.read(out / f"song_{s}.wav", dtype="float32", always_2d=True)[0].T for s in STEMS}
    scale = max(np.abs(s).max() for s in stems.values())
    np.testing.assert_allclose(sum(stems.values()), audio, atol=8 * np.finfo(np.float32).eps * scale)
    info = json.loads((out / "song.stemweave.json").read_text())
    assert info["seed"] == 0 and info["device"] == "cpu" and info["plan"]["windows"] >= 4
    assert info["preset"]["sampler"]["steps"] == 3 and "torch" in info["versions"]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"song_{s}.wav" for s in STEMS] + ["song.stemweave.json"])


def test_separate_some_stems_as_flac(tmp_path, prior):
    write(tmp_path / "mix.wav", channels=1, rate=48000)
    assert main(["separate", str(tmp_path / "mix.wav"), "-o", str(tmp_path / "o"), "--stems", "bass,drums",
                 "--format", "flac", "--bit-depth", "16", *FAST]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["mix.stemweave.json", "mix_bass.flac", "mix_drums.flac"]
    assert sf.info(tmp_path / "o" / "mix_bass.flac").samplerate == 48000


def test_same_seed_same_stems(tmp_path, prior):
    write(tmp_path / "s.wav", frames=3000)
    for run in ("a", "b"):
        assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / run), "--seed", "5", *FAST]) == 0
    a, _ = sf.read(tmp_path / "a" / "s_bass.wav")
    b, _ = sf.read(tmp_path / "b" / "s_bass.wav")
    np.testing.assert_array_equal(a, b)


def _bad(tmp_path, kind):
    song = tmp_path / "song.wav"
    args = ["separate", str(song), "-o", str(tmp_path / "out"), *FAST]
    if kind == "missing":
        return args, "no such file"
    if kind == "text":
        song.write_text("not audio")
        return args, "not a readable audio file"
    if kind == "empty":
        sf.write(song, np.zeros((0, 1)), 44100)
        return args, "zero length"
    if kind == "nan":
        sf.write(song, np.full((500, 2), np.nan), 44100, subtype="FLOAT")
        return args, "NaN"
    if kind == "surround":
        sf.write(song, np.zeros((500, 4)), 44100)
        return args, "4 channels"
    write(song)
    if kind == "rate":
        sf.write(song, np.zeros((500, 1)), 200)
        return args, "sample rate"
    if kind == "unwritable":
        return ["separate", str(song), "-o", "/proc/stemweave-out", *FAST], "not writable"
    if kind == "flac32":
        return args + ["--format", "flac", "--bit-depth", "32f"], "FLAC"
    if kind == "stems":
        return args + ["--stems", "vocals"], "vocals"
    if kind == "guidance":
        return ["accompany", str(song), "--given", "drums", "--generate", "bass", "--guidance", "-1",
                "-o", str(tmp_path / "out"), *FAST], "guidance must be 0 or more"
    if kind == "overwrite":
        (tmp_path / "song_bass.wav").write_bytes(song.read_bytes())  # would be the output for bass
        return ["accompany", str(song), str(tmp_path / "song_bass.wav"), "--given", "drums,bass", "--generate", "bass",
                "--range", "0:0.05", "-o", str(tmp_path), *FAST], "overwrite"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "text", "empty", "nan", "surround", "rate", "unwritable", "flac32",
                                  "stems", "guidance", "overwrite"])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, prior, capsys, kind):
    args, message = _bad(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and __import__("re").search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unknown_model_and_absent_device_are_named(tmp_path, capsys):
    write(tmp_path / "s.wav", frames=500)
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--model", "nope", *FAST]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    # a device this machine lacks on every machine: the CUDA index one past the last (cuda:0 on a CPU-only one)
    from stemweave.api import available_devices

    absent = f"cuda:{torch.cuda.device_count()}"
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--device", absent, *FAST]) == 2
    err = capsys.readouterr().err
    assert f"device '{absent}' is not available on this machine" in err
    assert f"available devices: {', '.join(available_devices())}" in err and "cpu" in available_devices()
    assert not (tmp_path / "o").exists()


def test_separate_with_a_model_file(tmp_path):
    """The real loading path: an untrained tiny regression U-Net saved as a model file, given by path."""
    from stemweave.engine.checkpoints import save_model
    from stemweave.engine.unet import UNet1d

    tiny = dict(channels=8, patch_factor=4, multipliers=[2, 2], factors=[2], num_blocks=1, attentions=[False],
                attention_heads=2, attention_features=8, conditioning=False, in_channels=1, out_channels=4)
    config = {"name": "tiny", "rate": 8000, "window": 256, "unet": tiny}
    save_model(tmp_path, UNet1d(tiny).eval(), name="tiny", kind="regression", stems=list(STEMS), config=config)
    audio = write(tmp_path / "s.wav", frames=3000, rate=16000)
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--model",
                 str(tmp_path / "tiny.json"), "--bit-depth", "32f", "--no-progress"]) == 0
    total = sum(sf.read(tmp_path / "o" / f"s_{s}.wav", always_2d=True)[0].T for s in STEMS)
    np.testing.assert_allclose(total, audio, atol=1e-5)
    assert json.loads((tmp_path / "o" / "s.stemweave.json").read_text())["model"]["kind"] == "regression"


def test_accompany_generates_under_given_and_regenerates_a_range(tmp_path, prior):
    drums = write(tmp_path / "drums.wav", frames=2000, rate=8000)
    assert main(["accompany", str(tmp_path / "drums.wav"), "--generate", "bass", "-o", str(tmp_path / "o"), *FAST]) == 0
    bass, rate = sf.read(tmp_path / "o" / "bass.wav", always_2d=True)  # named by the generated stem (issue 20)
    assert rate == 8000 and bass.shape == drums.T.shape
    sf.write(tmp_path / "bass.wav", bass, 8000, subtype="FLOAT")
    assert main(["accompany", str(tmp_path / "bass.wav"), str(tmp_path / "drums.wav"), "--given", "bass,drums",
                 "--generate", "bass", "--range", "0.05:0.1", "--bit-depth", "32f", "-o", str(tmp_path / "r"),
                 "--seed", "3", *FAST]) == 0
    redone, _ = sf.read(tmp_path / "r" / "bass.wav", always_2d=True)
    np.testing.assert_allclose(redone[:400], bass[:400], atol=1e-6)  # 0.05 s = 400 frames, untouched
    np.testing.assert_allclose(redone[800:], bass[800:], atol=1e-6)
    assert np.abs(redone[400:800] - bass[400:800]).max() > 1e-3
    assert main(["accompany", str(tmp_path / "drums.wav"), "--generate", "drums", "-o", str(tmp_path / "x"), *FAST]) == 2


def test_generate_seconds_and_loop(tmp_path, prior):
    assert main(["generate", "--seconds", "0.3", "--stems", "bass,drums", "-o", str(tmp_path / "g"), *FAST]) == 0
    x, rate = sf.read(tmp_path / "g" / "generated_bass.wav")
    assert rate == 44100 and x.shape == (13230, 2)  # a DAW session's format by default (issue 20)
    assert main(["generate", "--loop-bars", "1", "--bpm", "240", "--rate", "8000", "--channels", "2",
                 "-o", str(tmp_path / "l"), *FAST]) == 0
    loop, rate = sf.read(tmp_path / "l" / "loop_drums.wav")
    assert rate == 8000 and loop.shape == (8000, 2)
    info = json.loads((tmp_path / "l" / "loop.stemweave.json").read_text())
    assert info["loop_bars"] == 1 and info["bpm"] == 240


def tiny_models(tmp_path):
    """A tiny untrained regression separator and a tiny untrained MSDM prior, saved as model files."""
    from stemweave.engine.checkpoints import save_model
    from stemweave.engine.unet import UNet1d

    base = dict(channels=8, patch_factor=4, multipliers=[2, 2], factors=[2], num_blocks=1, attentions=[False],
                attention_heads=2, attention_features=8)
    separator = {**base, "conditioning": False, "in_channels": 1, "out_channels": 4}
    prior = {**base, "in_channels": 4, "out_channels": 4}
    for name, unet, kind in (("sep", separator, "regression"), ("pri", prior, "msdm")):
        config = {"name": name, "rate": 8000, "window": 256, "unet": unet}
        save_model(tmp_path, UNet1d(unet).eval(), name=name, kind=kind, stems=list(STEMS), config=config)
    return tmp_path / "sep.json", tmp_path / "pri.json"


def test_separate_writes_a_first_answer_then_the_refined_stems(tmp_path):
    separator, prior = tiny_models(tmp_path)
    audio = write(tmp_path / "s.wav", frames=3000, rate=16000)
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--model", str(separator),
                 "--refine", "--prior", str(prior), "--steps", "2", "--bit-depth", "32f", "--no-progress"]) == 0
    provenance = json.loads((tmp_path / "o" / "s.stemweave.json").read_text())
    assert provenance["stage"] == "refined" and provenance["preset"]["name"] == "refine-fast"
    total = sum(sf.read(tmp_path / "o" / f"s_{s}.wav", always_2d=True)[0].T for s in STEMS)
    np.testing.assert_allclose(total, audio, atol=1e-5)


def test_interrupting_the_refinement_keeps_the_first_answer(tmp_path, monkeypatch, capsys):
    from stemweave.engine import regions

    separator, prior = tiny_models(tmp_path)
    write(tmp_path / "s.wav", frames=3000, rate=16000)
    real = regions.run_region
    calls = []

    def interrupted_second_run(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(regions, "run_region", interrupted_second_run)
    code = main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--model", str(separator),
                 "--refine", "--prior", str(prior), "--bit-depth", "32f", "--no-progress"])
    assert code == 130 and "first estimate stays" in capsys.readouterr().err
    provenance = json.loads((tmp_path / "o" / "s.stemweave.json").read_text())
    assert provenance["stage"] == "first estimate"
    first = {s: sf.read(tmp_path / "o" / f"s_{s}.wav", always_2d=True)[0].T for s in STEMS}
    direct = regions.run_region.__wrapped__ if hasattr(regions.run_region, "__wrapped__") else real
    audio, rate = sf.read(tmp_path / "s.wav", always_2d=True, dtype="float32")
    from stemweave.engine.models import load_separator
    from stemweave.engine.presets import load_preset

    expected = direct("separate", load_separator(separator), audio.T, rate, load_preset("separate-fast"))
    for s in STEMS:
        np.testing.assert_allclose(first[s], expected[s], atol=1e-6)


def test_refine_needs_a_regression_separator(tmp_path, prior):
    write(tmp_path / "s.wav")
    assert main(["separate", str(tmp_path / "s.wav"), "-o", str(tmp_path / "o"), "--refine", *FAST]) == 2
    assert not (tmp_path / "o").exists()


def test_separate_on_the_onnx_backend_matches_torch(tmp_path, monkeypatch):
    """--backend onnx exports the prior once and gives the same stems as torch (issue 8)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("STEMWEAVE_CACHE_DIR", str(tmp_path / "cache"))
    _, prior = tiny_models(tmp_path)
    write(tmp_path / "s.wav", frames=2000, rate=8000)
    stems = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        assert main(["separate", str(tmp_path / "s.wav"), "-o", str(out), "--model", str(prior), "--backend", backend,
                     *FAST, "--bit-depth", "32f"]) == 0
        stems[backend] = {s: sf.read(out / f"s_{s}.wav", always_2d=True)[0] for s in STEMS}
        assert json.loads((out / "s.stemweave.json").read_text())["backend"]["backend"] == backend
    for s in STEMS:
        np.testing.assert_allclose(stems["onnx"][s], stems["torch"][s], atol=1e-4)


def test_guidance_names_the_prior_and_lands_in_its_preset(tmp_path, prior):
    write(tmp_path / "drums.wav", frames=2000, rate=8000)
    assert main(["accompany", str(tmp_path / "drums.wav"), "--generate", "bass", "--guidance", "3",
                 "-o", str(tmp_path / "o"), *FAST]) == 0
    info = json.loads((tmp_path / "o" / "drums.stemweave.json").read_text())
    assert info["preset"]["name"] == "accompany-fast" and info["preset"]["options"] == {"guidance": 3.0}
    assert info["model"]["name"] == "analytic"  # --guidance, like --model, means the prior, not the accompanist
