"""Export and backends: every backend matches eager torch, the CLI refuses bad input, separation is backend-independent."""

import json

import numpy as np
import onnx
import pytest
import torch

from stemweave.cli import main
from stemweave.engine.checkpoints import save_model
from stemweave.engine.models import load_prior
from stemweave.engine.presets import load_preset
from stemweave.engine.sampler import SamplerSettings
from stemweave.engine.tasks import separate_dirac
from stemweave.engine.unet import UNet1d
from stemweave.export import backends
from stemweave.export.backends import OnnxDenoiser, export_model, load_prior_with_backend

STEMS = ["bass", "drums", "guitar", "piano"]
TINY = dict(channels=8, patch_factor=4, patch_blocks=1, multipliers=[2, 2, 2], factors=[2, 2], num_blocks=1,
            attentions=[False, True], attention_heads=2, attention_features=8, resnet_groups=4, fourier_features=8)
STRIDE = 16  # 4 * 2 * 2
WINDOW = 256


def tiny_net(channels: int, seed: int) -> UNet1d:
    """A random-weight U-Net whose output is far from the identity (its zero-initialised convs are perturbed too)."""
    torch.manual_seed(seed)
    net = UNet1d(dict(TINY, in_channels=channels, out_channels=channels))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net.eval()


@pytest.fixture(scope="module")
def msdm(tmp_path_factory):
    """A tiny msdm model file with its ONNX (dynamo exporter) and TorchScript exports next to it."""
    folder = tmp_path_factory.mktemp("msdm")
    save_model(folder, tiny_net(4, 0), name="tiny", kind="msdm", stems=STEMS,
               config={"rate": 8000, "window": WINDOW, "unet": {}})
    cards = {fmt: export_model(folder / "tiny.json", folder, format=fmt)[1] for fmt in ("onnx", "torchscript")}
    return folder / "tiny.json", cards


@pytest.fixture(scope="module")
def isdm(tmp_path_factory):
    """A tiny two-stem isdm model, exported with the legacy ONNX exporter (one file per stem)."""
    folder = tmp_path_factory.mktemp("isdm")
    nets = {"bass": tiny_net(1, 1), "drums": tiny_net(1, 2)}
    save_model(folder, nets, name="duo", kind="isdm", stems=["bass", "drums"],
               config={"rate": 8000, "window": WINDOW, "unet": {}})
    card = export_model(folder / "duo.json", folder, format="onnx", exporter="legacy")[1]
    return folder / "duo.json", card


def random_inputs(channels: int):
    generator = torch.Generator().manual_seed(1)
    for length in (WINDOW, 3 * STRIDE):
        for batch in (1, 3):
            sigma = torch.exp(torch.empty(batch).uniform_(-7.0, 0.0, generator=generator))
            x = 0.2 * torch.randn(batch, channels, length, generator=generator)
            yield x + sigma[:, None, None] * torch.randn(x.shape, generator=generator), sigma


@pytest.mark.parametrize("backend", ["torch", "onnx", "torchscript"])
def test_every_backend_matches_eager_torch(msdm, backend, tmp_path):
    path, _ = msdm
    reference = load_prior(path)
    prior = load_prior_with_backend(path, backend=backend, threads=1, cache_dir=tmp_path)
    assert prior.backend["backend"] == backend
    assert prior.stems == reference.stems and prior.stride == STRIDE and prior.card["name"] == "tiny"
    assert not list(tmp_path.iterdir()), "the export next to the model file is used, nothing new is made"
    for x, sigma in random_inputs(4):
        expected = reference.denoise(x, sigma)
        assert (expected.abs() < 1).float().mean() > 0.9  # not all clamped: the comparison means something
        got = prior.denoise(x, sigma)
        assert got.shape == x.shape and got.dtype == x.dtype
        assert (got - expected).abs().max() < 1e-4
    # A float sigma works as well as a (batch,) tensor.
    x = torch.randn(2, 4, WINDOW) * 0.2
    assert (prior.denoise(x, 0.3) - reference.denoise(x, 0.3)).abs().max() < 1e-4


def test_export_card_and_dynamic_axes(msdm):
    path, cards = msdm
    source = json.loads(path.read_text())
    for fmt, card in cards.items():
        info = card["export"]
        assert info["format"] == fmt and info["dtype"] == "fp32" and info["stride"] == STRIDE
        assert info["source_sha256"] == source["sha256"]
        assert info["parity"]["max_abs_error"] < 1e-4
        assert card["stems"] == STEMS and card["window"] == WINDOW  # the model card, extended
        assert json.loads((path.parent / f"tiny.{fmt}.json").read_text()) == card
    assert cards["onnx"]["export"]["opset"] >= 18
    graph = onnx.load(str(path.parent / "tiny.onnx"))
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 4 and isinstance(dims[2], str)  # (batch, 4, 16*k)


def test_isdm_exports_one_file_per_stem_and_matches(isdm):
    path, card = isdm
    assert card["export"]["files"] == {"bass": "duo.bass.onnx", "drums": "duo.drums.onnx"}
    reference = load_prior(path)
    prior = load_prior_with_backend(path, backend="onnx", threads=1)
    for x, sigma in random_inputs(2):
        assert (prior.denoise(x, sigma) - reference.denoise(x, sigma)).abs().max() < 1e-4


def test_separate_dirac_same_stems_through_onnx_and_torch(msdm):
    path, _ = msdm
    # A random network is no prior of any mixture, so Dirac sampling drifts far from [-1, 1] on the way down to
    # sigma_min = 1e-4; stop at 1e-2, where the stems stay of the mixture's size, and compare relative to it.
    settings = SamplerSettings(steps=6, sigma_min=1e-2, s_churn=1.0, resamples=1)
    mixture = 0.3 * torch.randn(2, WINDOW, generator=torch.Generator().manual_seed(3))
    stems = {}
    for backend in ("torch", "onnx"):
        prior = load_prior_with_backend(path, backend=backend, threads=1)
        stems[backend] = separate_dirac(prior, mixture, settings, generator=torch.Generator().manual_seed(0))
    assert stems["onnx"].shape == (2, 4, WINDOW)
    scale = float(stems["torch"].abs().max())
    assert (stems["onnx"] - stems["torch"]).abs().max() < 1e-4 * max(1.0, scale)
    assert torch.allclose(stems["onnx"].sum(1), mixture, atol=1e-5 * max(1.0, scale))


def test_length_not_a_multiple_of_the_stride_is_a_clear_error(msdm, capsys):
    path, cards = msdm
    denoiser = OnnxDenoiser(path.parent / "tiny.onnx", stride=STRIDE, channels=4, threads=1)
    with pytest.raises(ValueError, match="not a multiple of the model's stride 16: use 96 or 112"):
        denoiser(torch.zeros(1, 4, 100), 0.5)
    assert main(["export", "--model", str(path), "-o", str(path.parent / "x"), "--length", "100"]) == 2
    assert "multiple of the model's stride 16" in capsys.readouterr().err


def test_export_cli_refuses_bad_input(msdm, tmp_path, capsys):
    path, _ = msdm
    assert main(["export", "--model", "no-such-model", "-o", str(tmp_path)]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", "--model", str(path), "-o", str(blocker / "sub")]) == 2
    assert "cannot write to -o" in capsys.readouterr().err
    assert main(["export", "--model", str(path), "-o", str(tmp_path), "--opset", "17"]) == 2


def test_export_cli_without_onnxruntime_is_a_user_error(msdm, tmp_path, monkeypatch, capsys):
    path, _ = msdm
    import importlib.util

    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else original(name, *a))
    assert main(["export", "--model", str(path), "-o", str(tmp_path)]) == 2
    assert "pip install" in capsys.readouterr().err


def test_export_cli_writes_torchscript(msdm, tmp_path, capsys):
    path, _ = msdm
    assert main(["export", "--model", str(path), "--format", "torchscript", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "tiny.torchscript.pt").exists() and (tmp_path / "tiny.torchscript.json").exists()
    assert "max abs error" in capsys.readouterr().err


def test_auto_backend_choice(msdm, tmp_path, monkeypatch):
    path, _ = msdm
    assert load_prior_with_backend(path, backend="auto", threads=1, cache_dir=tmp_path).backend["backend"] == "onnx"

    def no_runtime(device="cpu"):
        raise backends.BackendUnavailable("no onnxruntime")

    monkeypatch.setattr(backends, "onnx_providers", no_runtime)
    assert load_prior_with_backend(path, backend="auto", threads=1, cache_dir=tmp_path).backend["backend"] == "torch"
    with pytest.raises(backends.BackendUnavailable):
        load_prior_with_backend(path, backend="onnx", threads=1, cache_dir=tmp_path)


def test_user_errors_of_the_backend_layer(msdm):
    path, _ = msdm
    with pytest.raises(ValueError, match="fp16 runs only on a CUDA GPU"):
        load_prior_with_backend(path, backend="onnx", dtype="fp16")
    with pytest.raises(ValueError, match="unknown backend"):
        load_prior_with_backend(path, backend="tensorflow")
    with pytest.raises(ValueError, match="unknown model"):
        load_prior_with_backend("no-such-model", backend="torch")
    assert backends.default_threads() >= 1


def test_onnx_session_does_not_spin(msdm):
    path, _ = msdm
    denoiser = OnnxDenoiser(path.parent / "tiny.onnx", stride=STRIDE, channels=4, threads=1)
    assert denoiser.options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert denoiser.options.intra_op_num_threads == 1 and denoiser.providers == ["CPUExecutionProvider"]
    assert np.isfinite(denoiser(torch.zeros(1, 4, STRIDE), 1.0).numpy()).all()


def test_bench_cli_writes_a_table_and_json(msdm, tmp_path, capsys):
    path, _ = msdm
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", str(path), "--backends", "torch,onnx", "--in-process", "--batches", "1,2",
            "--repeats", "1", "--measure-steps", "1", "--presets", "separate-fast", "--seconds", "0.1",
            "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["backend"] for r in report["results"]] == ["torch", "onnx"]
    fast = report["results"][1]["presets"]["separate-fast"]
    assert fast["extrapolated"] and fast["evaluations_per_window"] == load_preset("separate-fast").sampler.evaluations == 24 and fast["rtf"] > 0
    assert set(report["results"][0]["ms_per_eval"]) == {"1", "2"} and "onnx" in report["speedup_vs_torch"]
    assert "separate-fast RTF" in capsys.readouterr().out
    assert main(["bench", "--model", str(path), "--backends", "tensorflow"]) == 2
