"""The tasks' wiring by hand, on the analytic prior (mutation survivors of engine/tasks.py, issue 23): where each
sampler starts (sigma_max times the generator's own noise, plus the first estimate of a warm start), that the seed
decides the noise, that progress reaches the callback, and that `separate` runs the likelihood and options its
preset names."""

import pytest
import torch

from stemweave.engine import tasks
from stemweave.engine.presets import load_preset
from stemweave.engine.sampler import SamplerSettings

ONE_STEP = SamplerSettings(steps=1, sigma_min=1e-3, sigma_max=0.7, s_churn=0.0)
FEW = SamplerSettings(steps=4, sigma_min=1e-3, sigma_max=0.7, s_churn=5.0, resamples=1)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


class Spy:
    """The prior, recording what each network evaluation is shown."""

    def __init__(self, prior):
        self.prior, self.stems, self.seen = prior, prior.stems, []

    def denoise(self, x, sigma):
        self.seen.append((x.clone(), float(sigma)))
        return self.prior.denoise(x, sigma)


def noise(seed, shape, draws=1, dtype=torch.float64):
    """The generator's first `draws` standard normal tensors of `shape`, as seeded_randn draws them."""
    g = seeded(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(draws)]


def test_generate_starts_at_sigma_max_times_the_seeded_noise(independent_prior):
    spy = Spy(independent_prior)
    tasks.generate(spy, 2, 512, ONE_STEP, generator=seeded(5))
    (x, sigma), = spy.seen
    expected, = noise(5, (2, 4, 512), dtype=torch.float32)  # generate starts in the default dtype
    assert sigma == pytest.approx(0.7)
    torch.testing.assert_close(x, 0.7 * expected)


def test_accompany_starts_at_noise_and_shows_the_known_stems_noised_by_the_next_draw(independent_prior):
    spy = Spy(independent_prior)
    known = independent_prior.sample(1, seeded(1))
    mask = torch.tensor([False, True, False, True])[None, :, None]
    out = tasks.accompany(spy, known, mask, ONE_STEP, generator=seeded(6))
    (x, _), = spy.seen
    start, known_noise = noise(6, known.shape, draws=2)
    torch.testing.assert_close(x[:, [0, 2]], 0.7 * start[:, [0, 2]])
    torch.testing.assert_close(x[:, [1, 3]], known[:, [1, 3]] + 0.7 * known_noise[:, [1, 3]])
    assert torch.equal(out[:, [1, 3]], known[:, [1, 3]])
    as_bool = tasks.accompany(independent_prior, known, mask, ONE_STEP, generator=seeded(6))
    for dtype in (torch.uint8, torch.float64):  # a 0/1 mask of any dtype means the same
        as_other = tasks.accompany(independent_prior, known, mask.to(dtype), ONE_STEP, generator=seeded(6))
        assert torch.equal(as_other, as_bool)


def test_a_prior_that_hears_given_stems_is_shown_whole_given_stems_clean_and_partial_ones_noised(independent_prior):
    """`JointPrior.given_sigma_data` set: a stem given over the whole window enters as known * sqrt(sigma^2 + sd^2)
    / sd (so c_in(sigma) x = known / sd, as in training), one given over part of it as before (Sec. 4.2.2)."""
    spy = Spy(independent_prior)
    spy.given_sigma_data = 0.2
    known = independent_prior.sample(1, seeded(1))
    mask = torch.zeros(1, 4, known.shape[-1], dtype=torch.bool)
    mask[:, 1] = True  # drums given
    mask[:, 3, :100] = True  # the start of the piano known (a continuation window)
    out = tasks.accompany(spy, known, mask, ONE_STEP, generator=seeded(6))
    (x, _), = spy.seen
    start, known_noise = noise(6, known.shape, draws=2)
    torch.testing.assert_close(x[:, 1], known[:, 1] * (0.7**2 + 0.2**2) ** 0.5 / 0.2)
    torch.testing.assert_close(x[:, 3, :100], known[:, 3, :100] + 0.7 * known_noise[:, 3, :100])
    torch.testing.assert_close(x[:, [0, 2]], 0.7 * start[:, [0, 2]])
    assert torch.equal(out[mask], known[mask])


@pytest.mark.parametrize("warm", [False, True])
def test_gaussian_separation_starts_at_the_first_estimate_plus_noise(independent_prior, warm):
    spy = Spy(independent_prior)
    truth = independent_prior.sample(2, seeded(2))
    initial = truth + 0.05 if warm else None
    sent = initial.float() if warm else None  # a float32 first estimate joins the float64 mixture's dtype
    tasks.separate_gaussian(spy, truth.sum(1), ONE_STEP, initial=sent, generator=seeded(7))
    (x, _), = spy.seen
    initial = sent.double() if warm else None
    start, = noise(7, truth.shape)
    torch.testing.assert_close(x, (initial if warm else 0) + 0.7 * start)


@pytest.mark.parametrize("constrained", [0, 2])
def test_dirac_separation_starts_at_the_first_estimate_plus_noise_with_the_constrained_stem_taking_the_rest(
        independent_prior, constrained):
    spy = Spy(independent_prior)
    truth = independent_prior.sample(2, seeded(3))
    y = truth.sum(1, keepdim=True)
    initial = truth - 0.1
    tasks.separate_dirac(spy, y, ONE_STEP, initial=initial, constrained=constrained, generator=seeded(8))
    (x, _), = spy.seen
    start, = noise(8, truth.shape)
    expected = initial + 0.7 * start
    others = [k for k in range(4) if k != constrained]
    expected[:, constrained] = y[:, 0] - expected[:, others].sum(1)
    torch.testing.assert_close(x, expected)


@pytest.mark.parametrize("task,option,default,other", [
    (tasks.separate_dirac, "constrained", 0, 1),  # the first stem takes the rest by default
    (tasks.separate_gaussian, "gamma", 1.06, 2.06),  # the reference's 0.75 with its 1/(2 gamma^2)
])
def test_separation_defaults(independent_prior, task, option, default, other):
    mixture = independent_prior.sample(2, seeded(4)).sum(1)
    implicit = task(independent_prior, mixture, FEW, generator=seeded(9))
    explicit = task(independent_prior, mixture, FEW, **{option: default}, generator=seeded(9))
    changed = task(independent_prior, mixture, FEW, **{option: other}, generator=seeded(9))
    assert torch.equal(implicit, explicit) and not torch.allclose(implicit, changed)


def run_task(name, prior, generator, callback=None):
    truth = prior.sample(2, seeded(0))
    mask = torch.tensor([False, True, False, False])[None, :, None]
    if name == "generate":
        return tasks.generate(prior, 2, 512, FEW, generator=generator, callback=callback)
    if name == "accompany":
        return tasks.accompany(prior, truth, mask, FEW, generator=generator, callback=callback)
    task = tasks.separate_dirac if name == "dirac" else tasks.separate_gaussian
    return task(prior, truth.sum(1), FEW, initial=truth, generator=generator, callback=callback)


TASKS = ["generate", "accompany", "dirac", "gaussian"]


@pytest.mark.parametrize("name", TASKS)
def test_the_seed_decides_the_noise(independent_prior, name):
    same = [run_task(name, independent_prior, seeded(21)) for _ in range(2)]
    other = run_task(name, independent_prior, seeded(22))
    assert torch.equal(same[0], same[1]) and not torch.allclose(same[0], other)


@pytest.mark.parametrize("name", TASKS)
def test_every_step_reaches_the_callback(independent_prior, name):
    seen = []
    out = run_task(name, independent_prior, seeded(1), callback=seen.append)
    assert [s["step"] for s in seen] == [1, 2, 3, 4] and all(s["steps"] == 4 for s in seen)
    assert seen[-1]["sigma"] == 0.0
    if name == "gaussian":  # the sampler's last state is the answer (the others constrain it once more)
        assert torch.equal(seen[-1]["x"], out)


def test_separate_runs_the_likelihood_and_options_its_preset_names(independent_prior):
    prior = independent_prior
    truth = prior.sample(2, seeded(5))
    y = truth.sum(1)
    gaussian = load_preset("separate-gaussian").with_overrides(steps=4, resamples=0, gamma=0.9)
    got = tasks.separate(prior, y, gaussian, generator=seeded(3))
    want = tasks.separate_gaussian(prior, y, gaussian.sampler, gamma=0.9, generator=seeded(3))
    assert torch.equal(got, want)
    dirac = load_preset("separate-fast").with_overrides(steps=4, constrained="piano")
    assert "likelihood" in dirac.options
    got = tasks.separate(prior, y, dirac, generator=seeded(3))
    want = tasks.separate_dirac(prior, y, dirac.sampler, constrained="piano", generator=seeded(3))
    assert torch.equal(got, want)
    # a preset naming no likelihood separates with the Dirac likelihood
    bare = load_preset("separate-fast").with_overrides(steps=4)
    bare.options.pop("likelihood")
    assert torch.equal(tasks.separate(prior, y, bare, generator=seeded(3)),
                       tasks.separate_dirac(prior, y, bare.sampler, constrained="bass", generator=seeded(3)))
    # a warm-start preset passes the first estimate on, and refuses to run without one
    refine = load_preset("refine").with_overrides(steps=4)
    got = tasks.separate(prior, y, refine, initial=truth, generator=seeded(3), callback=lambda s: None)
    want = tasks.separate_dirac(prior, y, refine.sampler, constrained="bass", initial=truth, generator=seeded(3))
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="refines a first estimate"):
        tasks.separate(prior, y, refine)


def test_unknown_stems_and_mixture_shapes_are_refused_by_name(independent_prior):
    y = torch.zeros(1, 512, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"unknown stem 'vocals': this model's stems are bass, drums, guitar, piano"):
        tasks.separate_dirac(independent_prior, y, FEW, constrained="vocals")
    for index in (-1, 4):
        with pytest.raises(ValueError, match=rf"stem index {index} out of range for 4 stems"):
            tasks.separate_dirac(independent_prior, y, FEW, constrained=index)
    with pytest.raises(ValueError, match=r"\(batch, time\) or \(batch, 1, time\), got \(1, 2, 512\)"):
        tasks.separate_dirac(independent_prior, torch.zeros(1, 2, 512, dtype=torch.float64), FEW)
    assert tasks.separate_dirac(independent_prior, y[:, None], FEW, generator=seeded(0)).shape == (1, 4, 512)
