"""Wall time and peak memory of `run_region` separation for 10 s, 60 s and 300 s regions (not a test).

Each size runs in its own subprocess so peak RSS (getrusage maxrss) is per
size. Reported: wall seconds of run_region, real-time factor, the process's
peak RSS, its RSS just before the job (model loaded, input made), and the
job's own growth beyond the input and output buffers, which is what must stay
flat as the region grows (the input and the stems themselves are O(length)).

    python benchmarks/regions.py                  # the default model, else an untrained stand-in
    python benchmarks/regions.py --model NAME --preset separate-fast --sizes 10,60 --json out.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

RATE, CHANNELS = 44100, 2


def child(seconds: float, model_name: str | None, preset_name: str, threads: int, warm: bool = False) -> dict:
    import numpy as np
    import torch

    from stemweave import api
    from stemweave.engine.presets import load_preset
    from stemweave.engine.regions import run_region

    torch.set_num_threads(threads)
    model, name = stand_in() if model_name == "stand-in" else api.load_task_model(model_name, "separate", "cpu")
    audio = (0.1 * np.random.default_rng(0).standard_normal((CHANNELS, int(seconds * RATE)))).astype(np.float32)
    if warm:  # as a server's second job finds it: the model's kernels already built by a first, short region
        run_region("separate", model, audio[:, : 2 * RATE], RATE, load_preset(preset_name))
    before = rss_mib()
    report: dict = {}
    started = time.perf_counter()
    stems = run_region("separate", model, audio, RATE, load_preset(preset_name), report=report)
    wall = time.perf_counter() - started
    peak = rss_mib()
    buffers = (audio.nbytes + sum(s.nbytes for s in stems.values())) / 2**20
    error = float(np.abs(sum(stems.values()) - audio).max())
    return {"seconds": seconds, "model": name, "preset": preset_name, "windows": report["windows"],
            "batch_size": report["batch_size"], "wall_s": round(wall, 2), "rtf": round(wall / seconds, 3),
            "rss_before_mib": round(before, 1), "peak_rss_mib": round(peak, 1),
            "io_buffers_mib": round(buffers, 1), "job_growth_mib": round(peak - before - buffers, 1),
            "max_sum_error": error, "threads": threads, "warm": warm}


def stand_in():
    """An untrained cpu-small regression separator (the shape and cost of the shipped one, not its quality)."""
    import torch

    from stemweave.engine.models import RegressionSeparator
    from stemweave.engine.unet import UNet1d, load_config

    config = load_config("cpu-small")
    torch.manual_seed(0)
    net = UNet1d(dict(config["unet"], in_channels=1, out_channels=4, conditioning=False)).eval()
    card = {"name": "stand-in", "kind": "regression", "rate": config["rate"], "window": config["window"]}
    return RegressionSeparator(net, ("bass", "drums", "guitar", "piano"), card).eval(), "untrained cpu-small stand-in"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or path (default: the shipped default, else a stand-in)")
    parser.add_argument("--preset", default="separate-fast")
    parser.add_argument("--sizes", default="10,60,300", help="region lengths in seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm", action="store_true", help="time each region after a first 2 s one (a server's second job)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.model, args.preset, args.threads, args.warm)))
        return 0
    model = args.model
    if model is None:
        from stemweave import api

        try:
            model = api.default_model("separate")
        except ValueError:
            model = "stand-in"
    rows = []
    for size in (float(s) for s in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--model", model, "--preset", args.preset,
                              "--threads", str(args.threads), *(["--warm"] if args.warm else [])],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{size:.0f} s done", file=sys.stderr)
    print(f"model: {rows[0]['model']}, preset {args.preset}, {CHANNELS} ch {RATE} Hz, {args.threads} threads"
          + (", warm (after a 2 s region)" if args.warm else ", cold (the first job of a fresh process)"))
    print(f"{'region':>8} {'windows':>8} {'batch':>6} {'wall s':>8} {'RTF':>6} {'peak RSS':>9} {'before':>8} "
          f"{'in+out':>8} {'job':>7} {'sum err':>9}")
    for r in rows:
        print(f"{r['seconds']:>7.0f}s {r['windows']:>8} {r['batch_size']:>6} {r['wall_s']:>8.2f} {r['rtf']:>6.3f} "
              f"{r['peak_rss_mib']:>8.0f}M {r['rss_before_mib']:>7.0f}M {r['io_buffers_mib']:>7.0f}M "
              f"{r['job_growth_mib']:>6.0f}M {r['max_sum_error']:>9.1e}")
    print(json.dumps(rows, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
