"""Sample-rate conversion with a high-quality polyphase/sinc resampler (soxr), no torchaudio."""

from __future__ import annotations

import numpy as np
import soxr

MIN_RATE, MAX_RATE = 1_000, 768_000


def check_rate(rate: int) -> int:
    """Return `rate` as an int, or raise ValueError saying what rates are supported."""
    if int(rate) != rate or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"unsupported sample rate {rate!r}: use an integer rate between {MIN_RATE} and {MAX_RATE} Hz")
    return int(rate)


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample float audio shaped (..., time) from rate_in to rate_out (float32 out).

    The output has round(time * rate_out / rate_in) samples and is aligned with
    the input at sample 0.
    """
    rate_in, rate_out = check_rate(rate_in), check_rate(rate_out)
    audio = np.asarray(audio, dtype=np.float32)
    if rate_in == rate_out:
        return audio.copy()
    lead = audio.shape[:-1]
    flat = audio.reshape(-1, audio.shape[-1])
    out = soxr.resample(flat.T, rate_in, rate_out, quality="VHQ").T  # soxr wants (time, channels)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(*lead, -1)
