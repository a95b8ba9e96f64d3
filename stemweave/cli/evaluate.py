"""`stemweave evaluate`: the MSDM separation protocol on a test split, models next to baselines."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

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
    parser.add_argument("--refine-steps", type=int, default=None, help="sampler steps from the starting sigma "
                        "(default: the refine preset's)")
    parser.add_argument("--refine-preset", default="refine-fast", help="the warm-start preset (default refine-fast)")
    parser.add_argument("--data", default="data/test", help="test split folder (Slakh-like layout)")
    parser.add_argument("--tracks", type=int, help="score only the first N tracks")
    parser.add_argument("--seconds", type=float, help="score only the first S seconds of each track")
    parser.add_argument("--baselines", default=",".join(BASELINES), help=f"any of {','.join(BASELINES)}, or 'none'")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--float32", action="store_true",
                        help="run regression separators in float32 where the CPU would use bfloat16 (to compare)")
    parser.add_argument("--generation", action="store_true",
                        help="instead of separation: accompany every subset of stems given the rest of real windows "
                        "(and generate all of them), scoring the mixtures by a Fréchet distance on log-mel frames "
                        "and the share of silent generated stems (MSDM Table 2's protocol)")
    parser.add_argument("--windows", type=int, default=16, help="--generation: how many test windows (default 16)")
    parser.add_argument("--window", type=int, default=None,
                        help="--generation: window length in samples (default: the first msdm/isdm model's window; "
                        "msldm models generate any length)")
    parser.add_argument("--examples", help="--generation: write the generated clips here as WAV files to listen to")
    parser.add_argument("--denoiser", action="append", default=[], metavar="MODEL",
                        help="the denoiser check instead: MSE per sigma (over the sigmas its presets sample) next to the "
                             "zero output, c_skip * x and the best scalar shrink; exit status 1 when it loses anywhere "
                             "(repeatable; --tracks / --seconds default to 5 x 12 s)")
    parser.add_argument("--json", help="write the results as JSON here")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    if args.denoiser:
        if args.threads:
            torch.set_num_threads(args.threads)
        return run_denoiser_check(args)

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
        default = "accompany-fast" if args.generation else "separate-fast"
        presets = [load_preset(p) for p in (args.preset or [default])]
        refine_preset = load_preset(args.refine_preset)
        sigmas = [float(s) for s in args.refine_sigmas.split(",") if s]
    except ValueError as error:
        raise UserError(str(error)) from None
    wanted_task = "accompany" if args.generation else "separate"
    if not args.generation and (refine_preset.task != "separate" or not refine_preset.options.get("warm_start")):
        raise UserError(f"--refine-preset {refine_preset.name} does not refine a first estimate: use refine or refine-fast")
    if any(p.options.get("warm_start") for p in presets):
        raise UserError("warm-start presets go with --refine-from and --refine-preset, not --preset")
    if any(p.task != wanted_task for p in presets):
        raise UserError(f"evaluate{' --generation' if args.generation else ''} takes {wanted_task} presets only")
    first = next(iter(cards.values()), {"rate": 22050, "window": 32768, "stems": ["bass", "drums", "guitar", "piano"]})
    rate, window, stems = first["rate"], first["window"], tuple(first["stems"])
    if args.window and not args.generation:
        raise UserError("--window goes with --generation (separation uses each model's own window)")
    if args.generation:
        # an msldm model generates any length (its U-Net is convolutional): every model gets the same windows,
        # --window or the first waveform prior's window (else the first model's)
        waveform = [c for c in cards.values() if c.get("kind") != "msldm"]
        window = args.window or (waveform[0] if waveform else first)["window"]
    for name, card in cards.items():
        if card.get("kind") == "msldm" and not args.generation:
            raise UserError(f"model {name} is an MSLDM latent prior: separation with it is not built; "
                            "evaluate its generation with --generation")
        own_window = card["window"] == window or card.get("kind") == "msldm" or (args.generation and args.window)
        if (card["rate"], tuple(card["stems"])) != (rate, stems) or not own_window:
            raise UserError(f"model {name} has another rate, window or stems than {next(iter(cards))}; evaluate them separately")
    if args.generation:
        return run_generation(args, cards, presets if args.preset else None, rate, window, stems)
    try:
        tracks = ev.test_tracks(args.data, window, stems, rate, args.tracks, args.seconds)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None

    def separator(name: str):
        return load_separator(name, bfloat16=False if args.float32 else None)

    methods = []  # (label, method, evaluations per window)
    for baseline in baselines:
        method = {"mixture": ev.mixture_method, "oracle": ev.oracle_method, "classical": ev.classical_method(rate, stems)}[baseline]
        methods.append((baseline, method, 0))
    refiner = ev.regression_method(separator(args.refine_from)) if args.refine_from else None
    for name, card in cards.items():
        if name == args.refine_from and name not in args.model:
            continue
        if card["kind"] == "regression":
            methods.append((name, ev.regression_method(separator(name)), 1))
            continue
        prior = load_prior(name)
        for preset in presets:
            methods.append((f"{name} {preset.name}", ev.prior_method(prior, preset, args.seed), preset.sampler.evaluations))
        for sigma in sigmas if refiner else []:
            preset = refine_preset.with_overrides(sigma_max=sigma, steps=args.refine_steps)
            label = f"{args.refine_from} -> {name} {preset.name} from sigma {sigma:g}, {preset.sampler.steps} steps"
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


def run_denoiser_check(args: argparse.Namespace) -> int:
    """`--denoiser`: a prior that loses to a trivial denoiser is broken, whatever its training budget."""
    from stemweave.engine.denoiser_check import check_model, format_table

    results, failed = [], []
    for name in args.denoiser:
        try:
            rows, meta = check_model(name, args.data, args.tracks or 5, args.seconds or 12.0, seed=args.seed)
        except (ValueError, OSError) as error:
            raise UserError(str(error)) from None
        print(format_table(name, rows) + f"\n({meta['windows']} windows of {meta['data']})\n")
        results.append(meta | {"rows": [r.as_dict() for r in rows]})
        failed += [f"{name} at sigma {r.sigma:.3g} (x{r.ratio:.2f} the best scalar shrink)" for r in rows if not r.passes]
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "command": " ".join(sys.argv), "models": results}, indent=2))
    if failed:
        print("FAILS the denoiser check: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def run_generation(args, cards, presets, rate, window, stems) -> int:
    """Score accompaniment of every subset and total generation for each prior given with --model.

    presets: the --preset list (its first for every model), or None: accompany-fast for waveform priors and
    msldm-accompany-fast (the same 64 steps and churn on MSLDM's sigma range) for msldm models."""
    import numpy as np

    from stemweave.engine import evaluate as ev
    from stemweave.engine.data.datasets import fixed_windows
    from stemweave.engine.models import PRIOR_KINDS, load_prior
    from stemweave.engine.presets import load_preset

    priors = [name for name, card in cards.items() if card["kind"] in PRIOR_KINDS]
    if not priors:
        raise UserError("--generation needs a prior: pass --model with an msdm, isdm or msldm model")
    try:
        windows = [w for _, _, w in fixed_windows(args.data, window, stems=stems, rate=rate)]
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from None
    if not windows:
        raise UserError(f"no test windows under {args.data}")
    step = max(1, len(windows) // args.windows)
    windows = np.stack(windows[::step][: args.windows])
    results, used = {}, {}
    for name in priors:
        if presets:
            preset = presets[0]
        else:
            preset = load_preset("msldm-accompany-fast" if cards[name]["kind"] == "msldm" else "accompany-fast")
        used[name] = preset.name
        keep = _example_writer(args.examples, name, rate, stems) if args.examples else None
        print(f"evaluating generation with {name} ({preset.name}) on {len(windows)} windows...", file=sys.stderr)
        reports = ev.evaluate_generation(load_prior(name), windows, preset, rate, ev.generation_subsets(stems),
                                         args.batch, args.seed, keep)
        results[name] = [r.as_dict() for r in reports]
        print(f"\n{name}, {preset.name}\n| generated | Fréchet (mel) | silent share | s per clip |\n|---|---|---|---|")
        for r in reports:
            silent = ", ".join(f"{s} {v:.0%}" for s, v in r.silent.items())
            print(f"| {'+'.join(s[0].upper() for s in r.generated)} | {r.frechet:.2f} | {silent} | {r.seconds / r.clips:.2f} |")
    if args.json:
        meta = {"data": args.data, "windows": len(windows), "window": int(window), "presets": used, "machine": machine(),
                "command": " ".join(sys.argv)}
        from pathlib import Path

        Path(args.json).write_text(json.dumps({**meta, "generation": results}, indent=2))
    return 0


def _example_writer(folder, model_name, rate, stems):
    """Writes each subset's first clips as <folder>/<model>/<subset>_<i>_mix.wav and _<stem>.wav per stem."""
    from pathlib import Path

    from stemweave.engine.audio_io import write_audio

    root = Path(folder) / Path(model_name).stem

    def keep(subset, result, windows, clips=4):
        tag = "+".join(subset)
        root.mkdir(parents=True, exist_ok=True)
        for i in range(min(clips, len(result))):
            write_audio(root / f"{tag}_{i}_mix.wav", result[i].sum(0)[None], rate, format="wav", bit_depth="24")
            for k, stem in enumerate(stems):
                write_audio(root / f"{tag}_{i}_{stem}.wav", result[i][k][None], rate, format="wav", bit_depth="24")

    return keep


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


