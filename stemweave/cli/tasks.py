"""`stemweave separate | accompany | generate`: the main job on audio files, shaped like demucs.

Every command validates everything it can (inputs, output folder, format,
model, device) before any work starts, runs `engine.regions.run_region` with
a progress bar, and writes one file per stem plus a JSON provenance file,
each atomically; nothing is written when anything fails, and an input file
is never overwritten.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from stemweave.cli import UserError

BEATS_PER_BAR = 4
DAW_RATE, DAW_CHANNELS = 44100, 2  # what a DAW session expects of generated audio unless told otherwise
LOOP_PRESET = "loop"  # presets/loop.toml: 24 steps, the live loop engine's default


def register(subparsers) -> None:
    sep = subparsers.add_parser(
        "separate", help="separate a mix into stems that sum to it",
        description="Separate SONG (WAV/FLAC/AIFF/OGG, any rate, mono or stereo) into stems that sum to it exactly. "
        "Writes DIR/<song>_<stem>.<format> per stem and DIR/<song>.stemweave.json (provenance).")
    sep.add_argument("input", type=Path, help="the mix to separate")
    sep.add_argument("--stems", default=None, help="comma-separated stems to write (default: all the model's)")
    sep.add_argument("--channel-mode", choices=("independent", "mid-side"), default="independent",
                     help="stereo: separate each channel (default) or mid and side")
    sep.add_argument("--refine", nargs="?", const="refine-fast", default=None, metavar="PRESET",
                     help="after the regression separator's first answer is written, refine it with a prior and "
                     "replace the files (warm-start preset, default refine-fast); Ctrl-C keeps the first answer")
    sep.add_argument("--no-refine", action="store_true", help="never refine, even where that is the default")
    sep.add_argument("--prior", default=None, help="the prior that refines (default: the shipped prior)")
    _common(sep, "separate")
    sep.set_defaults(run=run_separate)

    acc = subparsers.add_parser(
        "accompany", help="generate stems under recorded ones (a bass line under drums)",
        description="Generate the --generate stems under the given files (one file per known stem, aligned: same "
        "rate, channels and length; the output has their format). --range START:END (seconds) regenerates only that "
        "range of a given stem. Outputs are named by the generated stem: drums.wav -> bass.wav, "
        "song_drums.wav -> song_bass.wav.")
    acc.add_argument("inputs", nargs="+", type=Path, help="the known stems' files")
    acc.add_argument("--given", default=None,
                     help="comma-separated stem of each file, in order (default: the stem named in each file name)")
    acc.add_argument("--generate", default=None, help="comma-separated stems to generate (default: all not given)")
    acc.add_argument("--range", default=None, metavar="START:END", help="regenerate only this time range (seconds)")
    _common(acc, "accompany")
    acc.add_argument("--guidance", type=float, default=None, metavar="W",
                     help="--method prior with a prior that hears given stems clean: how much to lean on them "
                     "(classifier-free guidance; default: the preset's; 0 is off; docs/priors.md)")
    _accompanist_options(acc, bpm=True)
    acc.set_defaults(run=run_accompany)

    gen = subparsers.add_parser(
        "generate", help="generate coherent stems, or a loop that wraps seamlessly",
        description="Generate --seconds of all the model's stems (writing --stems), or with --loop-bars N --bpm T "
        "a loop of N bars of 4/4 whose end flows into its start.")
    gen.add_argument("--seconds", type=float, default=None, help="length in seconds (default 10)")
    gen.add_argument("--stems", default=None, help="comma-separated stems to write (default: all the model's)")
    gen.add_argument("--loop-bars", type=int, default=None, metavar="N", help="generate a loop of N bars")
    gen.add_argument("--bpm", type=float, default=None, metavar="T", help="tempo of the loop (with --loop-bars)")
    gen.add_argument("--rate", type=int, default=None,
                     help=f"output sample rate (default {DAW_RATE}, what a DAW session expects; the model runs at its "
                     "own rate and the result is resampled)")
    gen.add_argument("--channels", type=int, choices=(1, 2), default=None,
                     help=f"1 or 2 (default {DAW_CHANNELS}, a centred part in stereo, as a DAW track expects)")
    gen.add_argument("--like", type=Path, default=None, metavar="FILE",
                     help="take the output rate and channels from this audio file (e.g. a bounce of the session)")
    gen.add_argument("--name", default=None, help="output file prefix (default generated / loop)")
    _common(gen, "generate")
    _accompanist_options(gen, bpm=False)
    gen.set_defaults(run=run_generate)


def _common(p: argparse.ArgumentParser, task: str) -> None:
    p.add_argument("-o", "--out", type=Path, default=Path("separated" if task == "separate" else "generated"),
                   help="output folder (created if missing; default ./%(default)s)")
    p.add_argument("--model", default=None, help="a shipped model name or a model file path (default: the shipped "
                   + ("regression separator, else prior)" if task == "separate" else
                      "prior; msldm-... or 'msldm' for the latent model MSLDM)"))
    default = {"separate": "separate-fast", "accompany": "accompany-fast",
               "generate": f"generate (150 steps); loops: {LOOP_PRESET} (24 steps), which also takes accompany presets"}
    p.add_argument("--preset", default=None, help=f"a preset name or .toml path (default: {default[task]}; "
                   "msldm models: msldm-generate / msldm-accompany-fast)")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--backend", choices=("torch", "onnx", "torchscript", "auto"), default="torch",
                   help="where a prior's network runs (default torch; onnx: ONNX Runtime, exported once into a "
                   "cache; auto: ONNX Runtime when it can run here)")
    p.add_argument("--format", choices=("wav", "flac"), default="wav", help="output format (default wav)")
    p.add_argument("--bit-depth", choices=("16", "24", "32f"), default="24", help="output bit depth (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same stems")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap, a fraction (default 0.25)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per batch (default: from a 1 GiB budget)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (leave cores for a DAW)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    overrides = p.add_argument_group("sampler overrides (replace the preset's values)")
    overrides.add_argument("--steps", type=int, default=None)
    overrides.add_argument("--sigma-min", type=float, default=None)
    overrides.add_argument("--sigma-max", type=float, default=None)
    overrides.add_argument("--rho", type=float, default=None)
    overrides.add_argument("--churn", dest="s_churn", type=float, default=None)
    overrides.add_argument("--resamples", type=int, default=None, help="correction steps per noise level")


# -------------------------------------------------------------------------------------------------------------
# Commands


def run_separate(args) -> int:
    from stemweave.engine.audio_io import read_audio

    stems = _names(args.stems, "--stems")
    _check_format(args)
    audio, rate = _read(read_audio, args.input)
    outputs = lambda names: {s: args.out / f"{args.input.stem}_{s}.{args.format}" for s in names}  # noqa: E731
    provenance_path = args.out / f"{args.input.stem}.stemweave.json"
    _prepare_out(args.out, [args.input])
    model, name, device, preset = _setup(args, "separate")
    wanted = stems or list(model.stems)
    paths = outputs(wanted)
    _never_overwrite([args.input], [*paths.values(), provenance_path])
    refine = _refine_setup(args, model, device)
    result, report, seconds = _run("separate", model, audio, rate, preset, args, stems=wanted,
                                   channel_mode=args.channel_mode)
    _write(args, result, paths, rate)
    stage = "first estimate" if refine else None
    _provenance(provenance_path, "separate", args, model, name, device, preset, report, seconds, rate, audio.shape,
                inputs=[args.input], outputs=paths, channel_mode=args.channel_mode, stage=stage)
    if refine is None:
        _say(args, f"wrote {len(paths)} stems to {args.out}")
        return 0
    _say(args, f"wrote the first estimate ({len(paths)} stems) to {args.out}; refining with {refine[1]}...")
    warm, prior_name, refine_preset = refine
    try:
        result, report, seconds = _run("separate", warm, audio, rate, refine_preset, args, stems=wanted,
                                       channel_mode=args.channel_mode)
    except KeyboardInterrupt:
        _say(args, f"refinement interrupted: the first estimate stays in {args.out}")
        return 130
    _write(args, result, paths, rate)
    _provenance(provenance_path, "separate", args, model, name, device, refine_preset, report, seconds, rate,
                audio.shape, inputs=[args.input], outputs=paths, channel_mode=args.channel_mode, stage="refined",
                refine={"preset": refine_preset.name, "prior": _model_entry(warm.prior, prior_name),
                        "backend": getattr(warm.prior, "backend", None) or {"backend": "torch"}})
    _say(args, f"replaced them with the refined stems in {args.out}")
    return 0


def _refine_setup(args, model, device):
    """(WarmStart, prior name, preset) when this separation refines a regression separator's answer, else None."""
    from stemweave import api
    from stemweave.engine.models import RegressionSeparator
    from stemweave.engine.presets import load_preset
    from stemweave.engine.refine import WarmStart

    preset_name = None if args.no_refine else (args.refine or api.DEFAULT_REFINE)
    if preset_name is None:
        return None
    if not isinstance(model, RegressionSeparator):
        if args.refine:
            raise UserError("--refine refines a regression separator's first answer: choose one with --model")
        return None
    try:
        preset = load_preset(preset_name)
        if not preset.options.get("warm_start"):
            raise ValueError(f"preset {preset.name!r} does not refine a first estimate: use refine or refine-fast")
        prior, prior_name = api.load_task_model(args.prior, "refine", device, args.backend, args.threads)
        _warn_quality(args, prior, prior_name)
        return WarmStart(model, prior), prior_name, preset
    except ValueError as error:
        if args.refine or args.prior:
            raise UserError(str(error)) from None
        return None  # refining is only a default: without a shipped prior, the first answer is the answer


def run_accompany(args) -> int:
    if _method(args) in ("accompanist", "refine"):
        return run_accompanist(args, "accompany")
    from stemweave.engine.audio_io import read_audio

    _check_format(args)
    given_names = _names(args.given, "--given")
    generate = _names(args.generate, "--generate")
    if given_names is not None and len(given_names) != len(args.inputs):
        raise UserError(f"--given names {len(given_names)} stems for {len(args.inputs)} files: one name per file")
    read = [_read(read_audio, path) for path in args.inputs]
    rates = {r for _, r in read}
    shapes = {a.shape for a, _ in read}
    if len(rates) != 1 or len(shapes) != 1:
        raise UserError("the given files are not aligned: they need the same rate, channels and length; got "
                        + ", ".join(f"{p.name}: {a.shape[0]} ch x {a.shape[1]} frames at {r} Hz"
                                    for p, (a, r) in zip(args.inputs, read)))
    rate = rates.pop()
    regenerate = _range(args.range, rate, read[0][0].shape[1])
    _prepare_out(args.out, args.inputs)
    model, name, device, preset = _setup(args, "accompany")
    if given_names is None:
        given_names = [_stem_in_name(path, model.stems) for path in args.inputs]
    if len(set(given_names)) != len(given_names):
        raise UserError(f"a stem is given twice: {', '.join(given_names)}")
    unknown = [s for s in [*given_names, *(generate or [])] if s not in model.stems]
    if unknown:
        raise UserError(f"unknown stem(s) {', '.join(unknown)}: model {name} has {', '.join(model.stems)}")
    given = {s: a for s, (a, _) in zip(given_names, read)}
    if regenerate is not None:
        generate = generate or given_names[:1]
        missing = [s for s in generate if s not in given]
        if missing:
            raise UserError(f"--range regenerates part of a given stem: give {', '.join(missing)} as a file too")
    else:
        generate = generate or [s for s in model.stems if s not in given]
        if not generate or any(s in given for s in generate):
            raise UserError("--generate names stems that are not given (use --range to redo part of a given one)")
    base = args.inputs[0].stem
    paths = accompany_paths(args.inputs[0], given_names[0], generate, args.out, args.format)
    provenance_path = args.out / f"{base}.stemweave.json"
    _never_overwrite(args.inputs, [*paths.values(), provenance_path])
    result, report, seconds = _run("accompany", model, None, rate, preset, args, stems=generate, given=given,
                                   regenerate=regenerate)
    _write(args, result, paths, rate)
    _provenance(provenance_path, "accompany", args, model, name, device, preset, report, seconds, rate,
                read[0][0].shape, inputs=args.inputs, outputs=paths, given=given_names,
                range_s=None if args.range is None else args.range)
    _say(args, f"wrote {len(paths)} stems to {args.out}")
    return 0


def run_generate(args) -> int:
    if _method(args) in ("accompanist", "refine"):
        return run_accompanist(args, "generate")
    _check_format(args)
    stems = _names(args.stems, "--stems")
    if (args.loop_bars is None) != (args.bpm is None):
        raise UserError("a loop needs both --loop-bars N and --bpm T")
    if args.loop_bars is not None and (args.loop_bars < 1 or not 20 <= args.bpm <= 400):
        raise UserError("--loop-bars must be >= 1 and --bpm between 20 and 400")
    if args.loop_bars is not None and args.seconds is not None:
        raise UserError("give either --seconds or --loop-bars/--bpm, not both")
    seconds = 10.0 if args.seconds is None else args.seconds
    if not 0 < seconds <= 3600:
        raise UserError("--seconds must be in (0, 3600]")
    rate, channels = output_format(args)
    _prepare_out(args.out, [])
    model, name, device, preset = _setup(args, "generate", loop=args.loop_bars is not None)
    unknown = [s for s in stems or [] if s not in model.stems]
    if unknown:
        raise UserError(f"unknown stem(s) {', '.join(unknown)}: model {name} has {', '.join(model.stems)}")
    kwargs = {"channels": channels}
    if args.loop_bars is not None:
        kwargs["loop_frames"] = int(round(args.loop_bars * BEATS_PER_BAR * 60.0 / args.bpm * rate))
    else:
        kwargs["seconds"] = seconds
    base = args.name or ("loop" if args.loop_bars else "generated")
    wanted = stems or list(model.stems)
    paths = {s: args.out / f"{base}_{s}.{args.format}" for s in wanted}
    provenance_path = args.out / f"{base}.stemweave.json"
    result, report, elapsed = _run("generate", model, None, rate, preset, args, stems=wanted, **kwargs)
    _write(args, result, paths, rate)
    frames = next(iter(result.values())).shape
    _provenance(provenance_path, "generate", args, model, name, device, preset, report, elapsed, rate, frames,
                inputs=[], outputs=paths, loop_bars=args.loop_bars, bpm=args.bpm)
    _say(args, f"wrote {len(paths)} stems to {args.out}")
    return 0


# -------------------------------------------------------------------------------------------------------------
# Shared steps


def output_format(args) -> tuple[int, int]:
    """(rate, channels) of generated audio: --like FILE's, else --rate / --channels, else a DAW session's."""
    from stemweave.engine.resample import check_rate

    if args.like is not None:
        if args.rate is not None or args.channels is not None:
            raise UserError("give either --like FILE or --rate / --channels, not both")
        import soundfile

        try:
            info = soundfile.info(str(args.like))
        except (OSError, RuntimeError, soundfile.LibsndfileError) as error:
            raise UserError(f"--like {args.like}: not a readable audio file: {error}") from None
        if info.channels > 2:
            raise UserError(f"--like {args.like}: {info.channels} channels; generated audio is mono or stereo")
        rate, channels = info.samplerate, info.channels
    else:
        rate, channels = args.rate or DAW_RATE, args.channels or DAW_CHANNELS
    try:
        return check_rate(rate), channels
    except ValueError as error:
        raise UserError(str(error)) from None


def accompany_paths(first_input: Path, first_given: str, generate, out: Path, audio_format: str) -> dict:
    """Outputs named by the generated stem: the first input's name with its stem replaced (drums.wav -> bass.wav,
    song_drums.wav -> song_bass.wav), else <input>_<stem>."""
    base = first_input.stem
    pattern = re.compile(rf"(^|[^a-z]){re.escape(first_given)}([^a-z]|$)", re.IGNORECASE)
    paths = {}
    for stem in generate:
        if pattern.search(base):
            name = pattern.sub(lambda m: f"{m.group(1)}{stem}{m.group(2)}", base, count=1)
        else:
            name = f"{base}_{stem}"
        paths[stem] = out / f"{name}.{audio_format}"
    return paths


def _names(value: str | None, flag: str) -> list[str] | None:
    if value is None:
        return None
    names = [s.strip() for s in value.split(",") if s.strip()]
    if not names:
        raise UserError(f"{flag} needs at least one stem name")
    return names


def _check_format(args) -> None:
    from stemweave.engine.audio_io import AudioError, subtype_for

    try:
        subtype_for(args.format, args.bit_depth)
    except AudioError as error:
        raise UserError(str(error)) from None
    if not 0 < args.overlap < 1:
        raise UserError("--overlap is a fraction of the window in (0, 1)")


def _read(read_audio, path: Path):
    from stemweave.engine.audio_io import AudioError

    try:
        return read_audio(path)
    except AudioError as error:
        raise UserError(str(error)) from None


def _prepare_out(folder: Path, inputs) -> None:
    from stemweave.engine.audio_io import AudioError, check_output_dir

    try:
        check_output_dir(folder)
    except AudioError as error:
        raise UserError(str(error)) from None


def _never_overwrite(inputs, outputs) -> None:
    sources = {Path(p).resolve() for p in inputs}
    for out in outputs:
        if Path(out).resolve() in sources:
            raise UserError(f"{out} would overwrite an input file: choose another -o folder")


def _range(value: str | None, rate: int, frames: int) -> tuple[int, int] | None:
    if value is None:
        return None
    match = re.fullmatch(r"\s*([0-9.]+)\s*:\s*([0-9.]+)\s*", value)
    if not match:
        raise UserError(f"--range {value!r}: write START:END in seconds, e.g. 4:8.5")
    start, end = (float(v) for v in match.groups())
    start_f, end_f = int(round(start * rate)), int(round(end * rate))
    if not 0 <= start_f < end_f <= frames:
        raise UserError(f"--range {value}: needs 0 <= START < END <= {frames / rate:.3f} s (the files' length)")
    return start_f, end_f


def _stem_in_name(path: Path, stems) -> str:
    found = [s for s in stems if re.search(rf"(^|[^a-z]){re.escape(s)}([^a-z]|$)", path.stem.lower())]
    if len(found) != 1:
        raise UserError(f"cannot tell which stem {path.name} is: pass --given with one of {', '.join(stems)} per file")
    return found[0]


def _setup(args, task: str, loop: bool = False):
    """(model, name, device, preset), or UserError naming what is available. A loop (generate) defaults to the
    loop preset and takes accompany presets too: it is made by inpainting across its wrap point."""
    import torch

    from stemweave import api
    from stemweave.engine.presets import load_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = api.resolve_device(args.device)
        if args.preset:
            preset = load_preset(args.preset)  # a bad preset is reported before any model loads
        model, name = api.load_task_model(args.model, task, device, args.backend, args.threads)
        if not args.preset:  # the task's default for this kind of model (MSLDM has its own sigma range)
            msldm = (getattr(model, "card", None) or {}).get("kind") == "msldm"
            preset = load_preset(LOOP_PRESET if loop and not msldm else api.default_preset(task, model))
        if loop and preset.task == "accompany":
            from dataclasses import replace

            preset = replace(preset, task="generate")  # its sampler settings, for a generated loop
        if preset.task != task:
            accepted = "generate or accompany" if loop else task
            raise ValueError(f"preset {preset.name!r} is for {preset.task}, not {accepted}")
        overrides = {k: getattr(args, k) for k in ("steps", "sigma_min", "sigma_max", "rho", "s_churn", "resamples")}
        overrides["guidance"] = getattr(args, "guidance", None)  # accompany only
        preset = preset.with_overrides(**overrides)
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from None
    _warn_quality(args, model, name)
    return model, name, device, preset


def _warn_quality(args, model, name: str) -> None:
    """One line on stderr when the model's card says it measures below the project's quality bar."""
    from stemweave.engine.models import quality_warning

    card = getattr(model, "card", None)
    warning = quality_warning({"name": name, **card}) if card else None
    if warning:
        print(f"stemweave: warning: {warning}", file=sys.stderr)


def _run(task, model, audio, rate, preset, args, **kwargs):
    from stemweave.engine.regions import run_region

    report: dict = {}
    bar = _ProgressBar(disable=args.no_progress)
    started = time.monotonic()
    try:
        result = run_region(task, model, audio, rate, preset, seed=args.seed, overlap=args.overlap,
                            batch_size=args.batch_size, progress=bar, report=report, **kwargs)
    except ValueError as error:
        raise UserError(str(error)) from None
    finally:
        bar.close()
    return result, report, time.monotonic() - started


class _ProgressBar:
    """A tqdm bar over windows x steps, fed by run_region's progress dicts. Its total follows the plan: the first
    updates (load, resample) come before the windows are planned, and a refinement plans again; a new total
    restarts the clock, so the ETA is the sampler's."""

    def __init__(self, disable: bool):
        self.disable, self.bar = disable, None

    def __call__(self, p: dict) -> None:
        if self.disable:
            return
        total = max(1, int(p.get("windows") or 1) * int(p.get("steps") or 1))
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr, disable=None)
        elif total != self.bar.total and p["fraction"] < 1.0:
            self.bar.reset(total=total)
        self.bar.n = round(p["fraction"] * self.bar.total)
        self.bar.set_postfix_str(f"{p['stage']} window {p['window']}/{p['windows']}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write(args, result: dict, paths: dict, rate: int) -> None:
    from stemweave.engine.audio_io import write_audio

    bad = [stem for stem in paths if not np.isfinite(result[stem]).all()]
    if bad:  # checked before the first file: nothing is written
        raise UserError(f"the model produced NaN or infinite samples in {', '.join(bad)}: nothing was written "
                        "(a broken model file, or input it cannot carry)")
    for stem, path in paths.items():
        write_audio(path, result[stem], rate, format=args.format, bit_depth=args.bit_depth)


def _provenance(path, task, args, model, name, device, preset, report, seconds, rate, shape, *, inputs, outputs,
                **extra) -> None:
    import soundfile
    import soxr
    import torch

    from stemweave import __version__
    from stemweave.engine.audio_io import write_json

    from stemweave.engine.models import RegressionSeparator

    if isinstance(model, RegressionSeparator) and extra.get("stage") != "refined":
        # one network evaluation per window: no sampler, no constrained stem
        preset_entry = {"name": None, "note": "regression separator: one network evaluation per window, no sampler"}
    else:
        preset_entry = {"name": preset.name, "sampler": asdict(preset.sampler), "options": dict(preset.options)}
    data = {
        "task": task,
        "inputs": [str(p) for p in inputs],
        "outputs": {s: str(p) for s, p in outputs.items()},
        "model": _model_entry(model, name),
        "preset": preset_entry,
        "seed": args.seed,
        "device": str(device),
        "backend": getattr(model, "backend", None) or {"backend": "torch"},
        "rate": rate,
        "channels": int(shape[0]),
        "frames": int(shape[1]),
        "format": args.format,
        "bit_depth": args.bit_depth,
        "plan": report,
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"stemweave": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "soundfile": soundfile.__version__, "soxr": soxr.__version__},
        **{k: v for k, v in extra.items() if v is not None},
    }
    write_json(path, data)


def _model_entry(model, name: str) -> dict:
    """A model's provenance: its card's identity, and its quality warning when it has one."""
    from stemweave.engine.models import quality_warning

    card = getattr(model, "card", None) or {}
    entry = {"name": name, "kind": card.get("kind"), "stems": list(model.stems), "rate": card.get("rate"),
             "window": card.get("window"), "sha256": card.get("sha256")}
    warning = quality_warning({"name": name, **card}) if card else None
    if warning:
        entry["warning"] = warning
    return entry


def _say(args, message: str) -> None:
    print(message, file=sys.stderr)


# -------------------------------------------------------------------------------------------------------------
# The accompanist (issue 21): the default method of accompany and generate


def _accompanist_options(p: argparse.ArgumentParser, bpm: bool) -> None:
    from stemweave.engine.accompanist.writer import STYLES

    group = p.add_argument_group("the accompanist (--method accompanist, the default)")
    group.add_argument("--method", choices=("accompanist", "prior", "refine"), default=None,
                       help="accompanist (default): parts written on the given stems' beat and harmony, rendered "
                       "with the soundfont synth, plus their MIDI; prior: sample the diffusion prior (the default "
                       "when --model, --preset or --range is given); refine (accompany): the "
                       "accompanist's render refined by the prior from sigma 0.05 (SDEdit)")
    if bpm:
        group.add_argument("--bpm", type=float, default=None, help="tempo (default: heard from the given stems)")
    group.add_argument("--meter", type=int, default=None, help="beats per bar (default: heard, else 4)")
    group.add_argument("--key", default=None, help="e.g. 'A minor', 'C major', 'F#m' (default: heard from pitched "
                       "stems, else A minor)")
    group.add_argument("--chords", default=None, help="one chord per bar, cycled, e.g. \"Am F C G\" (default: heard, "
                       "else a progression in the key)")
    group.add_argument("--style", choices=tuple(STYLES), default="default", help="playing style (default: default)")
    group.add_argument("--density", type=float, default=0.5, help="0-1: how many notes (default 0.5)")
    group.add_argument("--intensity", type=float, default=0.5, help="0-1: how hard the parts play (default 0.5)")
    group.add_argument("--program", action="append", default=[], metavar="STEM=N",
                       help="General MIDI program of a generated stem, e.g. bass=38 (repeatable)")


def _method(args) -> str:
    """The accompanist unless --method says otherwise, or the command names what only a prior uses: a --range
    (part of a given stem, which only a prior inpaints), a --model, a --preset or a --guidance (as the server decides)."""
    if args.method:
        return args.method
    names_a_prior = any(getattr(args, name, None) is not None for name in ("range", "model", "preset", "guidance"))
    return "prior" if names_a_prior else "accompanist"


def _controls(args):
    from stemweave.engine.accompanist import Controls
    from stemweave.engine.accompanist.analysis import check_controls

    programs = {}
    for item in args.program:
        stem, _, number = item.partition("=")
        if not number.strip().isdigit():
            raise UserError(f"--program {item!r}: write STEM=N, e.g. bass=38")
        programs[stem.strip()] = int(number)
    chords = None if args.chords is None else args.chords.replace(",", " ").split()
    controls = Controls(bpm=args.bpm, meter=args.meter, key=args.key, chords=chords, style=args.style,
                        density=args.density, intensity=args.intensity, seed=args.seed, programs=programs or None)
    try:
        check_controls(controls)
    except ValueError as error:
        raise UserError(str(error)) from None
    return controls


def run_accompanist(args, task: str) -> int:
    """accompany / generate with the accompanist: validate everything, then write each stem, its MIDI and the
    provenance JSON atomically."""
    from stemweave.engine import accompanist
    from stemweave.engine.accompanist.writer import STEMS
    from stemweave.engine.audio_io import read_audio, write_json

    _check_format(args)
    controls = _controls(args)
    unknown_programs = [s for s in controls.programs or {} if s not in STEMS]
    if unknown_programs:
        raise UserError(f"--program names {', '.join(unknown_programs)}: use one of {', '.join(STEMS)}")
    inputs = list(getattr(args, "inputs", None) or [])
    if task == "accompany":
        if args.range is not None:
            raise UserError("--range regenerates part of a given stem, which only a prior does: drop --method "
                            "accompanist")
        given_names = _names(args.given, "--given")
        if given_names is not None and len(given_names) != len(inputs):
            raise UserError(f"--given names {len(given_names)} stems for {len(inputs)} files: one name per file")
        read = [_read(read_audio, path) for path in inputs]
        if len({r for _, r in read}) != 1 or len({a.shape for a, _ in read}) != 1:
            raise UserError("the given files are not aligned: they need the same rate, channels and length; got "
                            + ", ".join(f"{p.name}: {a.shape[0]} ch x {a.shape[1]} frames at {r} Hz"
                                        for p, (a, r) in zip(inputs, read)))
        rate = read[0][1]
        given_names = given_names or [_stem_in_name(path, STEMS) for path in inputs]
        unknown = [s for s in given_names if s not in STEMS]
        if unknown or len(set(given_names)) != len(given_names):
            raise UserError(f"--given {', '.join(given_names)}: name each file once, with one of {', '.join(STEMS)}")
        given = {s: a for s, (a, _) in zip(given_names, read)}
        wanted = _names(args.generate, "--generate") or [s for s in STEMS if s not in given]
        bad = [s for s in wanted if s not in STEMS or s in given]
        if bad or not wanted:
            raise UserError(f"--generate {', '.join(bad) or '(nothing)'}: name stems of {', '.join(STEMS)} that are "
                            "not given")
        base = inputs[0].stem
    else:
        given, wanted = {}, _names(args.stems, "--stems") or list(STEMS)
        bad = [s for s in wanted if s not in STEMS]
        if bad:
            raise UserError(f"unknown stem(s) {', '.join(bad)}: the accompanist writes {', '.join(STEMS)}")
        rate, channels = output_format(args)
        if args.loop_bars is not None and args.seconds is not None:
            raise UserError("give either --seconds or --loop-bars, not both")
        if args.loop_bars is not None and not 1 <= args.loop_bars <= 64:
            raise UserError("--loop-bars must be 1 to 64")
        seconds = 10.0 if args.seconds is None else args.seconds
        if not 0 < seconds <= 3600:
            raise UserError("--seconds must be in (0, 3600]")
        base = args.name or ("loop" if args.loop_bars else "generated")
    _prepare_out(args.out, inputs)
    if task == "accompany":  # named by the generated stem, as the prior's outputs (drums.wav -> bass.wav)
        paths = accompany_paths(inputs[0], given_names[0], wanted, args.out, args.format)
    else:
        paths = {s: args.out / f"{base}_{s}.{args.format}" for s in wanted}
    midi_paths = {s: path.with_suffix(".mid") for s, path in paths.items()}
    provenance_path = args.out / f"{base}.stemweave.json"
    _never_overwrite(inputs, [*paths.values(), *midi_paths.values(), provenance_path])
    started = time.monotonic()
    try:
        if task == "accompany":
            result = accompanist.accompany(given, rate, wanted, controls)
        elif args.loop_bars is not None:
            result = accompanist.generate_loop(args.loop_bars, rate, channels, wanted, controls)
        else:  # --seconds of parts, not a loop
            result = accompanist.generate_seconds(seconds, rate, channels, wanted, controls)
    except ValueError as error:
        raise UserError(str(error)) from None
    method = _method(args)
    if method == "refine":
        if task != "accompany":
            raise UserError("--method refine refines an accompaniment: use it with stemweave accompany")
        from stemweave.engine.accompanist.refine import refine

        prior, prior_name, device, _ = _setup(args, "accompany")
        try:
            result.stems = refine(result, given, rate, prior, seed=args.seed)
        except ValueError as error:
            raise UserError(str(error)) from None
        method = f"accompanist refined by {prior_name}"
    elapsed = time.monotonic() - started
    _write(args, result.stems, paths, rate)
    for stem, path in midi_paths.items():
        _write_midi(path, result.midi, stem)
    a = result.analysis
    write_json(provenance_path, {
        "task": task, "method": method, "inputs": [str(p) for p in inputs], "given": list(given),
        "outputs": {s: str(p) for s, p in paths.items()}, "midi": {s: str(p) for s, p in midi_paths.items()},
        "analysis": {"bpm": round(a.bpm, 3), "meter": a.meter, "key": a.key, "chords": a.chords,
                     "first_downbeat": None if not a.downbeats.size else round(float(a.downbeats[0]), 4),
                     "sources": a.sources},
        "controls": {"style": controls.style, "density": controls.density, "intensity": controls.intensity,
                     "programs": controls.programs, "loop_bars": getattr(args, "loop_bars", None)},
        "loop_bars": getattr(args, "loop_bars", None), "bpm": round(a.bpm, 3) if task == "generate" else None,
        "seed": args.seed, "rate": rate, "channels": int(next(iter(result.stems.values())).shape[0]),
        "frames": int(next(iter(result.stems.values())).shape[1]), "format": args.format,
        "bit_depth": args.bit_depth, "seconds": round(elapsed, 3), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    _say(args, f"wrote {len(paths)} stems and their MIDI to {args.out} ({a.bpm:.1f} BPM, {a.meter}/4, {a.key})")
    return 0


def _write_midi(path: Path, midi, stem: str) -> None:
    """The conductor track and one stem's track, written atomically."""
    import mido

    from stemweave.engine.audio_io import atomic_write

    single = mido.MidiFile(type=1, ticks_per_beat=midi.ticks_per_beat)
    single.tracks.append(midi.tracks[0])
    single.tracks.extend(t for t in midi.tracks[1:] if any(getattr(m, "name", None) == stem for m in t))
    atomic_write(path, lambda tmp: single.save(str(tmp)))
