"""SourceVAE reconstruction on a test split: SI-SDR and multi-scale mel distance per stem, and listening examples.

Each track's first `seconds` of every stem is encoded (posterior means, `encode_long`: chunked with context, as the
latent dataset is) and decoded back, then scored on non-overlapping `chunk_s` pieces (4 s, as the MSDM protocol's
windows); pieces whose reference is silent (the MSDM rule) are skipped. `stemweave vae evaluate` runs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from stemweave.engine.latent.vae import LossConfig, SourceVAE, multiscale_mel_loss
from stemweave.engine.metrics import is_silent, si_sdr

STEMS = ("bass", "drums", "guitar", "piano")


@torch.no_grad()
def reconstruct(vae: SourceVAE, audio: torch.Tensor) -> torch.Tensor:
    """(K, N) stems -> their (K, N) reconstructions through the posterior means."""
    from stemweave.engine.latent.train import encode_long

    z = torch.stack([encode_long(vae, a) for a in audio])  # (K, C, T)
    return vae.decode_latents(z, audio.shape[-1])


@torch.no_grad()
def evaluate_reconstruction(vae: SourceVAE, data: str | Path, stems: Sequence[str] = STEMS, tracks: int | None = None,
                            seconds: float | None = 12.0, chunk_s: float = 4.0, examples: str | Path | None = None,
                            example_tracks: int = 2, log=print) -> dict:
    """{"per_stem": {stem: {"si_sdr", "mel", "pieces"}}, "overall": {...}, "tracks", "seconds", "real_time_factor"}."""
    from stemweave.engine.data.datasets import _as_roots, list_tracks, read_window

    vae = vae.eval()
    found = [t for root in _as_roots(data) for t in list_tracks(root)][:tracks]
    if not found:
        raise ValueError(f"no tracks under {data}")
    losses = LossConfig()
    chunk = int(chunk_s * vae.rate)
    sdr: dict[str, list[float]] = {s: [] for s in stems}
    mel: dict[str, list[float]] = {s: [] for s in stems}
    spent, audio_seconds = 0.0, 0.0
    for i, track in enumerate(found):
        length = track.length_at(vae.rate)
        if seconds is not None:
            length = min(length, int(seconds * vae.rate))
        audio = torch.from_numpy(read_window(track, 0, length, stems, vae.rate))  # (K, N)
        piece = min(chunk, length)  # a track shorter than chunk_s is one piece
        began = time.perf_counter()
        recon = reconstruct(vae, audio)
        spent += time.perf_counter() - began
        audio_seconds += len(stems) * length / vae.rate
        for k, stem in enumerate(stems):
            for start in range(0, length - piece + 1, piece):
                reference, estimate = audio[k, start : start + piece], recon[k, start : start + piece]
                if is_silent(reference.numpy()):
                    continue
                sdr[stem].append(float(si_sdr(estimate.numpy(), reference.numpy())))
                mel[stem].append(float(multiscale_mel_loss(estimate[None], reference[None], vae.rate, losses)))
        if examples is not None and i < example_tracks:
            _write_examples(Path(examples), track.name, stems, audio.numpy(), recon.numpy(), vae.rate)
        log(f"[{i + 1}/{len(found)}] {track.name}")
    per_stem = {s: {"si_sdr": float(np.mean(sdr[s])) if sdr[s] else float("nan"),
                    "mel": float(np.mean(mel[s])) if mel[s] else float("nan"), "pieces": len(sdr[s])} for s in stems}
    every_sdr = [v for s in stems for v in sdr[s]]
    every_mel = [v for s in stems for v in mel[s]]
    return {"per_stem": per_stem,
            "overall": {"si_sdr": float(np.mean(every_sdr)), "mel": float(np.mean(every_mel)), "pieces": len(every_sdr)},
            "tracks": len(found), "seconds_per_track": seconds, "chunk_s": chunk_s,
            "real_time_factor": spent / max(audio_seconds, 1e-9)}


def _write_examples(folder: Path, name: str, stems, audio: np.ndarray, recon: np.ndarray, rate: int) -> None:
    from stemweave.engine.audio_io import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    tag = name.replace("/", "__")
    for k, stem in enumerate(stems):
        write_audio(folder / f"{tag}_{stem}_original.wav", audio[k][None], rate, format="wav", bit_depth="32f")
        write_audio(folder / f"{tag}_{stem}_reconstructed.wav", recon[k][None], rate, format="wav", bit_depth="32f")


def format_table(report: dict, stems: Sequence[str] = STEMS) -> str:
    head = "| | " + " | ".join(stems) + " | all |"
    rule = "|---|" + "---|" * (len(stems) + 1)
    sdr = "| SI-SDR (dB) | " + " | ".join(f"{report['per_stem'][s]['si_sdr']:.2f}" for s in stems) + \
        f" | {report['overall']['si_sdr']:.2f} |"
    mel = "| mel distance | " + " | ".join(f"{report['per_stem'][s]['mel']:.3f}" for s in stems) + \
        f" | {report['overall']['mel']:.3f} |"
    return "\n".join([head, rule, sdr, mel])


__all__ = ["evaluate_reconstruction", "format_table", "reconstruct"]
