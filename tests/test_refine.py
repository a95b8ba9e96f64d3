"""Warm-started separation over a region: a separator's first answer refined by a prior (issue 13)."""

import numpy as np
import pytest

from stemweave.engine.presets import load_preset
from stemweave.engine.refine import WarmStart
from stemweave.engine.regions import run_region
from test_regions import STEMS, FIRSeparator, analytic_prior


def warm_start():
    prior, separator = analytic_prior(), FIRSeparator()
    prior.card = {"name": "analytic", "rate": prior.rate, "window": prior.window}
    separator.card = {"name": "fir", "rate": separator.rate, "window": separator.window}
    return WarmStart(separator, prior)


@pytest.mark.parametrize("rate,channels", [(44100, 2), (48000, 1)])
def test_refined_stems_still_sum_to_the_input(rate, channels):
    audio = (0.2 * np.random.default_rng(0).standard_normal((channels, rate // 5))).astype(np.float32)
    preset = load_preset("refine-fast").with_overrides(steps=4)
    stems = run_region("separate", warm_start(), audio, rate, preset, seed=1)
    total = sum(stems.values())
    assert set(stems) == set(STEMS) and total.shape == audio.shape
    assert np.abs(total - audio).max() < 8 * np.finfo(np.float32).eps * max(np.abs(s).max() for s in stems.values())


def test_the_refinement_starts_from_the_first_estimate():
    """From a small starting sigma the refined stems stay near the separator's; from pure noise they do not."""
    model = warm_start()
    audio = (0.2 * np.random.default_rng(1).standard_normal((1, 4000 // 5))).astype(np.float32)
    first = run_region("separate", model.separator, audio, 4000, load_preset("separate-fast"))
    refined = run_region("separate", model, audio, 4000, load_preset("refine-fast").with_overrides(sigma_max=1e-3, steps=3))
    from_noise = run_region("separate", model.prior, audio, 4000, load_preset("separate-fast").with_overrides(steps=3))
    distance = lambda a: sum(np.sum((a[s] - first[s]) ** 2) for s in STEMS)  # noqa: E731
    assert distance(refined) < 0.1 * distance(from_noise), (distance(refined), distance(from_noise))


def test_a_warm_start_preset_needs_a_first_estimate():
    prior = analytic_prior()
    audio = np.zeros((1, 800), np.float32)
    with pytest.raises(ValueError, match="initial"):
        run_region("separate", prior, audio, 4000, load_preset("refine-fast"))


def test_separator_and_prior_must_agree():
    prior, separator = analytic_prior(), FIRSeparator()
    separator.rate = 8000
    with pytest.raises(ValueError, match="Hz"):
        WarmStart(separator, prior)
    separator.stems = ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="stems"):
        WarmStart(separator, prior)
