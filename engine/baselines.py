"""Training-free reference separators for evaluation: the oracle ratio mask and a classical HPSS split.

Both are STFT masks that sum to one at every bin, so their stems sum to the
mixture (up to the STFT round trip).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter
from scipy.signal import istft, stft

N_FFT, HOP = 2048, 512


def _stft(x: np.ndarray) -> np.ndarray:
    return stft(x, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary="even", padded=True)[2]


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    out = istft(spec, nperseg=N_FFT, noverlap=N_FFT - HOP, boundary=True)[1]
    return np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, max(0, length - out.shape[-1]))])[..., :length].astype(np.float32)


def oracle_ratio_mask(mixture: np.ndarray, references: np.ndarray) -> np.ndarray:
    """The ideal ratio mask |S_k|^2 / sum_j |S_j|^2 applied to the mixture: an upper reference.

    mixture (T,), references (K, T) -> (K, T).
    """
    power = np.abs(_stft(references)) ** 2  # (K, F, N)
    mask = power / (power.sum(0, keepdims=True) + 1e-12)
    return _istft(mask * _stft(mixture)[None], mixture.shape[-1])


def classical_split(mixture: np.ndarray, rate: int, stems: tuple[str, ...], bass_cutoff: float = 180.0) -> np.ndarray:
    """Harmonic/percussive separation (median filtering) plus a low-pass split, knowing nothing about the stems.

    drums = the percussive part; bass = the harmonic part below `bass_cutoff`;
    the harmonic rest is shared equally by the other stems (it cannot tell a
    guitar from a piano). mixture (T,) -> (K, T) in `stems` order.
    """
    spec = _stft(mixture)  # (F, N)
    magnitude = np.abs(spec)
    harmonic = median_filter(magnitude, size=(1, 17))  # smooth along time
    percussive = median_filter(magnitude, size=(17, 1))  # smooth along frequency
    percussive_mask = percussive**2 / (harmonic**2 + percussive**2 + 1e-12)
    freqs = np.fft.rfftfreq(N_FFT, 1 / rate)[:, None]
    low = 1 / (1 + (freqs / bass_cutoff) ** 8)  # a smooth crossover
    masks = {"drums": percussive_mask, "bass": (1 - percussive_mask) * low}
    rest = [s for s in stems if s not in masks]
    for stem in rest:
        masks[stem] = (1 - percussive_mask) * (1 - low) / len(rest)
    return _istft(np.stack([masks.get(s, np.zeros_like(low)) * spec for s in stems]), mixture.shape[-1])
