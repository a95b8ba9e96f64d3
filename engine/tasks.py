"""The MSDM tasks as constrained sampling from a prior over K stems (MSDM Sec. 4.2).

Each task builds the constrained ODE direction of its paper equation and hands
it to the one shared sampler; the constraint is applied once more to the final
sample so that what is known stays exactly known.
"""

from __future__ import annotations

import torch

from stemweave.engine.denoiser import shown_clean
from stemweave.engine.priors import Prior, derivative
from stemweave.engine.sampler import Callback, SamplerSettings, run_sampler, seeded_randn


def generate(
    prior: Prior,
    batch: int,
    length: int,
    settings: SamplerSettings,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Total generation (Sec. 4.2.1): integrate Eq. 3 with the prior score of Eq. 4. Returns (batch, K, length)."""
    randn = seeded_randn(generator)
    x = settings.sigma_max * randn(torch.empty(batch, len(prior.stems), length, device=device))
    return run_sampler(settings, lambda x, sigma: derivative(prior, x, sigma), x, randn=randn, callback=callback)


def accompany(
    prior: Prior,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    settings: SamplerSettings,
    *,
    guidance: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Partial generation (Sec. 4.2.2): S_Ī([x_Ī(t), x̂_I(t)], sigma) with x̂_I(t) ~ N(x_I, sigma^2 I).

    known: (batch, K, time), the given stems (anything where unknown);
    known_mask: bool, broadcastable to known: True where the audio is given.
    A mask over stems accompanies; a mask over stems and time regenerates a
    time range (the same inpainting, in time). A prior trained to hear given
    stems (`JointPrior.given_sigma_data`) is shown each wholly given stem clean
    instead of noised (`shown_clean`; docs/priors.md): at high sigma the noised
    stem says almost nothing, the clean one all it has.

    guidance w (such a prior only): D_w = D(clean view) + w (D(clean view) - D(noised view)), classifier-free
    guidance (Ho & Salimans 2022, Eq. 6) between the prior that hears the given stems and the one that barely
    does; it costs a second evaluation per step and fades as sigma falls and the two views agree.
    """
    randn = seeded_randn(generator)
    known_mask = known_mask.to(torch.bool).expand_as(known)
    sigma_data = getattr(prior, "given_sigma_data", None)
    whole = known_mask.all(dim=-1, keepdim=True)  # the stems given over the whole window
    hears_clean = bool(sigma_data) and bool(whole.any())

    def noised_view(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return torch.where(known_mask, known + sigma * randn(known), x)

    def direction(x: torch.Tensor, sigma: float) -> torch.Tensor:
        noised = noised_view(x, sigma)
        if not hears_clean:
            return derivative(prior, noised, sigma)
        heard = derivative(prior, torch.where(whole, shown_clean(known, sigma, sigma_data), noised), sigma)
        if not guidance:
            return heard
        return heard + guidance * (heard - derivative(prior, noised, sigma))  # D enters the derivative linearly

    x = settings.sigma_max * randn(known)
    x = run_sampler(settings, direction, x, randn=randn, callback=callback)
    return torch.where(known_mask, known, x)


def separate_dirac(
    prior: Prior,
    mixture: torch.Tensor,
    settings: SamplerSettings,
    *,
    constrained: int | str = 0,
    initial: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """'MSDM Dirac' separation, Algorithm 1 (posterior score Eq. 23): the constrained stem is y - sum(others).

    mixture: (batch, time) or (batch, 1, time). Returns (batch, K, time)
    stems that sum to the mixture exactly. `initial` (batch, K, time) warm-
    starts from a first estimate noised to settings.sigma_max (SDEdit).
    """
    y = _as_mixture(mixture)
    c = _stem_index(prior, constrained)
    randn = seeded_randn(generator)

    def constrain(x: torch.Tensor) -> torch.Tensor:  # z <- [x_{n != c}, y - sum_{n != c} x_n]
        others = x.sum(1, keepdim=True) - x[:, c : c + 1]
        return torch.cat([x[:, :c], y - others, x[:, c + 1 :]], dim=1)

    def posterior_derivative(x: torch.Tensor, sigma: float) -> torch.Tensor:  # g_n <- S_n(z) - S_c(z)
        d = derivative(prior, constrain(x), sigma)
        return d - d[:, c : c + 1]  # zero for the constrained stem itself

    x = _start(prior, y, settings, initial, randn)
    x = run_sampler(settings, posterior_derivative, x, randn=randn, callback=callback)
    return constrain(x)


def separate_gaussian(
    prior: Prior,
    mixture: torch.Tensor,
    settings: SamplerSettings,
    *,
    gamma: float = 1.06,
    initial: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """'MSDM Gaussian' separation, Eq. 27: S_m(x) + (y - sum_n x_n) / gamma(t)^2 with gamma(t) = gamma * sigma.

    This is the exact gradient of log N(y; sum x, gamma^2 I). The reference
    code uses (y - sum x) / (2 gamma^2) with gamma = 0.75, which equals this
    with gamma = 0.75 * sqrt(2) = 1.06 (the preset's value). The stems are not
    projected, so they sum to the mixture only approximately.
    """
    y = _as_mixture(mixture)
    randn = seeded_randn(generator)

    def posterior_derivative(x: torch.Tensor, sigma: float) -> torch.Tensor:
        gamma_t = gamma * sigma  # γ(t) in Eq. 7
        residual = y - x.sum(1, keepdim=True)
        return derivative(prior, x, sigma) - sigma * residual / gamma_t**2  # dx/dsigma = -sigma * score

    x = _start(prior, y, settings, initial, randn)
    return run_sampler(settings, posterior_derivative, x, randn=randn, callback=callback)


def _start(prior: Prior, y: torch.Tensor, settings: SamplerSettings, initial: torch.Tensor | None, randn) -> torch.Tensor:
    """x(sigma_max): pure noise, or a first estimate noised to sigma_max (a warm start)."""
    shape = (y.shape[0], len(prior.stems), y.shape[-1])
    start = torch.zeros(shape, device=y.device, dtype=y.dtype) if initial is None else initial.to(y)
    return start + settings.sigma_max * randn(start)


def _as_mixture(mixture: torch.Tensor) -> torch.Tensor:
    """(batch, time) or (batch, 1, time) -> (batch, 1, time)."""
    if mixture.dim() == 2:
        return mixture[:, None]
    if mixture.dim() == 3 and mixture.shape[1] == 1:
        return mixture
    raise ValueError(f"a mixture is (batch, time) or (batch, 1, time), got {tuple(mixture.shape)}")


def _stem_index(prior: Prior, stem: int | str) -> int:
    if isinstance(stem, str):
        if stem not in prior.stems:
            raise ValueError(f"unknown stem {stem!r}: this model's stems are {', '.join(prior.stems)}")
        return prior.stems.index(stem)
    if not 0 <= stem < len(prior.stems):
        raise ValueError(f"stem index {stem} out of range for {len(prior.stems)} stems")
    return stem


def separate(prior: Prior, mixture: torch.Tensor, preset, **kwargs) -> torch.Tensor:
    """Separation with the likelihood a preset names ('dirac' by default); kwargs go to the task.

    A `warm_start` preset expects `initial=` (a first estimate, e.g. the regression separator's): the
    sampler then starts from it noised to the preset's sigma_max (SDEdit) instead of from pure noise.
    """
    options = dict(preset.options)
    if options.pop("warm_start", False) and kwargs.get("initial") is None:
        raise ValueError(f"preset {preset.name!r} refines a first estimate: pass initial= (e.g. a regression separator's stems)")
    if options.pop("likelihood", "dirac") == "gaussian":
        return separate_gaussian(prior, mixture, preset.sampler, **options, **kwargs)
    return separate_dirac(prior, mixture, preset.sampler, **options, **kwargs)
