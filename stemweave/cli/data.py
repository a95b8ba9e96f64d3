"""`stemweave data`: render the procedural multi-stem dataset, write the built-in example, report statistics."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from stemweave.cli import UserError

AUDIO_FORMATS = ("flac", "wav")
MAX_SECONDS = 3600.0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="render the procedural multi-stem dataset; dataset statistics",
                                 description="Procedural Slakh-like songs rendered with FluidSynth into "
                                             "bass / drums / guitar / piano stems (docs/data.md).")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")

    def show_help(args) -> int:
        data.print_help()
        return 2

    data.set_defaults(run=show_help)

    render = commands.add_parser("render", help="render songs into a Slakh2100-style folder (resumable)")
    render.add_argument("--out", required=True, type=Path, help="folder for the tracks (created if missing)")
    render.add_argument("--songs", required=True, type=int, help="number of songs (tracks) to render")
    render.add_argument("--seed", type=int, default=0,
                        help="first track number; track n of a split is always the same song (default 0)")
    render.add_argument("--split", choices=("train", "valid", "test", "unseen"), default="train",
                        help="seed range: train, valid, test and unseen songs never overlap (default train); "
                             "unseen is rendered with a font and a drum kit held out of --timbres varied")
    render.add_argument("--rate", type=int, default=22_050, help="sample rate of the stems (default 22050)")
    render.add_argument("--seconds", type=float, default=30.0, help="length of each song (default 30)")
    render.add_argument("--jobs", type=int, default=1, help="parallel rendering processes (default 1)")
    render.add_argument("--soundfont", type=Path, default=None,
                        help="General MIDI .sf2 file (default $STEMWEAVE_SOUNDFONT or FluidR3_GM)")
    render.add_argument("--format", choices=AUDIO_FORMATS, default="flac", help="audio files (default flac)")
    render.add_argument("--arrangement", choices=("full", "sparse"), default="full",
                        help="full: the band mostly plays together (default); sparse: sections of one to four "
                             "players, for mixture-only training (GMSDI)")
    render.add_argument("--timbres", choices=("gm", "varied"), default="gm",
                        help="gm: every stem with --soundfont (default); varied: each stem's soundfont or sampled "
                             "drum kit drawn per song from several (docs/data.md)")
    render.add_argument("--effects", action="store_true",
                        help="a producer's mix: random per-stem EQ, compression, saturation, chorus, reverb")
    render.set_defaults(run=run_render)

    example = commands.add_parser("example", help="write one rendered mixture, the built-in example input")
    example.add_argument("-o", "--output", required=True, type=Path, help="the .wav or .flac file to write")
    example.add_argument("--seconds", type=float, default=12.0, help="length (default 12)")
    example.add_argument("--seed", type=int, default=0, help="which song (default 0)")
    example.add_argument("--rate", type=int, default=22_050, help="sample rate (default 22050)")
    example.add_argument("--soundfont", type=Path, default=None, help="General MIDI .sf2 file")
    example.set_defaults(run=run_example)

    stats = commands.add_parser("stats", help="write docs/data-report.md and docs/data-stats.png for a folder")
    stats.add_argument("folder", type=Path, help="a dataset folder (rendered here, Slakh2100 or MUSDB18-HQ)")
    stats.add_argument("-o", "--out", type=Path, default=Path("docs"), help="report folder (default docs/)")
    stats.add_argument("--rate", type=int, default=22_050, help="analysis sample rate (default 22050)")
    stats.add_argument("--benchmark", type=int, default=0, metavar="SONGS",
                       help="also time rendering this many 30 s songs in memory (default 0: no benchmark)")
    stats.set_defaults(run=run_stats)


def _check_common(seconds: float, rate: int, seed: int, soundfont: Path | None) -> str:
    """Validate what render and example share; returns the soundfont path to use."""
    from stemweave.engine.data.render import default_soundfont
    from stemweave.engine.resample import check_rate

    if not 0 < seconds <= MAX_SECONDS:
        raise UserError(f"--seconds must be above 0 and at most {MAX_SECONDS:g}, got {seconds:g}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    try:
        check_rate(rate)
    except ValueError as error:
        raise UserError(str(error)) from None
    path = Path(soundfont) if soundfont else Path(default_soundfont())
    if not path.is_file():
        raise UserError(f"soundfont not found: {path} (install fluid-soundfont-gm or pass --soundfont FILE.sf2)")
    return str(path)


def _writable_folder(folder: Path) -> Path:
    """Create the folder if needed and prove it is writable, or say why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as error:
        raise UserError(f"cannot write to {folder}: {error.strerror or error}") from None
    return folder


def run_render(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stemweave.engine.data.build import SEEDS_PER_SPLIT, SettingsMismatch, plan_jobs, render_jobs

    if args.songs < 1:
        raise UserError(f"--songs must be at least 1, got {args.songs}")
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if args.seed + args.songs > SEEDS_PER_SPLIT:
        raise UserError(f"--seed + --songs must stay within {SEEDS_PER_SPLIT} songs per split")
    soundfont = _check_common(args.seconds, args.rate, args.seed, args.soundfont)
    out = _writable_folder(args.out)
    audio = rendering = 0.0
    skipped = 0
    try:
        todo = plan_jobs(out, args.split, args.seed, args.songs, args.rate, args.seconds, args.format, soundfont,
                          args.arrangement, args.timbres, args.effects)
    except (SettingsMismatch, ValueError, FileNotFoundError) as error:
        raise UserError(str(error)) from None
    try:
        with tqdm(total=args.songs, unit="song", desc=f"render {args.split}") as bar:
            for result in render_jobs(todo, args.jobs):
                skipped += result.skipped
                if not result.skipped:
                    audio += result.audio_seconds
                    rendering += result.render_seconds
                    bar.set_postfix_str(f"{audio / max(rendering, 1e-9):.0f}x real time")
                bar.update()
    except OSError as error:
        raise UserError(f"cannot write the tracks in {out}: {error}") from None
    done = args.songs - skipped
    speed = f", {audio:.0f} s of audio at {audio / rendering:.0f}x real time" if rendering else ""
    print(f"{args.split}: {done} tracks rendered, {skipped} already there, in {out}{speed}")
    return 0


def run_example(args: argparse.Namespace) -> int:
    from stemweave.engine.data.build import audio_container, render_example

    soundfont = _check_common(args.seconds, args.rate, args.seed, args.soundfont)
    try:
        audio_container(args.output)
    except ValueError as error:
        raise UserError(str(error)) from None
    _writable_folder(args.output.parent if str(args.output.parent) else Path("."))
    try:
        seconds = render_example(args.output, args.seconds, args.seed, args.rate, soundfont)
    except OSError as error:
        raise UserError(f"cannot write {args.output}: {error}") from None
    print(f"wrote {args.output}: {seconds:.1f} s mixture of bass, drums, guitar and piano at {args.rate} Hz")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from stemweave.engine.data.stats import benchmark_render, collect_stats, write_report

    if not args.folder.is_dir():
        raise UserError(f"no such dataset folder: {args.folder}")
    if args.benchmark < 0:
        raise UserError(f"--benchmark must be 0 or more, got {args.benchmark}")
    soundfont = _check_common(30.0, args.rate, 0, None) if args.benchmark else None
    stats = collect_stats(args.folder, args.rate, progress=lambda tracks: tqdm(tracks, unit="song", desc="stats"))
    if not stats.tracks:
        raise UserError(f"no tracks in {args.folder} (expected Slakh2100-style or MUSDB18-HQ-style track folders)")
    commands = [f"{command} --out {args.folder} --songs {count}  # {count} tracks"
                for command, count in stats.render_commands.items()]
    if args.benchmark:
        stats.benchmark = benchmark_render(args.benchmark, soundfont=soundfont)
    benchmark = f" --benchmark {args.benchmark}" if args.benchmark else ""
    commands.append(f"stemweave data stats {args.folder} -o {args.out}{benchmark}")
    _writable_folder(args.out)
    report, plot = write_report(stats, args.out, commands)
    print(f"wrote {report}" + (f" and {plot}" if plot else " (no plot: pip install matplotlib for data-stats.png)"))
    return 0
