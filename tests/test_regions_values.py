"""The region planner's small print by hand (issue 23's mutation run of engine/regions.py): what a model must say,
how a batch is sized and seeded, the progress a client sees, the report, the stitching pieces (accumulator,
mid/side, the sum projection, the range blend) and every refusal with its reason."""

import threading

import numpy as np
import pytest
import torch

from stemweave.engine import regions
from stemweave.engine.regions import (
    _Accumulator, _blend_range, _check_stems, _decoder, _device_of, _encode, _Progress, _project_to_sum, _seed_for,
    batch_size_for, check_audio, describe_model, run_region,
)
from stemweave.engine.sampler import Cancelled
from stemweave.engine.windows import crossfade, plan_windows
from test_regions import STEMS, FIRSeparator, analytic_prior, fast


# --- what a model must say ----------------------------------------------------------------------------------------


class Callable:
    stems = STEMS

    def __call__(self, mixture):
        return mixture


def test_describe_model_reads_attributes_then_the_card_then_length():
    model = Callable()
    model.card = {"rate": 8000, "window": 512}
    info = describe_model(model)
    assert (info.kind, info.stems, info.rate, info.window, info.device) == ("separator", STEMS, 8000, 512,
                                                                            torch.device("cpu"))
    model.rate, model.window = 16000, 1024  # attributes win over the card
    assert (describe_model(model).rate, describe_model(model).window) == (16000, 1024)
    bare = Callable()
    bare.rate, bare.length = 8000, 300  # a window may be called length
    assert describe_model(bare).window == 300
    prior = analytic_prior()
    assert describe_model(prior).kind == "prior"


def test_describe_model_refuses_what_is_no_model():
    with pytest.raises(TypeError, match="str is neither a prior"):
        describe_model("model")
    for missing in ({"rate": 8000}, {"window": 256}, {}):
        model = Callable()
        model.card = missing
        with pytest.raises(ValueError, match="does not say its sample rate and window length"):
            describe_model(model)


def test_the_device_is_the_models_or_its_first_parameters():
    model = Callable()
    model.device = "meta"
    assert _device_of(model) == torch.device("meta")
    net = torch.nn.Linear(2, 2).to("meta")
    holder = Callable()
    holder.denoiser = net
    assert _device_of(holder) == torch.device("meta")
    several = Callable()
    several.denoisers = [torch.nn.Identity(), net]  # a module without parameters is skipped
    assert _device_of(several) == torch.device("meta")
    assert _device_of(torch.nn.Linear(2, 2)) == torch.device("cpu") and _device_of(Callable()) == torch.device("cpu")


def test_batch_size_by_hand():
    assert batch_size_for(1024, 1024 * 2048 * 5) == 5
    assert batch_size_for(1024, 1024 * 2048 * 5 + 2047) == 5
    assert batch_size_for(1024, 10) == 1  # at least one window
    assert batch_size_for(512) == (1 << 30) // (512 * 2048)


def test_seeds_are_a_seed_sequence_of_the_seed_and_the_place():
    expected = int(np.random.SeedSequence([7, 1, 2, 0]).generate_state(1)[0])
    assert _seed_for(7, 1, 2, 0) == expected
    assert _seed_for(7 + (1 << 32), 1, 2, 0) == expected  # the seed's low 32 bits
    assert len({_seed_for(7, 1, 2, 0), _seed_for(7, 1, 3, 0), _seed_for(7, 2, 2, 0), _seed_for(8, 1, 2, 0)}) == 4


# --- progress ----------------------------------------------------------------------------------------------------


def test_progress_reports_windows_per_region_window_and_an_eta(monkeypatch):
    clock = {"now": 100.0}
    monkeypatch.setattr(regions.time, "monotonic", lambda: clock["now"])
    seen = []
    progress = _Progress(seen.append, None, "separate")  # started at 100
    progress.plan(windows=6, steps=10, per_window=2)  # 3 region windows of 2 channels
    clock["now"] = 104.0
    progress.step(items=2, step=5, steps=10)  # one window of 2 items half done -> 1/6
    assert seen[-1] == {"stage": "separate", "window": 1, "windows": 3, "step": 5, "steps": 10,
                        "fraction": pytest.approx(1 / 6), "eta_s": pytest.approx(4.0 * 5)}
    progress.windows_done(2)
    clock["now"] = 106.0
    progress.step(items=2, step=10, steps=10)  # 4 of 6 items
    assert seen[-1]["window"] == 2 and seen[-1]["fraction"] == pytest.approx(4 / 6)
    assert seen[-1]["eta_s"] == pytest.approx(6.0 * (2 / 6) / (4 / 6))
    clock["now"] = 110.0
    progress.emit("done", 1.5, window=6, step=10)  # capped at 1, nothing left (never a negative ETA)
    assert seen[-1]["fraction"] == 1.0 and seen[-1]["eta_s"] == 0.0
    assert seen[-1]["window"] == 3 and seen[-1]["stage"] == "done"


def test_progress_without_a_callback_or_with_nothing_done():
    _Progress(None, None, "x").emit("x", 0.5)  # no callback: nothing happens, nothing fails
    seen = []
    progress = _Progress(seen.append, None, "generate")
    progress.plan(0, 0, 0)  # at least one of each
    progress.emit("resample", 0.0)
    assert seen == [{"stage": "resample", "window": 0, "windows": 1, "step": 0, "steps": 1, "fraction": 0.0,
                     "eta_s": None}]


def test_the_sampler_callback_checks_cancel_before_and_after_reporting():
    cancel, seen = threading.Event(), []
    progress = _Progress(seen.append, cancel, "separate")
    progress.plan(2, 4)
    callback = progress.sampler_callback(1)
    callback({"step": 1, "steps": 4})
    assert seen[-1]["fraction"] == pytest.approx(1 / 8) and seen[-1]["window"] == 1
    cancel.set()
    with pytest.raises(Cancelled):
        callback({"step": 2, "steps": 4})
    assert len(seen) == 1  # cancelled before reporting

    def cancel_on_report(p):
        seen.append(p)
        cancel.set()

    cancel.clear()
    reporting = _Progress(cancel_on_report, cancel, "separate")
    with pytest.raises(Cancelled):
        reporting.sampler_callback(1)({"step": 1, "steps": 4})  # cancelled while reporting: raised at once


def test_a_separation_reports_its_stages_and_plan():
    seen, report = [], {}
    audio = np.zeros((2, 700), np.float32)
    run_region("separate", FIRSeparator(), audio, 4000, fast("separate"), progress=seen.append, report=report,
               overlap=0.5, window_shape="linear", batch_size=3)
    assert seen[0]["stage"] == "resample" and seen[0]["fraction"] == 0.0
    assert {p["stage"] for p in seen[1:-1]} == {"separate"} and seen[-1]["stage"] == "done"
    assert seen[-1]["fraction"] == 1.0 and seen[-1]["window"] == seen[-1]["windows"]
    windows = -(-(700 - 256) // 128) + 1  # hop 128 for a 256 window at overlap 0.5
    assert report == {"windows": 2 * windows, "batch_size": 3, "model_rate": 4000, "window": 256, "hop": 128,
                      "overlap": 128, "window_shape": "linear"}
    assert seen[-1]["windows"] == windows and seen[-1]["steps"] == 1


def test_a_generation_reports_its_plan_and_the_preset_steps():
    seen, report = [], {}
    run_region("generate", analytic_prior(), None, 4000, fast("generate"), frames=600, progress=seen.append,
               report=report, overlap=0.25)
    assert report["batch_size"] == 1 and report["window"] == 256 and report["hop"] == 192
    assert report["windows"] == -(-(600 - 256) // 192) + 1
    assert all(p["steps"] == 3 for p in seen[1:]) and seen[-1]["stage"] == "done"


# --- stitching ---------------------------------------------------------------------------------------------------


def test_the_accumulator_sums_and_hands_out_finished_prefixes():
    acc = _Accumulator(signals=2, stems=1)
    acc.add(0, 0, np.ones((1, 4)))
    acc.add(1, 2, 2 * np.ones((1, 4)))  # grows to 6
    acc.add(0, 2, np.ones((1, 2)))
    first = acc.pop_until(3)
    assert first.dtype == np.float32 and first.shape == (2, 1, 3)
    np.testing.assert_array_equal(first[0, 0], [1, 1, 2]) and np.testing.assert_array_equal(first[1, 0], [0, 0, 2])
    assert acc.offset == 3
    acc.add(0, 3, np.ones((1, 3)))  # offsets are region samples
    rest = acc.pop_until(10)
    np.testing.assert_array_equal(rest[0, 0], [3, 1, 1]) and np.testing.assert_array_equal(rest[1, 0], [2, 2, 2])
    assert acc.offset == 6 and acc.pop_until(2).shape == (2, 1, 0)


def test_mid_side_by_hand_and_its_inverse():
    audio = np.array([[1.0, 0.5], [0.0, -0.5]], np.float32)
    encoded = _encode(audio, "mid-side")
    np.testing.assert_array_equal(encoded, [[0.5, 0.0], [0.5, 0.5]])
    assert _encode(audio, "independent") is audio
    stems = np.stack([encoded, 2 * encoded], axis=1)  # (signals 2, K 2, t)
    np.testing.assert_array_equal(_decoder("mid-side", 2)(stems), np.stack([audio, 2 * audio]))
    np.testing.assert_array_equal(_decoder("independent", 2)(stems), stems.transpose(1, 0, 2))
    centred = _decoder("centre", 2)(np.arange(6.0).reshape(1, 2, 3))
    assert centred.shape == (2, 2, 3) and np.array_equal(centred[1, 0], [3, 4, 5]) and np.array_equal(centred[1, 1],
                                                                                                         [3, 4, 5])


def test_the_sum_projection_splits_the_residual_equally_over_the_range():
    mixture = np.array([[4.0, 4.0, 4.0]])
    stems = {"a": np.array([[1.0, 1.0, 1.0]], np.float32), "b": np.array([[0.0, 2.0, 4.0]], np.float32)}
    _project_to_sum(mixture)(stems, 1, 3)
    np.testing.assert_array_equal(stems["a"], [[1.0, 1.5, 0.5]])
    np.testing.assert_array_equal(stems["b"], [[0.0, 2.5, 3.5]])


def test_the_range_blend_keeps_the_given_outside_and_fades_in():
    given = {"bass": np.zeros((1, 20), np.float32)}
    stems = {"bass": np.ones((1, 20), np.float32)}
    _blend_range(given, 4, 16, fade=2)(stems, 0, 20)
    out = stems["bass"][0]
    inside = np.clip(np.minimum(np.arange(20) - 4 + 0.5, 16 - np.arange(20) - 0.5) / 2, 0, 1)
    np.testing.assert_allclose(out, np.sin(0.5 * np.pi * inside) ** 2, atol=1e-7)
    assert out[:4].max() == 0 and out[16:].max() == 0 and out[6:14].min() == 1
    short = {"bass": np.ones((1, 20), np.float32)}
    _blend_range(given, 4, 8, fade=100)(short, 0, 20)  # the fade is at most a quarter of the range
    assert short["bass"][0, 5] == pytest.approx(1.0) and short["bass"][0, 4] < 1


# --- refusals ----------------------------------------------------------------------------------------------------


def refuses(match, *args, **kwargs):
    with pytest.raises(ValueError, match=match):
        run_region(*args, **kwargs)


def test_run_region_refuses_bad_arguments_by_name():
    audio = np.zeros((1, 300), np.float32)
    prior, separator = analytic_prior(), FIRSeparator()
    refuses(r"unknown task 'remix': choose one of separate, accompany, generate", "remix", prior, audio, 4000,
            fast("separate"))
    refuses(r"unknown channel mode 'wide': choose one of independent, mid-side", "separate", prior, audio, 4000,
            fast("separate"), channel_mode="wide")
    refuses(r"unknown window shape 'kaiser': choose one of", "separate", prior, audio, 4000, fast("separate"),
            window_shape="kaiser")
    refuses(r"a regression separator can only separate; generate needs a diffusion prior", "generate", separator, None,
            4000, fast("generate"), frames=100)
    for overlap in (-0.1, 1.0):
        refuses(r"overlap must be in \[0, 1\) for separation", "separate", separator, audio, 4000, fast("separate"),
                overlap=overlap)
    assert run_region("separate", separator, audio, 4000, fast("separate"), overlap=0.0)["bass"].shape == (1, 300)
    for overlap in (0.0, 1.0):
        refuses(r"overlap must be in \(0, 1\) for generate", "generate", prior, None, 4000, fast("generate"),
                frames=100, overlap=overlap)
    refuses(r"unknown stem\(s\) \(none given\)", "separate", separator, audio, 4000, fast("separate"), stems=[])


def test_check_audio_says_what_is_wrong():
    with pytest.raises(ValueError, match="mix is missing"):
        check_audio(None, "mix")
    with pytest.raises(ValueError, match=r"must be \(channels, frames\), got shape \(1, 2, 3\)"):
        check_audio(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match="must be float audio in \\[-1, 1\\], got int16"):
        check_audio(np.zeros((1, 3), np.int16))
    with pytest.raises(ValueError, match="audio contains NaN or infinite samples"):
        check_audio(np.array([[0.0, np.inf]], np.float32))
    with pytest.raises(ValueError, match="is empty"):
        check_audio(np.zeros((0, 5), np.float32))
    out = check_audio(np.zeros(4, np.float64))
    assert out.shape == (1, 4) and out.dtype == np.float32
    two = np.zeros((2, 4), np.float32)
    assert check_audio(two) is two  # already right: no copy


def test_stem_names_are_checked_against_the_model():
    assert _check_stems(None, STEMS) is None
    assert _check_stems(("drums", "bass"), STEMS) == ["drums", "bass"]
    with pytest.raises(ValueError, match=r"unknown stem\(s\) vocals, keys: this model's stems are bass, drums"):
        _check_stems(["vocals", "keys"], STEMS)


def test_accompaniment_and_generation_refuse_what_they_cannot_do():
    prior, drums = analytic_prior(), np.zeros((1, 300), np.float32)
    preset = fast("accompany")
    refuses("accompany needs at least one given stem", "accompany", prior, None, 4000, preset, given={})
    refuses(r"the given stems must be aligned", "accompany", prior, None, 4000, preset,
            given={"drums": drums, "piano": np.zeros((1, 299), np.float32)})
    refuses(r"the given stems must be aligned", "accompany", prior, np.zeros((2, 300), np.float32), 4000, preset,
            given={"drums": drums})
    refuses(r"unknown stem\(s\) vocals", "accompany", prior, None, 4000, preset, given={"vocals": drums})
    for bad in ((0, 0), (-1, 10), (10, 301), (20, 10)):
        refuses(rf"regenerate range {bad[0]}:{bad[1]} is not inside the region's 300 frames", "accompany", prior,
                None, 4000, preset, given={"drums": drums}, regenerate=bad)
    refuses("to regenerate a range of bass, give that stem's audio too", "accompany", prior, None, 4000, preset,
            given={"drums": drums}, stems=["bass"], regenerate=(0, 10))
    every = {s: drums for s in STEMS}
    refuses("every stem is given: name the stems to generate", "accompany", prior, None, 4000, preset, given=every)
    generate = fast("generate")
    refuses("generate needs a length: frames, seconds or loop_frames", "generate", prior, None, 4000, generate)
    refuses("generate needs a positive length, got 0 frames", "generate", prior, None, 4000, generate, frames=0)
    refuses("channels must be 1 or 2, got 3", "generate", prior, None, 4000, generate, frames=10, channels=3)
    out = run_region("generate", prior, None, 4000, generate, seconds=0.05, channels=2)
    assert out["bass"].shape == (2, 200) and np.array_equal(out["bass"][0], out["bass"][1])


def test_regenerating_a_range_keeps_everything_outside_it():
    prior = analytic_prior()
    rng = np.random.default_rng(0)
    given = {s: (0.1 * rng.standard_normal((1, 600))).astype(np.float32) for s in ("bass", "drums")}
    out = run_region("accompany", prior, None, 4000, fast("accompany"), given=given, regenerate=(200, 400),
                     stems=["bass"])
    assert list(out) == ["bass"]
    np.testing.assert_array_equal(out["bass"][:, :200], given["bass"][:, :200])
    np.testing.assert_array_equal(out["bass"][:, 400:], given["bass"][:, 400:])
    assert not np.allclose(out["bass"][:, 210:390], given["bass"][:, 210:390])
    default = run_region("accompany", prior, None, 4000, fast("accompany"), given=given, regenerate=(200, 400))
    assert set(default) == {"bass", "drums"}  # by default every given stem the model has is regenerated


def test_a_loop_is_one_partial_of_the_whole_loop():
    partials = []
    out = run_region("generate", analytic_prior(), None, 4000, fast("generate"), loop_frames=500, channels=2,
                     on_partial=partials.append)
    assert len(partials) == 1
    p = partials[0]
    assert (p["start"], p["end"], p["rate"], p["window"], p["windows"]) == (0, 500, 4000, 1, 1)
    for name in STEMS:
        assert out[name].shape == (2, 500) and out[name].dtype == np.float32
        np.testing.assert_array_equal(p["stems"][name], out[name])


def test_a_mono_region_separates_independently_even_when_mid_side_is_asked():
    audio = (0.1 * np.random.default_rng(1).standard_normal((1, 500))).astype(np.float32)
    a = run_region("separate", FIRSeparator(), audio, 4000, fast("separate"), channel_mode="mid-side")
    b = run_region("separate", FIRSeparator(), audio, 4000, fast("separate"), channel_mode="independent")
    for name in STEMS:
        np.testing.assert_array_equal(a[name], b[name])


# --- the wiring of a separation, by hand ----------------------------------------------------------------------------


class PositionSeparator(torch.nn.Module):
    """Stems that depend on where a sample sits in its window (a ramp and its complement): the stitched result
    then depends on every window's place and cross-fade weight, unlike a shift-invariant separator's."""

    stems, rate, window = STEMS, 4000, 200

    def forward(self, mixture):  # (B, 1, T) -> (B, K, T), summing to the mixture
        ramp = torch.linspace(0.0, 1.0, mixture.shape[-1], dtype=torch.float64)
        x = mixture[:, 0].double()
        return torch.stack([x * ramp, x * (1 - ramp), 0 * x, 0 * x], dim=1).float()


class SquareSeparator(torch.nn.Module):
    """A non-linear separator (bass = x|x|), so that separating mid and side differs from separating L and R."""

    stems, rate, window = STEMS, 4000, 1000

    def forward(self, mixture):
        x = mixture[:, 0]
        return torch.stack([x * x.abs(), x - x * x.abs(), 0 * x, 0 * x], dim=1)


def test_a_separation_is_the_crossfaded_sum_of_its_windows_and_reports_them():
    audio = np.random.default_rng(3).standard_normal((1, 730)).astype(np.float32)
    model, partials = PositionSeparator(), []
    out = run_region("separate", model, audio, 4000, fast("separate"), overlap=0.3, window_shape="linear",
                     batch_size=2, on_partial=partials.append)
    plan = plan_windows(730, 200, 0.3)
    padded = np.pad(audio[0].astype(np.float64), (0, plan.padded - 730))
    expected = np.zeros((4, plan.padded))
    for i in range(plan.count):
        window = torch.from_numpy(padded[plan.start(i) : plan.start(i) + 200].astype(np.float32))[None, None]
        stems = model(window)[0].double().numpy()
        expected[:, plan.start(i) : plan.start(i) + 200] += stems * crossfade(plan, i, "linear")
    for k, name in enumerate(STEMS):
        np.testing.assert_allclose(out[name][0], expected[k, :730], atol=2e-6)
    hann = run_region("separate", model, audio, 4000, fast("separate"), overlap=0.3, batch_size=2)
    assert not np.allclose(hann["bass"], out["bass"], atol=1e-4)  # the shape asked for is the shape used
    assert [p["window"] for p in partials] == [2, 4, 5][: len(partials)] and partials[-1]["end"] == 730
    assert all(p["windows"] == plan.count == 5 for p in partials)


def test_mid_side_separates_mid_and_side_and_decodes_them_back():
    rng = np.random.default_rng(4)
    audio = (0.5 * rng.standard_normal((2, 800))).astype(np.float32)
    model = SquareSeparator()
    out = run_region("separate", model, audio, 4000, fast("separate"), channel_mode="mid-side")

    def separated(x):
        return model(torch.from_numpy(np.pad(x, (0, 200)).astype(np.float32))[None, None])[0, :, :800].double().numpy()

    left, right = audio.astype(np.float64)
    mid, side = separated(((left + right) / 2).astype(np.float32)), separated(((left - right) / 2).astype(np.float32))
    decoded = np.stack([mid + side, mid - side], axis=1)  # (K, 2, 800)
    decoded += (audio - decoded.sum(0)) / 4  # the sum projection
    for k, name in enumerate(STEMS):
        np.testing.assert_allclose(out[name], decoded[k], atol=2e-6)
    independent = run_region("separate", model, audio, 4000, fast("separate"))
    assert not np.allclose(independent["bass"], out["bass"], atol=1e-3)


def test_separation_progress_counts_steps_per_window(monkeypatch):
    seen = []
    audio = np.zeros((1, 600), np.float32)
    run_region("separate", FIRSeparator(), audio, 4000, fast("separate"), progress=seen.append, batch_size=1,
               overlap=0.25)
    windows = plan_windows(600, 256, 0.25).count
    steps = [p for p in seen if p["stage"] == "separate"]
    assert [p["fraction"] for p in steps] == pytest.approx([(i + 1) / windows for i in range(windows)])
    assert all(p["steps"] == 1 and p["step"] == 1 for p in steps)
    seen.clear()
    run_region("separate", analytic_prior(), audio, 4000, fast("separate"), progress=seen.append, batch_size=1)
    assert {p["steps"] for p in seen if p["stage"] == "separate"} == {3}  # a prior: the preset's steps


def test_each_window_is_seeded_by_the_seed_the_window_and_the_channel(monkeypatch):
    seeds = []
    real = regions.tasks.separate

    def recording(model, mixture, preset, **kwargs):
        seeds.append(kwargs["generator"].initial_seed())
        return real(model, mixture, preset, **kwargs)

    monkeypatch.setattr(regions.tasks, "separate", recording)
    audio = (0.1 * np.random.default_rng(5).standard_normal((2, 400))).astype(np.float32)
    run_region("separate", analytic_prior(), audio, 4000, fast("separate"), seed=9, batch_size=1, overlap=0.25)
    windows = plan_windows(400, 256, 0.25).count
    assert seeds == [_seed_for(9, 1, i, s) for i in range(windows) for s in range(2)]


def test_separated_windows_reach_the_accumulator_in_float64(monkeypatch):
    dtypes = []
    real = _Accumulator.add
    monkeypatch.setattr(_Accumulator, "add", lambda self, s, start, values: (dtypes.append(values.dtype),
                                                                               real(self, s, start, values)))
    run_region("separate", analytic_prior(), np.zeros((1, 300), np.float32), 4000, fast("separate"))
    run_region("separate", FIRSeparator(), np.zeros((1, 300), np.float32), 4000, fast("separate"))
    assert dtypes and set(dtypes) == {np.dtype(np.float64)}


def test_more_stitching_small_print():
    assert _encode(np.zeros((2, 3), np.float32), "mid-side").dtype == np.float32
    assert check_audio(np.zeros((1, 1), np.float32)).shape == (1, 1)  # one frame is a region
    with pytest.raises(ValueError, match="downmix it or split it into stereo pairs first"):
        check_audio(np.zeros((3, 4), np.float32))
    fresh = _Accumulator(1, 1)
    assert fresh.pop_until(5).shape == (1, 1, 0) and fresh.offset == 0
    acc = _Accumulator(1, 1)
    acc.add(0, 0, np.ones((1, 6)))
    acc.pop_until(3)
    assert acc.pop_until(2).shape == (1, 1, 0) and acc.offset == 3  # asking for less than it handed out: nothing
    for length, fade in ((10, 2), (12, 3)):  # the fade is at most a quarter of the range, rounded down
        given, stems = {"b": np.zeros((1, 30), np.float32)}, {"b": np.ones((1, 30), np.float32)}
        _blend_range(given, 5, 5 + length, fade=100)(stems, 0, 30)
        t = np.arange(30)
        inside = np.clip(np.minimum(t - 5 + 0.5, 5 + length - t - 0.5) / fade, 0, 1)
        np.testing.assert_allclose(stems["b"][0], np.sin(0.5 * np.pi * inside) ** 2, atol=1e-7)


# --- the wiring of an accompaniment, by hand ------------------------------------------------------------------------


def record_inpainting(monkeypatch):
    calls = []
    real = regions._Job._inpaint

    def recording(self, known, mask, part, index):
        calls.append({"part": part, "index": index, "known": known.copy(), "mask": mask.copy()})
        return real(self, known, mask, part, index)

    monkeypatch.setattr(regions._Job, "_inpaint", recording)
    return calls


def test_an_accompaniment_shows_the_prior_the_mid_of_the_given_stems(monkeypatch):
    calls, seen = record_inpainting(monkeypatch), []
    rng = np.random.default_rng(6)
    drums = (0.1 * rng.standard_normal((2, 200))).astype(np.float32)
    out = run_region("accompany", analytic_prior(), None, 4000, fast("accompany"), given={"drums": drums},
                     progress=seen.append)
    assert sorted(out) == ["bass", "guitar", "piano"]  # by default every stem not given
    assert seen[0]["stage"] == "resample" and seen[0]["fraction"] == 0.0
    first = calls[0]
    np.testing.assert_allclose(first["known"][1, :200], drums.mean(0), atol=1e-7)
    assert first["mask"][1, :200].all() and not first["mask"][[0, 2, 3]].any()
    # past the region's end the given drums are known silence: every window has them whole (a prior trained with
    # --given-share hears only wholly given stems clean)
    assert all(c["mask"][1].all() for c in calls) and not first["known"][1, 200:].any()
    with pytest.raises(ValueError, match="given stem 'drums' contains NaN"):
        run_region("accompany", analytic_prior(), None, 4000, fast("accompany"),
                   given={"drums": np.full((1, 10), np.nan, np.float32)})
    with pytest.raises(ValueError, match="^accompany needs at least one given stem"):
        run_region("accompany", analytic_prior(), None, 4000, fast("accompany"), given={})
    with pytest.raises(ValueError, match="^every stem is given"):
        run_region("accompany", analytic_prior(), None, 4000, fast("accompany"), given={s: drums for s in STEMS})
    with pytest.raises(ValueError, match="^to regenerate a range of bass, piano, give"):
        run_region("accompany", analytic_prior(), None, 4000, fast("accompany"), given={"drums": drums},
                   stems=["bass", "piano"], regenerate=(0, 10))


def test_regenerating_a_range_at_another_rate(monkeypatch):
    calls, blends = record_inpainting(monkeypatch), []
    real_blend = regions._blend_range
    monkeypatch.setattr(regions, "_blend_range", lambda *a: (blends.append(a[1:]), real_blend(*a))[1])
    rng = np.random.default_rng(7)
    given = {s: (0.1 * rng.standard_normal((1, 1600))).astype(np.float32) for s in ("bass", "drums")}
    out = run_region("accompany", analytic_prior(), None, 8000, fast("accompany"), given=given, stems=["bass"],
                     regenerate=(400, 1600))  # up to the region's last frame
    assert blends == [(400, 1600, 40)]  # fades over 5 ms at the region's rate
    np.testing.assert_array_equal(out["bass"][:, :400], given["bass"][:, :400])  # exactly, though resampled
    plan = plan_windows(800, 256, 0.25)
    for c in calls:  # the model-rate range [200, 800) of the bass is unknown, and nothing else
        start = plan.start(c["index"])
        inside = max(0, min(256, 800 - start))  # the region's samples in this window (the rest is padding)
        assert c["mask"][1][:inside].all()
        window_mask = c["mask"][0][:inside]
        expected = np.ones_like(window_mask)
        lo, hi = max(0, 200 - start), max(0, min(len(window_mask), 800 - start))
        expected[lo:hi] = False
        if c["index"] > calls[0]["index"]:
            keep = plan.overlap - int(0.5 * plan.overlap)
            expected[:keep] = True
        np.testing.assert_array_equal(window_mask, expected)
    assert calls[0]["index"] == max(0, (200 - plan.overlap) // plan.hop)  # the first window covering the range


@pytest.mark.parametrize("length", [600, 250])  # 250: shorter than the window, which then holds two wraps
def test_a_loop_inpaints_its_wrap_in_the_middle_of_one_window_and_blends_it_in(monkeypatch, length):
    chain, calls = [], []
    real_continue, real_inpaint = regions._Job._continue, regions._Job._inpaint

    def recording_continue(self, *args, **kwargs):
        state = real_continue(self, *args, **kwargs)
        chain.append(state.copy())
        return state

    def marking_inpaint(self, known, mask, part, index):
        if part != 3:
            return real_inpaint(self, known, mask, part, index)
        calls.append(mask.copy())
        return known + 10.0  # the wrap window's answer: the rotated loop plus a marker

    monkeypatch.setattr(regions._Job, "_continue", recording_continue)
    monkeypatch.setattr(regions._Job, "_inpaint", marking_inpaint)
    out = run_region("generate", analytic_prior(), None, 4000, fast("generate"), loop_frames=length, overlap=0.25)
    (mask,) = calls
    window = 256
    gap = min(64, length // 4)  # round(0.25 * 256) unknown samples each side, at most a quarter of the loop
    blend = gap // 2  # the outer half of them is cross-faded
    offsets = np.arange(window) - window // 2  # the wrap (loop sample 0) sits in the middle
    distance = np.abs((offsets + length // 2) % length - length // 2)  # to the nearest wrap
    np.testing.assert_array_equal(mask, np.broadcast_to(distance >= gap, mask.shape))
    weight = np.zeros(length)
    near = np.arange(-gap, gap)
    ramp = np.clip((gap - np.abs(near + 0.5) + 0.5) / blend, 0, 1)
    weight[near % length] = np.sin(0.5 * np.pi * ramp) ** 2
    loop = chain[0][:, :length]
    for k, name in enumerate(STEMS):
        np.testing.assert_allclose(out[name][0], loop[k] + 10.0 * weight, atol=1e-4)


def test_a_generated_chain_by_hand(monkeypatch):
    """Each window keeps the first half of its overlap from the previous window exactly, samples the rest, and
    cross-fades the second half of the overlap (sin^2) from the previous window's samples to its own."""
    parts = []

    def numbered(self, known, mask, part, index):  # window i answers i + 1 wherever it is asked to
        parts.append((part, index, mask.copy()))
        return np.where(mask, known, np.float32(index + 1))

    monkeypatch.setattr(regions._Job, "_inpaint", numbered)
    partials = []
    out = run_region("generate", analytic_prior(), None, 4000, fast("generate"), frames=700, channels=2,
                     overlap=0.25, on_partial=partials.append)
    plan = plan_windows(700, 256, 0.25)
    keep = plan.overlap - plan.overlap // 2
    fade = np.sin(0.5 * np.pi * (np.arange(plan.overlap - keep) + 0.5) / (plan.overlap - keep)) ** 2
    expected = np.zeros(plan.padded)
    for i in range(plan.count):
        s = plan.start(i)
        expected[s + (keep if i else 0) : s + plan.window] = i + 1
        if i:
            expected[s + keep : s + plan.overlap] = i * (1 - fade) + (i + 1) * fade
    for name in STEMS:
        assert out[name].shape == (2, 700)
        np.testing.assert_allclose(out[name][0], expected[:700], atol=1e-6)
        np.testing.assert_array_equal(out[name][0], out[name][1])
    assert [p for p, _, _ in parts] == [2] * plan.count and [i for _, i, _ in parts] == list(range(plan.count))
    assert not parts[0][2].any() and all(m[:, :keep].all() and not m[:, keep:].any() for _, _, m in parts[1:])
    ends = [min(700, plan.start(i + 1) + keep) for i in range(plan.count - 1)] + [700]
    assert [p["end"] for p in partials] == ends and [p["window"] for p in partials] == list(range(1, plan.count + 1))
    assert all(p["windows"] == plan.count for p in partials) and partials[0]["start"] == 0
    assert all(a["end"] == b["start"] for a, b in zip(partials, partials[1:]))


def test_generation_progress_reaches_each_window_in_turn():
    seen = []
    run_region("generate", analytic_prior(), None, 4000, fast("generate"), frames=700, progress=seen.append)
    windows = plan_windows(700, 256, 0.25).count
    ends = [p["fraction"] for p in seen if p["stage"] == "generate" and p["step"] == p["steps"]]
    assert ends == pytest.approx([(k + 1) / windows for k in range(windows)])


def test_the_resampled_stems_are_flushed_to_the_regions_last_frame():
    class Gains(torch.nn.Module):
        stems, rate, window = STEMS, 4000, 200

        def forward(self, mixture):
            return mixture * torch.tensor([0.1, 0.2, 0.3, 0.4])[None, :, None]

    t = np.arange(8000) / 8000
    audio = (0.5 * np.sin(2 * np.pi * 100 * t))[None].astype(np.float32)  # well below the model's Nyquist
    out = run_region("separate", Gains(), audio, 8000, fast("separate"))
    # the resampler's tail reaches the stems (an unflushed stream leaves the end to the sum projection: 0.25 x)
    np.testing.assert_allclose(out["bass"][0, 20:-20], 0.1 * audio[0, 20:-20], atol=1e-3)
