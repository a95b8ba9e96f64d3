"""Separation metrics: SI-SDR, its improvement over the mixture, and the MSDM evaluation protocol."""

from __future__ import annotations

import numpy as np

EPS = 1e-8
SILENCE_THRESHOLD = 1.5e-5  # ||s||_2 / N below this is silent (reference-notes.md)


def si_sdr(estimate: np.ndarray, reference: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Scale-invariant SDR in dB over the last axis (no mean removal, as in the MSDM reference)."""
    estimate, reference = np.asarray(estimate, np.float64), np.asarray(reference, np.float64)
    alpha = ((estimate * reference).sum(-1, keepdims=True) + eps) / ((reference**2).sum(-1, keepdims=True) + eps)
    target = alpha * reference
    noise = target - estimate
    return 10 * np.log10(((target**2).sum(-1) + eps) / ((noise**2).sum(-1) + eps))


def si_sdr_improvement(estimate: np.ndarray, reference: np.ndarray, mixture: np.ndarray) -> np.ndarray:
    """SI-SDR(estimate, reference) - SI-SDR(mixture, reference); mixture broadcasts over stems."""
    mixture = np.broadcast_to(mixture, np.shape(reference))
    return si_sdr(estimate, reference) - si_sdr(mixture, reference)


def is_silent(signal: np.ndarray) -> np.ndarray:
    """The MSDM silence rule over the last axis: ||s||_2 / N < 1.5e-5."""
    signal = np.asarray(signal, np.float64)
    return np.linalg.norm(signal, axis=-1) / signal.shape[-1] < SILENCE_THRESHOLD


def protocol_windows(length: int, rate: int, seconds: float = 4.0, hop_seconds: float = 2.0) -> list[slice]:
    """The MSDM protocol's 4 s windows with a 2 s hop (a tail shorter than a window is dropped)."""
    size, hop = int(seconds * rate), int(hop_seconds * rate)
    return [slice(start, start + size) for start in range(0, length - size + 1, hop)]


def msdm_protocol(estimates: np.ndarray, references: np.ndarray, rate: int) -> np.ndarray:
    """Per-window SI-SDRi (windows, K) of one track under the MSDM protocol.

    estimates, references: (K, time). The mixture is the sum of the
    references. A window is kept only if at least two reference stems are
    non-silent; in a kept window every stem is scored.
    """
    estimates, references = np.asarray(estimates), np.asarray(references)
    if estimates.shape != references.shape:
        raise ValueError(f"estimates {estimates.shape} and references {references.shape} differ")
    mixture = references.sum(0)
    rows = []
    for window in protocol_windows(references.shape[-1], rate):
        ref = references[:, window]
        if (~is_silent(ref)).sum() < 2:
            continue
        rows.append(si_sdr_improvement(estimates[:, window], ref, mixture[window]))
    return np.array(rows).reshape(-1, references.shape[0])
