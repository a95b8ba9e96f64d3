"""The GMSDI inference procedures (Postolache et al., Sec. 3) as constrained sampling with a `TextPrior`.

Conventions shared with engine/tasks.py: the sampler integrates dx/dsigma =
(x - D(x)) / sigma = -sigma S(x); a likelihood score term L becomes
-sigma L in that direction. The Gaussian likelihood widths of Eqs. 8-12 are
annealed with the noise, gamma(t) = gamma * sigma(t) (as MSDM's Gaussian
separator, engine/tasks.py), so `gamma_x`, `gamma_y` are unitless; gamma =
inf drops a likelihood term (gamma_y = inf: the mixture ignores the stems).

Total and partial generation sample the K stems and the mixture y(t) in
parallel: the state is (batch, K + 1, time), the mixture last.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from stemweave.engine.gmsdi.prior import Prompt, TextPrior, derivative_prompted
from stemweave.engine.priors import derivative
from stemweave.engine.sampler import Callback, SamplerSettings, run_sampler, seeded_randn
from stemweave.engine.tasks import _as_mixture, _stem_index

METHODS = ("separator", "extractor")


def _inverse_square(gamma: float, sigma: float) -> float:
    """1 / gamma(t)^2 with gamma(t) = gamma * sigma; 0 for gamma = inf."""
    return 0.0 if math.isinf(gamma) else 1.0 / (gamma * sigma) ** 2


def _check_coupling(settings: SamplerSettings, stems: int, gamma_x: float, gamma_y: float) -> None:
    """Refuse likelihood widths that make the Euler steps of Eqs. 10-12 diverge on this schedule.

    The residual r = y - sum x obeys dr/dsigma = lam r / sigma + ... with
    lam = K / gamma_x^2 + 1 / gamma_y^2, so an Euler step from sigma_hat to
    sigma_next multiplies it by 1 - lam (sigma_hat - sigma_next) / sigma_hat;
    past 2 in size it grows step after step. (The last step, to sigma = 0,
    is excluded: it runs once, on a residual that is already tiny.)
    """
    lam = stems * _inverse_square(gamma_x, 1.0) + _inverse_square(gamma_y, 1.0)
    sigmas = settings.sigmas().tolist()
    churn = min(settings.s_churn / settings.steps, math.sqrt(2) - 1)
    fractions = [1 - sigmas[i + 1] / (sigmas[i] * (1 + churn)) for i in range(len(sigmas) - 2)]
    worst = lam * max(fractions, default=0.0)
    if worst > 2:
        raise ValueError(f"gamma_x={gamma_x}, gamma_y={gamma_y} with {stems} stems couple stems and mixture too tightly "
                         f"for {settings.steps} steps (Euler factor {worst:.2f} > 2, it would diverge): raise gamma_x "
                         f"or gamma_y, or use more steps")


def generate(
    prior: TextPrior,
    batch: int,
    length: int,
    settings: SamplerSettings,
    *,
    gamma_x: float = 1.0,
    gamma_y: float = math.inf,
    groups: Sequence[Sequence[int | str]] | None = None,
    with_mixture: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    device: str | torch.device = "cpu",
):
    """Total generation, Eq. 10 (Eq. 11 with `groups`): stems and mixture sampled in parallel.

        x_k:  S(x_k(t), z_k, sigma) + (y(t) - sum_l x_l(t)) / gamma_x^2
        y:    S(y(t), z_1 ⊗ ... ⊗ z_K, sigma) + (sum_l x_l(t) - y(t)) / gamma_y^2

    `groups` is a partition {J_m} of the stems (indices or prompts): each
    group is sampled as one sub-mixture prompted with ⊗_{j in J_m} z_j (Eq. 11).
    Returns (batch, K or M, length) stems, and y (batch, 1, length) too with
    `with_mixture`.
    """
    if groups is not None:
        prior = prior.with_prompts([prior.joined(group) for group in _partition(prior, groups)])
    known = torch.zeros(batch, len(prior.stems), length, device=device)
    return accompany(prior, known, torch.zeros_like(known, dtype=torch.bool), settings, alpha=1.0, beta=1.0,
                     gamma_x=gamma_x, gamma_y=gamma_y, with_mixture=with_mixture, generator=generator, callback=callback)


def accompany(
    prior: TextPrior,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    settings: SamplerSettings,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    gamma_x: float = 1.0,
    gamma_y: float = 1.0,
    with_mixture: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
):
    """Partial generation, Eq. 12: generate x_J and y(t) given the known stems x_I.

        x_j:  S(x_j(t), z_j, sigma) + [y(t) - (alpha sum_I x_i(t) + beta sum_J x_l(t))] / gamma_x^2
        y:    S(y(t), ⊗_l z_l, sigma) + [(alpha sum_I x_i(t) + beta sum_J x_l(t)) - y(t)] / gamma_y^2

    with x_i(t) ~ N(x_i, sigma^2 I) (Eq. 2) drawn afresh at every evaluation.
    known: (batch, K, time); known_mask: bool, broadcastable to it, True where
    the audio is given (I). A mask over stems is Eq. 12 as written; a mask
    over time too applies the same rule sample by sample (a known time range
    of every stem: continuing a previous window). Nothing known is Eq. 10.
    Returns (batch, K, time) with the known samples exactly as given (and y).
    """
    randn = seeded_randn(generator)
    mask = known_mask.to(torch.bool).expand_as(known)
    b, k, t = known.shape
    prompts = [*prior.prompts, prior.mixture_prompt]  # z_1..z_K, then z_1 ⊗ ... ⊗ z_K for y
    scored = [j for j in range(k) if not bool(mask[:, j].all())] + [k]  # signals whose score is needed (y last)
    _check_coupling(settings, len(scored) - 1, gamma_x, gamma_y)

    def parallel_derivative(state: torch.Tensor, sigma: float) -> torch.Tensor:
        x, y = state[:, :k], state[:, k:]
        x = torch.where(mask, known + sigma * randn(known), x)  # x_I(t) from the perturbation kernel, Eq. 2
        mix = alpha * (x * mask).sum(1, keepdim=True) + beta * (x * ~mask).sum(1, keepdim=True)
        d = torch.zeros_like(state)
        signals = torch.cat([x, y], dim=1)[:, scored]
        d[:, scored] = derivative_prompted(prior, signals, [prompts[j] for j in scored], sigma)  # -sigma S(., z)
        d[:, :k] -= sigma * (y - mix) * _inverse_square(gamma_x, sigma)  # likelihood of Eq. 8 on every x_j
        d[:, k:] -= sigma * (mix - y) * _inverse_square(gamma_y, sigma)  # ... and its mirror on y, Eq. 9
        return torch.where(torch.cat([mask, torch.zeros_like(mask[:, :1])], 1), torch.zeros_like(d), d)

    state = settings.sigma_max * randn(torch.empty(b, k + 1, t, device=known.device, dtype=known.dtype))
    state = run_sampler(settings, parallel_derivative, state, randn=randn, callback=callback)
    stems = torch.where(mask, known, state[:, :k])
    return (stems, state[:, k:]) if with_mixture else stems


def separate(
    prior: TextPrior,
    mixture: torch.Tensor,
    settings: SamplerSettings,
    *,
    constrained: int | str = -1,
    initial: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """GMSDI Separator, Eq. 13: for k != c,  S(x_k(t), z_k, sigma) - S(y(0) - sum_{l != c} x_l(t), z_c, sigma).

    Any stem c may be the constrained one (the paper takes the K-th; -1 here).
    mixture: (batch, time) or (batch, 1, time). Returns (batch, K, time) stems
    that sum to the mixture exactly (x_c = y - sum of the others).
    """
    y = _as_mixture(mixture)
    c = _stem_index(prior, constrained if not isinstance(constrained, int) or constrained >= 0
                    else len(prior.stems) + constrained)
    randn = seeded_randn(generator)

    def constrain(x: torch.Tensor) -> torch.Tensor:  # x_c <- y(0) - sum_{l != c} x_l(t)
        others = x.sum(1, keepdim=True) - x[:, c : c + 1]
        return torch.cat([x[:, :c], y - others, x[:, c + 1 :]], dim=1)

    def separator_derivative(x: torch.Tensor, sigma: float) -> torch.Tensor:
        d = derivative(prior, constrain(x), sigma)  # -sigma S(x_k, z_k) for every k, x_c constrained
        return d - d[:, c : c + 1]  # -sigma [S(x_k, z_k) - S(y - sum_{l != c} x_l, z_c)]; zero for c

    shape = (y.shape[0], len(prior.stems), y.shape[-1])
    start = torch.zeros(shape, device=y.device, dtype=y.dtype) if initial is None else initial.to(y)
    x = start + settings.sigma_max * randn(start)
    x = run_sampler(settings, separator_derivative, x, randn=randn, callback=callback)
    return constrain(x)


def extract(
    prior: TextPrior,
    mixture: torch.Tensor,
    settings: SamplerSettings,
    *,
    stem: int | str,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """GMSDI Extractor, Eq. 14:  S(x_k(t), z_k, sigma) - S(y(0) - x_k(t), ⊗_{l != k} z_l, sigma).

    The Separator (Eq. 13) over two sources, x_k and its complement prompted
    with the other stems' joint text, the complement constrained. Returns
    (batch, 2, time): x_k and y - x_k, which sum to the mixture exactly.
    """
    k = _stem_index(prior, stem)
    others = [l for l in range(len(prior.stems)) if l != k]
    if not others:
        raise ValueError("extraction needs at least two stems: the one extracted and the rest")
    pair = prior.with_prompts([prior.prompts[k], prior.joined(others)])
    return separate(pair, mixture, settings, constrained=1, generator=generator, callback=callback)


def extract_all(prior: TextPrior, mixture: torch.Tensor, settings: SamplerSettings, *, stems: Sequence[int | str] | None = None,
                generator: torch.Generator | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Every stem (or `stems`) extracted on its own with Eq. 14: (batch, K, time); these need not sum to the mixture."""
    y = _as_mixture(mixture)
    wanted = {_stem_index(prior, s) for s in (stems if stems is not None else range(len(prior.stems)))}
    out = torch.zeros(y.shape[0], len(prior.stems), y.shape[-1], device=y.device, dtype=y.dtype)
    for k in sorted(wanted):
        out[:, k] = extract(prior, y, settings, stem=k, generator=generator, callback=callback)[:, 0]
    return out


def ensemble(
    separator_prior: TextPrior,
    extractor_prior: TextPrior,
    mixture: torch.Tensor,
    choice: Mapping[str, str],
    separator_settings: SamplerSettings,
    extractor_settings: SamplerSettings,
    *,
    constrained: int | str = -1,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Table 2's ensemble: each stem from the method `choice[stem]` ('separator' | 'extractor') picked on validation data.

    The two priors hold the same stems with each method's guidance and negative
    prompts. The Separator runs once if any stem takes it; the Extractor once
    per stem that takes it. The result need not sum to the mixture (the region
    layer re-projects the residual equally over the stems).
    """
    stems = separator_prior.stems
    if extractor_prior.stems != stems:
        raise ValueError(f"the separator's stems {stems} and the extractor's {extractor_prior.stems} differ")
    unknown = {s: m for s, m in choice.items() if s not in stems or m not in METHODS}
    if unknown or set(choice) != set(stems):
        raise ValueError(f"choice needs one of {METHODS} for each stem of {stems}, got {dict(choice)}")
    y = _as_mixture(mixture)
    out = torch.zeros(y.shape[0], len(stems), y.shape[-1], device=y.device, dtype=y.dtype)
    by_separator = [k for k, s in enumerate(stems) if choice[s] == "separator"]
    if by_separator:
        separated = separate(separator_prior, y, separator_settings, constrained=constrained, generator=generator,
                             callback=callback)
        out[:, by_separator] = separated[:, by_separator]
    for k, s in enumerate(stems):
        if choice[s] == "extractor":
            out[:, k] = extract(extractor_prior, y, extractor_settings, stem=k, generator=generator, callback=callback)[:, 0]
    return out


def choose_ensemble(scores: Mapping[str, Mapping[str, float]]) -> dict[str, str]:
    """Per stem, the method with the higher validation score: {method: {stem: SI-SDRi}} -> {stem: method}."""
    stems = set().union(*(set(v) for v in scores.values()))
    return {s: max((m for m in scores if s in scores[m]), key=lambda m: scores[m][s]) for s in sorted(stems)}


def _partition(prior: TextPrior, groups: Sequence[Sequence[int | str]]) -> list[list[int]]:
    indices = [[_stem_index(prior, s) for s in group] for group in groups]
    flat = sorted(i for group in indices for i in group)
    if flat != list(range(len(prior.stems))) or any(not g for g in indices):
        raise ValueError(f"groups must partition the stems {prior.stems} (each once, no empty group), got {list(groups)}")
    return indices


__all__ = ["METHODS", "Prompt", "accompany", "choose_ensemble", "ensemble", "extract", "extract_all", "generate", "separate"]
