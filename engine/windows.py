"""Where a region's windows go and how their outputs are weighted: overlapping windows and cross-fades that sum to one.

Planning only (no model, no audio): `plan_windows` places windows of the
model's length with a given overlap; `crossfade` gives window i's weights,
normalised by the raw weights of every window covering the same samples, so
that the weights of all windows sum to one at every sample (a partition of
unity by construction, the demucs `apply_model` arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES = ("hann", "linear", "triangle")


@dataclass(frozen=True)
class WindowPlan:
    length: int  # samples to cover (at the model rate)
    window: int  # samples per window
    overlap: int  # samples shared by two consecutive windows

    @property
    def hop(self) -> int:
        return self.window - self.overlap

    @property
    def count(self) -> int:
        if self.length <= self.window:
            return 1
        return 1 + math.ceil((self.length - self.window) / self.hop)

    def start(self, i: int) -> int:
        return i * self.hop

    @property
    def padded(self) -> int:
        """Samples the windows cover (>= length): the region is zero-padded to this and cropped back."""
        return self.start(self.count - 1) + self.window

    def finished(self, i: int) -> int:
        """Samples before this index take no output from any window after window i."""
        return self.padded if i >= self.count - 1 else self.start(i + 1)


def plan_windows(length: int, window: int, overlap: float) -> WindowPlan:
    """Windows of `window` samples over `length` samples, consecutive ones sharing round(overlap * window)."""
    if length < 1:
        raise ValueError("cannot plan windows over an empty region")
    if window < 2:
        raise ValueError(f"a window needs at least 2 samples, got {window}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a fraction of the window in [0, 1), got {overlap}")
    shared = min(int(round(overlap * window)), window - 1)
    return WindowPlan(length=int(length), window=int(window), overlap=shared)


def raw_weight(plan: WindowPlan, i: int, shape: str = "hann", power: float = 1.0) -> np.ndarray:
    """Window i's un-normalised weight (window,): ramps over the shared samples (none at the region's ends),
    or a full triangle raised to `power` (demucs' transition_power)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown window shape {shape!r}: choose one of {', '.join(SHAPES)}")
    t = np.arange(plan.window) + 0.5
    if shape == "triangle":
        return np.minimum(t, plan.window - t) ** power
    weight = np.ones(plan.window)
    if plan.overlap:
        ramp = (np.arange(plan.overlap) + 0.5) / plan.overlap  # rising, and ramp[::-1] == 1 - ramp
        if shape == "hann":
            ramp = np.sin(0.5 * np.pi * ramp) ** 2  # sin^2 rising, cos^2 falling: they sum to one
        if i > 0:
            weight[: plan.overlap] *= ramp
        if i < plan.count - 1:
            weight[-plan.overlap :] *= ramp[::-1]
    return weight


def crossfade(plan: WindowPlan, i: int, shape: str = "hann", power: float = 1.0) -> np.ndarray:
    """Window i's weight (window,), float64: raw weight / sum of the raw weights of all windows at each sample."""
    total = np.zeros(plan.window)
    reach = math.ceil(plan.window / plan.hop)
    for j in range(max(0, i - reach), min(plan.count, i + reach + 1)):
        offset = plan.start(j) - plan.start(i)
        lo, hi = max(0, offset), min(plan.window, offset + plan.window)
        if lo < hi:
            total[lo:hi] += raw_weight(plan, j, shape, power)[lo - offset : hi - offset]
    return raw_weight(plan, i, shape, power) / total
