"""Shared fixtures: analytic Gaussian stem priors whose exact answers are known in closed form."""

import pytest
import torch

from stemweave.engine.analytic import GaussianStemPrior, example_spectra

STEMS = ("bass", "drums", "guitar", "piano")


@pytest.fixture
def independent_prior():
    """Four independent stems with clearly different spectra, 512 samples, as at a 4 kHz rate."""
    return GaussianStemPrior.independent(example_spectra(512, rate=4000.0), STEMS)


@pytest.fixture
def correlated_prior():
    """The same spectra with bass-guitar (0.8) and drums-piano (0.6) correlated at every frequency, 256 samples."""
    spectra = example_spectra(256, rate=4000.0)
    corr = torch.tensor([[1, 0, 0.8, 0], [0, 1, 0, 0.6], [0.8, 0, 1, 0], [0, 0.6, 0, 1.0]], dtype=torch.float64)
    root = spectra.T.sqrt()  # (F, K)
    return GaussianStemPrior(root[:, :, None] * corr * root[:, None, :], STEMS)
