"""Time to make the next N-bar loop (default 4 bars at 120 BPM, the fast preset) against the loop's own length.

The loop engine needs the next variation before the current loop has played twice (2x its length), or `next`
waits longer than two passes. This runs the real path: an in-process `stemweave serve` (bridge.server.Server),
the loop engine's QueueBackend submitting at interactive priority, `run_region` with `loop_frames` (the chain
of inpainted windows, then the wrap window). Not a test.

    python benchmarks/loop.py                        # the shipped default prior, else an untrained stand-in
    python benchmarks/loop.py --bars 4 --tempo 120 --preset loop --source generate --json out.json

With no shipped prior the model is a randomly initialised msdm U-Net of the default config (cpu-small):
the same shape and cost as a trained one, labelled "untrained ... (timing only)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def stand_in(name: str = "stand-in", device: str = "cpu"):
    """An untrained cpu-small msdm prior (timing only)."""
    import torch

    from stemweave.engine.models import denoiser_of
    from stemweave.engine.priors import JointPrior
    from stemweave.engine.unet import UNet1d, load_config

    config = load_config("cpu-small")
    torch.manual_seed(0)
    net = UNet1d(dict(config["unet"], in_channels=4, out_channels=4)).eval()
    card = {"name": "stand-in", "kind": "msdm", "rate": config["rate"], "window": config["window"],
            "sigma_data": config.get("sigma_data", 0.2), "clamp": config.get("clamp", True)}
    prior = JointPrior(denoiser_of(net, card), ("bass", "drums", "guitar", "piano"))
    prior.card, prior.rate, prior.window = card, card["rate"], card["window"]
    return prior


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bars", type=int, default=4)
    parser.add_argument("--tempo", type=float, default=120.0)
    parser.add_argument("--preset", default="loop")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's sampler steps")
    parser.add_argument("--source", choices=("generate", "input"), default="generate")
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from stemweave.bridge import loop as L
    from stemweave.bridge.server import Server
    from stemweave.engine import models

    priors = models.list_models("msdm") + models.list_models("isdm")
    if priors:
        label, loader, names = priors[0], None, None
    else:
        label, loader, names = "untrained cpu-small msdm stand-in (timing only)", stand_in, ["stand-in"]
    server = Server("tcp://127.0.0.1:*", model_loader=loader, model_names=names,
                    default_model=None if loader is None else "stand-in", check_device=False,
                    log=lambda text: print(text, file=sys.stderr)).start()
    backend = L.QueueBackend(server.endpoint, timeout=600)
    frames = L.bar_frames(args.tempo, args.rate) * args.bars
    loop_s = frames / args.rate
    preset = args.preset
    if args.steps is not None:  # a preset file with fewer steps, by name (the loop engine names presets only)
        import tempfile

        from stemweave.engine.presets import load_preset

        folder = tempfile.mkdtemp()
        base = load_preset(args.preset)
        s = base.sampler
        with open(os.path.join(folder, "bench.toml"), "w") as f:
            f.write(f'task = "{base.task}"\n[sampler]\nsteps = {args.steps}\nsigma_min = {s.sigma_min}\n'
                    f'sigma_max = {s.sigma_max}\nrho = {s.rho}\ns_churn = {s.s_churn}\nresamples = {s.resamples}\n')
        backend.presets, preset = L.Presets(folder), "bench"
    try:
        started = time.perf_counter()
        backend.stems()  # connects; the server loads the model on the first job
        model = server.models.get(names[0] if names else server._default_model("generate"), "cpu")
        load_s = time.perf_counter() - started
        progress = []
        started = time.perf_counter()
        if args.source == "generate":
            L.generated_loop(backend, frames, args.rate, 2, None, preset, seed=1)
        else:
            drums = (0.1 * np.random.default_rng(0).standard_normal((2, frames))).astype(np.float32)
            L.accompaniment_loop(backend, {"drums": drums}, args.rate, None, preset, seed=1)
        wall = time.perf_counter() - started
    finally:
        backend.close()
        server.stop()
    steps = L.Presets().load(args.preset).sampler.steps if args.steps is None else args.steps
    result = {"model": label, "rate_model": getattr(model, "rate", None), "window_model": getattr(model, "window", None),
              "preset": args.preset, "steps": steps, "source": args.source, "bars": args.bars, "tempo": args.tempo,
              "loop_s": round(loop_s, 3), "make_s": round(wall, 2), "ratio_to_loop": round(wall / loop_s, 2),
              "deadline_s (2 plays)": round(2 * loop_s, 3), "ready_in_time": wall <= 2 * loop_s,
              "steps_that_fit_2_plays": int(steps * 2 * loop_s / wall), "model_load_s": round(load_s, 2),
              "threads": args.threads, "cpus": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
              "machine": platform.machine(), "progress_messages": len(progress)}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
