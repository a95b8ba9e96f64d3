"""Issue 21's table: a bass under given drums by each method, in-domain and on drums played by a real sampled kit.

    nice -n 10 env OMP_NUM_THREADS=1 python benchmarks/accompany.py --data data/test --songs 20 \
        --prior-songs 3 --out benchmarks/results/accompany.json

For each of the first --songs test songs: the drums (the rendered stem, and the same drum notes played by a
Hydrogen kit's real samples, never used in training) are cut to 12 s (8-20 s) and each method writes a bass under
them. Measured per method and domain: bass energy share below 400 Hz; spectral flatness next to the real bass's;
share of bass onsets within 50 ms of a drum onset next to chance; share of the bass's pitch-class energy in the
song's key (the key is asked for: drums carry none) and, for the accompanist, of its MIDI notes; the Fréchet
distance of log-mel frames against the real bass stems of the same excerpts; seconds per 12 s. Plus the analysis
accuracy (beat F-measure at 70 ms, tempo within 4 %, downbeat F-measure, meter, key, chords per bar) on the whole
30 s songs, next to librosa's beat tracker with its load time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import soundfile as sf

from stemweave.engine.accompanist import Controls, accompany, analyse, measure
from stemweave.engine.accompanist.analysis import parse_chord, triad_class
from stemweave.engine.accompanist.writer import grid_of
from stemweave.engine.audio_io import write_json
from stemweave.engine.data import parts
from stemweave.engine.data.loudness import integrated_loudness
from stemweave.engine.data.songs import make_song
from stemweave.engine.evaluate import frechet_distance, log_mel_frames
from stemweave.engine.resample import resample

RATE = 22_050
EXCERPT = (8.0, 20.0)
KIT = "/usr/share/hydrogen/data/drumkits/The Black Pearl 1.0"
# General MIDI drum key -> a Hydrogen instrument name in the kit (first match wins)
GM_TO_KIT = {
    parts.KICK: ("Kick",), parts.SIDESTICK: ("Side Stick",), parts.SNARE: ("Pearl Snare",), parts.CLAP: ("Clap",),
    parts.CLOSED_HAT: ("Hat Closed",), parts.PEDAL_HAT: ("Hat Pedal",), parts.OPEN_HAT: ("Hat Open",),
    parts.CRASH: ("Sabian Crash",), parts.RIDE: ("Paiste Ride",), 50: ("Tom 1",), 48: ("Tom 1",), 47: ("Tom 2",),
    45: ("Tom 2",), 43: ("Tom Floor",), 41: ("Tom Floor",),
}


# --- real drum samples ---------------------------------------------------------------------------------------

class SampledKit:
    """A Hydrogen drum kit (drumkit.xml + WAV layers by velocity) that plays General MIDI drum notes."""

    def __init__(self, folder: str, rate: int):
        root = ET.parse(Path(folder) / "drumkit.xml").getroot()
        self.layers: dict[str, list[tuple[float, float, np.ndarray]]] = {}
        for inst in (e for e in root.iter() if e.tag.endswith("instrument")):
            name = next((c.text for c in inst if c.tag.endswith("name")), None)
            layers = []
            for layer in (e for e in inst.iter() if e.tag.endswith("layer")):
                fields = {c.tag.split("}")[-1]: c.text for c in layer}
                audio, sr = sf.read(Path(folder) / fields["filename"], dtype="float32", always_2d=True)
                layers.append((float(fields.get("min", 0)), float(fields.get("max", 1)),
                               resample(audio.mean(1), sr, rate).astype(np.float32)))
            if name and layers:
                self.layers[name] = layers
        self.rate = rate

    def _sample(self, key: int, velocity: int) -> np.ndarray | None:
        for wanted in GM_TO_KIT.get(key, ()):
            name = next((n for n in self.layers if wanted.lower() in n.lower()), None)
            if name:
                v = velocity / 127
                return next((a for lo, hi, a in self.layers[name] if lo <= v <= hi), self.layers[name][-1][2])
        return None

    def play(self, notes, seconds_per_beat: float, frames: int) -> np.ndarray:
        out = np.zeros(frames + self.rate * 4, np.float32)
        for note in notes:
            sample = self._sample(note.pitch, note.velocity)
            if sample is None:
                continue
            at = int(round(note.start * seconds_per_beat * self.rate))
            if 0 <= at < frames:
                out[at:at + sample.size] += sample[: out.size - at] * (0.3 + 0.7 * note.velocity / 127)
        return out[:frames]


# --- analysis accuracy ---------------------------------------------------------------------------------------

def f_measure(estimated: np.ndarray, reference: np.ndarray, window: float = 0.07) -> float:
    """Beat F-measure with a +-70 ms window (mir_eval's when it is installed, else the same rule here)."""
    try:
        import mir_eval

        return float(mir_eval.beat.f_measure(np.asarray(reference, float), np.asarray(estimated, float), window))
    except ImportError:
        used, hits = set(), 0
        for r in reference:
            d = np.abs(estimated - r)
            k = int(np.argmin(d)) if d.size else -1
            if k >= 0 and d[k] <= window and k not in used:
                used.add(k)
                hits += 1
        return 0.0 if hits == 0 else 2 * hits / (len(estimated) + len(reference))


def analysis_row(heard, plan: dict, seconds: float) -> dict:
    beats_per_bar = {"4/4": 4, "3/4": 3, "6/8": 3}[plan["meter"]]
    beat = 60.0 / plan["tempo"]
    truth = np.arange(0.0, seconds - 0.01, beat)
    # the ground truth skips the first 5 s, as mir_eval's trimming does: a grid needs a few beats to be heard
    trim = lambda x: x[x >= 5.0]  # noqa: E731
    ratio = heard.bpm / plan["tempo"]
    return {
        "beat_f": f_measure(trim(heard.beats), trim(truth)),
        "tempo_4pct": bool(abs(ratio - 1) < 0.04),
        "tempo_4pct_octave": bool(min(abs(ratio * f - 1) for f in (0.5, 1, 2, 2 / 3, 1.5)) < 0.04),
        "downbeat_f": f_measure(trim(heard.downbeats), trim(truth[::beats_per_bar])),
        "meter": heard.meter == beats_per_bar,
    }


def chord_accuracy(heard, plan: dict, seconds: float) -> float:
    grid = grid_of(heard, seconds)
    bar_seconds = {"4/4": 4, "3/4": 3, "6/8": 3}[plan["meter"]] * 60.0 / plan["tempo"]
    hits = []
    for k, chord in enumerate(heard.chords):
        middle = grid.first_bar + (k + 0.5) * grid.bar_seconds
        bar = int(middle // bar_seconds)
        if 0 < middle < seconds and 0 <= bar < len(plan["chords"]):
            hits.append(triad_class(parse_chord(chord)) == triad_class(parse_chord(plan["chords"][bar])))
    return float(np.mean(hits)) if hits else 0.0


def librosa_beats(drums: np.ndarray) -> tuple[float, np.ndarray]:
    import librosa

    tempo, frames = librosa.beat.beat_track(y=drums, sr=RATE)
    return float(np.atleast_1d(tempo)[0]), librosa.frames_to_time(frames, sr=RATE)


def librosa_load_seconds() -> float | None:
    """Wall seconds of a fresh process's first beat_track call on 5 s of audio (numba's compile or cache load)."""
    code = ("import time, numpy as np; t = time.time(); import librosa; "
            "librosa.beat.beat_track(y=np.random.default_rng(0).standard_normal(110250).astype('float32'), sr=22050);"
            " print(time.time() - t)")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


# --- the bass metrics ----------------------------------------------------------------------------------------

def bass_metrics(bass: np.ndarray, drums: np.ndarray, key: str) -> dict:
    return {**measure.bass_under_drums(bass, drums, RATE), "key_share": measure.chroma_in_key(bass, RATE, key)}


def summarise(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float, bool))]
    return {k: float(np.mean([r[k] for r in rows])) for k in keys}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/test"))
    p.add_argument("--songs", type=int, default=20, help="songs for the bass table")
    p.add_argument("--analysis-songs", type=int, default=50, help="songs for the analysis table")
    p.add_argument("--prior", default="msdm-cpu-small")
    p.add_argument("--preset", default="accompany-fast")
    p.add_argument("--prior-songs", type=int, default=3, help="songs the (slow) prior runs on, per domain; 0: none")
    p.add_argument("--refine-songs", type=int, default=0,
                   help="songs the accompanist's render refined by the prior (SDEdit from sigma 0.05) runs on")
    p.add_argument("--kit", default=KIT)
    p.add_argument("--no-librosa", action="store_true")
    p.add_argument("--reuse-analysis", type=Path, default=None, help="take the analysis table from this JSON")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/accompany.json"))
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} is not a rendered split (stemweave data render)", file=sys.stderr)
        return 2
    if not Path(args.kit, "drumkit.xml").is_file():
        print(f"error: no Hydrogen kit at {args.kit} (apt-get install hydrogen-drumkits)", file=sys.stderr)
        return 2
    kit = SampledKit(args.kit, RATE)
    tracks = sorted(t for t in args.data.iterdir() if (t / "plan.json").is_file())
    songs = []
    for track in tracks[: max(args.songs + 15, args.analysis_songs)]:
        plan = json.loads((track / "plan.json").read_text())
        stems = {s: sf.read(track / "stems" / f"S{i:02d}.flac", dtype="float32")[0]
                 for i, s in enumerate(("bass", "drums", "guitar", "piano"))}
        song = make_song(plan["seed"], plan["seconds"])
        assert abs(song.plan.tempo - plan["tempo"]) < 1e-2, "the song generator no longer matches the rendered data"
        sampled = kit.play(song.notes["drums"], song.plan.seconds_per_beat, stems["drums"].size)
        target = integrated_loudness(stems["drums"], RATE)
        sampled *= 10 ** ((target - integrated_loudness(sampled, RATE)) / 20)
        songs.append((track.name, plan, stems, {"rendered": stems["drums"], "sampled": sampled.astype(np.float32)}))
    report: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "songs": args.songs,
                    "analysis_songs": args.analysis_songs, "kit": Path(args.kit).name, "excerpt_s": EXCERPT}

    # analysis accuracy on the whole songs
    analysis: dict = {}
    if args.reuse_analysis:
        analysis = json.loads(args.reuse_analysis.read_text())["analysis"]
        args.analysis_songs, report["analysis_songs"] = 0, json.loads(args.reuse_analysis.read_text())["analysis_songs"]
    for domain in ("rendered", "sampled") if args.analysis_songs else ():
        rows, lib_rows, seconds = [], [], []
        for name, plan, stems, drums in songs[: args.analysis_songs]:
            started = time.perf_counter()
            heard = analyse({"drums": drums[domain][None]}, RATE)
            seconds.append(time.perf_counter() - started)
            rows.append(analysis_row(heard, plan, plan["seconds"]))
            if not args.no_librosa:
                tempo, beats = librosa_beats(drums[domain])
                lib = type("Heard", (), {"bpm": tempo, "beats": beats, "downbeats": beats[:0], "meter": 0})
                lib_rows.append(analysis_row(lib, plan, plan["seconds"]))
        analysis[domain] = {"stemweave": summarise(rows), "seconds_per_song": float(np.mean(seconds))}
        if lib_rows:
            analysis[domain]["librosa"] = summarise(lib_rows)
    pitched = []
    for name, plan, stems, drums in songs[: args.analysis_songs]:
        heard = analyse({s: stems[s][None] for s in stems}, RATE)
        pitched.append({"key": heard.key == plan["key"], "chords": chord_accuracy(heard, plan, plan["seconds"])})
    if pitched:
        analysis["pitched"] = summarise(pitched)
    if not args.no_librosa and args.analysis_songs:
        analysis["librosa_first_call_s"] = librosa_load_seconds()
    report["analysis"] = analysis
    report["analysis_songs"] = report.get("analysis_songs") or args.analysis_songs
    print(json.dumps(analysis, indent=1), flush=True)

    # the bass table
    a, b = (int(x * RATE) for x in EXCERPT)
    results: dict = {}
    prior_model = None
    for domain in ("rendered", "sampled"):
        per_method: dict = {"real bass": [], "accompanist": [], "prior": [], "refine": []}
        mels: dict = {"real bass": [], "accompanist": [], "prior": [], "refine": []}
        playing = [song for song in songs if measure.sounds_through(song[2]["bass"][a:b], RATE)
                   and measure.sounds_through(song[2]["drums"][a:b], RATE)]
        for index, (name, plan, stems, drums) in enumerate(playing[: args.songs]):
            clip, real = drums[domain][a:b], stems["bass"][a:b]
            key = plan["key"]
            row = bass_metrics(real, clip, key)
            per_method["real bass"].append(row)
            mels["real bass"].append(real)
            started = time.perf_counter()
            result = accompany({"drums": clip[None]}, RATE, ["bass"], Controls(key=key, seed=index))
            elapsed = time.perf_counter() - started
            bass = result.stems["bass"][0]
            row = bass_metrics(bass, clip, key)
            row["notes_in_key"] = measure.notes_in_key([n.pitch for n in result.notes["bass"]], key)
            row["seconds_per_12s"] = elapsed * 12.0 / (clip.size / RATE)
            per_method["accompanist"].append(row)
            mels["accompanist"].append(bass)
            if index < max(args.prior_songs, args.refine_songs) and prior_model is None:
                from stemweave import api

                prior_model, _ = api.load_task_model(args.prior, "accompany", "cpu")
            if index < args.refine_songs:
                from stemweave.engine.accompanist.refine import refine

                started = time.perf_counter()
                bass = refine(result, {"drums": clip[None]}, RATE, prior_model, seed=index)["bass"][0]
                row = bass_metrics(bass, clip, key)
                row["seconds_per_12s"] = (time.perf_counter() - started + elapsed) * 12.0 / (clip.size / RATE)
                per_method["refine"].append(row)
                mels["refine"].append(bass)
            if index < args.prior_songs:
                from stemweave import api

                started = time.perf_counter()
                out = api.accompany({"drums": clip[None]}, generate=["bass"], rate=RATE, model=prior_model,
                                    preset=args.preset, seed=index)
                elapsed = time.perf_counter() - started
                bass = np.asarray(out["bass"]).reshape(-1)
                row = bass_metrics(bass, clip, key)
                row["seconds_per_12s"] = elapsed * 12.0 / (clip.size / RATE)
                per_method["prior"].append(row)
                mels["prior"].append(bass)
            print(domain, name, {m: {k: round(v, 3) for k, v in rows[-1].items()} for m, rows in per_method.items()
                                 if rows}, flush=True)
        real_mel = log_mel_frames(np.stack(mels["real bass"]), RATE)
        results[domain] = {}
        for method, rows in per_method.items():
            if not rows:
                continue
            summary = summarise(rows)
            summary["songs"] = len(rows)
            if method != "real bass":
                # against the real basses of the same songs: the prior's subset is compared with its own songs
                reference = real_mel if len(rows) == len(mels["real bass"]) else \
                    log_mel_frames(np.stack(mels["real bass"][: len(rows)]), RATE)
                summary["frechet"] = frechet_distance(log_mel_frames(np.stack(mels[method]), RATE), reference)
            results[domain][method] = summary
    report["bass"] = results
    report["prior"] = {"model": args.prior, "preset": args.preset, "refine": "sigma 0.05, 12 Euler steps"}
    print_table(report)
    write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


def print_table(report: dict) -> None:
    print("\n| drums | method | songs | < 400 Hz | flatness (real) | onsets on drums (chance) | key share (MIDI) "
          "| Fréchet | s / 12 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for domain, methods in report["bass"].items():
        real = methods["real bass"]
        for method, m in methods.items():
            notes = f" ({m['notes_in_key']:.2f})" if "notes_in_key" in m else ""
            print(f"| {domain} | {method} | {m['songs']} | {m['low_share']:.2f} | {m['flatness']:.4f} "
                  f"({real['flatness']:.4f}) | {m['locked']:.2f} ({m['chance']:.2f}) | {m['key_share']:.2f}{notes} | "
                  f"{m.get('frechet', 0):.1f} | {m.get('seconds_per_12s', float('nan')):.2f} |")
    a = report["analysis"]
    if not a:
        return
    print("\n| drums | analyser | beat F | tempo 4 % | (x2, x1.5 allowed) | downbeat F | meter | s / song |")
    print("|---|---|---|---|---|---|---|---|")
    for domain in ("rendered", "sampled"):
        for who in ("stemweave", "librosa"):
            if who in a[domain]:
                r = a[domain][who]
                seconds = f"{a[domain]['seconds_per_song']:.2f}" if who == "stemweave" else "-"
                bars = f"{r['downbeat_f']:.3f} | {r['meter']:.2f}" if who == "stemweave" else "- | -"  # beats only
                print(f"| {domain} | {who} | {r['beat_f']:.3f} | {r['tempo_4pct']:.2f} | {r['tempo_4pct_octave']:.2f} "
                      f"| {bars} | {seconds} |")
    print(f"\nkey accuracy {a['pitched']['key']:.2f}, chords per bar {a['pitched']['chords']:.2f} (pitched stems); "
          f"librosa first call in a fresh process: {a.get('librosa_first_call_s')} s")


if __name__ == "__main__":
    sys.exit(main())
