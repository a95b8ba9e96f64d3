"""`stemweave train`: train (or resume) a score network or a regression separator; export its EMA weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from stemweave.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train an MSDM / ISDM prior or a regression separator (resumable)",
        description="Train the U-Net: --objective diffusion (EDM loss; MSDM over --stems, or ISDM with --stem) or "
        "--objective regression (mixture -> stems, L1 on stems projected to sum to the mixture). "
        "Checkpoints go to RUN_DIR/checkpoints/last.pt (every --checkpoint-every steps and at exit) and a run "
        "resumes from there by default. --export-model NAME writes the EMA weights as a model file.",
    )
    p.add_argument("--config", default="cpu-small", help="network size: cpu-small (default), cpu-tiny (ISDM), cpu-medium, paper, or a .toml path")
    p.add_argument("--data", action="append", type=Path, default=[], help="training data folder (Slakh-like layout); repeatable")
    p.add_argument("--valid", action="append", type=Path, default=[], help="validation data folder; repeatable")
    p.add_argument("--objective", choices=("diffusion", "regression"), default="diffusion")
    p.add_argument("--stems", default="bass,drums,guitar,piano", help="comma-separated stems (MSDM and regression)")
    p.add_argument("--stem", default=None, help="ISDM: train a one-stem prior on this stem")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (checkpoints, metrics.jsonl); required to train")
    p.add_argument("--steps", type=int, default=100_000, help="step count to reach; a resumed run continues to it")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the config's, 8 on CPU configs)")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the config's, 1e-4)")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between checkpoints (default: the config's)")
    p.add_argument("--checkpoint-minutes", type=float, default=10.0, help="also checkpoint at least this often")
    p.add_argument("--valid-every", type=int, default=None, help="steps between validations (default: the config's)")
    p.add_argument("--valid-windows", type=int, default=32)
    p.add_argument("--init-from", metavar="MODEL", default=None,
                   help="start a new run from a model file's weights (a shipped name or a path): its network, rate, "
                        "window and sigma_data replace --config's, whose [train] settings still apply; the exported "
                        "card continues its training ledger (steps, CPU-hours, metrics per version); with --stem, that stem's "
                        "prior out of an isdm file (one stem's or the merged isdm-cpu-tiny); with --combine-isdm, the "
                        "merged file being replaced, whose ledger the new one continues")
    p.add_argument("--remix", type=float, default=0.0, metavar="P",
                   help="regression only: remix this share of training windows, each stem from another song at a random "
                        "offset (the Demucs recipe; docs/separation.md)")
    p.add_argument("--head", action="store_true",
                   help="regression only, with --init-from a separator: train its spectral head (per-bin re-mixing of "
                        "the stems, docs/separation.md) on the frozen U-Net; continues the file's head if it has one")
    p.add_argument("--bfloat16", action="store_true",
                   help="regression only: the separator's U-Net and spectral head in bfloat16 (autocast; weights stay "
                        "float32), 1.9x faster on CPUs with AVX-512 BF16 or AMX, as inference runs them there "
                        "(docs/separation.md)")
    p.add_argument("--given-share", type=float, default=0.0, metavar="P",
                   help="MSDM only: show this share of training windows a random subset of the stems clean, so the "
                        "prior learns to hear given stems (accompaniment; docs/priors.md); keep it when continuing")
    p.add_argument("--resume", default="auto", help="auto (default: the run's last checkpoint if any), never, or a path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (leave cores for a DAW)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--export-model", metavar="NAME", default=None,
                   help="after training, write the EMA weights as NAME.safetensors + NAME.json (--steps 0: export only)")
    p.add_argument("--export-dir", type=Path, default=None, help="where --export-model writes (default: engine/models/)")
    p.add_argument("--fp16", action="store_true", help="export float16 weights")
    p.add_argument("--combine-isdm", metavar="MODELS", default=None,
                   help="comma-separated one-stem ISDM model files/names to merge into --export-model NAME (no training)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stemweave.engine.train import TrainSettings, export_model, train

    if args.combine_isdm:
        return combine(args)
    if args.run_dir is None:
        raise UserError("pass --run-dir DIR (where checkpoints and metrics go)")
    stems = tuple(s.strip() for s in args.stems.split(",") if s.strip())
    if not stems:
        raise UserError("--stems needs at least one stem name")
    if args.stem and args.objective != "diffusion":
        raise UserError("--stem trains a one-stem (ISDM) prior; it needs --objective diffusion")
    for folder in [*args.data, *args.valid]:
        if not folder.is_dir():
            raise UserError(f"data folder {folder} does not exist")
    checkpoint = args.run_dir / "checkpoints" / "last.pt"
    export_only = args.export_model is not None and args.steps == 0
    if not export_only and not args.data:
        raise UserError("pass --data DIR (a folder of tracks; `stemweave data render` makes one)")
    settings = TrainSettings(
        config=args.config, objective=args.objective, stems=stems, stem=args.stem, run_dir=str(args.run_dir),
        steps=args.steps, batch=args.batch, lr=args.lr, ema_decay=args.ema_decay, grad_clip=args.grad_clip,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        valid_every=args.valid_every, valid_windows=args.valid_windows, log_every=args.log_every, seed=args.seed,
        threads=args.threads, device=args.device, workers=args.workers, resume=args.resume,
        init_from=args.init_from, remix=args.remix, given_share=args.given_share, head=args.head,
        bfloat16=args.bfloat16,
        data=tuple(map(str, args.data)), valid=tuple(map(str, args.valid)), progress=not args.no_progress,
    )
    if not export_only:
        try:
            summary = train(settings)
        except (ValueError, FileNotFoundError) as error:
            raise UserError(str(error)) from error
        print(f"stopped at step {summary['step']} (loss {summary['loss']:.4f}); checkpoint {summary['checkpoint']}")
    if args.export_model:
        if not checkpoint.exists():
            raise UserError(f"no checkpoint {checkpoint} to export; train first")
        kwargs = {"out_dir": args.export_dir} if args.export_dir else {}
        weights, card = export_model(args.run_dir, args.export_model, fp16=args.fp16, **kwargs)
        print(f"exported the EMA weights: {weights} + {card.name}")
    return 0


def combine(args: argparse.Namespace) -> int:
    from stemweave.engine.models import MODEL_DIR, combine_isdm

    if not args.export_model:
        raise UserError("--combine-isdm needs --export-model NAME for the merged model")
    parts = [p.strip() for p in args.combine_isdm.split(",") if p.strip()]
    try:
        weights, card = combine_isdm(parts, args.export_dir or MODEL_DIR, args.export_model, fp16=args.fp16,
                                     previous=args.init_from)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(f"combined {len(parts)} ISDM models: {weights} + {card.name}")
    return 0
