"""The Slakh2100-style track folder: what files a rendered track has, its metadata.yaml, and atomic writing."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import soundfile as sf
import yaml

from stemweave.engine.data.render import RenderedSong
from stemweave.engine.data.songs import STEMS, Song, song_midi

GENERATOR_VERSION = 1  # bump when the same seed would give different songs or audio
STEM_IDS = {stem: f"S{index:02d}" for index, stem in enumerate(STEMS)}  # bass S00, drums S01, guitar S02, piano S03
SLAKH_CLASSES = {"bass": "Bass", "drums": "Drums", "guitar": "Guitar", "piano": "Piano"}
AUDIO_FORMATS = {"flac": "FLAC", "wav": "WAV"}
GM_PROGRAM_NAMES = {
    0: "Acoustic Grand Piano", 1: "Bright Acoustic Piano", 2: "Electric Grand Piano", 3: "Honky-tonk Piano",
    4: "Electric Piano 1", 5: "Electric Piano 2", 7: "Clavinet", 24: "Acoustic Guitar (nylon)",
    25: "Acoustic Guitar (steel)", 26: "Electric Guitar (jazz)", 27: "Electric Guitar (clean)",
    28: "Electric Guitar (muted)", 29: "Overdriven Guitar", 30: "Distortion Guitar", 32: "Acoustic Bass",
    33: "Electric Bass (finger)", 34: "Electric Bass (pick)", 35: "Fretless Bass", 36: "Slap Bass 1",
    38: "Synth Bass 1", 39: "Synth Bass 2",
}
DRUM_KIT_NAMES = {0: "Standard", 8: "Room", 16: "Power", 24: "Electronic", 25: "TR-808", 32: "Jazz", 40: "Brush"}
PARTIAL_SUFFIX = ".partial"


def track_name(number: int) -> str:
    return f"Track{number:05d}"


def render_settings(seed: int, rate: int, seconds: float, audio_format: str, soundfont: str | Path,
                    arrangement: str = "full") -> dict:
    """What must match for an existing track folder to count as already rendered (the default arrangement
    is left out, so folders rendered before arrangements existed still match)."""
    settings = {"song_seed": int(seed), "rate": int(rate), "seconds": float(seconds), "format": audio_format,
                "soundfont": Path(soundfont).name, "generator_version": GENERATOR_VERSION}
    if arrangement != "full":
        settings["arrangement"] = arrangement
    return settings


def track_metadata(song: Song, rendered: RenderedSong, settings: dict, split: str) -> dict:
    """Slakh2100's metadata.yaml fields (stems with inst_class, program, is_drum) plus a `stemweave` block."""
    plan = song.plan
    stems = {}
    for stem in STEMS:
        program = plan.programs[stem]
        loudness = rendered.loudness[stem]
        stems[STEM_IDS[stem]] = {
            "audio_rendered": True,
            "inst_class": SLAKH_CLASSES[stem],
            "is_drum": stem == "drums",
            "midi_program_name": DRUM_KIT_NAMES[program] if stem == "drums" else GM_PROGRAM_NAMES[program],
            "program_num": program,
            "plugin_name": settings["soundfont"],
            "integrated_loudness": None if math.isinf(loudness) else round(loudness, 2),
            "active": bool(song.notes[stem]),
        }
    mixture_loudness = rendered.loudness["mixture"]
    return {
        "UUID": f"stemweave-{split}-{plan.seed}",
        "audio_dir": "stems",
        "midi_dir": "MIDI",
        "normalized": True,
        "target_peak": -1.0,
        "stems": stems,
        "stemweave": {
            **settings, "split": split, "frames": int(rendered.mixture.size),
            "render_seconds": round(rendered.render_seconds, 4),
            "render_cpu_seconds": round(rendered.render_cpu_seconds, 4), "tempo": round(plan.tempo, 3),
            "meter": plan.meter, "key": plan.key, "swing": round(plan.swing, 4),
            "mixture_loudness": None if math.isinf(mixture_loudness) else round(mixture_loudness, 2),
        },
    }


def to_yaml(mapping: dict) -> str:
    """metadata.yaml text (PyYAML, block style, keys in the order given, as Slakh2100 writes them)."""
    return yaml.safe_dump(mapping, sort_keys=False, default_flow_style=False, allow_unicode=True)


def parse_yaml(text: str) -> dict:
    """A metadata.yaml's mapping (PyYAML's safe loader: Slakh2100's files and ours); {} for an empty file."""
    data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("metadata.yaml must hold a mapping")
    return data


def read_metadata(track_dir: Path) -> dict:
    return parse_yaml((Path(track_dir) / "metadata.yaml").read_text())


def is_finished(track_dir: Path) -> bool:
    """A track folder is finished when it exists under its final name: folders are renamed into place whole."""
    return (Path(track_dir) / "metadata.yaml").is_file()


def write_track(out_dir: Path, name: str, song: Song, rendered: RenderedSong, metadata: dict,
                audio_format: str = "flac") -> Path:
    """Write a track into `<out_dir>/.<name>.partial`, then rename it to `<out_dir>/<name>` in one step, so an
    interrupted render never leaves a half-written track under the final name."""
    final = Path(out_dir) / name
    partial = Path(out_dir) / f".{name}{PARTIAL_SUFFIX}"
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "stems").mkdir(parents=True)
    (partial / "MIDI").mkdir()
    extension, container = audio_format, AUDIO_FORMATS[audio_format]
    for stem in STEMS:
        sf.write(partial / "stems" / f"{STEM_IDS[stem]}.{extension}", rendered.stems[stem], rendered.rate,
                 format=container, subtype="PCM_16")
        song_midi(song, (stem,)).save(partial / "MIDI" / f"{STEM_IDS[stem]}.mid")
    sf.write(partial / f"mix.{extension}", rendered.mixture, rendered.rate, format=container, subtype="PCM_16")
    song_midi(song).save(partial / "all_src.mid")
    (partial / "plan.json").write_text(json.dumps(song.plan.to_dict(), indent=1) + "\n")
    (partial / "metadata.yaml").write_text(to_yaml(metadata))
    os.rename(partial, final)  # atomic on one file system; fails if `final` exists
    return final
