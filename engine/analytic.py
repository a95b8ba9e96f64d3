"""Stationary Gaussian stems with known spectra: a prior whose exact denoiser and posteriors are closed-form.

Used to prove the samplers and tasks without a trained model, and as the
built-in example prior. Every stem is a periodic stationary Gaussian process;
stems may be correlated frequency by frequency. In the orthonormal DFT basis
the covariance is block-diagonal, one K x K matrix Sigma_f per frequency, so

    D(x, sigma)_f = Sigma_f (Sigma_f + sigma^2 I)^-1 X_f        (Wiener filter)
    E[x | y]_f    = Sigma_f 1 (1^T Sigma_f 1)^-1 Y_f            (separation)
"""

from __future__ import annotations

import torch


class GaussianStemPrior:
    """K stationary Gaussian stems of a fixed length with per-frequency covariance `cov` (F, K, K)."""

    def __init__(self, cov: torch.Tensor, stems: tuple[str, ...]):
        self.cov = cov.to(torch.float64)  # (freqs, K, K), symmetric positive semi-definite
        self.stems = tuple(stems)
        self.length = 2 * (cov.shape[0] - 1)
        if cov.shape[1:] != (len(stems), len(stems)):
            raise ValueError(f"covariance {tuple(cov.shape)} does not match {len(stems)} stems")

    @classmethod
    def independent(cls, spectra: torch.Tensor, stems: tuple[str, ...]) -> "GaussianStemPrior":
        """Independent stems with power spectra (K, F)."""
        return cls(torch.diag_embed(spectra.T), stems)

    # The Prior interface -------------------------------------------------
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.denoise_stems(x, torch.full((len(self.stems),), float(sigma), dtype=torch.float64))

    def denoise_stems(self, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """E[x | x_k + sigma_k n_k for every k]: one noise level per stem (K,); 0 where a stem is given clean."""
        gain = self.cov @ torch.linalg.inv(self.cov + torch.diag(sigmas.to(torch.float64) ** 2))  # (F, K, K)
        return self._apply(gain, x)

    # Closed-form answers ----------------------------------------------------
    def sample(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact draws (batch, K, length)."""
        white = torch.randn(batch, len(self.stems), self.length, generator=generator, dtype=torch.float64)
        root = torch.linalg.cholesky(self.cov + 1e-12 * torch.eye(len(self.stems), dtype=torch.float64))
        return self._apply(root, white)

    def posterior_mean(self, mixture: torch.Tensor) -> torch.Tensor:
        """E[x | sum_k x_k = y] for y (batch, length): the Wiener (MMSE) separation."""
        return self._apply(self._mixture_gain(), mixture[:, None].expand(-1, len(self.stems), -1) / len(self.stems))

    def posterior_variance(self) -> torch.Tensor:
        """tr Cov[x_k | y] per stem (K,), i.e. the expected squared error of the MMSE estimate, summed over time."""
        ones = torch.ones(len(self.stems), 1, dtype=torch.float64)
        cov_one = self.cov @ ones  # (F, K, 1)
        post = self.cov - cov_one @ cov_one.transpose(1, 2) / (ones.T @ cov_one)
        return self._bin_weights() @ torch.diagonal(post, dim1=1, dim2=2)

    def conditional(self, known_stems: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain (F, K, K), variance (K,)): E[x | x_known] = gain applied to x (zero where unknown), and tr Cov."""
        k = torch.tensor(known_stems)
        gain = torch.zeros_like(self.cov)
        gain[:, :, k] = self.cov[:, :, k] @ torch.linalg.pinv(self.cov[:, k][:, :, k])
        post = self.cov - gain @ self.cov
        return gain, self._bin_weights() @ torch.diagonal(post, dim1=1, dim2=2)

    def power(self, x: torch.Tensor) -> torch.Tensor:
        """Per-stem periodogram averaged over the batch, (K, F), on the scale of the spectra."""
        spectrum = torch.fft.rfft(x.to(torch.float64), norm="ortho")
        return spectrum.abs().pow(2).mean(0)

    # Helpers -------------------------------------------------------------------
    def _mixture_gain(self) -> torch.Tensor:
        """A (F, K, K) matrix whose rows each equal Sigma 1 / (1^T Sigma 1), so that gain @ (y/K, ..., y/K) = E[x|y]."""
        ones = torch.ones(len(self.stems), 1, dtype=torch.float64)
        cov_one = self.cov @ ones
        return (cov_one / (ones.T @ cov_one)).expand(-1, -1, len(self.stems))

    def _bin_weights(self) -> torch.Tensor:
        """How many real degrees of freedom each rfft bin holds (1 for DC and Nyquist, else 2), halved to
        match |X_f|^2 with E|X_f|^2 = Sigma_f: the time-domain energy is sum_f w_f |X_f|^2."""
        weights = torch.full((self.cov.shape[0],), 2.0, dtype=torch.float64)
        weights[0] = weights[-1] = 1.0
        return weights

    def _apply(self, matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.length:
            raise ValueError(f"this analytic prior has length {self.length}, got {x.shape[-1]}")
        spectrum = torch.fft.rfft(x.to(torch.float64), norm="ortho")  # (batch, K, F)
        out = torch.einsum("fkj,bjf->bkf", matrix.to(spectrum.dtype), spectrum)
        return torch.fft.irfft(out, n=self.length, norm="ortho").to(x.dtype)


def example_spectra(length: int, rate: float = 22050.0, level: float = 0.2) -> torch.Tensor:
    """Four clearly different spectra (K, F): low-pass 'bass', broadband 'drums', two band-pass 'guitar'/'piano'."""
    f = torch.fft.rfftfreq(length, d=1 / rate).to(torch.float64)
    bass = 1 / (1 + (f / 150) ** 4)
    drums = torch.full_like(f, 0.25)
    guitar = torch.exp(-0.5 * ((f - 1500) / 500) ** 2)
    piano = torch.exp(-0.5 * ((f - 4000) / 1200) ** 2)
    spectra = torch.stack([bass, drums, guitar, piano]) + 1e-4
    return spectra * level**2 / spectra.mean(1, keepdim=True)  # each stem has rms `level`
