"""`TextPrior`: GMSDI's per-stem scores from one text-conditioned mixture model (Eq. 5), behind the Prior interface.

Stem k of the state x (batch, K, time) is scored by the mixture model
prompted with that stem's text: S_theta(x_k(t), z_k, sigma(t)) (Eq. 5), with
classifier-free guidance (Sec. 2.1)

    S* = S(x, z) + w (S(x, z) - S(x, z_neg))          z_neg = a negative prompt's z, else z*

Scores are linear in the denoiser output (S = (D - x) / sigma^2), so the
guidance is applied to D: D* = D(z) + w (D(z) - D(z_neg)); w = 0 is the plain
conditional score. Every denoiser call of a step (all stems, conditional and
negative) goes through the network as one batch.

The tasks also score signals that are not one stem (the mixture y(t) with
z_1 ⊗ ... ⊗ z_K in Eq. 10, a complement with ⊗_{l != k} z_l in Eq. 14):
`denoise_prompted` takes any prompts, `joined` builds a joint one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from stemweave.engine.gmsdi.text import caption, check_prompts

# D(y, sigma, z): (N, 1, T), sigma, (N, D) -> (N, 1, T)
TextDenoiserFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prompt:
    """A stem's text q_k and an optional negative prompt (None: guide against the null embedding z*)."""

    text: str
    negative: str | None = None


def as_prompts(prompts: Sequence[str | Prompt], negatives: Sequence[str | None] | None = None) -> tuple[Prompt, ...]:
    """Prompts from strings (and one optional negative each; '' or None means none)."""
    out = [p if isinstance(p, Prompt) else Prompt(str(p)) for p in prompts]
    if negatives is not None:
        if len(negatives) != len(out):
            raise ValueError(f"{len(negatives)} negative prompts for {len(out)} prompts: give one per prompt ('' for none)")
        out = [dataclasses.replace(p, negative=n or None) for p, n in zip(out, negatives)]
    if not out:
        raise ValueError("GMSDI needs at least one prompt (one per stem)")
    if any(not p.text.strip() for p in out):
        raise ValueError("a prompt is empty: name every stem ('bass', 'drums', ...)")
    return tuple(out)


class TextPrior:
    """K stems named by prompts; D(x, sigma) of stem k is the mixture denoiser prompted with z_k, guided with weight w.

    denoiser: D(y, sigma, z) of one-channel signals; encoder: has
    `.embed(prompts) -> (n, D)`; null: z* (D,); guidance: w; vocabulary: the
    labels of the model's training captions (prompts far from all of them
    are refused unless allow_unknown).
    """

    def __init__(
        self,
        denoiser: TextDenoiserFn,
        encoder,
        prompts: Sequence[str | Prompt],
        *,
        null: torch.Tensor,
        guidance: float = 0.0,
        negatives: Sequence[str | None] | None = None,
        vocabulary: Sequence[str] = (),
        allow_unknown: bool = False,
        max_batch: int | None = None,
    ):
        self.denoiser = denoiser
        self.encoder = encoder
        self.prompts = as_prompts(prompts, negatives)
        self.null = null
        self.guidance = float(guidance)  # w in Sec. 2.1
        self.vocabulary = tuple(vocabulary)
        self.allow_unknown = allow_unknown
        self.max_batch = max_batch
        if not allow_unknown and self.vocabulary:
            texts = [p.text for p in self.prompts] + [p.negative for p in self.prompts if p.negative]
            check_prompts(texts, self.vocabulary, encoder)

    # The Prior interface ---------------------------------------------------------------------
    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(p.text for p in self.prompts)

    def denoise(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """D*(x_k, z_k) for every stem k of x (batch, K, time)."""
        return self.denoise_prompted(x, self.prompts, sigma)

    # GMSDI -------------------------------------------------------------------------------------
    def with_prompts(self, prompts: Sequence[Prompt]) -> "TextPrior":
        """The same model and guidance over other stems (no vocabulary check: built from checked prompts)."""
        view = object.__new__(TextPrior)
        view.__dict__.update(self.__dict__)
        view.prompts = as_prompts(prompts)
        return view

    def with_guidance(self, guidance: float) -> "TextPrior":
        view = self.with_prompts(self.prompts)
        view.guidance = float(guidance)
        return view

    def joined(self, stems: Sequence[int]) -> Prompt:
        """⊗_{j in stems} z_j: one prompt naming those stems ('bass, drums'), guided against z*."""
        return Prompt(caption(self.prompts[j].text for j in stems))

    @property
    def mixture_prompt(self) -> Prompt:
        """z_1 ⊗ ... ⊗ z_K, the prompt of the mixture y(t) in Eqs. 9-12."""
        return self.joined(range(len(self.prompts)))

    def embed(self, text: str | None) -> torch.Tensor:
        """z of a prompt, or z* for None."""
        return self.null.detach().float().cpu() if text is None else self.encoder.embed([text])[0]

    @torch.no_grad()
    def denoise_prompted(self, signals: torch.Tensor, prompts: Sequence[Prompt], sigma: float) -> torch.Tensor:
        """D*(s_m, z_m) for signals (batch, M, time) and M prompts: CFG D(z) + w (D(z) - D(z_neg or z*))."""
        b, m, t = signals.shape
        if len(prompts) != m:
            raise ValueError(f"{m} signals for {len(prompts)} prompts")
        guided = self.guidance != 0
        z = torch.stack([self.embed(p.text) for p in prompts])  # (M, D)
        rows = [z]
        if guided:
            rows.append(torch.stack([self.embed(p.negative) for p in prompts]))  # z_neg or z*
        text = torch.cat(rows).to(signals.device, signals.dtype)  # (M or 2M, D)
        copies = len(rows)
        y = signals.transpose(0, 1).reshape(m * b, 1, t).repeat(copies, 1, 1)  # (copies*M*B, 1, T), prompt-major
        text = text.repeat_interleave(b, dim=0)  # (copies*M*B, D)
        out = self._run(y, sigma, text).reshape(copies, m, b, t).transpose(1, 2)  # (copies, B, M, T)
        if not guided:
            return out[0]
        conditional, negative = out[0], out[1]
        return conditional + self.guidance * (conditional - negative)

    def _run(self, y: torch.Tensor, sigma: float, text: torch.Tensor) -> torch.Tensor:
        step = self.max_batch or y.shape[0]
        return torch.cat([self.denoiser(y[i : i + step], sigma, text[i : i + step]) for i in range(0, y.shape[0], step)])


def derivative_prompted(prior: TextPrior, signals: torch.Tensor, prompts: Sequence[Prompt], sigma: float) -> torch.Tensor:
    """(s - D*(s, z)) / sigma = -sigma S*(s, z, sigma) for signals (batch, M, time) and their prompts."""
    return (signals - prior.denoise_prompted(signals, prompts, sigma)) / sigma


__all__ = ["Prompt", "TextPrior", "as_prompts", "derivative_prompted"]
