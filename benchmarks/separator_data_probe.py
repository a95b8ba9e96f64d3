"""What the issue-22 data buys per CPU-hour: fine-tune the shipped separator for a few hundred steps on plain data
versus varied timbres + effects + remix, then score both on the same held-out windows (docs/separation.md).

A probe, not the trainer (engine/train.py owns training, with --init-from and the model card's ledger): the
same L1 objective, Adam at the config's lr, the same batch, seeds and starting weights for every arm.

    python benchmarks/separator_data_probe.py --arm plain  --steps 300 --json out/plain.json
    python benchmarks/separator_data_probe.py --arm varied --steps 300 --json out/varied.json
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import islice

import torch
import torch.nn.functional as F

from stemweave.engine import evaluate as ev
from stemweave.engine.data.datasets import StemChunks
from stemweave.engine.models import load_separator

ARMS = {  # data roots, remix share
    "plain": (["data/train"], 0.0),
    "varied": (["data/train", "data/train-varied"], 0.5),
    "varied-no-remix": (["data/train", "data/train-varied"], 0.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arm", choices=sorted(ARMS), required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval", action="append", default=[], help="data folder(s) to score on (repeatable)")
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    separator = load_separator("separator-cpu-small")
    roots, remix = ARMS[args.arm]
    data = StemChunks(roots, separator.window, stems=separator.stems, rate=separator.rate, augment=True, seed=0,
                      remix=remix)
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch)
    optimiser = torch.optim.Adam(separator.net.parameters(), lr=args.lr)
    separator.train()
    started, cpu = time.perf_counter(), time.process_time()
    losses = []
    for step, stems in enumerate(islice(loader, args.steps)):
        loss = F.l1_loss(separator(stems.sum(1, keepdim=True)), stems)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(separator.net.parameters(), 1.0)
        optimiser.step()
        losses.append(loss.item())
        if step % 50 == 0:
            print(f"step {step} loss {sum(losses[-50:]) / len(losses[-50:]):.5f} {time.perf_counter() - started:.0f} s",
                  flush=True)
    result = {"arm": args.arm, "roots": roots, "remix": remix, "steps": args.steps, "batch": args.batch,
              "train_wall_s": time.perf_counter() - started, "train_cpu_s": time.process_time() - cpu,
              "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), "scores": {}}
    separator.eval()
    for root in args.eval:
        tracks = ev.test_tracks(root, separator.window, separator.stems, separator.rate, args.tracks, args.seconds)
        with torch.inference_mode():
            report = ev.evaluate_separation(args.arm, ev.regression_method(separator), tracks, separator.window,
                                            separator.rate, separator.stems)
        result["scores"][root] = {"per_stem": report.per_stem, "overall": report.overall}
        print(root, report.per_stem, f"overall {report.overall:.2f}", flush=True)
    with open(args.json, "w") as file:
        json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
