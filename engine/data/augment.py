"""On-the-fly augmentation of stem windows for separator training: remixing (the Demucs recipe), gain, polarity.

A separator trained on 200 songs sees 200 bands; remixing draws each stem of a window from its own random song
and offset, so every batch holds combinations never rendered (and the mixture is still their exact sum, as it
is built from the stems). Remixed stems no longer play together (no shared tempo or key), which a separator
does not need but a joint prior (MSDM) learns from: remix is off unless asked for. The data is mono, so there
is no channel swap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

AUGMENT_GAIN_DB = (-6.0, 2.0)  # per-stem gain range of the augmentation


def gain_and_polarity(chunk: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-stem gain and polarity; the same for the whole window, so the stems stay aligned and coherent."""
    stems = chunk.shape[0]
    gains_db = rng.uniform(*AUGMENT_GAIN_DB, size=stems)
    polarity = rng.choice([-1.0, 1.0], size=stems)
    return (chunk * (polarity * 10 ** (gains_db / 20))[:, None]).astype(np.float32)


def remix(draw_stem: Callable[[int, np.random.Generator], np.ndarray], stems: int,
          rng: np.random.Generator) -> np.ndarray:
    """(K, window): stem k from its own random window `draw_stem(k, rng)` (another song, another offset)."""
    return np.stack([draw_stem(k, rng) for k in range(stems)])
