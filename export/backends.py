"""The backend layer: a model's denoisers run on torch eager, TorchScript or ONNX Runtime behind one callable.

Contract (what the CLI, the API facade and the server call)
-----------------------------------------------------------

    prior = load_prior_with_backend(name, backend="auto", device="cpu", threads=None,
                                    dtype="fp32", cache_dir=None, providers=None)

* `name`: a shipped model's name or a model file path (as `engine.models.load_prior`).
* Returns the engine's own `JointPrior` (msdm) or `IndependentPrior` (isdm),
  whose denoisers are backend callables `(x (B, C, T) tensor, sigma float |
  (B,) tensor) -> (B, C, T) tensor` on x's device and dtype. The sampler and
  the tasks use it unchanged. Like `load_prior`'s result it carries `.card`,
  `.stride`, plus `.device` (where the region layer should put tensors) and
  `.backend` (a dict for provenance: backend, providers, file, dtype, threads).
* `backend`:
  - "torch": eager PyTorch (the `EDMDenoiser` of `load_prior`).
  - "torchscript": a traced TorchScript file (found or made as below).
  - "onnx": ONNX Runtime. Providers: TensorRT > CUDA > CPU for a CUDA device
    (those the installed onnxruntime offers), CPU otherwise.
  - "auto": ONNX Runtime when onnxruntime imports and can run on `device`
    (for CUDA: its CUDA provider is present) and an exported file exists or
    can be made in the cache; else torch. On CPU, ONNX Runtime is 1.4-1.7x
    faster per evaluation than eager torch here (docs/export.md), which is
    why it is the default. The first use of a model exports it once into the
    cache (about a minute for the 10M cpu-small U-Net on 2 cores); if that
    export fails, auto warns and falls back to torch.
  Exported files are looked up next to the model file (`<name>.onnx.json` /
  `<name>.torchscript.json`, as `stemweave export -o` writes them) and then
  in the cache (`cache_dir`, else $STEMWEAVE_CACHE_DIR, else
  $XDG_CACHE_HOME/stemweave or ~/.cache/stemweave, under `export/`); a file
  is used only when its card's `source_sha256` matches the model's weights.
* `threads`: CPU threads for one evaluation; default `default_threads()` =
  max(1, cores // 2), which leaves half the cores to the DAW. ONNX Runtime
  gets it per session (intra-op threads; inter-op 1; threads never spin
  while idle: `session.intra_op.allow_spinning` = "0"); torch and
  TorchScript get it through `torch.set_num_threads`, which is process-wide.
* `dtype`: "fp32" or "fp16"; fp16 runs only on a CUDA device (ValueError on
  CPU: CPUs have no fast fp16 convolutions, it would be slower, not faster).
* Errors a user can cause raise ValueError (unknown model or backend, fp16 on
  CPU, a CUDA device torch cannot see) or `BackendUnavailable` (a subclass:
  onnxruntime missing, or no provider for the device) with a message that
  says what to install or choose.

GPU: `pip install stemweave[gpu]`-style setups must *replace* the CPU wheel:
`pip uninstall onnxruntime && pip install onnxruntime-gpu` (both install the
same `onnxruntime` module; never both). TensorRT needs the TensorRT libraries
on the library path; its engines are cached under the cache dir.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from stemweave.engine.checkpoints import ModelFile, load_model
from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.priors import IndependentPrior, JointPrior

BACKENDS = ("auto", "torch", "onnx", "torchscript")
FORMATS = ("onnx", "torchscript")
DTYPES = ("fp32", "fp16")
EXTENSIONS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PARITY_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # max abs error against eager fp32 that an export must meet


class BackendUnavailable(ValueError):
    """The backend asked for cannot run here (a package or provider is missing); the message says what to install."""


def default_threads() -> int:
    """max(1, cores // 2): leave half the cores to the DAW and whatever else runs beside the engine."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where exports made on demand live: cache_dir, $STEMWEAVE_CACHE_DIR, $XDG_CACHE_HOME/stemweave or ~/.cache/stemweave."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("STEMWEAVE_CACHE_DIR"):
        return Path(os.environ["STEMWEAVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stemweave"


# --------------------------------------------------------------------------- the exported function


class HalfPrecision(nn.Module):
    """Runs a network in float16 between float32 inputs and outputs (the EDM coefficients stay float32)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.half()

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        return self.net(x.half(), c_noise.half()).float()


class DenoiserGraph(nn.Module):
    """What is exported: (x (B, C, T) float32, sigma (B,) float32) -> D(x, sigma) (B, C, T) float32.

    D is the EDM-preconditioned network with its clamp (engine/denoiser.py);
    with dtype fp16 the U-Net inside runs in float16, the interface stays float32.
    """

    def __init__(self, net: nn.Module, sigma_data: float, clamp: bool, dtype: str = "fp32"):
        super().__init__()
        inner = HalfPrecision(net) if dtype == "fp16" else net
        self.denoiser = EDMDenoiser(inner, sigma_data=sigma_data, clamp=clamp)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, sigma)


def denoiser_graphs(model: ModelFile, dtype: str = "fp32") -> dict[str, DenoiserGraph]:
    """One exportable graph per network: {"": graph} for msdm, {stem: graph} for isdm (eval mode, on CPU)."""
    if model.kind not in ("msdm", "isdm"):
        raise ValueError(f"{model.card['name']} is a {model.kind} model; only diffusion priors (msdm, isdm) are exported")
    graphs = {}
    for key, net in model.nets.items():
        net = load_model_net_copy(net)
        graphs[key] = DenoiserGraph(net, model.card.get("sigma_data", 0.2), model.card.get("clamp", True), dtype).eval()
    return graphs


def load_model_net_copy(net: nn.Module) -> nn.Module:
    """A CPU float32 copy of a network (exports convert dtypes; the caller's network is left alone)."""
    import copy

    return copy.deepcopy(net).to("cpu").float().eval()


def check_length(length: int, stride: int) -> int:
    """`length` itself when it is a positive multiple of the U-Net stride, else a ValueError saying what to pass."""
    if length <= 0 or length % stride:
        lower = max(stride, length // stride * stride)
        raise ValueError(f"length {length} is not a multiple of the model's stride {stride}: "
                         f"use {lower} or {lower + stride} (any multiple of {stride})")
    return length


def parity_inputs(channels: int, lengths: Sequence[int], batches: Sequence[int], seed: int = 0):
    """Random (x, sigma) pairs: x = s + sigma n with s ~ 0.2 N(0, 1), sigma log-uniform in [1e-3, 1]."""
    generator = torch.Generator().manual_seed(seed)
    for length in lengths:
        for batch in batches:
            sigma = torch.exp(torch.empty(batch).uniform_(math.log(1e-3), 0.0, generator=generator))
            clean = 0.2 * torch.randn(batch, channels, length, generator=generator)
            noise = torch.randn(batch, channels, length, generator=generator)
            yield clean + sigma[:, None, None] * noise, sigma


def max_abs_error(reference: Callable, candidate: Callable, channels: int, lengths: Sequence[int],
                  batches: Sequence[int] = (1, 2), seed: int = 0) -> float:
    """max |reference(x, sigma) - candidate(x, sigma)| over random inputs of every length and batch size."""
    worst = 0.0
    with torch.inference_mode():
        for x, sigma in parity_inputs(channels, lengths, batches, seed):
            expected = reference(x, sigma)
            got = candidate(x, sigma).to(expected)
            worst = max(worst, float((expected - got).abs().max()))
    return worst


def parity_lengths(card: dict[str, Any], stride: int, length: int | None = None) -> list[int]:
    """The two lengths an export is checked at: the model's window (or `length`) and a short one."""
    main = check_length(int(length or card["window"]), stride)
    short = max(stride, (main // 4) // stride * stride)
    return [main, short] if short != main else [main, 2 * main]


def export_model(
    name_or_path: str | Path,
    out_dir: str | Path,
    *,
    format: str = "onnx",
    dtype: str = "fp32",
    opset: int | None = None,
    length: int | None = None,
    check: bool = True,
    exporter: str = "dynamo",
    log: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Export every network of a prior model file to `out_dir`; returns (card path, card).

    Writes `<name>.onnx` (msdm) or `<name>.<stem>.onnx` (isdm) -- or
    `.torchscript.pt` -- and `<name>.<format>.json`: the model card with an
    `export` section (format, opset, dtype, files, stride, parity error,
    source weights' sha256). The parity check runs eager fp32 and the
    exported file on random inputs at two lengths and batch sizes 1 and 2,
    and raises if the max abs error exceeds PARITY_TOLERANCE[dtype].
    """
    from stemweave.engine.models import resolve_model

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    log = log or (lambda message: None)
    model = load_model(resolve_model(name_or_path), device="cpu")
    card = model.card
    name = card["name"]
    stride = next(iter(model.nets.values())).stride
    lengths = parity_lengths(card, stride, length)
    graphs = denoiser_graphs(model, dtype)
    references = denoiser_graphs(model, "fp32")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    files, errors, info = {}, {}, {}
    for key, graph in graphs.items():
        filename = f"{name}.{key}{EXTENSIONS[format]}" if key else f"{name}{EXTENSIONS[format]}"
        path = out_dir / filename
        channels = card_channels(model)
        log(f"exporting {name}{'/' + key if key else ''} to {path} ({format}, {dtype}) ...")
        if format == "onnx":
            from stemweave.export.onnx import export_onnx

            info = export_onnx(graph, path, channels=channels, stride=stride, length=lengths[0], opset=opset,
                               exporter=exporter)
        else:
            from stemweave.export.torchscript import export_torchscript

            info = export_torchscript(graph, path, channels=channels, stride=stride, lengths=lengths)
        files[key] = filename
        if check:
            runner = _runner(format, path, stride, channels, threads=default_threads())
            errors[key] = max_abs_error(references[key], runner, channels, lengths)
            log(f"  parity vs eager torch (fp32): max abs error {errors[key]:.2e} at lengths {lengths}, batch 1 and 2")

    worst = max(errors.values()) if errors else None
    card = dict(card)
    card["export"] = {
        "format": format,
        "dtype": dtype,
        "files": files,
        "inputs": {"x": ["batch", card_channels(model), f"{stride}*k"], "sigma": ["batch"]},
        "outputs": {"denoised": ["batch", card_channels(model), f"{stride}*k"]},
        "stride": stride,
        "parity": {"max_abs_error": worst, "per_network": errors, "lengths": lengths, "batches": [1, 2],
                   "reference": "eager torch fp32", "tolerance": PARITY_TOLERANCE[dtype]} if check else None,
        "source_sha256": model.card.get("sha256"),
        "torch": torch.__version__,
        **info,
    }
    card_path = out_dir / f"{name}.{format}.json"
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    if worst is not None and worst > PARITY_TOLERANCE[dtype]:
        raise RuntimeError(f"exported {name} differs from eager torch by {worst:.2e} (> {PARITY_TOLERANCE[dtype]:.0e}); "
                           f"files kept in {out_dir} for inspection")
    return card_path, card


def card_channels(model: ModelFile) -> int:
    return next(iter(model.nets.values())).in_channels


# --------------------------------------------------------------------------- backend callables


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "the onnx backend needs onnxruntime: `pip install onnxruntime` (CPU) or, on an NVIDIA GPU machine, "
            "`pip install onnxruntime-gpu` instead of it (never both); or choose --backend torch"
        ) from None
    return onnxruntime


def onnx_providers(device: torch.device | str = "cpu") -> list[str]:
    """Execution providers for `device`: TensorRT, CUDA (when installed) then CPU for CUDA; CPU for the CPU."""
    available = _onnxruntime().get_available_providers()
    if torch.device(device).type == "cuda":
        gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
        if not gpu:
            raise BackendUnavailable(
                f"onnxruntime here has no GPU provider (it has {', '.join(available)}): replace the CPU wheel with "
                "`pip uninstall onnxruntime && pip install onnxruntime-gpu`, or use --backend torch on the GPU"
            )
        return gpu + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxDenoiser:
    """An exported denoiser on ONNX Runtime, callable like `EDMDenoiser`: (x (B, C, T), sigma) -> (B, C, T)."""

    def __init__(self, path: str | Path, *, stride: int, channels: int, threads: int | None = None,
                 providers: Sequence[str] | None = None, device: torch.device | str = "cpu",
                 cache_dir: str | Path | None = None):
        ort = _onnxruntime()
        self.path, self.stride, self.channels = Path(path), stride, channels
        self.device = torch.device(device)
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: the DAW gets the cores
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers = list(providers or onnx_providers(self.device))
        self.providers = providers
        provider_options = [self._provider_options(p, cache_dir) for p in providers]
        self.options = options
        self.session = ort.InferenceSession(str(self.path), options, providers=providers, provider_options=provider_options)
        self.providers = self.session.get_providers()
        self._gpu = self.device.type == "cuda" and self.providers[0] != "CPUExecutionProvider"

    def _provider_options(self, provider: str, cache_dir) -> dict:
        index = self.device.index or 0
        if provider == "CUDAExecutionProvider":
            return {"device_id": index}
        if provider == "TensorrtExecutionProvider":
            engines = cache_root(cache_dir) / "tensorrt"
            engines.mkdir(parents=True, exist_ok=True)
            return {"device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(engines)}
        return {}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        batch, channels, length = x.shape
        if channels != self.channels:
            raise ValueError(f"{self.path.name} takes {self.channels} channels, got {channels}")
        check_length(length, self.stride)
        sigma = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(batch)
        if self._gpu and x.is_cuda:
            return self._run_on_gpu(x, sigma)
        inputs = {"x": np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy()),
                  "sigma": np.ascontiguousarray(sigma.detach().cpu().numpy())}
        (out,) = self.session.run(["denoised"], inputs)
        return torch.from_numpy(out).to(x.device, x.dtype)

    def _run_on_gpu(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Bind torch CUDA buffers directly (no host round trip)."""
        x = x.detach().to(torch.float32).contiguous()
        sigma = sigma.to(x.device).contiguous()
        out = torch.empty_like(x)
        binding = self.session.io_binding()
        index = x.device.index or 0
        for name, tensor in (("x", x), ("sigma", sigma)):
            binding.bind_input(name, "cuda", index, np.float32, tuple(tensor.shape), tensor.data_ptr())
        binding.bind_output("denoised", "cuda", index, np.float32, tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(binding)
        return out


class TorchScriptDenoiser:
    """A traced TorchScript denoiser, callable like `EDMDenoiser`."""

    def __init__(self, path: str | Path, *, stride: int, channels: int, device: torch.device | str = "cpu"):
        self.path, self.stride, self.channels = Path(path), stride, channels
        self.device = torch.device(device)
        self.module = torch.jit.load(str(path), map_location=self.device).eval()

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        batch, channels, length = x.shape
        if channels != self.channels:
            raise ValueError(f"{self.path.name} takes {self.channels} channels, got {channels}")
        check_length(length, self.stride)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=self.device).reshape(-1).expand(batch)
        with torch.inference_mode():
            out = self.module(x.to(self.device, torch.float32), sigma)
        return out.to(x.device, x.dtype)


def _runner(format: str, path: Path, stride: int, channels: int, threads: int | None = None):
    if format == "onnx":
        return OnnxDenoiser(path, stride=stride, channels=channels, threads=threads)
    return TorchScriptDenoiser(path, stride=stride, channels=channels)


# --------------------------------------------------------------------------- finding or making exports


def find_export(model_card_path: Path, card: dict[str, Any], format: str, dtype: str,
                cache_dir: str | Path | None = None) -> Path | None:
    """The card of an export of this model's weights (next to the model file, then in the cache), or None."""
    name = card["name"]
    for folder in (model_card_path.parent, _cache_folder(card, format, dtype, cache_dir)):
        candidate = folder / f"{name}.{format}.json"
        if not candidate.exists():
            continue
        try:
            exported = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        info = exported.get("export") or {}
        if (info.get("source_sha256") == card.get("sha256") and info.get("dtype") == dtype
                and all((folder / f).exists() for f in (info.get("files") or {"": None}).values() if f)):
            return candidate
    return None


def _cache_folder(card: dict[str, Any], format: str, dtype: str, cache_dir) -> Path:
    """cache/export/<name>-<first 12 hex of the weights' sha256>/<format>-<dtype>/: one folder per export."""
    return cache_root(cache_dir) / "export" / f"{card['name']}-{(card.get('sha256') or 'unknown')[:12]}" / f"{format}-{dtype}"


def ensure_export(name_or_path, format: str = "onnx", dtype: str = "fp32", cache_dir=None,
                  log: Callable[[str], None] | None = None) -> Path:
    """The card path of an export of the model, exporting it into the cache first when none exists."""
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.models import resolve_model

    card_path = resolve_model(name_or_path)
    card = read_card(card_path)
    found = find_export(card_path, card, format, dtype, cache_dir)
    if found is not None:
        return found
    folder = _cache_folder(card, format, dtype, cache_dir)
    (log or _stderr)(f"stemweave: exporting {card['name']} to {format} once (cached in {folder}) ...")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        exported_card, _ = export_model(card_path, staging, format=format, dtype=dtype, log=log)
        shutil.rmtree(folder, ignore_errors=True)  # a stale or partial export of these weights
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / exported_card.name


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


# --------------------------------------------------------------------------- the entry point


def load_prior_with_backend(
    name: str | Path,
    backend: str = "auto",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    *,
    dtype: str = "fp32",
    cache_dir: str | Path | None = None,
    providers: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> JointPrior | IndependentPrior:
    """A prior model whose denoisers run on `backend`; see the module docstring for the contract."""
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.models import given_sigma_data, load_prior, resolve_model

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available() and backend in ("torch", "torchscript"):
        raise ValueError(f"device {device} asked for, but this torch sees no CUDA device; use --device cpu")
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 runs only on a CUDA GPU (CPUs have no fast fp16 convolutions: it would be slower); "
                         "use --dtype fp32 on the CPU")
    threads = threads or default_threads()
    card_path = resolve_model(name)
    card = read_card(card_path)
    if card.get("kind") not in ("msdm", "isdm"):
        raise ValueError(f"{card.get('name')} is a {card.get('kind')} model, not a prior; backends run diffusion priors")

    if backend == "auto":
        backend = _choose_auto(card_path, dtype, device, cache_dir, log)
    if backend == "torch":
        torch.set_num_threads(threads)
        prior = load_prior(card_path, device=device if device.type != "cuda" or torch.cuda.is_available() else "cpu")
        if dtype == "fp16":
            for denoiser in _denoisers(prior):
                denoiser.net = HalfPrecision(denoiser.net)
        prior.device = device
        prior.backend = {"backend": "torch", "device": str(device), "dtype": dtype, "threads": threads}
        return prior

    exported_card_path = ensure_export(card_path, backend, dtype, cache_dir, log)
    exported = json.loads(exported_card_path.read_text())
    info = exported["export"]
    stride, channels = info["stride"], info["inputs"]["x"][1]
    folder = exported_card_path.parent
    denoisers = {}
    for key, filename in info["files"].items():
        if backend == "onnx":
            denoisers[key] = OnnxDenoiser(folder / filename, stride=stride, channels=channels, threads=threads,
                                          providers=providers or onnx_providers(device), device=device,
                                          cache_dir=cache_dir)
        else:
            torch.set_num_threads(threads)
            denoisers[key] = TorchScriptDenoiser(folder / filename, stride=stride, channels=channels, device=device)
    stems = card["stems"]
    prior = (JointPrior(denoisers[""], stems, given_sigma_data(card)) if card["kind"] == "msdm"
             else IndependentPrior([denoisers[s] for s in stems], stems))
    prior.card, prior.stride, prior.device = card, stride, device
    first = next(iter(denoisers.values()))
    prior.backend = {"backend": backend, "device": str(device), "dtype": dtype, "threads": threads,
                     "file": str(folder / info["files"][next(iter(info["files"]))]),
                     "providers": getattr(first, "providers", None),
                     "parity_max_abs_error": (info.get("parity") or {}).get("max_abs_error")}
    return prior


def _choose_auto(card_path: Path, dtype: str, device: torch.device, cache_dir, log) -> str:
    """ONNX Runtime when it can run on `device` and an export exists or can be made; else torch."""
    try:
        onnx_providers(device)
    except BackendUnavailable:
        return "torch"
    try:
        ensure_export(card_path, "onnx", dtype, cache_dir, log)
    except Exception as error:  # an export that fails must not stop the job: eager torch still works
        warnings.warn(f"ONNX export failed ({type(error).__name__}: {error}); using eager torch", RuntimeWarning, stacklevel=3)
        return "torch"
    return "onnx"


def _denoisers(prior) -> list[EDMDenoiser]:
    return list(getattr(prior, "denoisers", None) or [prior.denoiser])


__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "DenoiserGraph",
    "OnnxDenoiser",
    "TorchScriptDenoiser",
    "cache_root",
    "check_length",
    "default_threads",
    "ensure_export",
    "export_model",
    "find_export",
    "load_prior_with_backend",
    "max_abs_error",
]
