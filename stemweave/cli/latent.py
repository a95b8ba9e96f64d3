"""`stemweave vae ...` and `stemweave latent ...`: MSLDM's SourceVAE, latent dataset, latent prior, and its tasks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from stemweave.cli import UserError

STEMS = "bass,drums,guitar,piano"


def register(subparsers) -> None:
    vae = subparsers.add_parser("vae", help="MSLDM SourceVAE: train, encode a dataset to latents, import DAC weights",
                                description="The per-stem SourceVAE of MSLDM (one VAE shared by all stems).")
    vae_sub = vae.add_subparsers(dest="vae_command", metavar="ACTION")

    p = vae_sub.add_parser("train", help="train (or resume) a SourceVAE on single-stem segments")
    p.add_argument("--config", default="cpu-small", help="latent config: cpu-small (default), paper, or a .toml path")
    p.add_argument("--data", action="append", type=Path, default=[], help="training data folder; repeatable")
    p.add_argument("--valid", action="append", type=Path, default=[], help="validation data folder; repeatable")
    p.add_argument("--stems", default=STEMS)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=10_000, help="step count to reach (a resumed run continues to it)")
    p.add_argument("--batch", type=int, default=None, help="single-stem segments per step (default: the config's)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--adversarial", action=argparse.BooleanOptionalAction, default=None,
                   help="multi-period + multi-band STFT discriminators (default: the config's; off on CPU configs)")
    _loop_options(p)
    p.add_argument("--export-model", metavar="NAME", default=None, help="write the weights as a 'vae' model file")
    p.add_argument("--export-dir", type=Path, default=None, help="where --export-model writes (default engine/models/)")
    p.set_defaults(run=run_vae_train)

    p = vae_sub.add_parser("encode", help="encode a rendered dataset once into latents for `latent train`")
    p.add_argument("--vae", required=True, help="a 'vae' model file or shipped name")
    p.add_argument("--data", type=Path, required=True, help="rendered dataset folder (Slakh-like layout)")
    p.add_argument("--out", type=Path, required=True, help="output folder: <track>.npy + latents.json")
    p.add_argument("--stems", default=STEMS)
    p.add_argument("--limit", type=int, default=None, help="only the first N tracks")
    p.add_argument("--seconds", type=float, default=None, help="only the first S seconds of each track")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=run_vae_encode)

    p = vae_sub.add_parser("evaluate", help="reconstruction on a test split: SI-SDR and mel distance per stem")
    p.add_argument("--vae", required=True, help="a 'vae' model file or shipped name (or an 'msldm' one: its VAE)")
    p.add_argument("--data", type=Path, default=Path("data/test"), help="test split folder (default data/test)")
    p.add_argument("--stems", default=STEMS)
    p.add_argument("--tracks", type=int, default=None, help="only the first N tracks")
    p.add_argument("--seconds", type=float, default=12.0, help="the first S seconds of each track (default 12)")
    p.add_argument("--examples", type=Path, default=None,
                   help="write original / reconstructed WAVs of the first --example-tracks tracks here")
    p.add_argument("--example-tracks", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=run_vae_evaluate)

    p = vae_sub.add_parser("import-dac", help="convert a DAC-format SourceVAE checkpoint to a 'vae' model file")
    p.add_argument("checkpoint", type=Path, help=".pth / .ckpt (read without running pickled code) or .safetensors")
    p.add_argument("--export-model", metavar="NAME", required=True)
    p.add_argument("--export-dir", type=Path, default=None)
    p.add_argument("--rate", type=int, default=22050)
    p.set_defaults(run=run_vae_import)

    lat = subparsers.add_parser("latent", help="MSLDM latent prior: train, generate, accompany",
                                description="The joint prior over the stems' SourceVAE latents (MSLDM).")
    lat_sub = lat.add_subparsers(dest="latent_command", metavar="ACTION")

    p = lat_sub.add_parser("train", help="train (or resume) the latent prior on a `vae encode` folder")
    p.add_argument("--config", default="cpu-small")
    p.add_argument("--latents", type=Path, required=True, help="a `stemweave vae encode` output folder")
    p.add_argument("--valid-latents", type=Path, default=None)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    _loop_options(p)
    p.add_argument("--export-model", metavar="NAME", default=None,
                   help="write the EMA prior + the --vae as one 'msldm' model file (--steps 0: export only)")
    p.add_argument("--vae", default=None, help="the 'vae' model file the latents were encoded with (for --export-model)")
    p.add_argument("--export-dir", type=Path, default=None)
    p.add_argument("--fp16", action="store_true", help="write the exported weights in float16 (half the size)")
    p.set_defaults(run=run_latent_train)

    for task in ("generate", "accompany"):
        p = lat_sub.add_parser(task, help=f"{task} stems with an 'msldm' model file")
        if task == "generate":
            p.add_argument("--seconds", type=float, default=10.0)
            p.add_argument("--count", type=int, default=1, help="how many independent generations")
        else:
            p.add_argument("inputs", nargs="+", type=Path, help="the known stems' files (mono or stereo, any rate)")
            p.add_argument("--given", required=True, help="comma-separated stem of each input file, in order")
        p.add_argument("--model", required=True, help="an 'msldm' model file or shipped name")
        p.add_argument("-o", "--out", type=Path, default=Path("generated"))
        p.add_argument("--steps", type=int, default=None, help="sampler steps (default 150, the paper's)")
        p.add_argument("--s-churn", type=float, default=None, help="default 20 (the paper's)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=None)
        p.add_argument("--device", default="cpu")
        p.set_defaults(run=run_latent_task, task=task)


def _loop_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (share cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", default="auto", help="auto (the run's last checkpoint), never, or a path")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--no-progress", action="store_true")


def _stems(text: str) -> tuple[str, ...]:
    stems = tuple(s.strip() for s in text.split(",") if s.strip())
    if not stems:
        raise UserError("--stems needs at least one stem name")
    return stems


def run_vae_train(args) -> int:
    from stemweave.engine.latent.train import VAETrainSettings, export_vae, train_vae

    for folder in [*args.data, *args.valid]:
        if not folder.is_dir():
            raise UserError(f"data folder {folder} does not exist")
    if args.steps > 0 and not args.data:
        raise UserError("pass --data DIR (a folder of tracks; `stemweave data render` makes one)")
    settings = VAETrainSettings(
        config=args.config, data=tuple(map(str, args.data)), valid=tuple(map(str, args.valid)), stems=_stems(args.stems),
        run_dir=str(args.run_dir), steps=args.steps, batch=args.batch, lr=args.lr, adversarial=args.adversarial,
        seed=args.seed, threads=args.threads, device=args.device, resume=args.resume, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        valid_every=args.valid_every, progress=not args.no_progress)
    try:
        if args.steps > 0:
            summary = train_vae(settings)
            print(f"stopped at step {summary['step']} (loss {summary['loss']:.4f}); checkpoint {summary['checkpoint']}")
        if args.export_model:
            kwargs = {"out_dir": args.export_dir} if args.export_dir else {}
            weights, card = export_vae(args.run_dir, args.export_model, **kwargs)
            print(f"exported the SourceVAE: {weights} + {card.name}")
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    return 0


def run_vae_encode(args) -> int:
    import torch

    from stemweave.engine.latent.train import encode_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise UserError(f"data folder {args.data} does not exist")
    try:
        if (args.limit is not None and args.limit < 1) or (args.seconds is not None and args.seconds <= 0):
            raise ValueError("--limit and --seconds must be positive")
        manifest = encode_dataset(args.vae, args.data, args.out, stems=_stems(args.stems), limit=args.limit,
                                  seconds=args.seconds)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(f"latents in {manifest.parent} ({manifest.name})")
    return 0


def run_vae_evaluate(args) -> int:
    import json
    import sys

    import torch

    from stemweave.engine.latent.evaluate import evaluate_reconstruction, format_table
    from stemweave.engine.models import load_vae

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise UserError(f"data folder {args.data} does not exist")
    if args.tracks is not None and args.tracks < 1 or args.seconds is not None and args.seconds <= 0:
        raise UserError("--tracks and --seconds must be positive")
    stems = _stems(args.stems)
    try:
        vae = load_vae(args.vae)
        report = evaluate_reconstruction(vae, args.data, stems, args.tracks, args.seconds, examples=args.examples,
                                         example_tracks=args.example_tracks, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    print(format_table(report, stems))
    if args.json:
        report = {"vae": str(args.vae), "data": str(args.data), "command": " ".join(sys.argv), **report}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def run_vae_import(args) -> int:
    from stemweave.engine.latent.train import save_vae
    from stemweave.engine.latent.vae import load_dac_file
    from stemweave.engine.models import MODEL_DIR

    try:
        vae = load_dac_file(args.checkpoint, rate=args.rate)
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    weights, card = save_vae(vae, args.export_dir or MODEL_DIR, args.export_model,
                             training={"imported_from": str(args.checkpoint)})
    print(f"imported {args.checkpoint}: {weights} + {card.name}")
    return 0


def run_latent_train(args) -> int:
    from stemweave.engine.latent.train import PriorTrainSettings, export_msldm, train_prior

    if args.export_model and not args.vae:
        raise UserError("--export-model needs --vae (the SourceVAE the latents were encoded with)")
    settings = PriorTrainSettings(
        config=args.config, latents=str(args.latents), valid_latents=str(args.valid_latents or ""),
        run_dir=str(args.run_dir), steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed,
        threads=args.threads, device=args.device, resume=args.resume, log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, checkpoint_minutes=args.checkpoint_minutes,
        valid_every=args.valid_every, progress=not args.no_progress)
    try:
        if args.steps > 0:
            summary = train_prior(settings)
            print(f"stopped at step {summary['step']} (loss {summary['loss']:.4f}); checkpoint {summary['checkpoint']}")
        if args.export_model:
            kwargs = {"out_dir": args.export_dir} if args.export_dir else {}
            weights, card = export_msldm(args.run_dir, args.vae, args.export_model, fp16=args.fp16, **kwargs)
            print(f"exported the MSLDM model: {weights} + {card.name}")
    except (ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from error
    return 0


def run_latent_task(args) -> int:
    import numpy as np
    import torch

    from stemweave.engine.audio_io import AudioError, check_output_dir, read_audio, write_audio, write_json
    from stemweave.engine.latent.prior import GENERATE_SETTINGS, accompany_audio, generate_audio
    from stemweave.engine.models import load_msldm
    from stemweave.engine.resample import resample

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        prior = load_msldm(args.model, device=args.device)
        out = check_output_dir(args.out)
    except (ValueError, FileNotFoundError, AudioError) as error:
        raise UserError(str(error)) from error
    rate = prior.card["rate"]
    settings = GENERATE_SETTINGS
    overrides = {k: v for k, v in (("steps", args.steps), ("s_churn", args.s_churn)) if v is not None}
    if overrides:
        from dataclasses import replace

        settings = replace(settings, **overrides)
    generator = torch.Generator().manual_seed(args.seed)
    began = time.perf_counter()
    if args.task == "generate":
        stems = generate_audio(prior, args.count, int(args.seconds * rate), settings, generator=generator,
                               device=args.device)
        prefix, given = "generated", []
    else:
        given = _stems(args.given)
        if len(given) != len(args.inputs):
            raise UserError(f"{len(args.inputs)} input files but {len(given)} --given stems")
        unknown = [s for s in given if s not in prior.stems]
        if unknown:
            raise UserError(f"unknown stems {unknown}: this model's stems are {', '.join(prior.stems)}")
        audios = []
        try:
            for path in args.inputs:
                audio, file_rate = read_audio(path)
                audios.append(resample(audio.mean(0), file_rate, rate) if file_rate != rate else audio.mean(0))
        except AudioError as error:
            raise UserError(str(error)) from error
        length = max(a.shape[-1] for a in audios)
        known = torch.zeros(1, len(prior.stems), length)
        mask = torch.zeros(1, len(prior.stems), 1, dtype=torch.bool)
        for stem, audio in zip(given, audios):
            k = prior.stems.index(stem)
            known[0, k, : audio.shape[-1]] = torch.from_numpy(np.asarray(audio, np.float32))
            mask[0, k] = True
        stems = accompany_audio(prior, known, mask, settings, generator=generator)
        prefix = "accompanied"
    seconds = time.perf_counter() - began
    written = []
    for b in range(stems.shape[0]):
        for k, stem in enumerate(prior.stems):
            name = f"{prefix}{b if stems.shape[0] > 1 else ''}_{stem}.wav"
            written.append(str(write_audio(out / name, stems[b, k].cpu().numpy(), rate, bit_depth="32f")))
        mix = f"{prefix}{b if stems.shape[0] > 1 else ''}_mix.wav"
        written.append(str(write_audio(out / mix, stems[b].sum(0).cpu().numpy(), rate, bit_depth="32f")))
    write_json(out / f"{prefix}.stemweave.json", {
        "task": args.task, "model": prior.card.get("name"), "given": list(given), "seed": args.seed,
        "sampler": {"steps": settings.steps, "sigma_min": settings.sigma_min, "sigma_max": settings.sigma_max,
                    "rho": settings.rho, "s_churn": settings.s_churn},
        "seconds": round(seconds, 2), "files": written})
    print(f"{args.task}: {len(written)} files in {out} ({seconds:.1f} s)")
    return 0
