"""MSLDM's latent prior behind the engine's Prior interface, and total / partial generation on waveforms.

The state the tasks see is (batch, K, C * T): each stem's C x T latent
flattened channel-major, so `tasks.generate` / `tasks.accompany` run
unchanged (a stem mask (B, K, 1) broadcasts over a stem's whole latent). The
denoiser sees the stems stacked stem-major, (batch, K * C, T) (msldm.txt
Eq. 7), through a U-Net with EDM preconditioning, sigma_data 0.4 and no
output clamp (reference-notes.md).

Training sigma. The reference draws sigma ~ Uniform(0, 3) and weights the
loss by lambda = (sigma^2 + sd^2) / (sigma sd)^2, which grows like 1/sigma^2
near 0 (and is infinite at a draw of exactly 0, where c_noise = ln(sigma) / 4
is -inf too). In exact arithmetic lambda |D - x0|^2 = |F - F_target|^2 with
F_target = (x0 - c_skip x) / c_out, a bounded target (-> -noise as sigma -> 0);
computed as written, the 1/sigma^2 amplifies the rounding of D - x0 (badly
under the reference's bf16). Our choice, both parts:
  1. sigma ~ Uniform(sigma_min, sigma_max) with sigma_min = 0.01, the sampler's
     own sigma_min: no training effort below the smallest noise level sampling
     ever visits, and c_noise stays finite;
  2. the loss is computed in F-space, |F(c_in x, c_noise) - F_target|^2, which
     equals the EDM weighted loss exactly but never multiplies by lambda.
`latent_edm_loss` implements it; tests check that it matches lambda |D - x0|^2 at
moderate sigma and stays finite at sigma = 1e-7.

Waveform tasks (msldm.txt Sec. 2.3): `generate_audio` samples latents with
`tasks.generate` and decodes each stem; `accompany_audio` encodes the given
stems (posterior means), inpaints the missing stems' latents with
`tasks.accompany`, decodes, and puts the given stems back in the waveform
domain, so they come back sample-exact.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.sampler import Callback, SamplerSettings
from stemweave.engine import tasks

SIGMA_MIN = 0.01  # MSLDM sampling range: Karras(0.01, 3, rho 7)
SIGMA_MAX = 3.0
# The paper's sampler settings (msldm.txt Sec. 2.3): 150 steps, churn 20.
GENERATE_SETTINGS = SamplerSettings(steps=150, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, rho=7.0, s_churn=20.0)
ACCOMPANY_SETTINGS = GENERATE_SETTINGS


def stack_stems(z: torch.Tensor) -> torch.Tensor:
    """(B, K, C, T) per-stem latents -> (B, K * C, T), stem-major channels (the U-Net's input)."""
    b, k, c, t = z.shape
    return z.reshape(b, k * c, t)


def to_state(z: torch.Tensor) -> torch.Tensor:
    """(B, K, C, T) -> (B, K, C * T): the tasks' (batch, stems, time) state."""
    b, k, c, t = z.shape
    return z.reshape(b, k, c * t)


def from_state(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, K, C * T) -> (B, K, C, T)."""
    b, k, ct = x.shape
    return x.reshape(b, k, channels, ct // channels)


class LatentPrior:
    """MSLDM: one EDM denoiser over the K stems' latents stacked stem-major; optionally the SourceVAE for audio.

    denoise(x, sigma): x (B, K, C * T) -> the same shape (the Prior protocol).
    """

    def __init__(self, denoiser: EDMDenoiser, stems: Sequence[str], channels: int, vae: nn.Module | None = None,
                 stride: int = 1, latent_scale: float = 1.0, card: dict[str, Any] | None = None):
        self.denoiser = denoiser
        self.stems = tuple(stems)
        self.channels = int(channels)  # C, latent channels per stem
        self.vae = vae
        self.stride = int(stride)  # latent frames must be a multiple of this (the U-Net's)
        self.latent_scale = float(latent_scale)  # the prior models latents * latent_scale
        self.card = dict(card or {})

    @torch.no_grad()
    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        b, k, ct = x.shape
        z = x.reshape(b, k * self.channels, ct // self.channels)  # stem-major (B, K*C, T)
        return self.denoiser(z, sigma).reshape(b, k, ct)

    # latents <-> audio -----------------------------------------------------

    def _need_vae(self) -> nn.Module:
        if self.vae is None:
            raise ValueError("this LatentPrior has no SourceVAE: load an msldm model file (models.load_msldm)")
        return self.vae

    def frames_for(self, samples: int) -> int:
        """Latent frames (a multiple of the U-Net stride) whose decoded length covers `samples`."""
        return self._need_vae().frames_for(samples, self.stride)

    @torch.no_grad()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Stems (B, K, N) -> the prior's latents (B, K, C, T), T = frames_for(N)."""
        return self._need_vae().encode_audio(audio, self.stride) * self.latent_scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """The prior's latents (B, K, C, T) -> stems (B, K, samples)."""
        return self._need_vae().decode_latents(z / self.latent_scale, samples)


# --------------------------------------------------------------------------- training loss


def sample_training_sigma(batch: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """sigma ~ Uniform(sigma_min, sigma_max): the reference's U(0, 3) floored at the sampler's sigma_min."""
    return sigma_min + (sigma_max - sigma_min) * torch.rand(batch, generator=generator)


def latent_edm_loss(denoiser: EDMDenoiser, x0: torch.Tensor, sigma: torch.Tensor,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """E[lambda(sigma) |D(x0 + sigma n) - x0|^2] computed as E[|F(c_in x, c_noise) - F_target|^2] (see the module doc).

    x0: (B, channels, T) clean stacked latents; sigma: (B,). Needs an unclamped denoiser.
    """
    assert not denoiser.clamp, "the F-space loss equals the EDM loss only without an output clamp"
    noise = torch.randn_like(x0) if noise is None else noise
    x = x0 + sigma[:, None, None] * noise
    c_skip, c_out, c_in, c_noise = denoiser.coefficients(sigma)
    target = (x0 - c_skip[:, None, None] * x) / c_out[:, None, None]  # F_target
    out = denoiser.net(c_in[:, None, None] * x, c_noise)
    return (out - target).pow(2).flatten(1).mean(1).mean()


# --------------------------------------------------------------------------- waveform tasks


def generate_audio(prior: LatentPrior, batch: int, length: int, settings: SamplerSettings = GENERATE_SETTINGS, *,
                   generator: torch.Generator | None = None, callback: Callback | None = None,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    """Total generation (msldm.txt Sec. 2.3.1): sample Z with `tasks.generate`, decode each stem.

    The same signature as `tasks.generate`; returns stems (batch, K, length).
    """
    frames = prior.frames_for(length)
    x = tasks.generate(prior, batch, prior.channels * frames, settings, generator=generator, callback=callback,
                       device=device)
    return prior.decode(from_state(x, prior.channels), length)


def accompany_audio(prior: LatentPrior, known: torch.Tensor, known_mask: torch.Tensor,
                    settings: SamplerSettings = ACCOMPANY_SETTINGS, *, guidance: float = 0.0,
                    generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Partial generation (msldm.txt Sec. 2.3.2, Eqs. 4-6) on waveforms; the same signature as `tasks.accompany`.

    known: (B, K, N) stems (anything where unknown); known_mask: bool, broadcastable to known, over stems
    ((B, K, 1)) and optionally time ((B, K, N)). The given stems are encoded (posterior means), the other
    stems' latents are inpainted with `tasks.accompany`, everything is decoded, and the given audio is put
    back exactly. With a time mask, a latent frame counts as known only if every sample of its hop is known.
    """
    b, k, n = known.shape
    mask = known_mask.to(torch.bool).expand_as(known)
    z_known = prior.encode(torch.where(mask, known, torch.zeros_like(known)))  # (B, K, C, T)
    frames = z_known.shape[-1]
    frame_mask = _frame_mask(mask, frames, prior._need_vae().hop)  # (B, K, T)
    latent_mask = frame_mask[:, :, None, :].expand(b, k, prior.channels, frames)
    x = tasks.accompany(prior, to_state(z_known), to_state(latent_mask), settings, guidance=guidance,
                        generator=generator, callback=callback)
    audio = prior.decode(from_state(x, prior.channels), n)
    return torch.where(mask, known, audio)


def _frame_mask(mask: torch.Tensor, frames: int, hop: int) -> torch.Tensor:
    """A sample mask (B, K, N) -> a frame mask (B, K, frames): frame t is known iff samples [t hop, (t+1) hop) are."""
    b, k, n = mask.shape
    padded = torch.ones(b, k, frames * hop, dtype=torch.bool, device=mask.device)
    padded[..., : min(n, frames * hop)] = mask[..., : frames * hop]
    return padded.reshape(b, k, frames, hop).all(-1)


def waveform_task(prior, task: str):
    """The waveform function for `task` ('generate' | 'accompany'): the latent wrappers for a LatentPrior,
    the plain tasks otherwise. The task CLI and the region layer can call this instead of tasks.<task>."""
    if task not in ("generate", "accompany"):
        raise ValueError(f"a latent prior supports generate and accompany, not {task!r}")
    if isinstance(prior, LatentPrior):
        return generate_audio if task == "generate" else accompany_audio
    return getattr(tasks, task)


__all__ = [
    "ACCOMPANY_SETTINGS", "GENERATE_SETTINGS", "LatentPrior", "accompany_audio", "from_state", "generate_audio",
    "latent_edm_loss", "sample_training_sigma", "stack_stems", "to_state", "waveform_task",
]
