"""Does a joint prior use given drums? The bass's denoising MSE with the drums noised like the bass (MSDM Sec.
4.2.2) or shown clean (`denoiser.shown_clean`, what a prior trained with `train --given-share` hears), per sigma.

    OMP_NUM_THREADS=1 python benchmarks/given_stems.py msdm-cpu-small msdm-cpu-small-given

Two windows of each of the first 8 test songs, one noise draw for every model. A prior that has learned the
conditional denoises the bass at least as well given clean drums as given noised ones (they hold more).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from stemweave.engine import models
from stemweave.engine.denoiser import shown_clean
from stemweave.engine.evaluate import test_tracks

SIGMAS = (0.05, 0.2, 0.5, 1.0)


def windows(data: Path, card: dict, songs: int) -> torch.Tensor:
    """(N, K, window): the 3rd and 7th model window of each of the first `songs` test songs."""
    length = card["window"]
    found = [audio[:, start : start + length]
             for _, audio in test_tracks(str(data), length, tuple(card["stems"]), card["rate"], songs)
             for start in (2 * length, 6 * length) if start + length <= audio.shape[-1]]
    return torch.from_numpy(np.stack(found)).float()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--data", type=Path, default=Path("data/test"))
    p.add_argument("--songs", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} is not a rendered split (stemweave data render)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    report = {}
    for name in args.models:
        prior = models.load_prior(name)
        x0 = windows(args.data, prior.card, args.songs)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
        rows = {}
        for sigma in SIGMAS:
            for shown in ("noised", "clean"):
                x = x0 + sigma * noise
                if shown == "clean":
                    x[:, 1] = shown_clean(x0[:, 1], sigma, prior.card.get("sigma_data", 0.2))
                denoised = torch.cat([prior.denoise(x[i : i + 4], sigma) for i in range(0, len(x), 4)])
                rows[f"{sigma:g} {shown}"] = 1e3 * (denoised[:, 0] - x0[:, 0]).pow(2).mean().item()
        report[name] = {"windows": len(x0), "zero": 1e3 * x0[:, 0].pow(2).mean().item(), "bass_mse_x1e3": rows}
        print(f"{name} ({len(x0)} windows; bass MSE x 1e3, zero output {report[name]['zero']:.3f})")
        for sigma in SIGMAS:
            print(f"  sigma {sigma:<5g} drums noised {rows[f'{sigma:g} noised']:.3f}   clean {rows[f'{sigma:g} clean']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
