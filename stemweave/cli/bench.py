"""`stemweave bench`: per-backend speed of a prior -- ms per network evaluation, real-time factor and peak memory of a 12 s separation."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from stemweave.cli import UserError

DEFAULT_PRESETS = "separate-fast,separate-dirac"
WARMUP_CALLS = 3  # TorchScript's profiling executor optimises the graph over its first two calls


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time a prior on each backend: ms per evaluation, real-time factor, peak memory",
        description="For each backend: milliseconds per network evaluation (median) at the model's window and "
        "batch 1 and 4; then the real-time factor (wall time / audio length) and peak memory of separating a "
        "--seconds region (run_region: the model's windows with their overlap, batched) at each preset. By default "
        "a preset is timed over --measure-steps sampler steps and extrapolated to its full step count (marked "
        "'extrapolated'); --full runs it all. Prints a table; --json writes the numbers.",
    )
    p.add_argument("--model", default=None, help="a prior's name or model file path (default: the shipped prior)")
    p.add_argument("--backends", default="torch,onnx,torchscript", help="comma-separated (default: %(default)s)")
    p.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated separation presets (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=12.0, help="region length (default 12)")
    p.add_argument("--batches", default="1,4", help="batch sizes for ms/eval (default 1,4)")
    p.add_argument("--repeats", type=int, default=3, help="timed evaluations per batch size; the median is kept (default 3)")
    p.add_argument("--measure-steps", type=int, default=3, help="sampler steps timed per preset before extrapolating")
    p.add_argument("--full", action="store_true", help="run every preset to the end (slow on a CPU)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch in the region run (default: all)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: half the cores)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--cache-dir", type=Path, default=None, help="where exports made on demand go")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--compare-samplers", type=Path, default=None, metavar="DATA",
                   help="instead of timing: SI-SDRi of Dirac separation with the Euler and the Heun sampler at equal "
                   "network evaluations (--evaluations), on the first --windows fixed windows of DATA (Slakh layout)")
    p.add_argument("--evaluations", default="20,50,100", help="evaluation budgets for --compare-samplers")
    p.add_argument("--windows", type=int, default=8, help="windows for --compare-samplers (default 8)")
    p.add_argument("--in-process", action="store_true",
                   help="run every backend in this process (default: one subprocess per backend, so that each "
                   "backend's peak memory is its own)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from stemweave.engine.presets import load_preset
    from stemweave.export.backends import BACKENDS, default_threads, load_prior_with_backend

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in BACKENDS or b == "auto"]
    if unknown or not names:
        raise UserError(f"unknown backend(s) {', '.join(unknown) or '(none)'}: choose from torch, onnx, torchscript")
    try:
        presets = [load_preset(name.strip()) for name in args.presets.split(",") if name.strip()]
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError as error:
        raise UserError(str(error)) from None
    if any(p.task != "separate" for p in presets):
        raise UserError("--presets: only separation presets are benchmarked")
    if args.json is not None:
        _check_writable(args.json)
    model = _model_name(args.model)
    threads = args.threads or default_threads()
    if args.compare_samplers is not None:
        return _compare_samplers(args, model, names[0], threads)
    results = []
    if len(names) > 1 and not args.in_process:
        results = [_isolated(backend, args) for backend in names]  # a fresh process each: peak memory is its own
        names = []
    for backend in names:
        try:
            prior = load_prior_with_backend(model, backend=backend, device=args.device, threads=threads,
                                            cache_dir=args.cache_dir, log=lambda m: print(m, file=sys.stderr))
        except ValueError as error:
            raise UserError(str(error)) from None
        print(f"bench: {backend} ...", file=sys.stderr)
        row = {"backend": backend, "providers": prior.backend.get("providers"),
               "ms_per_eval": {str(b): evaluation_ms(prior, b, args.repeats) for b in batches}, "presets": {}}
        for preset in presets:
            row["presets"][preset.name] = region_run(prior, preset, args.seconds, args.batch_size,
                                                     None if args.full else args.measure_steps)
        results.append(row)
        del prior
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    report = {"machine": machine(args.device, threads), "model": _model_info(model), "seconds": args.seconds,
              "results": results, "speedup_vs_torch": speedups(results)}
    print(format_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _isolated(backend: str, args: argparse.Namespace) -> dict:
    """Run this command for one backend in a fresh interpreter and return its result row."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        argv = [sys.executable, "-m", "stemweave", "bench", "--backends", backend, "--json", str(out),
                "--presets", args.presets, "--seconds", str(args.seconds), "--batches", args.batches,
                "--repeats", str(args.repeats), "--measure-steps", str(args.measure_steps), "--device", args.device]
        for flag, value in (("--model", args.model), ("--batch-size", args.batch_size), ("--threads", args.threads),
                            ("--cache-dir", args.cache_dir)):
            if value is not None:
                argv += [flag, str(value)]
        argv += ["--full"] if args.full else []
        done = subprocess.run(argv, stdout=subprocess.DEVNULL)
        if done.returncode != 0:
            raise UserError(f"the {backend} benchmark failed (exit {done.returncode}); its messages are above")
        return json.loads(out.read_text())["results"][0]


def evaluation_ms(prior, batch: int, repeats: int) -> float:
    """Median wall milliseconds of one `prior.denoise` on (batch, K, window) after WARMUP_CALLS warm-up calls."""
    import torch

    window = int(prior.card["window"])
    x = 0.2 * torch.randn(batch, len(prior.stems), window, generator=torch.Generator().manual_seed(0))
    x = x.to(getattr(prior, "device", "cpu"))
    for _ in range(WARMUP_CALLS):
        prior.denoise(x, 0.3)
    times = []
    for _ in range(max(1, repeats)):
        _sync(x)
        start = time.perf_counter()
        prior.denoise(x, 0.3)
        _sync(x)
        times.append(1000 * (time.perf_counter() - start))
    return round(statistics.median(times), 2)


def region_run(prior, preset, seconds: float, batch_size: int | None, measure_steps: int | None) -> dict:
    """Separate a `seconds` region through run_region (or tasks.separate on windows when there is no region layer).

    With measure_steps, the preset runs that many steps (same correction steps and churn, so the same cost per
    step) and the remaining network calls are added at the median interval between two calls' starts (which
    includes the sampler's own arithmetic): wall + calls * (steps / measure_steps - 1) * median interval.
    """
    rate, window = int(prior.card["rate"]), int(prior.card["window"])
    frames = int(round(seconds * rate))
    audio = (0.1 * np.random.default_rng(0).standard_normal((1, frames))).astype(np.float32)
    steps = preset.sampler.steps
    timed = preset if not measure_steps or measure_steps >= steps else replace(
        preset, sampler=replace(preset.sampler, steps=measure_steps))
    report: dict = {}
    clock = CallClock(prior)
    with PeakMemory() as memory:
        start = time.perf_counter()
        windows = _separate(clock, timed, audio, rate, window, batch_size, report)
        wall = time.perf_counter() - start
    extrapolated = timed is not preset
    total = wall
    if extrapolated:
        total += len(clock.starts) * (steps / timed.sampler.steps - 1) * clock.median_interval()
    return {
        "evaluations_per_window": preset.sampler.evaluations,
        "windows": windows,
        "batch": report.get("batch_size", windows),
        "wall_s": round(total, 2),
        "rtf": round(total / seconds, 3),
        "peak_rss_mib": memory.peak_mib,
        "rss_growth_mib": memory.growth_mib,
        **({"cuda_peak_mib": memory.cuda_peak_mib} if hasattr(memory, "cuda_peak_mib") else {}),
        "extrapolated": extrapolated,
        "measured_steps": timed.sampler.steps,
        "measured_wall_s": round(wall, 2),
        "network_calls_measured": len(clock.starts),
    }


class CallClock:
    """A prior that times its wrapped prior's network calls (the region layer sees the same stems, card, device)."""

    def __init__(self, prior):
        self.prior, self.starts = prior, []
        self.stems, self.card = prior.stems, prior.card
        self.stride, self.device = getattr(prior, "stride", None), getattr(prior, "device", None)

    def denoise(self, x, sigma):
        self.starts.append(time.perf_counter())
        return self.prior.denoise(x, sigma)

    def median_interval(self) -> float:
        """Median seconds between consecutive calls' starts (the first call, with its warm-up, left out)."""
        gaps = np.diff(self.starts[1:])
        return float(np.median(gaps)) if len(gaps) else 0.0


def _separate(prior, preset, audio, rate, window, batch_size, report) -> int:
    try:
        from stemweave.engine.regions import run_region
    except ImportError:
        run_region = None
    if run_region is not None:
        run_region("separate", prior, audio, rate, preset, batch_size=batch_size, report=report)
        return int(report.get("windows", 0))
    import torch

    from stemweave.engine import tasks

    count = math.ceil(audio.shape[-1] / window)
    padded = np.pad(audio[0], (0, count * window - audio.shape[-1])).reshape(count, window)
    batch = batch_size or count
    for first in range(0, count, batch):
        tasks.separate(prior, torch.from_numpy(padded[first : first + batch]), preset,
                       generator=torch.Generator().manual_seed(0))
    report["batch_size"] = batch
    return count


class PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 5 ms; CUDA: max allocated)."""

    def __enter__(self):
        import torch

        self._cuda = torch.cuda.is_available()
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
        self.baseline = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        self.peak_mib = round(self.peak / 2**20, 1)
        self.growth_mib = round((self.peak - self.baseline) / 2**20, 1)
        if self._cuda:
            import torch

            self.cuda_peak_mib = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return False


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak so far
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(x) -> None:
    if x.is_cuda:
        import torch

        torch.cuda.synchronize(x.device)


def speedups(results: list[dict]) -> dict:
    """ms/eval of eager torch divided by each backend's, per batch size."""
    base = next((r for r in results if r["backend"] == "torch"), None)
    if base is None:
        return {}
    return {r["backend"]: {b: round(base["ms_per_eval"][b] / ms, 2) for b, ms in r["ms_per_eval"].items()}
            for r in results}


def machine(device: str, threads: int) -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "threads": threads, "device": device, "python": platform.python_version(), "torch": torch.__version__,
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def format_table(report: dict) -> str:
    results = report["results"]
    batches = list(results[0]["ms_per_eval"]) if results else []
    presets = list(results[0]["presets"]) if results else []
    header = ["backend"] + [f"ms/eval b={b}" for b in batches] + [f"x torch b={b}" for b in batches]
    for name in presets:
        header += [f"{name} RTF", f"{name} peak MiB"]
    rows = [header]
    speed = report.get("speedup_vs_torch", {})
    for r in results:
        row = [r["backend"]] + [f"{r['ms_per_eval'][b]:.1f}" for b in batches]
        row += [f"{speed.get(r['backend'], {}).get(b, float('nan')):.2f}" for b in batches]
        for name in presets:
            p = r["presets"][name]
            row += [f"{p['rtf']:.2f}{'*' if p['extrapolated'] else ''}", f"{p['peak_rss_mib']:.0f}"]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    m, model = report["machine"], report["model"]
    notes = [f"model {model.get('name')} ({model.get('parameters')} parameters, window {model.get('window')} at "
             f"{model.get('rate')} Hz); {report['seconds']:g} s region; {m['cpu']}, {m['cores']} cores, "
             f"{m['threads']} threads, device {m['device']}"]
    if results:
        first = results[0]["presets"]
        for name in presets:
            p = first[name]
            notes.append(f"{name}: {p['evaluations_per_window']} evaluations x {p['windows']} windows (batch {p['batch']})"
                         + (f"; * extrapolated from {p['measured_steps']} steps" if p["extrapolated"] else ""))
    return "\n".join(lines + notes)


def _model_name(name: str | None) -> str:
    from stemweave.engine import models

    if name is not None:
        try:
            models.resolve_model(name)
        except ValueError as error:
            raise UserError(str(error)) from None
        return name
    priors = models.list_models("msdm") + models.list_models("isdm")
    if not priors:
        raise UserError("no prior ships yet: pass --model PATH to a model file (e.g. one from "
                        "`stemweave train --export-model NAME --export-dir DIR`)")
    default = getattr(models, "DEFAULT_PRIOR", None)
    return default if default in priors else priors[0]


def _model_info(name: str) -> dict:
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.models import resolve_model

    card = read_card(resolve_model(name))
    return {k: card.get(k) for k in ("name", "kind", "stems", "rate", "window", "parameters")}


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"cannot write --json {path}: {folder} is not a writable folder")


def compare_samplers(prior, mixtures, references, evaluations, *, s_churn: float = 20.0, sigma_min: float = 1e-4,
                     sigma_max: float = 1.0, constrained: str | int = 0, seed: int = 0) -> list[dict]:
    """Mean SI-SDRi (dB, non-silent stems) of Dirac separation with Euler and with Heun at equal evaluations.

    mixtures (N, T) and references (N, K, T) as arrays. No correction steps (R = 0): Euler takes n steps,
    Heun the most steps that fit n evaluations (2 per step, 1 for the last).
    """
    import torch

    from stemweave.engine import tasks
    from stemweave.engine.metrics import is_silent, si_sdr_improvement
    from stemweave.engine.sampler import SamplerSettings, heun_steps_for

    rows = []
    mixture = torch.as_tensor(mixtures, dtype=torch.float32)
    for n in evaluations:
        for method, steps in (("euler", n), ("heun", heun_steps_for(n))):
            settings = SamplerSettings(steps=steps, sigma_min=sigma_min, sigma_max=sigma_max, s_churn=s_churn,
                                       method=method)
            start = time.perf_counter()
            stems = tasks.separate_dirac(prior, mixture, settings, constrained=constrained,
                                         generator=torch.Generator().manual_seed(seed))
            wall = time.perf_counter() - start
            estimate = stems.double().numpy()
            scores = si_sdr_improvement(estimate, references, np.asarray(mixtures)[:, None])
            keep = ~is_silent(references)
            rows.append({"sampler": method, "budget": n, "evaluations": settings.evaluations, "steps": steps,
                         "si_sdri_db": round(float(scores[keep].mean()), 2),
                         "per_stem_db": [round(float(scores[:, k][keep[:, k]].mean()), 2) if keep[:, k].any() else None
                                         for k in range(references.shape[1])],
                         "wall_s": round(wall, 1)})
    return rows


def _compare_samplers(args: argparse.Namespace, model: str, backend: str, threads: int) -> int:
    import itertools

    from stemweave.engine.data.datasets import fixed_windows
    from stemweave.export.backends import load_prior_with_backend

    if not args.compare_samplers.is_dir():
        raise UserError(f"--compare-samplers {args.compare_samplers}: not a data folder")
    prior = load_prior_with_backend(model, backend=backend, device=args.device, threads=threads, cache_dir=args.cache_dir)
    window, rate = int(prior.card["window"]), int(prior.card["rate"])
    items = list(itertools.islice(fixed_windows(args.compare_samplers, window, stems=prior.stems, rate=rate), args.windows))
    if not items:
        raise UserError(f"no {window}-sample windows in {args.compare_samplers}")
    references = np.stack([w for _, _, w in items]).astype(np.float64)  # (N, K, T)
    budgets = [int(n) for n in args.evaluations.split(",") if n.strip()]
    rows = compare_samplers(prior, references.sum(1), references, budgets, constrained=0)
    for row in rows:
        print(f"{row['sampler']:>5}  {row['evaluations']:>4} evaluations ({row['steps']} steps)  "
              f"SI-SDRi {row['si_sdri_db']:+.2f} dB  per stem {row['per_stem_db']}  {row['wall_s']} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"model": _model_info(model), "windows": len(items), "rows": rows}, indent=2) + "\n")
    return 0

