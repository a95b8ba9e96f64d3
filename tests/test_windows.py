"""Window planning and cross-fade weights against hand computation (the region layer's arithmetic, no model)."""

import math

import numpy as np
import pytest

from stemweave.engine.windows import SHAPES, WindowPlan, crossfade, plan_windows, raw_weight


def test_plan_by_hand():
    plan = plan_windows(1000, 256, 0.25)  # 64 shared, hop 192: starts 0, 192, ..., 768 (5 windows), padded 1024
    assert (plan.length, plan.window, plan.overlap, plan.hop, plan.count, plan.padded) == (1000, 256, 64, 192, 5, 1024)
    assert [plan.start(i) for i in range(5)] == [0, 192, 384, 576, 768]
    assert [plan.finished(i) for i in range(5)] == [192, 384, 576, 768, 1024]  # the last: everything
    assert plan.finished(7) == 1024
    one = plan_windows(256, 256, 0.5)
    assert (one.count, one.padded, one.finished(0)) == (1, 256, 256)
    assert plan_windows(257, 256, 0.5).count == 2  # one sample past a window: 1 + ceil(1 / 128)
    assert plan_windows(257, 256, 0.5).padded == 384
    assert plan_windows(1, 2, 0.0) == WindowPlan(length=1, window=2, overlap=0)
    assert plan_windows(10, 4, 0.9).overlap == 3  # round(3.6) = 4 is capped at window - 1
    assert plan_windows(10, 4, 0.6).overlap == 2  # round(2.4)
    assert plan_windows(10, 3, 0.5).overlap == 2  # round(1.5) = 2 (banker's rounding, then int)


@pytest.mark.parametrize("args,message", [
    ((0, 256, 0.25), "^cannot plan windows over an empty region$"),
    ((100, 1, 0.25), "a window needs at least 2 samples, got 1"),
    ((100, 256, 1.0), r"overlap is a fraction of the window in \[0, 1\), got 1.0"),
    ((100, 256, -0.1), r"overlap is a fraction of the window in \[0, 1\), got -0.1"),
])
def test_bad_plans_are_refused_with_the_reason(args, message):
    with pytest.raises(ValueError, match=message):
        plan_windows(*args)


def test_smallest_valid_plans():
    assert plan_windows(1, 2, 0.0).count == 1 and plan_windows(2, 2, 0.0).count == 1
    assert plan_windows(100, 2, 0.0).count == 50
    assert plan_windows(100, 256, 0.99).overlap == 253 and plan_windows(100, 256, 0.0).overlap == 0


def test_raw_weights_by_hand():
    plan = WindowPlan(length=20, window=8, overlap=4)  # hop 4, 4 windows
    ramp = (np.arange(4) + 0.5) / 4  # 1/8, 3/8, 5/8, 7/8
    linear_middle = np.concatenate([ramp, ramp[::-1]])
    np.testing.assert_allclose(raw_weight(plan, 1, "linear"), linear_middle, rtol=1e-15)
    np.testing.assert_allclose(raw_weight(plan, 0, "linear"), np.concatenate([np.ones(4), ramp[::-1]]), rtol=1e-15)
    np.testing.assert_allclose(raw_weight(plan, 3, "linear"), np.concatenate([ramp, np.ones(4)]), rtol=1e-15)
    hann = np.sin(0.5 * np.pi * ramp) ** 2
    np.testing.assert_allclose(raw_weight(plan, 2, "hann"), np.concatenate([hann, hann[::-1]]), rtol=1e-15)
    np.testing.assert_allclose(hann + hann[::-1], 1.0, rtol=1e-15)
    t = np.arange(8) + 0.5  # triangle: min(t, 8 - t) = 0.5, 1.5, 2.5, 3.5, 3.5, ...
    np.testing.assert_allclose(raw_weight(plan, 0, "triangle"), [0.5, 1.5, 2.5, 3.5, 3.5, 2.5, 1.5, 0.5])
    np.testing.assert_allclose(raw_weight(plan, 0, "triangle", power=2.0), np.minimum(t, 8 - t) ** 2)
    assert raw_weight(plan, 1, "linear", power=3.0).tolist() == linear_middle.tolist()  # power: triangle only
    alone = WindowPlan(length=8, window=8, overlap=0)
    assert raw_weight(alone, 0, "hann").tolist() == [1.0] * 8
    with pytest.raises(ValueError, match="unknown window shape 'box': choose one of hann, linear, triangle"):
        raw_weight(plan, 0, "box")
    assert SHAPES == ("hann", "linear", "triangle")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_crossfades_are_the_normalised_raw_weights(shape, power):
    """crossfade(i) = raw(i) / sum over the windows covering each sample of raw(j), computed here sample by sample
    over the whole padded region, for plans where up to four windows cover a sample."""
    for plan in (plan_windows(50, 8, 0.5), plan_windows(61, 12, 0.75), plan_windows(30, 8, 0.0), plan_windows(5, 8, 0.5)):
        total = np.zeros(plan.padded)
        for j in range(plan.count):
            total[plan.start(j): plan.start(j) + plan.window] += raw_weight(plan, j, shape, power)
        for i in range(plan.count):
            at = slice(plan.start(i), plan.start(i) + plan.window)
            np.testing.assert_allclose(crossfade(plan, i, shape, power), raw_weight(plan, i, shape, power) / total[at],
                                       rtol=1e-12)


def test_crossfade_by_hand():
    plan = WindowPlan(length=12, window=8, overlap=4)  # two windows: 0..8 and 4..12
    np.testing.assert_allclose(crossfade(plan, 0, "linear"), [1, 1, 1, 1, 7 / 8, 5 / 8, 3 / 8, 1 / 8], rtol=1e-15)
    np.testing.assert_allclose(crossfade(plan, 1, "linear"), [1 / 8, 3 / 8, 5 / 8, 7 / 8, 1, 1, 1, 1], rtol=1e-15)
    tri = WindowPlan(length=12, window=8, overlap=4)
    # triangles 0.5..3.5..0.5 over both windows: in the overlap window 0 has 3.5, 2.5, 1.5, 0.5 and window 1 has
    # 0.5, 1.5, 2.5, 3.5, so window 0's share is 7/8, 5/8, 3/8, 1/8 there and 1 before it
    np.testing.assert_allclose(crossfade(tri, 0, "triangle"), [1, 1, 1, 1, 7 / 8, 5 / 8, 3 / 8, 1 / 8], rtol=1e-15)
    assert math.isclose(crossfade(tri, 0, "triangle", power=2.0)[4], 3.5**2 / (3.5**2 + 0.5**2), rel_tol=1e-15)


def test_hann_is_the_default_shape():
    plan = WindowPlan(length=20, window=8, overlap=4)
    assert raw_weight(plan, 1).tolist() == raw_weight(plan, 1, "hann").tolist() != raw_weight(plan, 1, "linear").tolist()
    assert crossfade(plan, 1).tolist() == crossfade(plan, 1, "hann").tolist()


def test_ramps_that_overlap_each_other_multiply():
    """An overlap beyond half the window: a middle window's rising and falling ramps share samples, where its
    weight is their product."""
    plan = WindowPlan(length=30, window=8, overlap=6)  # hop 2
    ramp = (np.arange(6) + 0.5) / 6
    expected = np.ones(8)
    expected[:6] *= ramp
    expected[2:] *= ramp[::-1]
    np.testing.assert_allclose(raw_weight(plan, 1, "linear"), expected, rtol=1e-15)
    assert raw_weight(plan, 1, "linear")[3] == pytest.approx(3.5 / 6 * 4.5 / 6, rel=1e-15)
