"""`stemweave evaluate`: the MSDM separation protocol on a test split, models next to baselines."""

from __future__ import annotations

import argparse
import platform
import sys

from stemweave.cli import UserError

BASELINES = ("mixture", "oracle", "classical")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score separators on a test split (MSDM protocol: SI-SDRi, 4 s windows, 2 s hop)",
        description="Separate the test split window by window and score SI-SDRi per stem under the MSDM protocol, "
        "for each model (regression separators as they are; priors with each --preset; warm starts from a "
        "regression separator with --refine-from) next to the baselines.",
    )
    parser.add_argument("--model", action="append", default=[], help="a model name or file (repeatable)")
    parser.add_argument("--preset", action="append", default=[], help="separation preset(s) for priors (default separate-fast)")
    parser.add_argument("--refine-from", help="a regression separator whose estimate warm-starts each prior")
    parser.add_argument("--refine-sigmas", default="0.05", help="starting sigmas for warm starts, comma-separated")
    parser.add_argument("--refine-steps", type=int, default=25, help="sampler steps from the starting sigma")
    parser.add_argument("--data", default="data/test", help="test split folder (Slakh-like layout)")
    parser.add_argument("--tracks", type=int, help="score only the first N tracks")
    parser.add_argument("--seconds", type=float, help="score only the first S seconds of each track")
    parser.add_argument("--baselines", default=",".join(BASELINES), help=f"any of {','.join(BASELINES)}, or 'none'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from stemweave.engine import evaluate as ev
    from stemweave.engine.models import load_prior, load_separator, resolve_model
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.presets import load_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    baselines = [] if args.baselines == "none" else [b for b in args.baselines.split(",") if b]
    unknown = set(baselines) - set(BASELINES)
    if unknown:
        raise UserError(f"unknown baseline(s) {', '.join(sorted(unknown))}: choose from {', '.join(BASELINES)} or 'none'")
    try:
        cards = {m: read_card(resolve_model(m)) for m in args.model + ([args.refine_from] if args.refine_from else [])}
        presets = [load_preset(p) for p in (args.preset or ["separate-fast"])]
        sigmas = [float(s) for s in args.refine_sigmas.split(",") if s]
    except ValueError as error:
        raise UserError(str(error)) from None
    if any(p.task != "separate" for p in presets):
        raise UserError("evaluate takes separation presets only")
    first = next(iter(cards.values()), {"rate": 22050, "window": 32768, "stems": ["bass", "drums", "guitar", "piano"]})
    rate, window, stems = first["rate"], first["window"], tuple(first["stems"])
    for name, card in cards.items():
        if (card["rate"], card["window"], tuple(card["stems"])) != (rate, window, stems):
            raise UserError(f"model {name} has another rate, window or stems than {next(iter(cards))}; evaluate them separately")
    try:
        tracks = ev.test_tracks(args.data, window, stems, rate, args.tracks, args.seconds)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None

    methods = []  # (label, method, evaluations per window)
    for baseline in baselines:
        method = {"mixture": ev.mixture_method, "oracle": ev.oracle_method, "classical": ev.classical_method(rate, stems)}[baseline]
        methods.append((baseline, method, 0))
    refiner = ev.regression_method(load_separator(args.refine_from)) if args.refine_from else None
    for name, card in cards.items():
        if name == args.refine_from and name not in args.model:
            continue
        if card["kind"] == "regression":
            methods.append((name, ev.regression_method(load_separator(name)), 1))
            continue
        prior = load_prior(name)
        for preset in presets:
            methods.append((f"{name} {preset.name}", ev.prior_method(prior, preset, args.seed), preset.sampler.evaluations))
        for sigma in sigmas if refiner else []:
            preset = presets[0].with_overrides(sigma_max=sigma, steps=args.refine_steps)
            label = f"{args.refine_from} -> {name} from sigma {sigma:g}, {args.refine_steps} steps"
            methods.append((label, ev.prior_method(prior, preset, args.seed, first_estimate=refiner), 1 + preset.sampler.evaluations))

    reports = []
    for label, method, evaluations in methods:
        print(f"evaluating {label} on {len(tracks)} tracks...", file=sys.stderr)
        reports.append(ev.evaluate_separation(label, method, tracks, window, rate, stems, args.batch, evaluations))
    print(format_table(reports, stems))
    if args.json:
        meta = {"data": args.data, "tracks": len(tracks), "seconds_per_track": args.seconds, "machine": machine(), "command": " ".join(sys.argv)}
        ev.write_report(args.json, reports, meta)
    return 0


def format_table(reports, stems) -> str:
    head = "| method | " + " | ".join(stems) + " | overall | evals/window | s per 12 s |"
    rule = "|" + "---|" * (len(stems) + 4)
    rows = [
        f"| {r.method} | " + " | ".join(f"{r.per_stem.get(s, float('nan')):.2f}" for s in stems)
        + f" | {r.overall:.2f} | {r.evaluations} | {12 * r.real_time_factor:.2f} |"
        for r in reports
    ]
    return "\n".join([head, rule, *rows])


def machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


