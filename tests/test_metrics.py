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
