#!/usr/bin/env python3
"""One separation of 60 s of stereo 44.1 kHz through `run_region`, two threads, with the separator's nets (the
U-Net and the spectral head's) in bfloat16 or float32: the command `farm-bench` times in pairs (docs/separation.md).

    farm-bench -n 5 --timeout 400 --vs "python benchmarks/precision.py float32" -- python benchmarks/precision.py bfloat16
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from stemweave.engine.models import DEFAULT_SEPARATOR, load_separator
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("precision", choices=["bfloat16", "float32"])
    parser.add_argument("--model", default=DEFAULT_SEPARATOR)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    separator = load_separator(args.model, bfloat16=args.precision == "bfloat16")
    t = np.arange(int(args.seconds * 44100)) / 44100
    noise = np.random.default_rng(0).standard_normal(t.size)
    audio = np.stack([0.2 * np.sin(2 * np.pi * 110 * t) + 0.05 * noise] * 2).astype(np.float32)
    stems = run_region("separate", separator, audio, 44100, load_preset("separate-fast"))
    if len(stems) != len(separator.stems):
        raise SystemExit(f"expected {len(separator.stems)} stems, got {sorted(stems)}")


if __name__ == "__main__":
    main()
