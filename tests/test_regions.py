"""The region planner: exact sums after resampling, no seams, continuous continuations, loops, partials, cancel."""

import threading

import numpy as np
import pytest
import torch

from stemweave.engine.analytic import GaussianStemPrior, example_spectra
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region
from stemweave.engine.sampler import Cancelled
from stemweave.engine.windows import crossfade, plan_windows

STEMS = ("bass", "drums", "guitar", "piano")
EPS32 = np.finfo(np.float32).eps


def analytic_prior(window=256, rate=4000):
    prior = GaussianStemPrior.independent(example_spectra(window, rate=float(rate)), STEMS)
    prior.rate, prior.window = rate, window
    return prior


class FIRSeparator(torch.nn.Module):
    """A linear, shift-invariant separator: stems are short FIR filters of the mixture that sum to the identity."""

    def __init__(self, rate=4000, window=256, taps=9):
        super().__init__()
        self.stems, self.rate, self.window = STEMS, rate, window
        gen = torch.Generator().manual_seed(0)
        filters = torch.randn(3, taps, generator=gen, dtype=torch.float64) / taps
        identity = torch.zeros(taps, dtype=torch.float64)
        identity[taps // 2] = 1
        self.register_buffer("filters", torch.cat([filters, (identity - filters.sum(0))[None]])[:, None])  # (K, 1, taps)

    def forward(self, mixture):  # (B, 1, T) -> (B, K, T)
        return torch.nn.functional.conv1d(mixture.double(), self.filters, padding=self.filters.shape[-1] // 2).float()


def fast(task):
    name = {"separate": "separate-fast", "accompany": "accompany-fast", "generate": "generate"}[task]
    return load_preset(name).with_overrides(steps=3, resamples=0, s_churn=0.0)


def test_crossfade_is_a_partition_of_unity():
    for shape in ("hann", "linear", "triangle"):
        for overlap in (0.0, 0.25, 0.5, 0.75):
            plan = plan_windows(1000, 128, overlap)
            total = np.zeros(plan.padded)
            for i in range(plan.count):
                total[plan.start(i) : plan.start(i) + plan.window] += crossfade(plan, i, shape)
            np.testing.assert_allclose(total, 1.0, atol=1e-12)


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("channels,mode", [(1, "independent"), (2, "independent"), (2, "mid-side")])
def test_stems_sum_to_the_input_after_resampling(rate, channels, mode):
    rng = np.random.default_rng(rate + channels)
    audio = (0.2 * rng.standard_normal((channels, rate // 5))).astype(np.float32)  # 0.2 s: 4 windows at 4 kHz
    report = {}
    stems = run_region("separate", analytic_prior(), audio, rate, fast("separate"), channel_mode=mode,
                       batch_size=3, report=report)
    assert report["windows"] >= 4 * (channels if mode == "independent" else 2) // channels
    assert set(stems) == set(STEMS)
    for s in stems.values():
        assert s.dtype == np.float32 and s.shape == audio.shape
    scale = max(np.abs(s).max() for s in stems.values())
    np.testing.assert_allclose(sum(stems.values()), audio, rtol=0, atol=8 * EPS32 * scale)


def test_regression_separator_has_no_seam():
    """A linear separator run window by window and stitched equals it run on the whole region at once."""
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal((1, 3000))).astype(np.float32)
    model = FIRSeparator()
    whole = model(torch.from_numpy(audio)[None])[0].numpy()  # (K, T), no windows
    stems = run_region("separate", model, audio, 4000, fast("separate"), batch_size=2)
    stitched = np.stack([stems[s][0] for s in STEMS])
    interior = slice(8, -8)  # the region's own edges see zero padding in both
    error = np.abs(stitched - whole)[:, interior].max()
    assert error < 0.01 * np.abs(whole).max(), error
    np.testing.assert_allclose(sum(stems.values()), audio, atol=8 * EPS32 * np.abs(stitched).max())


def test_pointwise_separator_is_stitched_exactly():
    class Gains(torch.nn.Module):
        stems, rate, window = STEMS, 4000, 200

        def forward(self, mixture):
            return mixture * torch.tensor([0.1, 0.2, 0.3, 0.4])[None, :, None]

    audio = np.random.default_rng(2).standard_normal((2, 1234)).astype(np.float32)
    stems = run_region("separate", Gains(), audio, 4000, fast("separate"), overlap=0.4)
    for k, name in enumerate(STEMS):
        np.testing.assert_allclose(stems[name], audio * [0.1, 0.2, 0.3, 0.4][k], atol=1e-6)


def test_short_region_is_padded_and_cropped():
    audio = np.random.default_rng(3).standard_normal((1, 100)).astype(np.float32) * 0.1
    stems = run_region("separate", analytic_prior(), audio, 4000, fast("separate"))
    assert all(s.shape == (1, 100) for s in stems.values())
    np.testing.assert_allclose(sum(stems.values()), audio, atol=8 * EPS32 * max(np.abs(s).max() for s in stems.values()))


def _max_jump(x, borders):
    diffs = np.abs(np.diff(x))
    at = np.array(borders) - 1  # diff[t - 1] = x[t] - x[t - 1]
    elsewhere = np.delete(diffs, at)
    return diffs[at].max(), elsewhere.max()


def test_generated_windows_continue_each_other():
    prior, window = analytic_prior(), 256
    preset = load_preset("generate").with_overrides(steps=12, resamples=0, s_churn=0.0)
    out = run_region("generate", prior, None, 4000, preset, frames=5 * window, overlap=0.25, seed=3)
    plan = plan_windows(5 * window, window, 0.25)
    blend = plan.overlap // 2  # CONTINUATION_BLEND: the overlap's second half is re-sampled and cross-faded
    borders = [plan.start(i) + plan.overlap - d for i in range(1, plan.count) for d in (0, blend)]
    for name in STEMS:
        jump, typical = _max_jump(out[name][0], borders)
        assert jump <= typical, (name, jump, typical)


def test_accompaniment_keeps_given_and_regenerates_a_range():
    prior = analytic_prior()
    drums = (0.2 * np.random.default_rng(4).standard_normal((2, 900))).astype(np.float32)
    bass = run_region("accompany", prior, None, 4000, fast("accompany"), given={"drums": drums}, stems=["bass"])
    assert list(bass) == ["bass"] and bass["bass"].shape == (2, 900)
    np.testing.assert_array_equal(bass["bass"][0], bass["bass"][1])  # a centred part
    again = run_region("accompany", prior, None, 4000, fast("accompany"), stems=["bass"], seed=9,
                       given={"drums": drums, "bass": bass["bass"]}, regenerate=(300, 600))["bass"]
    np.testing.assert_array_equal(again[:, :300], bass["bass"][:, :300])
    np.testing.assert_array_equal(again[:, 600:], bass["bass"][:, 600:])
    assert np.abs(again[:, 300:600] - bass["bass"][:, 300:600]).max() > 1e-3


@pytest.mark.parametrize("seed", [1, 2])
def test_loop_wraps_seamlessly(seed):
    """The step across the wrap is a step like the stem's others: at most 4 times the stem's own median step
    (measured at most 3.2). Without the wrap inpainting the bass jumps by 8.0 (seed 1) and 5.0 (seed 2) medians."""
    preset = load_preset("generate").with_overrides(steps=12, resamples=0, s_churn=0.0)
    loop = run_region("generate", analytic_prior(), None, 8000, preset, loop_frames=1500, seed=seed)
    for name in STEMS:
        x = loop[name][0]
        assert x.shape == (1500,)
        wrap = abs(float(x[0]) - float(x[-1]))
        median = float(np.median(np.abs(np.diff(x))))
        assert wrap <= 4 * median, (name, wrap, median)


def test_partial_results_arrive_per_window_and_add_up_to_the_result():
    audio = (0.2 * np.random.default_rng(5).standard_normal((1, 1000))).astype(np.float32)
    partials = []
    stems = run_region("separate", FIRSeparator(), audio, 4000, fast("separate"), batch_size=1,
                       on_partial=partials.append)
    assert len(partials) == plan_windows(1000, 256, 0.25).count
    assert partials[0]["end"] < 1000 and partials[-1]["end"] == 1000
    for name in STEMS:
        np.testing.assert_array_equal(np.concatenate([p["stems"][name] for p in partials], axis=1), stems[name])


def test_cancel_stops_within_one_step_and_keeps_partials():
    cancel, events, partials = threading.Event(), [], []

    def progress(p):
        events.append(p)
        if p["window"] == 2 and p["step"] == 1:
            cancel.set()

    audio = (0.2 * np.random.default_rng(6).standard_normal((1, 1200))).astype(np.float32)
    with pytest.raises(Cancelled):
        run_region("separate", analytic_prior(), audio, 4000, fast("separate"), batch_size=1, progress=progress,
                   cancel=cancel, on_partial=partials.append)
    after = [e for e in events if e["window"] >= 2]
    assert len(after) == 1  # not one step more
    assert len(partials) == 1 and partials[0]["window"] == 1
    assert [e["fraction"] for e in events] == sorted(e["fraction"] for e in events)


@pytest.mark.parametrize(
    "audio,message",
    [
        (np.zeros((3, 100), np.float32), "3 channels"),
        (np.full((1, 100), np.nan, np.float32), "NaN"),
        (np.zeros((1, 0), np.float32), "zero length"),
    ],
)
def test_bad_regions_are_refused(audio, message):
    with pytest.raises(ValueError, match=message):
        run_region("separate", analytic_prior(), audio, 4000, fast("separate"))


def test_bad_rate_and_stems_are_refused():
    audio = np.zeros((1, 100), np.float32)
    with pytest.raises(ValueError, match="sample rate"):
        run_region("separate", analytic_prior(), audio, 10, fast("separate"))
    with pytest.raises(ValueError, match="vocals"):
        run_region("separate", analytic_prior(), audio, 4000, fast("separate"), stems=["vocals"])


def test_accompaniment_hands_the_presets_guidance_to_the_sampler():
    """A prior that hears given stems clean is evaluated twice per step under a guided preset (tasks.accompany),
    once otherwise; a guided preset changes nothing for a prior that only hears them noised."""
    drums = (0.2 * np.random.default_rng(4).standard_normal((1, 600))).astype(np.float32)

    def bass(guidance, hears):
        prior, calls = analytic_prior(), []
        denoise = prior.denoise
        prior.given_sigma_data = 0.2 if hears else None
        prior.denoise = lambda x, sigma: calls.append(sigma) or denoise(x, sigma)
        out = run_region("accompany", prior, None, 4000, fast("accompany").with_overrides(guidance=guidance),
                         given={"drums": drums}, stems=["bass"])
        return out["bass"], len(calls)

    (plain, plain_calls), (guided, guided_calls) = bass(0.0, True), bass(2.0, True)
    assert guided_calls == 2 * plain_calls > 0
    (deaf, deaf_calls), (deaf_guided, deaf_guided_calls) = bass(0.0, False), bass(2.0, False)
    assert deaf_guided_calls == deaf_calls == plain_calls
    np.testing.assert_array_equal(deaf_guided, deaf)
