"""GMSDI's tasks and guidance on an analytic text prior: each prompt selects stationary Gaussian stems, scored by their Wiener filter.

With independent Gaussian stems the mixture of any subset is Gaussian with
the summed spectrum, so the prompted mixture model is exact for single stems
(Eq. 5 holds) and for joined prompts (the complement of Eq. 14, the mixture
of Eq. 10). Then the Separator (Eq. 13) is MSDM's Dirac separator over the
per-stem priors, step for step, and a posterior sampler's error is about 2x
the posterior variance (see test_tasks_analytic.py for that bound; measured
here 1.89-1.98 for the Separator and 1.82-1.90 for the Extractor).
"""

import math

import pytest
import torch

from stemweave.engine.analytic import GaussianStemPrior, example_spectra
from stemweave.engine.gmsdi import tasks as gmsdi
from stemweave.engine.gmsdi.analytic import MultiHotEncoder, WienerTextDenoiser
from stemweave.engine.gmsdi.prior import Prompt, TextPrior
from stemweave.engine.gmsdi.text import UnknownPromptError
from stemweave.engine.sampler import SamplerSettings
from stemweave.engine.tasks import separate_dirac

STEMS = ("bass", "drums", "guitar", "piano")
SEPARATE = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=1.0, s_churn=20.0, resamples=2)
SEPARATE_FAST = SamplerSettings(steps=40, sigma_min=1e-4, sigma_max=1.0, s_churn=20.0)
GENERATE = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=20.0, s_churn=20.0)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def spectra():
    return example_spectra(512, rate=4000.0)  # (4, F)


@pytest.fixture
def model(spectra):
    return WienerTextDenoiser(spectra, STEMS)


def text_prior(model, prompts=STEMS, guidance=0.0, negatives=None):
    return TextPrior(model, MultiHotEncoder(STEMS), prompts, null=model.null_text, guidance=guidance, negatives=negatives)


@pytest.fixture
def truth(spectra):
    return GaussianStemPrior.independent(spectra, STEMS).sample(8, seeded(0)).float()  # (8, 4, 512)


# Guidance (Sec. 2.1) ------------------------------------------------------------------------------


def test_guidance_zero_is_the_plain_conditional_score(model, truth):
    x = truth + 0.3 * torch.randn(truth.shape, generator=seeded(1))
    prior = text_prior(model, guidance=0.0)
    for k, stem in enumerate(STEMS):
        z = MultiHotEncoder(STEMS).embed([stem]).expand(len(x), -1)
        assert torch.allclose(prior.denoise(x, 0.3)[:, k : k + 1], model(x[:, k : k + 1], 0.3, z), atol=1e-6)


def test_guidance_is_cfg_against_the_null_embedding(model, truth):
    x = truth + 0.3 * torch.randn(truth.shape, generator=seeded(1))
    w = 3.0
    guided = text_prior(model, guidance=w).denoise(x, 0.3)
    z = MultiHotEncoder(STEMS).embed(list(STEMS))
    for k in range(4):
        conditional = model(x[:, k : k + 1], 0.3, z[k].expand(len(x), -1))
        null = model(x[:, k : k + 1], 0.3, model.null_text.expand(len(x), -1))
        assert torch.allclose(guided[:, k : k + 1], conditional + w * (conditional - null), atol=1e-6)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0])
def test_a_negative_prompt_turns_the_score_away_from_what_it_names(model, spectra, sigma):
    """S* = S(z) + w (S(z) - S(z_neg)): prompting 'bass' with the negative 'drums' leaves less drums in D* than
    the negative 'guitar' does, and less guitar with the negative 'guitar' (each stem's share of D*, measured
    against the true stems of a noisy four-stem mixture)."""
    world = GaussianStemPrior.independent(spectra, STEMS).sample(16, seeded(2)).float()
    noisy = world.sum(1, keepdim=True) + sigma * torch.randn(16, 1, 512, generator=seeded(3))

    def share(negative):  # each true stem's component in D*(noisy, bass | negative)
        d = text_prior(model, ["bass"], guidance=3.0, negatives=[negative]).denoise(noisy, sigma)
        return {s: float((d * world[:, k : k + 1]).sum() / world[:, k].pow(2).sum()) for k, s in enumerate(STEMS)}

    against_drums, against_guitar = share("drums"), share("guitar")
    assert against_drums["drums"] < against_guitar["drums"]
    assert against_guitar["guitar"] < against_drums["guitar"]


def test_prompts_and_negatives_are_checked():
    model = WienerTextDenoiser(example_spectra(64), STEMS)
    with pytest.raises(UnknownPromptError, match="strings"):
        text_prior(model, ["bass", "strings"]).denoise(torch.zeros(1, 2, 64), 0.1)
    with pytest.raises(ValueError, match="one per prompt"):
        text_prior(model, ["bass", "drums"], negatives=["guitar"])
    with pytest.raises(ValueError, match="empty"):
        text_prior(model, ["bass", " "])


# Separation (Eqs. 13, 14) ---------------------------------------------------------------------------


def test_separator_is_msdm_dirac_over_prompted_stems_and_sums_to_the_mixture(model, spectra, truth):
    y = truth.sum(1)
    stems = gmsdi.separate(text_prior(model), y, SEPARATE_FAST, constrained="drums", generator=seeded(4))
    dirac = separate_dirac(GaussianStemPrior.independent(spectra, STEMS), y, SEPARATE_FAST, constrained="drums",
                           generator=seeded(4))
    assert torch.allclose(stems, dirac, atol=1e-5)
    assert torch.allclose(stems.sum(1), y, atol=1e-5)


def test_separator_and_extractor_sample_the_posterior(model, spectra, truth):
    gaussian = GaussianStemPrior.independent(spectra, STEMS)
    y, variance = truth.sum(1), gaussian.posterior_variance()
    separated = gmsdi.separate(text_prior(model), y, SEPARATE, generator=seeded(5))  # constrained: the last stem
    extracted = gmsdi.extract_all(text_prior(model), y, SEPARATE, generator=seeded(6))
    for estimate in (separated, extracted):
        ratio = ((estimate.double() - truth.double()) ** 2).sum(-1).mean(0) / variance
        assert torch.all((ratio - 2).abs() < 0.4), ratio


def test_extractor_pairs_sum_to_the_mixture_and_prompt_the_complement(model, truth):
    y = truth.sum(1)
    model.seen.clear()
    pair = gmsdi.extract(text_prior(model), y, SEPARATE_FAST, stem="guitar", generator=seeded(7))
    assert pair.shape == (8, 2, 512) and torch.allclose(pair.sum(1), y, atol=1e-5)
    rows = {tuple(row.tolist()) for call in model.seen for row in call}
    assert rows == {(0.0, 0.0, 1.0, 0.0), (1.0, 1.0, 0.0, 1.0)}  # z_guitar and z_bass ⊗ z_drums ⊗ z_piano


def test_ensemble_takes_each_stem_from_its_chosen_method(model, truth):
    y = truth.sum(1)
    choice = gmsdi.choose_ensemble({"separator": {"bass": 9.0, "drums": 15.0}, "extractor": {"bass": 11.0, "drums": 10.0}})
    assert choice == {"bass": "extractor", "drums": "separator"}
    prior = text_prior(model, ["bass", "drums", "guitar"])
    choice = {"bass": "extractor", "drums": "separator", "guitar": "separator"}
    out = gmsdi.ensemble(prior, prior, y, choice, SEPARATE_FAST, SEPARATE_FAST, generator=seeded(8))
    generator = seeded(8)  # the ensemble draws the Separator's noise first, then each extraction's
    separated = gmsdi.separate(prior, y, SEPARATE_FAST, generator=generator)
    extracted = gmsdi.extract(prior, y, SEPARATE_FAST, stem="bass", generator=generator)
    assert torch.allclose(out[:, 1:], separated[:, 1:]) and torch.allclose(out[:, 0], extracted[:, 0])


@pytest.mark.parametrize("prompts", [("bass", "drums"), ("bass", "drums", "guitar, piano"), ("piano", "guitar", "bass", "drums"),
                                     ("bass", "drums", "guitar", "piano", "drums, piano")])
def test_any_number_of_stems(model, spectra, truth, prompts):
    y = truth[:2].sum(1)
    prior = text_prior(model, prompts)
    k = len(prompts)
    separated = gmsdi.separate(prior, y, SamplerSettings(steps=8, sigma_max=1.0), constrained=0, generator=seeded(9))
    assert separated.shape == (2, k, 512) and torch.allclose(separated.sum(1), y, atol=1e-5)
    # step for step MSDM's Dirac separator over independent stems with the prompts' spectra (a joined prompt's is
    # the sum of its stems')
    prompt_spectra = torch.stack([sum(spectra[STEMS.index(name.strip())] for name in prompt.split(","))
                                  for prompt in prompts])
    dirac = separate_dirac(GaussianStemPrior.independent(prompt_spectra, [f"p{i}" for i in range(k)]), y,
                           SamplerSettings(steps=8, sigma_max=1.0), constrained=0, generator=seeded(9))
    assert torch.allclose(separated, dirac.to(separated.dtype), atol=1e-5)
    extracted = gmsdi.extract(prior, y, SamplerSettings(steps=8, sigma_max=1.0), stem=k - 1)
    assert torch.allclose(extracted.sum(1), y, atol=1e-5)
    generated = gmsdi.generate(prior, 2, 512, SamplerSettings(steps=8, sigma_max=20.0), gamma_x=math.sqrt(k),
                               generator=seeded(9))  # gamma_x^2 = K: stable Euler steps even with 8 steps
    assert generated.shape == (2, k, 512) and torch.isfinite(generated).all()


# Generation (Eqs. 10-12) ------------------------------------------------------------------------------


def band_power_ratios(x, spectra):
    return (x.double().pow(2).mean((0, -1)) / spectra.double().mean(1)).tolist()


def test_total_generation_makes_stems_that_sum_to_the_mixture_sampled_beside_them(model, spectra):
    """Eq. 10 with gamma_y = inf: y follows its own prompted score; the stems are pulled to it (sum within 1%).

    Measured: stem powers 0.64 (bass), 0.90-1.0 of the prior's, y 0.93 of the
    mixture's (Euler at 200 steps; the likelihood shares y's residual equally
    between stems, so the narrow-band bass gets less than its share).
    """
    x, y = gmsdi.generate(text_prior(model), 32, 512, GENERATE, gamma_x=1.0, gamma_y=math.inf, with_mixture=True,
                          generator=seeded(10))
    assert ((x.sum(1, keepdim=True) - y).pow(2).mean() / y.pow(2).mean()) < 0.01
    assert float(y.pow(2).mean() / spectra.sum(0).mean()) == pytest.approx(1.0, abs=0.15)
    assert all(0.5 < r < 1.2 for r in band_power_ratios(x, spectra))
    independent = gmsdi.generate(text_prior(model), 32, 512, GENERATE, gamma_x=math.inf, generator=seeded(10))
    assert all(abs(r - 1) < 0.15 for r in band_power_ratios(independent, spectra))  # no likelihood: each stem's prior


def test_partition_form_samples_one_submixture_per_group(model, spectra):
    """Eq. 11: groups {bass}, {drums, guitar, piano} give two signals, the second with the sum of three spectra."""
    x = gmsdi.generate(text_prior(model), 32, 512, GENERATE, gamma_x=math.inf, groups=[["bass"], ["drums", "guitar", "piano"]],
                       generator=seeded(11))
    assert x.shape == (32, 2, 512)
    rest = float(x[:, 1].pow(2).mean() / spectra[1:].sum(0).mean())
    assert rest == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="partition"):
        gmsdi.generate(text_prior(model), 1, 512, GENERATE, groups=[["bass"], ["bass", "drums"]])


def test_partial_generation_keeps_the_known_stems_and_informs_the_mixture(model, truth):
    """Eq. 12: known drums stay exact; y is pulled to alpha * drums + beta * (generated stems)."""
    known = truth.clone()
    mask = torch.tensor([False, True, False, False])[None, :, None]
    settings = SamplerSettings(steps=150, sigma_min=1e-4, sigma_max=20.0, s_churn=20.0)
    x, y = gmsdi.accompany(text_prior(model), known, mask, settings, gamma_x=1.0, gamma_y=1.0, with_mixture=True,
                           generator=seeded(12))
    assert torch.equal(x[:, 1], truth[:, 1])
    assert ((x.sum(1, keepdim=True) - y).pow(2).mean() / y.pow(2).mean()) < 0.01
    # y follows the known drums (measured correlation 0.31; 0.5 for drums plus three independent stems of equal power).
    correlation = float((y[:, 0] * truth[:, 1]).sum() / (y[:, 0].norm() * truth[:, 1].norm()))
    assert correlation > 0.2, correlation


def test_partial_generation_with_a_time_mask_continues_known_audio(model, truth):
    known = truth.clone()
    mask = torch.zeros(1, 1, 512, dtype=torch.bool)
    mask[..., :128] = True  # the first quarter of every stem is known (a previous window)
    x = gmsdi.accompany(text_prior(model), known, mask, SamplerSettings(steps=150, sigma_max=20.0, s_churn=20.0),
                        generator=seeded(13))
    assert torch.equal(x[..., :128], truth[..., :128]) and torch.isfinite(x).all()


def test_too_tight_coupling_is_refused(model):
    with pytest.raises(ValueError, match="more steps"):
        gmsdi.generate(text_prior(model), 1, 512, SamplerSettings(steps=150, sigma_max=20.0), gamma_x=0.5)


def test_joined_prompts_and_mixture_prompt(model):
    prior = text_prior(model, [Prompt("bass", "drums"), Prompt("guitar")])
    assert prior.mixture_prompt == Prompt("bass, guitar") and prior.stems == ("bass", "guitar")
