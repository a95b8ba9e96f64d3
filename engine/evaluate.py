"""Evaluation: the MSDM separation protocol over a test split for any separator, and generation statistics.

Separation follows reference-notes.md: each test track is cut into
non-overlapping model windows (the tail dropped), separated, concatenated,
then scored by SI-SDRi on 4 s windows with a 2 s hop (engine/metrics.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from stemweave.engine.baselines import classical_split, oracle_ratio_mask
from stemweave.engine.metrics import is_silent, msdm_protocol

# A method separates a batch of windows: (mixtures (B, T), references (B, K, T)) -> estimates (B, K, T).
# Only the oracle looks at the references.
Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class SeparationReport:
    method: str
    stems: tuple[str, ...]
    scores: np.ndarray  # (scored windows, K) SI-SDRi in dB
    seconds: float  # wall time spent in the method
    audio_seconds: float  # audio separated
    evaluations: int | None = None  # network evaluations per window
    extra: dict = field(default_factory=dict)

    @property
    def per_stem(self) -> dict[str, float]:
        return {s: float(v) for s, v in zip(self.stems, self.scores.mean(0))} if len(self.scores) else {}

    @property
    def overall(self) -> float:
        return float(self.scores.mean()) if len(self.scores) else float("nan")

    @property
    def real_time_factor(self) -> float:
        return self.seconds / max(self.audio_seconds, 1e-9)

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "si_sdri": self.per_stem,
            "overall": self.overall,
            "windows_scored": int(len(self.scores)),
            "evaluations_per_window": self.evaluations,
            "real_time_factor": self.real_time_factor,
            "seconds_per_12s": 12 * self.real_time_factor,
            **self.extra,
        }


def test_tracks(
    roots, window: int, stems: tuple[str, ...], rate: int, tracks: int | None = None, seconds: float | None = None
) -> list[tuple[str, np.ndarray]]:
    """(name, references (K, T)) per track: whole model windows, at most `seconds` from the start of each track."""
    from stemweave.engine.data.datasets import fixed_windows

    limit = None if seconds is None else max(1, int(seconds * rate) // window)
    out = []
    for name, chunks in groupby(fixed_windows(roots, window, stems=stems, rate=rate), key=lambda item: item[0]):
        arrays = [chunk for _, _, chunk in chunks][:limit]
        out.append((name, np.concatenate(arrays, axis=-1)))
        if tracks is not None and len(out) >= tracks:
            break
    if not out:
        raise ValueError(f"no test track of at least one {window}-sample window under {roots}")
    return out


def evaluate_separation(
    name: str,
    method: Method,
    tracks: list[tuple[str, np.ndarray]],
    window: int,
    rate: int,
    stems: tuple[str, ...],
    batch: int = 8,
    evaluations: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SeparationReport:
    """Score `method` on the tracks under the MSDM protocol."""
    scores, spent, audio = [], 0.0, 0.0
    for index, (_, references) in enumerate(tracks):
        chunks = references.reshape(len(stems), -1, window).transpose(1, 0, 2)  # (windows, K, window)
        estimates = []
        for start in range(0, len(chunks), batch):
            refs = chunks[start : start + batch]
            began = time.perf_counter()
            estimates.append(np.asarray(method(refs.sum(1), refs), dtype=np.float32))
            spent += time.perf_counter() - began
        estimate = np.concatenate(estimates).transpose(1, 0, 2).reshape(len(stems), -1)
        audio += references.shape[-1] / rate
        scores.append(msdm_protocol(estimate, references, rate))
        if progress:
            progress(index + 1, len(tracks))
    return SeparationReport(name, stems, np.concatenate(scores), spent, audio, evaluations)


# Methods ----------------------------------------------------------------------


def mixture_method(mixtures: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Every stem estimated as the mixture: 0 dB SI-SDRi by definition."""
    return np.repeat(mixtures[:, None], references.shape[1], axis=1)


def oracle_method(mixtures: np.ndarray, references: np.ndarray) -> np.ndarray:
    return np.stack([oracle_ratio_mask(m, r) for m, r in zip(mixtures, references)])


def classical_method(rate: int, stems: tuple[str, ...]) -> Method:
    return lambda mixtures, references: np.stack([classical_split(m, rate, stems) for m in mixtures])


def regression_method(separator, device="cpu") -> Method:
    @torch.no_grad()
    def separate(mixtures: np.ndarray, references: np.ndarray) -> np.ndarray:
        return separator(torch.from_numpy(mixtures)[:, None].to(device)).cpu().numpy()

    return separate


def prior_method(prior, preset, seed: int = 0, first_estimate: Method | None = None, device="cpu") -> Method:
    """Separation with a prior and a preset; with `first_estimate`, a warm start from it (SDEdit, issue 13)."""
    from stemweave.engine.tasks import separate

    calls = iter(range(1 << 30))

    def run(mixtures: np.ndarray, references: np.ndarray) -> np.ndarray:
        generator = torch.Generator().manual_seed(seed + next(calls))
        initial = None
        if first_estimate is not None:
            initial = torch.from_numpy(first_estimate(mixtures, references)).to(device)
        y = torch.from_numpy(mixtures).to(device)
        return separate(prior, y, preset, initial=initial, generator=generator).cpu().numpy()

    return run


# Generation statistics -----------------------------------------------------------


def mel_filterbank(rate: int, n_fft: int = 1024, bands: int = 64, fmin: float = 30.0) -> np.ndarray:
    """Triangular mel filters (bands, n_fft // 2 + 1), HTK mel scale."""
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(rate / 2), bands + 2))
    freqs = np.fft.rfftfreq(n_fft, 1 / rate)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
    falling = (edges[2:, None] - freqs[None]) / (edges[2:, None] - edges[1:-1, None])
    return np.maximum(0, np.minimum(rising, falling))


def log_mel_frames(audio: np.ndarray, rate: int, n_fft: int = 1024, hop: int = 512) -> np.ndarray:
    """Log-mel feature vectors (frames, 64) of a batch of mono clips (B, T): the embedding for the Fréchet distance."""
    from scipy.signal import stft

    if audio.shape[-1] < n_fft:  # short clips: the largest power-of-two frame that fits
        n_fft = 1 << int(np.log2(audio.shape[-1]))
        hop = n_fft // 2
    spec = np.abs(stft(audio, nperseg=n_fft, noverlap=n_fft - hop, boundary=None)[2]) ** 2  # (B, F, N)
    mel = np.einsum("mf,bfn->bnm", mel_filterbank(rate, n_fft), spec)
    return np.log(mel + 1e-6).reshape(-1, mel.shape[-1])


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussian fits of two feature sets (FAD's formula)."""
    from scipy.linalg import sqrtm

    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a, cov_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    root = sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def silent_share(stems: np.ndarray) -> np.ndarray:
    """Share of generated clips whose stem is silent under the MSDM rule, per stem: stems (B, K, T) -> (K,)."""
    return is_silent(stems).mean(0)


def write_report(path: str | Path, reports: list[SeparationReport], meta: dict) -> None:
    import json

    Path(path).write_text(json.dumps({**meta, "results": [r.as_dict() for r in reports]}, indent=2))


def generation_subsets(stems: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset of stems to generate, smallest first (MSDM Table 2: 14 for four stems, plus all four)."""
    from itertools import combinations

    return [combo for size in range(1, len(stems) + 1) for combo in combinations(stems, size)]


@dataclass
class GenerationReport:
    generated: tuple[str, ...]
    frechet: float  # of (given + generated) mixtures vs the real mixtures
    silent: dict[str, float]  # share of silent generated stems (MSDM rule)
    seconds: float
    clips: int

    def as_dict(self) -> dict:
        return {"generated": list(self.generated), "frechet": self.frechet, "silent": self.silent,
                "seconds": self.seconds, "clips": self.clips}


def evaluate_generation(
    prior, windows: np.ndarray, preset, rate: int, subsets: list[tuple[str, ...]], batch: int = 8, seed: int = 0,
    keep: Callable[[tuple[str, ...], np.ndarray, np.ndarray], None] | None = None,
) -> list[GenerationReport]:
    """For each subset: generate it given the other stems of real windows (K, T) (all of them: total generation),
    and compare the resulting mixtures to the real ones by the Fréchet distance of log-mel frames."""
    from stemweave.engine.latent.prior import waveform_task

    # the waveform tasks for msdm / isdm priors; MSLDM's encode / sample latents / decode wrappers for a LatentPrior
    generate, accompany = waveform_task(prior, "generate"), waveform_task(prior, "accompany")
    stems = tuple(prior.stems)
    real = log_mel_frames(windows.sum(1), rate)
    reports = []
    for subset in subsets:
        unknown = torch.tensor([s in subset for s in stems])
        outputs, began = [], time.perf_counter()
        for start in range(0, len(windows), batch):
            given = torch.from_numpy(windows[start : start + batch])
            generator = torch.Generator().manual_seed(seed + start)
            if bool(unknown.all()):
                out = generate(prior, len(given), given.shape[-1], preset.sampler, generator=generator)
            else:
                out = accompany(prior, given, ~unknown[None, :, None], preset.sampler,
                                guidance=preset.options.get("guidance", 0.0), generator=generator)
            outputs.append(out.cpu().numpy())
        result = np.concatenate(outputs)
        index = [stems.index(s) for s in subset]
        reports.append(GenerationReport(
            subset, frechet_distance(log_mel_frames(result.sum(1), rate), real),
            {s: float(v) for s, v in zip(subset, silent_share(result[:, index]))},
            time.perf_counter() - began, len(result)))
        if keep is not None:
            keep(subset, result, windows)
    return reports
