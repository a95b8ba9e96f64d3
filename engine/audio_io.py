"""Reading and writing audio files: validated float32 (channels, frames) in, atomic WAV/FLAC writes out."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from stemweave.engine.resample import check_rate

READ_FORMATS = ("WAV", "FLAC", "AIFF", "OGG")  # soundfile major formats accepted (MP3 where libsndfile has it too)
WRITE_FORMATS = ("wav", "flac")
BIT_DEPTHS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}
MAX_CHANNELS = 2
# The largest sample magnitude any task takes (+80 dBFS): far beyond a mix's headroom, and small enough that the
# engine's float32 arithmetic stays finite (samples near 1e19 came back as NaN stems). The server uses it too.
MAX_PEAK = 1e4


class AudioError(ValueError):
    """A file the user gave cannot be used; the message says what to do."""


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(audio float32 (channels, frames) in [-1, 1] for PCM, rate) from a WAV/FLAC/AIFF/OGG file, validated."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise AudioError(f"{path}: not readable (check its permissions)")
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels = f.samplerate, f.channels
            audio = f.read(dtype="float32", always_2d=True).T  # (channels, frames)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(f"{path}: not a readable audio file (WAV, FLAC, AIFF or OGG): {error}") from None
    return check_audio_file(path, audio, rate, channels), rate


def check_audio_file(path, audio: np.ndarray, rate: int, channels: int) -> np.ndarray:
    if channels > MAX_CHANNELS:
        raise AudioError(f"{path}: {channels} channels; stemweave takes mono or stereo: downmix it or split it into "
                         f"stereo files first (e.g. `sox in.wav out.wav remix 1 2`)")
    if audio.shape[1] == 0:
        raise AudioError(f"{path}: zero length (no audio frames)")
    try:
        check_rate(rate)
    except ValueError as error:
        raise AudioError(f"{path}: {error}") from None
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: contains NaN or infinite samples; re-export it from the DAW")
    peak = float(np.abs(audio).max(initial=0.0))
    if peak > MAX_PEAK:
        raise AudioError(f"{path}: samples reach {peak:.3g}; stemweave takes at most {MAX_PEAK:g} (+80 dBFS): "
                         "normalise it (float audio is normally within [-1, 1])")
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_output_dir(folder: str | os.PathLike) -> Path:
    """Prove `folder` can be written (or created) before any work starts, without writing anything; AudioError if not.

    The folder itself is created only when the first output is written (`write_audio` / `write_json`).
    """
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise AudioError(f"output folder {folder}: {existing} is a file, not a folder")
    where = "" if existing == folder else f" (it would be created in {existing}, which is not writable)"
    try:
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".stemweave-probe-"):
            pass  # os.access says yes to root everywhere; a probe file (removed at once) tells the truth
    except OSError:
        raise AudioError(f"output folder {folder} is not writable{where}: choose another -o folder") from None
    return folder


def subtype_for(format: str, bit_depth: str) -> str:
    if format not in WRITE_FORMATS:
        raise AudioError(f"unknown output format {format!r}: choose one of {', '.join(WRITE_FORMATS)}")
    if bit_depth not in BIT_DEPTHS:
        raise AudioError(f"unknown bit depth {bit_depth!r}: choose one of {', '.join(BIT_DEPTHS)}")
    if format == "flac" and bit_depth == "32f":
        raise AudioError("FLAC stores 16 or 24-bit integers only: use --bit-depth 16|24, or --format wav for 32f")
    return BIT_DEPTHS[bit_depth]


def write_audio(path: str | os.PathLike, audio: np.ndarray, rate: int, format: str = "wav", bit_depth: str = "24") -> Path:
    """Write float (channels, frames) atomically (a temp file in the same folder, then os.replace).

    Integer depths clip to [-1, 1) (a stem may exceed full scale even when the mix does not: prefer 32f then).
    """
    path = Path(path)
    subtype = subtype_for(format, bit_depth)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    if subtype != "FLOAT":
        audio = np.clip(audio, -1.0, 1.0)
    return atomic_write(path, lambda tmp: sf.write(tmp, audio.T, int(rate), subtype=subtype, format=format.upper()))


def write_json(path: str | os.PathLike, data) -> Path:
    """Write `data` as indented JSON atomically."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Run `write(tmp)` on a temporary file in path's folder, then rename it over `path` (atomic on POSIX): a
    reader never sees half a file, and an interrupted write leaves the old one. The file gets the usual
    permissions (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
