"""Time to make the next N-bar loop (default 4 bars at 120 BPM) against the loop's own length.

Method accompanist (the loop engine's default, issue 21): one accompanist job per loop through the server's
queue (parts written at the tempo, key and chords, rendered with FluidSynth, seamless at the wrap, MIDI
included); it should be ready within one loop length. `--repeat N` times N loops in a row (the first one
includes loading the soundfont). Method prior: the path below.

The loop engine needs the next variation before the current loop has played twice (2x its length), or `next`
waits longer than two passes. This runs the real path: an in-process `stemweave serve` (bridge.server.Server),
the loop engine's QueueBackend submitting at interactive priority, `run_region` with `loop_frames` (the chain
of inpainted windows, then the wrap window). Not a test.

    python benchmarks/loop.py                        # the shipped default prior, else an untrained stand-in
    python benchmarks/loop.py --bars 4 --tempo 120 --preset loop --source generate --json out.json
    python benchmarks/loop.py --method accompanist --source input --repeat 5   # the default loop method

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


def drum_loop(frames: int, rate: int, tempo: float) -> "np.ndarray":
    """A stereo drum loop: kick on 1 and 3, high noise snare on 2 and 4, hats on eighths."""
    import numpy as np

    beat = 60.0 / tempo
    out = np.zeros(frames, np.float32)
    rng = np.random.default_rng(0)
    t = np.arange(int(0.2 * rate)) / rate
    noise = np.diff(rng.standard_normal(t.size + 2), 2)
    kick = 0.8 * np.sin(2 * np.pi * (50 + 60 * np.exp(-t * 30)) * t) * np.exp(-t * 18)
    for eighth in range(int(frames / rate / beat * 2)):
        start = int(round(eighth * beat / 2 * rate))
        n = min(t.size, frames - start)
        out[start: start + n] += (0.02 * noise * np.exp(-t * 80))[:n]
        if eighth % 4 == 0:
            out[start: start + n] += kick[:n]
        elif eighth % 4 == 2:
            out[start: start + n] += (0.3 * noise * np.exp(-t * 25))[:n]
    return np.repeat(out[None], 2, 0)


def accompanist(args) -> int:
    """The loop engine's default path: accompanist jobs through an in-process server's queue."""
    from stemweave.bridge import loop as L
    from stemweave.bridge.server import Server

    server = Server("tcp://127.0.0.1:*", model_names=[], preload=False, check_device=False,
                    log=lambda text: print(text, file=sys.stderr)).start()
    backend = L.QueueBackend(server.endpoint, timeout=600)
    frames = L.bar_frames(args.tempo, args.rate) * args.bars
    loop_s = frames / args.rate
    settings = L.LoopSettings(tempo=args.tempo, bars=args.bars, method="accompanist", chords=("Am", "F", "C", "G"))
    stems = [s for s in args.stems.split(",") if s] or None
    given = {"drums": drum_loop(frames, args.rate, args.tempo)} if args.source == "input" else None
    times = []
    warm_s = None
    try:
        if args.warm:  # as `stemweave serve --osc-port` does at start (bridge/osc.py)
            from stemweave.bridge.accompanist_jobs import warm
            from stemweave.engine import regions  # noqa: F401 - imported at serve's start (its preload); a job needs it

            started = time.perf_counter()
            warm(args.rate)
            warm_s = time.perf_counter() - started
        for k in range(args.repeat):
            started = time.perf_counter()
            made, midi, info = L.accompanist_loop(backend, settings, args.rate, 2, stems, seed=2 * k + 1, given=given)
            times.append(time.perf_counter() - started)
    finally:
        backend.close()
        server.stop()
    warm = times[1:] or times
    result = {"method": "accompanist", "source": args.source, "stems": sorted(made), "bars": args.bars,
              "tempo": args.tempo, "rate": args.rate, "loop_s": round(loop_s, 3),
              "make_s": [round(t, 2) for t in times], "first_s": round(times[0], 2),
              "warm_at_start_s": None if warm_s is None else round(warm_s, 2),
              "warm_mean_s": round(sum(warm) / len(warm), 2), "warm_max_s": round(max(warm), 2),
              "ratio_to_loop (warm max)": round(max(warm) / loop_s, 3),
              "ready_within_one_loop": max(warm) <= loop_s, "midi_bytes": len(midi or b""),
              "analysis": info.get("analysis"), "threads": args.threads, "cpus": os.cpu_count(),
              "load_avg": [round(x, 2) for x in os.getloadavg()], "machine": platform.machine()}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


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
    parser.add_argument("--method", choices=("accompanist", "prior"), default="prior")
    parser.add_argument("--repeat", type=int, default=1, help="loops made in a row (accompanist)")
    parser.add_argument("--stems", default="", help="comma-separated stems (default: all the method makes)")
    parser.add_argument("--warm", action="store_true", help="warm the accompanist first, as the loop engine does")
    args = parser.parse_args()
    if args.method == "accompanist":
        return accompanist(args)

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
