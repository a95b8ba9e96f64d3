"""Statistics of a multi-stem dataset folder and the markdown + PNG report written from them."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemweave.engine.data.datasets import STEMS, Track, list_tracks, read_window
from stemweave.engine.data.layout import parse_yaml
from stemweave.engine.data.loudness import integrated_loudness, is_silent
from stemweave.engine.data.theory import NOTE_NAMES

# Share of Slakh2100 songs that contain each class (the reference numbers).
SLAKH_SONG_SHARE = {"bass": 94.7, "drums": 99.3, "guitar": 100.0, "piano": 99.3}


@dataclass
class DatasetStats:
    root: Path
    rate: int
    window_seconds: float
    hop_seconds: float
    tracks: int = 0
    audio_seconds: float = 0.0
    render_seconds: float = 0.0  # from the render metadata; 0 when unknown
    bytes_total: int = 0
    bytes_audio: int = 0
    windows: int = 0
    active_windows: Counter = field(default_factory=Counter)  # stem -> windows where it is non-silent
    songs_with: Counter = field(default_factory=Counter)  # stem -> songs where it is non-silent somewhere
    active_count: Counter = field(default_factory=Counter)  # number of non-silent stems -> windows
    captions: Counter = field(default_factory=Counter)  # "bass, drums" -> windows
    loudness: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STEMS, "mixture")})
    tempos: list[float] = field(default_factory=list)
    keys: Counter = field(default_factory=Counter)
    meters: Counter = field(default_factory=Counter)
    programs: dict[str, Counter] = field(default_factory=lambda: {s: Counter() for s in STEMS})
    render_commands: Counter = field(default_factory=Counter)
    benchmark: dict | None = None  # from benchmark_render, when asked for

    @property
    def hours(self) -> float:
        return self.audio_seconds / 3600


def _folder_bytes(folder: Path) -> tuple[int, int]:
    total = audio = 0
    for path in folder.rglob("*"):
        if path.is_file():
            size = path.stat().st_size
            total += size
            audio += size if path.suffix in (".flac", ".wav") else 0
    return total, audio


def _add_track(stats: DatasetStats, track: Track) -> None:
    rate = stats.rate
    length = track.length_at(rate)
    audio = read_window(track, 0, length, STEMS, rate)  # (4, length): one short song at a time
    stats.tracks += 1
    stats.audio_seconds += length / rate
    total, audio_bytes = _folder_bytes(track.path)
    stats.bytes_total += total
    stats.bytes_audio += audio_bytes
    window, hop = int(stats.window_seconds * rate), int(stats.hop_seconds * rate)
    present = set()
    for offset in range(0, max(length - window, 0) + 1, hop):
        active = [stem for stem, stem_audio in zip(STEMS, audio[:, offset:offset + window]) if not is_silent(stem_audio)]
        stats.windows += 1
        stats.active_windows.update(active)
        stats.active_count[len(active)] += 1
        stats.captions[", ".join(active) or "(silence)"] += 1
        present.update(active)
    stats.songs_with.update(present)
    for stem, stem_audio in zip(STEMS, audio):
        if stem in present:
            stats.loudness[stem].append(integrated_loudness(stem_audio, rate))
    mixture_loudness = integrated_loudness(audio.sum(axis=0), rate)
    if not math.isinf(mixture_loudness):
        stats.loudness["mixture"].append(mixture_loudness)
    metadata = parse_yaml((track.path / "metadata.yaml").read_text()) if (track.path / "metadata.yaml").is_file() else {}
    ours = metadata.get("stemweave")
    if isinstance(ours, dict):
        stats.render_seconds += float(ours.get("render_seconds") or 0.0)
        stats.tempos.append(float(ours["tempo"]))
        stats.keys[str(ours["key"])] += 1
        stats.meters[str(ours["meter"])] += 1
        stats.render_commands[render_command_of(ours)] += 1
        for info in metadata["stems"].values():
            stats.programs[str(info["inst_class"]).lower()][str(info["midi_program_name"])] += 1


def render_command_of(settings: dict) -> str:
    """The split and settings a track was rendered with, as the command family that makes it."""
    return (f"stemweave data render --split {settings.get('split')} --rate {settings.get('rate')} "
            f"--seconds {settings.get('seconds'):g} --format {settings.get('format')}")


def collect_stats(root: str | Path, rate: int = 22_050, window_seconds: float = 4.0, hop_seconds: float = 2.0,
                  progress=None) -> DatasetStats:
    """Walk every track under root: sizes, per-stem activity on MSDM's 4 s / 2 s evaluation windows, loudness,
    and (for folders rendered here) tempo, key, meter, programs and render speed."""
    stats = DatasetStats(Path(root), rate, window_seconds, hop_seconds)
    tracks = list_tracks(root)
    for track in progress(tracks) if progress else tracks:
        _add_track(stats, track)
    return stats


def benchmark_render(songs: int = 10, seconds: float = 30.0, rate: int = 22_050, soundfont: str | None = None,
                     first_seed: int = 2_999_000) -> dict:
    """Render `songs` songs in memory (no files) and time them: wall clock and this process's CPU time, so the
    speed on an unshared core can be told from the speed on a busy machine. Seeds default to the far end
    of the test range, which the standard test set never reaches."""
    import time

    from stemweave.engine.data.render import render_song, shared_synth, default_soundfont
    from stemweave.engine.data.songs import make_song

    shared_synth(soundfont or default_soundfont())  # soundfont loading is once per process, not per song
    wall = cpu = audio = 0.0
    for seed in range(first_seed, first_seed + songs):
        song = make_song(seed, seconds)
        started_wall, started_cpu = time.perf_counter(), time.process_time()
        rendered = render_song(song, rate, soundfont)
        wall += time.perf_counter() - started_wall
        cpu += time.process_time() - started_cpu
        audio += rendered.seconds
    return {"songs": songs, "audio_seconds": audio, "wall_seconds": wall, "cpu_seconds": cpu}


def _percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a | n/a | n/a | n/a"
    v = np.array(values)
    return f"{np.median(v):.1f} | {np.percentile(v, 10):.1f} .. {np.percentile(v, 90):.1f} | {v.std():.1f} | {len(v)}"


def report_markdown(stats: DatasetStats, commands: list[str], plot_name: str | None) -> str:
    """The report as markdown: the commands that made it, speed and size, activity, loudness, tempo and keys."""
    lines = ["# Dataset report", "", f"Folder: `{stats.root}`: {stats.tracks} tracks, "
             f"{stats.audio_seconds / 60:.1f} minutes of audio at {stats.rate} Hz.", "", "Produced by:", "", "```"]
    lines += commands + ["```", ""]
    if plot_name:
        lines += [f"![dataset statistics]({plot_name})", ""]
    lines += ["## Speed and size", ""]
    if stats.benchmark:
        bench = stats.benchmark
        lines.append(f"- Render speed (benchmark, {bench['songs']} songs of {bench['audio_seconds'] / bench['songs']:.0f} s "
                     f"in one process, four stems each: FluidSynth at 44.1 kHz, resampling, levelling, no file "
                     f"writing): {bench['audio_seconds'] / bench['cpu_seconds']:.0f} s of audio per CPU second, "
                     f"{bench['audio_seconds'] / bench['wall_seconds']:.0f} per wall-clock second on this "
                     "(shared) machine")
    if stats.render_seconds:
        lines.append(f"- Render speed while this folder was rendered: {stats.audio_seconds / stats.render_seconds:.0f}"
                     " s of audio per wall-clock second (the machine's cores were shared with other jobs)")
    if stats.hours:
        lines.append(f"- Size on disk: {stats.bytes_total / 1e6 / stats.hours:.0f} MB per hour of songs "
                     f"(audio files {stats.bytes_audio / 1e6 / stats.hours:.0f} MB/h: four stems + mixture, "
                     f"16-bit mono); {stats.bytes_total / 1e6:.0f} MB in all")
    lines += ["", f"## Which stems sound (MSDM silence rule: ||s||_2 / N < 1.5e-5 on {stats.window_seconds:g} s "
              f"windows, hop {stats.hop_seconds:g} s; {stats.windows} windows)", "",
              "| stem | non-silent windows | songs containing it | Slakh2100: songs containing it |",
              "|---|---|---|---|"]
    for stem in STEMS:
        lines.append(f"| {stem} | {_percent(stats.active_windows[stem], stats.windows)} | "
                     f"{_percent(stats.songs_with[stem], stats.tracks)} | {SLAKH_SONG_SHARE[stem]}% |")
    lines += ["", "Non-silent stems per window (windows with fewer than two are skipped by MSDM's evaluation):", "",
              "| stems sounding | " + " | ".join(str(k) for k in range(len(STEMS) + 1)) + " |",
              "|---" * (len(STEMS) + 2) + "|",
              "| windows | " + " | ".join(_percent(stats.active_count[k], stats.windows)
                                          for k in range(len(STEMS) + 1)) + " |", "",
              "Most common mixture captions (GMSDI-style, stems present in a window):", ""]
    for caption, count in stats.captions.most_common(8):
        lines.append(f"- {caption}: {_percent(count, stats.windows)}")
    lines += ["", "## Loudness (integrated, BS.1770 K-weighted and gated, LUFS)", "",
              "| signal | median | 10th .. 90th percentile | std | songs |", "|---|---|---|---|---|"]
    for name, values in stats.loudness.items():
        lines.append(f"| {name} | {_spread(values)} |")
    if stats.tempos:
        tempos = np.array(stats.tempos)
        edges = list(range(70, 180, 10))
        counts, _ = np.histogram(tempos, bins=edges)
        lines += ["", "## Tempo, meter, key", "",
                  f"Tempo (quarter-note BPM): median {np.median(tempos):.0f}, range {tempos.min():.0f}..{tempos.max():.0f}.",
                  "", "| BPM | " + " | ".join(f"{a}-{a + 10}" for a in edges[:-1]) + " |",
                  "|---" * len(edges) + "|", "| songs | " + " | ".join(str(c) for c in counts) + " |", "",
                  "Meters: " + ", ".join(f"{m} {_percent(c, stats.tracks)}" for m, c in stats.meters.most_common()),
                  "", "| key | " + " | ".join(NOTE_NAMES) + " |", "|---" * 13 + "|"]
        for mode in ("major", "minor"):
            lines.append(f"| {mode} | " + " | ".join(str(stats.keys[f'{n} {mode}']) for n in NOTE_NAMES) + " |")
        lines += ["", "## Instruments (General MIDI programs; drum kits)", ""]
        for stem, counter in stats.programs.items():
            lines.append(f"- {stem}: " + ", ".join(f"{name} {count}" for name, count in counter.most_common()))
    return "\n".join(lines) + "\n"


def plot_stats(stats: DatasetStats, path: Path) -> bool:
    """Write the six-panel PNG; False (nothing written) when matplotlib is not installed (an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(2, 3, figsize=(15, 8))
    ax = axes[0, 0]
    shares = [100 * stats.active_windows[s] / max(stats.windows, 1) for s in STEMS]
    ax.bar(STEMS, shares, color="tab:blue", label="non-silent windows")
    ax.scatter(STEMS, [SLAKH_SONG_SHARE[s] for s in STEMS], color="tab:red", zorder=3, label="Slakh: songs with it")
    ax.set_ylim(0, 105)
    ax.set_title("Stem activity (%)")
    ax.legend(loc="lower right", fontsize=8)
    ax = axes[0, 1]
    counts = [100 * stats.active_count[k] / max(stats.windows, 1) for k in range(len(STEMS) + 1)]
    ax.bar(range(len(STEMS) + 1), counts, color="tab:green")
    ax.set_title("Non-silent stems per window (%)")
    ax = axes[0, 2]
    names = [n for n, v in stats.loudness.items() if v]
    ax.boxplot([stats.loudness[n] for n in names])
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set_title("Integrated loudness (LUFS)")
    ax = axes[1, 0]
    ax.hist(stats.tempos, bins=range(70, 180, 5), color="tab:orange")
    ax.set_title("Tempo (BPM)")
    ax = axes[1, 1]
    x = np.arange(12)
    ax.bar(x - 0.2, [stats.keys[f"{n} major"] for n in NOTE_NAMES], 0.4, label="major")
    ax.bar(x + 0.2, [stats.keys[f"{n} minor"] for n in NOTE_NAMES], 0.4, label="minor")
    ax.set_xticks(x, NOTE_NAMES)
    ax.legend(fontsize=8)
    ax.set_title("Key")
    ax = axes[1, 2]
    meters = stats.meters.most_common()
    ax.bar([m for m, _ in meters], [c for _, c in meters], color="tab:purple")
    ax.set_title("Meter (songs)")
    figure.suptitle(f"{stats.root}: {stats.tracks} songs, {stats.audio_seconds / 3600:.2f} h")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def write_report(stats: DatasetStats, out_dir: str | Path, commands: list[str]) -> tuple[Path, Path | None]:
    """docs/data-report.md and docs/data-stats.png (the PNG only with matplotlib installed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = out_dir / "data-stats.png"
    has_plot = plot_stats(stats, plot)
    report = out_dir / "data-report.md"
    report.write_text(report_markdown(stats, commands, plot.name if has_plot else None))
    return report, plot if has_plot else None
