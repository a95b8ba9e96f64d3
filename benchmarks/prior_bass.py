"""Issue 19's accompaniment measures for a diffusion prior: a bass sampled under the real drums of test songs.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/prior_bass.py --model msdm-cpu-small --songs 3 \
        --seconds 6 --out benchmarks/results/prior_bass.json

For each of the first --songs test songs whose bass and drums both play through the excerpt, the prior samples a
bass under the song's drums with the same seed for every song. Measured per song: the bass's energy share below
400 Hz and spectral flatness, next to the real bass's; the share of its onsets within 50 ms of a drum onset, next
to chance; its level. Across songs: the Pearson correlation of the basses sampled with one seed under different
drums. A prior that hears the drums writes different basses under different drums (issue 19's bar: under 0.5); one
that ignores them returns the same waveform whatever the drums (correlation near 1).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import soundfile as sf

from stemweave import api
from stemweave.engine.accompanist import measure

STEMS = ("bass", "drums", "guitar", "piano")


def correlations(basses: list[np.ndarray]) -> list[float]:
    """Pearson correlation of every pair of equally long basses."""
    return [float(np.corrcoef(a, b)[0, 1]) for a, b in itertools.combinations(basses, 2)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="msdm-cpu-small")
    p.add_argument("--preset", default="accompany-fast")
    p.add_argument("--data", type=Path, default=Path("data/test"))
    p.add_argument("--songs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--seed", type=int, default=0, help="one seed for every song")
    p.add_argument("--given", choices=("card", "noised", "clean"), default="card",
                   help="how the drums are shown to the prior: as its card says (clean if it was trained with "
                        "--given-share), noised (MSDM Sec. 4.2.2) or clean")
    p.add_argument("--guidance", type=float, default=None,
                   help="the preset's guidance towards the drums (a prior trained with --given-share; default: the preset's)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} is not a rendered split (stemweave data render)", file=sys.stderr)
        return 2
    if args.songs < 2:
        print("error: --songs must be at least 2 (the correlation compares songs)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = api.load_task_model(args.model, "accompany", "cpu")
    if args.given != "card":
        model.given_sigma_data = model.card.get("sigma_data", 0.2) if args.given == "clean" else None
    rate = int(model.card["rate"])
    frames = int(args.seconds * rate)
    rows, basses = [], []
    for track in sorted(t for t in args.data.iterdir() if (t / "stems").is_dir()):
        stems = {}
        for index, stem in enumerate(STEMS):
            audio, file_rate = sf.read(track / "stems" / f"S{index:02d}.flac", dtype="float32", always_2d=True)
            if file_rate != rate:
                print(f"error: {track} is at {file_rate} Hz, the model at {rate} Hz", file=sys.stderr)
                return 2
            stems[stem] = audio.mean(1)[:frames]
        if stems["drums"].size < frames or not (measure.sounds_through(stems["bass"], rate)
                                                 and measure.sounds_through(stems["drums"], rate)):
            continue
        started = time.perf_counter()
        out = api.accompany({"drums": stems["drums"][None]}, generate=["bass"], rate=rate, model=model,
                            preset=args.preset, seed=args.seed, overrides={"guidance": args.guidance})
        bass = np.asarray(out["bass"], np.float64).reshape(-1, frames).mean(0)
        row = {"track": track.name, "seconds_to_sample": time.perf_counter() - started,
               "sampled": measure.bass_under_drums(bass, stems["drums"], rate),
               "real": measure.bass_under_drums(stems["bass"], stems["drums"], rate)}
        rows.append(row)
        basses.append(bass)
        print(json.dumps(row), flush=True)
        if len(rows) == args.songs:
            break
    if len(rows) < 2:
        print(f"error: fewer than two songs in {args.data} where bass and drums both play", file=sys.stderr)
        return 2
    pairs = correlations(basses)
    mean = {side: {k: float(np.mean([r[side][k] for r in rows])) for k in rows[0][side]} for side in ("sampled", "real")}
    report = {"model": args.model, "preset": args.preset, "guidance": args.guidance, "seed": args.seed,
              "seconds": args.seconds,
              "given": "clean" if getattr(model, "given_sigma_data", None) else "noised",
              "songs": [r["track"] for r in rows], "mean": mean, "rows": rows,
              "correlation_across_drums": {"mean": float(np.mean(pairs)), "min": min(pairs), "max": max(pairs)},
              "machine": f"{os.uname().machine} {os.cpu_count()} cores", "command": " ".join(sys.argv)}
    print(f"\n{args.model} ({args.preset}, guidance {args.guidance}, drums shown {report['given']}, seed {args.seed}, {len(rows)} songs x "
          f"{args.seconds:g} s)")
    print(f"{'measure':28s} {'sampled':>10s} {'real bass':>10s}")
    for key, label in (("low_share", "energy share < 400 Hz"), ("flatness", "spectral flatness"),
                       ("locked", "onsets within 50 ms of drums"), ("dbfs", "level (dBFS)")):
        print(f"{label:28s} {mean['sampled'][key]:10.3f} {mean['real'][key]:10.3f}")
    print(f"{'chance of onset lock':28s} {mean['sampled']['chance']:10.3f}")
    c = report["correlation_across_drums"]
    print(f"correlation across drums, same seed: {c['mean']:.3f} ({c['min']:.3f} to {c['max']:.3f}); bar < 0.5")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
