"""Rendering a dataset split: fixed seed ranges per split, one track per song, resumable and parallel over processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from stemweave.engine.data.layout import (
    is_finished, read_metadata, render_settings, track_metadata, track_name, write_track,
)
from stemweave.engine.data.render import render_song
from stemweave.engine.data.songs import check_arrangement, make_song
from stemweave.engine.data.timbres import check_timbres

SPLITS = ("train", "valid", "test", "unseen")
SEEDS_PER_SPLIT = 1_000_000
# Song seeds: train 0..999999, valid 1000000..1999999, test 2000000..2999999, unseen 3000000..3999999 (never
# overlapping). The unseen split is rendered with the held-out timbres only (engine/data/timbres.py).
SPLIT_SEED_BASE = {split: index * SEEDS_PER_SPLIT for index, split in enumerate(SPLITS)}


class SettingsMismatch(ValueError):
    """An existing track folder was rendered with other settings than the ones asked for now."""


@dataclass(frozen=True)
class TrackJob:
    out_dir: Path
    number: int  # the track number within the split: TrackNNNNN
    split: str
    rate: int
    seconds: float
    audio_format: str
    soundfont: str
    arrangement: str = "full"
    timbres: str = "gm"  # "gm" (one soundfont), or a palette of engine/data/timbres.py
    effects: bool = False  # a producer's per-stem effects (engine/data/effects.py)

    @property
    def song_seed(self) -> int:
        return SPLIT_SEED_BASE[self.split] + self.number

    @property
    def name(self) -> str:
        return track_name(self.number)

    @property
    def settings(self) -> dict:
        settings = render_settings(self.song_seed, self.rate, self.seconds, self.audio_format, self.soundfont,
                                   self.arrangement)
        if self.timbres != "gm":  # left out by default, so folders rendered before timbres existed still match
            settings["timbres"] = self.timbres
            settings.pop("soundfont")
        if self.effects:
            settings["effects"] = "producer"
        return settings


@dataclass(frozen=True)
class TrackResult:
    name: str
    audio_seconds: float
    render_seconds: float  # 0 when the track was already there
    skipped: bool


def timbres_for(split: str, timbres: str) -> str:
    """The unseen split always uses the held-out palette; every other split may not (it would leak it)."""
    if split == "unseen":
        if timbres not in ("gm", "unseen"):
            raise ValueError(f"the unseen split is rendered with the held-out timbres only, not {timbres!r}")
        return "unseen"
    if timbres == "unseen":
        raise ValueError("the held-out timbres are for --split unseen only")
    return timbres


def check_seed_range(split: str, first: int, songs: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if first < 0 or songs < 0 or first + songs > SEEDS_PER_SPLIT:
        raise ValueError(f"track numbers {first}..{first + songs - 1} are outside 0..{SEEDS_PER_SPLIT - 1}")


def check_existing(job: TrackJob) -> bool:
    """True if the track is already rendered with the same settings; SettingsMismatch if with others."""
    folder = job.out_dir / job.name
    if not is_finished(folder):
        return False
    existing = read_metadata(folder).get("stemweave", {})
    wanted = job.settings
    different = {key: (existing.get(key), value) for key, value in wanted.items() if existing.get(key) != value}
    if different:
        detail = ", ".join(f"{key} {old!r} there, {new!r} asked" for key, (old, new) in different.items())
        raise SettingsMismatch(f"{folder} was rendered with other settings ({detail}); "
                               "render into another --out folder or delete it")
    return True


def render_track(job: TrackJob) -> TrackResult:
    """Render one song into its track folder unless it is already there (written atomically)."""
    if check_existing(job):
        return TrackResult(job.name, sf.info(str(job.out_dir / job.name / f"mix.{job.audio_format}")).duration,
                           0.0, True)
    song = make_song(job.song_seed, job.seconds, job.arrangement)
    rendered = render_song(song, job.rate, job.soundfont, timbres=job.timbres, effects=job.effects)
    settings = job.settings
    metadata = track_metadata(song, rendered, {"soundfont": Path(job.soundfont).name} | settings, job.split)
    for stem_id, source in zip(metadata["stems"], rendered.sources.values()):
        metadata["stems"][stem_id]["plugin_name"] = source  # which font or kit played it
    if rendered.effects:
        metadata["stemweave"]["effect_chains"] = {stem: [name for name, _ in chain]
                                                  for stem, chain in rendered.effects.items()}
    write_track(job.out_dir, job.name, song, rendered, metadata, job.audio_format)
    return TrackResult(job.name, rendered.seconds, rendered.render_seconds, False)


def plan_jobs(out_dir: Path, split: str, first: int, songs: int, rate: int, seconds: float, audio_format: str,
              soundfont: str, arrangement: str = "full", timbres: str = "gm", effects: bool = False) -> list[TrackJob]:
    """The jobs for tracks first..first+songs-1 of a split; raises SettingsMismatch before any work is done
    if the folder already holds one of them rendered otherwise."""
    check_seed_range(split, first, songs)
    check_arrangement(arrangement)
    timbres = timbres_for(split, timbres)
    check_timbres(timbres)
    jobs = [TrackJob(Path(out_dir), first + i, split, rate, seconds, audio_format, soundfont, arrangement, timbres,
                     effects) for i in range(songs)]
    for job in jobs:
        check_existing(job)
    return jobs


def render_jobs(todo: list[TrackJob], processes: int = 1) -> Iterator[TrackResult]:
    """Render the jobs, yielding each result as it finishes (in any order with several processes)."""
    if processes <= 1 or len(todo) <= 1:
        for job in todo:
            yield render_track(job)
        return
    with ProcessPoolExecutor(max_workers=min(processes, len(todo))) as pool:
        futures = [pool.submit(render_track, job) for job in todo]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def render_example(path: Path, seconds: float = 12.0, seed: int = 0, rate: int = 22_050,
                   soundfont: str | None = None) -> float:
    """Write one rendered mixture (training song `seed`, `seconds` long) to `path`; returns its duration."""
    path = Path(path)
    container = audio_container(path)
    song = make_song(SPLIT_SEED_BASE["train"] + seed, seconds)
    rendered = render_song(song, rate, soundfont)
    partial = path.with_name(f".{path.name}.partial")
    sf.write(str(partial), rendered.mixture, rate, subtype="PCM_16", format=container)
    os.replace(partial, path)
    return rendered.seconds


def audio_container(path: Path) -> str:
    """soundfile's container name from the file extension (16-bit PCM containers only)."""
    extension = Path(path).suffix.lower().lstrip(".")
    formats = {"wav": "WAV", "flac": "FLAC"}
    if extension not in formats:
        raise ValueError(f"unsupported audio file extension {path.suffix!r}: use .wav or .flac")
    return formats[extension]
