"""Training and evaluation data: stem windows streamed from Slakh2100-style, real Slakh2100 and MUSDB18-HQ folders."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import IterableDataset, get_worker_info

from stemweave.engine.data.augment import AUGMENT_GAIN_DB, gain_and_polarity, remix
from stemweave.engine.data.layout import parse_yaml
from stemweave.engine.data.loudness import is_silent
from stemweave.engine.resample import resample

STEMS = ("bass", "drums", "guitar", "piano")
MUSDB_STEMS = ("bass", "drums", "other", "vocals")
NAMED_STEM_FILES = ("bass", "drums", "guitar", "piano", "other", "vocals")  # <stem>.wav / <stem>.flac layouts
AUDIO_EXTENSIONS = (".flac", ".wav")
MAX_DRAWS_PER_WINDOW = 1000  # min_active_stems gives up after this many rejected windows in a row
RESAMPLE_MARGIN = 64  # extra source frames each side when a window is resampled on the fly


@dataclass(frozen=True)
class Track:
    """One multi-track song: the files that make up each stem (summed when a class has several)."""

    name: str
    path: Path
    rate: int
    frames: int  # at `rate`, the longest stem file
    sources: dict[str, tuple[Path, ...]] = field(hash=False)
    mixture: Path | None = None

    def length_at(self, rate: int) -> int:
        return self.frames * rate // self.rate


def stem_name_of_class(inst_class: str) -> str:
    """Slakh2100 instrument class -> stem name: 'Bass' -> 'bass', 'Synth Lead' -> 'synth_lead'."""
    return str(inst_class).strip().lower().replace(" ", "_")


def _first_existing(folder: Path, stem: str) -> Path | None:
    for extension in AUDIO_EXTENSIONS:
        if (folder / f"{stem}{extension}").is_file():
            return folder / f"{stem}{extension}"
    return None


def _slakh_sources(folder: Path) -> dict[str, list[Path]] | None:
    """Stems of a Slakh2100-style folder from metadata.yaml (inst_class per S00.. file), or None if not one."""
    metadata_file = folder / "metadata.yaml"
    if not metadata_file.is_file():
        return None
    metadata = parse_yaml(metadata_file.read_text())
    stems = metadata.get("stems")
    if not isinstance(stems, dict):
        return None
    audio_dir = folder / str(metadata.get("audio_dir") or "stems")
    sources: dict[str, list[Path]] = {}
    for stem_id, info in stems.items():
        if not isinstance(info, dict) or info.get("audio_rendered") is False or "inst_class" not in info:
            continue
        path = _first_existing(audio_dir, str(stem_id))
        if path is not None:
            sources.setdefault(stem_name_of_class(info["inst_class"]), []).append(path)
    return sources


def _named_sources(folder: Path) -> dict[str, list[Path]] | None:
    """Stems of a MUSDB18-HQ-style folder (bass.wav, drums.wav, other.wav, vocals.wav, ...), or None."""
    sources = {stem: [path] for stem in NAMED_STEM_FILES if (path := _first_existing(folder, stem)) is not None}
    return sources or None


def _make_track(folder: Path, name: str) -> Track | None:
    sources = _slakh_sources(folder)
    mixture = _first_existing(folder, "mix")
    if sources is None:
        sources = _named_sources(folder)
        mixture = _first_existing(folder, "mixture")
    if not sources:
        return None
    infos = {path: sf.info(str(path)) for paths in sources.values() for path in paths}
    rates = {info.samplerate for info in infos.values()}
    if len(rates) != 1:
        raise ValueError(f"{folder}: stems have different sample rates {sorted(rates)}")
    frames = max(info.frames for info in infos.values())
    return Track(name, folder, rates.pop(), frames, {k: tuple(v) for k, v in sources.items()}, mixture)


def list_tracks(root: str | Path) -> list[Track]:
    """Every track under `root` (itself a track folder, a split folder, or a whole dataset), sorted by name.
    A track folder is a Slakh2100-style one (metadata.yaml with stems, audio in stems/) or a MUSDB18-HQ-style
    one (<stem>.wav files). Names are paths relative to `root` ('Track00001', 'test/Song Name')."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    tracks = []
    for folder, subfolders, _ in os.walk(root):
        folder_path = Path(folder)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        name = folder_path.relative_to(root).as_posix()
        track = _make_track(folder_path, folder_path.name if name == "." else name)
        if track is not None:
            tracks.append(track)
            subfolders[:] = []  # a track's own stems/ and MIDI/ folders are not tracks
    return sorted(tracks, key=lambda t: t.name)


def _as_roots(roots: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(roots, (str, Path)):
        return [Path(roots)]
    return [Path(r) for r in roots]


def _read_mono(path: Path, start: int, frames: int) -> np.ndarray:
    """`frames` samples from `start` (zeros outside the file), channels averaged; seeks, never reads it all."""
    out = np.zeros(frames, np.float32)
    with sf.SoundFile(str(path)) as audio:
        first, last = max(start, 0), min(start + frames, audio.frames)
        if last > first:
            audio.seek(first)
            data = audio.read(last - first, dtype="float32", always_2d=True)
            out[first - start:first - start + data.shape[0]] = data.mean(axis=1)
    return out


def read_window(track: Track, offset: int, window: int, stems: Sequence[str] = STEMS,
                rate: int = 22_050) -> np.ndarray:
    """(K, window) float32 of the track's stems from `offset` (samples at `rate`); missing stems are zeros.
    Files at another rate are read around the window and resampled, the same way for every stem."""
    out = np.zeros((len(stems), window), np.float32)
    same_rate = track.rate == rate
    ratio = track.rate / rate
    start = offset if same_rate else math.floor(offset * ratio) - RESAMPLE_MARGIN
    frames = window if same_rate else math.ceil(window * ratio) + 2 * RESAMPLE_MARGIN
    for k, stem in enumerate(stems):
        for path in track.sources.get(stem, ()):
            audio = _read_mono(path, start, frames)
            if not same_rate:
                audio = resample(audio, track.rate, rate)
                lead = round(RESAMPLE_MARGIN / ratio)
                audio = audio[lead:lead + window]
            out[k, :audio.size] += audio[:window]
    return out


def mixture_captions(chunk, stems: Sequence[str] = STEMS) -> list[str]:
    """The names of the stems that are not silent in a (K, window) chunk (MSDM silence rule), in stem order:
    the labels of a GMSDI mixture caption."""
    chunk = chunk.detach().cpu().numpy() if isinstance(chunk, torch.Tensor) else np.asarray(chunk)
    return [stem for stem, audio in zip(stems, chunk) if not is_silent(audio)]


def count_active_stems(chunk: np.ndarray) -> int:
    return sum(not is_silent(audio) for audio in chunk)


class StemChunks(IterableDataset):
    """An endless stream of (K, window) float32 stem windows at random offsets, streamed from disk.

    Tracks are drawn in proportion to their length, so every second of audio is equally likely. With
    `augment`, each stem gets its own gain (-6..+2 dB) and polarity; stems are never shifted in time against
    each other. `min_active_stems` redraws windows with fewer non-silent stems. Each DataLoader worker draws
    its own stream from (seed, worker id, epoch); `set_epoch` changes the stream between epochs.
    `remix` (0..1) is the share of windows whose stems are each drawn from their own random song and offset
    (engine/data/augment.py): for separators only, as remixed stems do not play together.
    """

    def __init__(self, roots: str | Path | list, window: int, stems: tuple[str, ...] = STEMS, rate: int = 22050,
                 augment: bool = False, seed: int = 0, min_active_stems: int = 0, remix: float = 0.0):
        super().__init__()
        if int(window) <= 0:
            raise ValueError(f"window must be a positive number of samples, got {window}")
        if not 0 <= min_active_stems <= len(stems):
            raise ValueError(f"min_active_stems must be between 0 and {len(stems)}, got {min_active_stems}")
        self.roots = _as_roots(roots)
        self.window, self.stems, self.rate = int(window), tuple(stems), int(rate)
        if not 0.0 <= float(remix) <= 1.0:
            raise ValueError(f"remix is a probability between 0 and 1, got {remix}")
        self.augment, self.seed, self.min_active_stems = augment, int(seed), int(min_active_stems)
        self.remix = float(remix)
        self.epoch = 0
        self.tracks = [track for root in self.roots for track in list_tracks(root)]
        if not self.tracks:
            raise ValueError(f"no tracks found in {', '.join(map(str, self.roots))}")
        lengths = np.array([max(t.length_at(self.rate) - self.window, 0) + 1 for t in self.tracks], np.float64)
        self.track_weights = lengths / lengths.sum()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def draw_window(self, rng: np.random.Generator) -> np.ndarray:
        """One (K, window) window, redrawn until at least `min_active_stems` stems are non-silent."""
        for _ in range(MAX_DRAWS_PER_WINDOW):
            if self.remix > 0 and rng.random() < self.remix:
                chunk = remix(self._draw_stem, len(self.stems), rng)
            else:
                track, offset = self._draw_place(rng)
                chunk = read_window(track, offset, self.window, self.stems, self.rate)
            if self.min_active_stems == 0 or count_active_stems(chunk) >= self.min_active_stems:
                return self.augmented(chunk, rng) if self.augment else chunk
        raise RuntimeError(f"no window with {self.min_active_stems} non-silent stems in {MAX_DRAWS_PER_WINDOW} "
                           f"draws from {', '.join(map(str, self.roots))}: lower min_active_stems")

    def _draw_place(self, rng: np.random.Generator) -> tuple[Track, int]:
        track = self.tracks[rng.choice(len(self.tracks), p=self.track_weights)]
        return track, int(rng.integers(0, max(track.length_at(self.rate) - self.window, 0) + 1))

    def _draw_stem(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """Stem k alone from a random place (the remix's source of each stem)."""
        track, offset = self._draw_place(rng)
        return read_window(track, offset, self.window, (self.stems[k],), self.rate)[0]

    def augmented(self, chunk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per-stem gain and polarity; the same for the whole window, so the stems stay aligned and coherent."""
        return gain_and_polarity(chunk, rng)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, worker.id if worker else 0, self.epoch])
        while True:
            yield torch.from_numpy(self.draw_window(rng))  # (K, window) float32


def fixed_windows(roots: str | Path | list, window: int, hop: int | None = None, stems: tuple[str, ...] = STEMS,
                  rate: int = 22050) -> Iterator[tuple[str, int, np.ndarray]]:
    """Deterministic evaluation windows: for each track in name order, (track name, offset, (K, window) array)
    at offsets 0, hop, 2 hop, ... (hop defaults to window); the tail shorter than a window is dropped, as in
    MSDM's evaluation."""
    hop = int(hop or window)
    if window <= 0 or hop <= 0:
        raise ValueError("window and hop must be positive")
    for root in _as_roots(roots):
        for track in list_tracks(root):
            for offset in range(0, track.length_at(rate) - window + 1, hop):
                yield track.name, offset, read_window(track, offset, window, stems, rate)
