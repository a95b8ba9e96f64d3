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
    clock = iter([100.0, 104.0, 106.0, 110.0])
    monkeypatch.setattr(regions.time, "monotonic", lambda: next(clock))
    seen = []
    progress = _Progress(seen.append, None, "separate")  # started at 100
    progress.plan(windows=6, steps=10, per_window=2)  # 3 region windows of 2 channels
    progress.step(items=2, step=5, steps=10)  # at 104: one window of 2 items half done -> 1/6
    assert seen[-1] == {"stage": "separate", "window": 1, "windows": 3, "step": 5, "steps": 10,
                        "fraction": pytest.approx(1 / 6), "eta_s": pytest.approx(4.0 * 5)}
    progress.windows_done(2)
    progress.step(items=2, step=10, steps=10)  # at 106: 4 of 6 items
    assert seen[-1]["window"] == 2 and seen[-1]["fraction"] == pytest.approx(4 / 6)
    assert seen[-1]["eta_s"] == pytest.approx(6.0 * (2 / 6) / (4 / 6))
    progress.emit("done", 1.5, window=6, step=10)  # at 110: capped at 1, nothing left
    assert seen[-1]["fraction"] == 1.0 and seen[-1]["eta_s"] == pytest.approx(0.0 * 10 / 1.5)
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
