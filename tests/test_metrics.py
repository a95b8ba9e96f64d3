"""SI-SDR against an independent implementation, and the MSDM evaluation protocol's window rules."""

import numpy as np
import pytest
import torch

from stemweave.engine.metrics import is_silent, msdm_protocol, protocol_windows, si_sdr, si_sdr_improvement


def test_si_sdr_agrees_with_torchmetrics():
    functional = pytest.importorskip("torchmetrics.functional.audio")
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((5, 3, 4000))
    estimate = 0.7 * reference + 0.3 * rng.standard_normal((5, 3, 4000))
    theirs = functional.scale_invariant_signal_distortion_ratio(torch.from_numpy(estimate), torch.from_numpy(reference), zero_mean=False)
    np.testing.assert_allclose(si_sdr(estimate, reference), theirs.numpy(), atol=1e-6)


def test_si_sdr_is_scale_invariant_and_improvement_is_zero_for_the_mixture():
    rng = np.random.default_rng(1)
    stems = rng.standard_normal((4, 8000))
    mixture = stems.sum(0)
    estimate = stems + 0.1 * rng.standard_normal(stems.shape)
    assert si_sdr(3.0 * estimate, stems) == pytest.approx(si_sdr(estimate, stems))
    np.testing.assert_allclose(si_sdr_improvement(np.broadcast_to(mixture, stems.shape), stems, mixture), 0.0, atol=1e-9)
    assert np.all(si_sdr_improvement(estimate, stems, mixture) > 10)


def test_protocol_windows_and_silence_rule():
    rate = 100
    assert protocol_windows(1000, rate) == [slice(s, s + 400) for s in (0, 200, 400, 600)]
    assert is_silent(np.full(400, 1e-6)) and not is_silent(np.full(400, 1e-2))
    rng = np.random.default_rng(2)
    references = rng.standard_normal((4, 1000)) * 0.1
    references[1:, :400] = 0  # only the bass plays in the first 4 s: that window is skipped
    estimates = references + 0.01 * rng.standard_normal(references.shape)
    scores = msdm_protocol(estimates, references, rate)
    assert scores.shape == (3, 4)  # [0:400] is dropped; [200:600], [400:800], [600:1000] are kept
    assert np.all(np.isfinite(scores)) and np.all(scores > 10)


@pytest.mark.parametrize("n", [400, 4000, 176400])
def test_silence_rule_either_side_of_its_threshold(n):
    """||s||_2 / N < 1.5e-5: a constant c over N samples has ||s||_2 / N = c / sqrt(N), so the threshold sits at
    c = 1.5e-5 sqrt(N) (3e-4 for N = 400), far above an RMS rule's 1.5e-5."""
    at = 1.5e-5 * np.sqrt(n)
    assert is_silent(np.full(n, 0.99 * at)) and not is_silent(np.full(n, 1.01 * at))
    # the rule is per row of the last axis, sign-blind
    rows = np.stack([np.full(n, -0.99 * at), np.full(n, 1.01 * at), np.zeros(n)])
    np.testing.assert_array_equal(is_silent(rows), [True, False, True])


def test_protocol_keeps_a_window_with_exactly_two_non_silent_stems_and_scores_every_stem():
    rate = 100
    rng = np.random.default_rng(3)
    references = 0.1 * rng.standard_normal((4, 600))
    references[2:, :] = 0  # guitar and piano silent throughout: two stems play, every window is kept
    references[1, 400:] = 0  # from 4 s only the bass plays: the window [400:800] would be dropped, but it is cut
    estimates = references + 0.01 * rng.standard_normal(references.shape)
    scores = msdm_protocol(estimates, references, rate)
    assert scores.shape == (2, 4)  # [0:400] and [200:600]
    mixture = references.sum(0)
    for row, start in zip(scores, (0, 200)):
        window = slice(start, start + 400)
        np.testing.assert_allclose(row, si_sdr(estimates[:, window], references[:, window])
                                   - si_sdr(np.broadcast_to(mixture[window], (4, 400)), references[:, window]))
    with pytest.raises(ValueError, match="differ"):
        msdm_protocol(estimates[:3], references, rate)
    references[1, :] = 0  # only one stem left: nothing is kept, the result is an empty (0, K) table
    assert msdm_protocol(estimates, references, rate).shape == (0, 4)


def test_si_sdr_by_hand():
    # estimate = 2 r + e with e orthogonal to r: alpha = 2, target = 2 r, noise = -e -> 10 log10(4 |r|^2 / |e|^2)
    reference = np.array([1.0, 0.0, 1.0, 0.0])
    error = np.array([0.0, 0.5, 0.0, -0.5])
    assert si_sdr(2 * reference + error, reference) == pytest.approx(10 * np.log10(4 * 2 / 0.5), abs=1e-6)
    # silent reference and estimate: eps / eps = 0 dB, not NaN
    assert si_sdr(np.zeros(4), np.zeros(4)) == pytest.approx(0.0)
    # a zero estimate: alpha = eps / (|r|^2 + eps), and target = noise, so the ratio is 1: 0 dB, not -inf
    assert si_sdr(np.zeros(4), np.ones(4)) == pytest.approx(0.0, abs=1e-9)
    # a negated estimate is scale-invariant too: alpha = -1 gives the same score as the estimate itself
    assert si_sdr(-(2 * reference + error), reference) == pytest.approx(si_sdr(2 * reference + error, reference))


def test_protocol_windows_hop_and_tail():
    assert protocol_windows(999, 100) == [slice(s, s + 400) for s in (0, 200, 400)]  # the 399-sample tail is dropped
    assert protocol_windows(399, 100) == []
    assert protocol_windows(700, 100, seconds=3.0, hop_seconds=1.5) == [slice(0, 300), slice(150, 450), slice(300, 600)]


def test_si_sdr_eps_terms_by_hand():
    # a quiet reference (|r|^2 = 4e-10, below eps = 1e-8) estimated exactly: alpha = 1, noise 0,
    # so SI-SDR = 10 log10((4e-10 + 1e-8) / 1e-8) = 10 log10(1.04)
    quiet = np.full(4, 1e-5)
    assert si_sdr(quiet, quiet) == pytest.approx(10 * np.log10(1.04), rel=1e-9)


def test_si_sdr_computes_in_float64_whatever_it_is_given():
    rng = np.random.default_rng(4)
    reference = rng.standard_normal((3, 1000)).astype(np.float32)
    estimate = (reference + 0.1 * rng.standard_normal((3, 1000))).astype(np.float32)
    exact = si_sdr(estimate.astype(np.float64), reference.astype(np.float64))
    assert np.array_equal(si_sdr(estimate, reference), exact)
    assert np.array_equal(si_sdr(estimate.astype(np.float64), reference), exact)


def test_silence_is_strictly_below_the_threshold():
    assert not is_silent(np.array([1.5e-5]))  # ||s||_2 / N = 1.5e-5 exactly: not silent
    assert is_silent(np.array([1.4999e-5]))
