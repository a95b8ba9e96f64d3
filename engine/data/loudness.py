"""Integrated loudness (ITU-R BS.1770 K-weighting and gating) and the MSDM silence rule for stems."""

from __future__ import annotations

import math

import numpy as np
import scipy.signal

SILENCE_THRESHOLD = 1.5e-5  # MSDM evaluation: silent when ||s||_2 / N < 1.5e-5


def is_silent(audio: np.ndarray) -> bool:
    """MSDM's silence rule on one stem window: the L2 norm divided by the number of samples is below 1.5e-5."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    return audio.size == 0 or float(np.linalg.norm(audio)) / audio.size < SILENCE_THRESHOLD


def k_weighting(rate: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two BS.1770 pre-filters (high shelf, then high pass) as (b, a) biquads for `rate`."""
    # Shelf: +4 dB above ~1.7 kHz (head effect); high pass ~38 Hz (RLB curve). Analogue parameters from BS.1770.
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = math.tan(math.pi * f0 / rate)
    vh = 10 ** (gain_db / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    shelf = (np.array([vh + vb * k / q + k * k, 2 * (k * k - vh), vh - vb * k / q + k * k]) / a0,
             np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    f0, q = 38.13547087602444, 0.5003270373238773
    k = math.tan(math.pi * f0 / rate)
    a0 = 1 + k / q + k * k
    highpass = (np.array([1.0, -2.0, 1.0]), np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0]))
    return [shelf, highpass]


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """Gated integrated loudness of mono audio in LUFS (-inf for silence): 400 ms blocks, 75% overlap,
    an absolute gate at -70 LUFS and a relative gate 10 LU below the absolutely gated level."""
    sos = np.concatenate([np.concatenate([b, a])[None] for b, a in k_weighting(rate)])
    weighted = scipy.signal.sosfilt(sos, np.asarray(audio, dtype=np.float64).reshape(-1))
    block, hop = int(0.4 * rate), int(0.1 * rate)
    if weighted.size < block:
        weighted = np.pad(weighted, (0, block - weighted.size))
    power = np.concatenate([[0.0], np.cumsum(weighted**2)])
    starts = np.arange(0, weighted.size - block + 1, hop)
    mean_square = (power[starts + block] - power[starts]) / block
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10 * np.log10(mean_square)
    gated = mean_square[block_loudness > -70.0]
    if gated.size == 0:
        return -math.inf
    relative_gate = -0.691 + 10 * math.log10(gated.mean()) - 10.0
    gated = mean_square[block_loudness > max(-70.0, relative_gate)]
    return -0.691 + 10 * math.log10(gated.mean())
