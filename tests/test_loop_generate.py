"""Loops made for the loop engine are seamless at their wrap point (generation and accompaniment), and the engine
renders them to files when there is no audio device."""

import time

import numpy as np
import pytest
import soundfile as sf

from stemweave.bridge.loop import LocalBackend, LoopEngine, LoopSettings, Presets, accompaniment_loop, \
    bar_frames, generated_loop, sampler_params_for
from stemweave.engine.analytic import GaussianStemPrior, example_spectra

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 16000
TEST_PRESET = """description = "few steps, for tests"
task = "accompany"
[sampler]
steps = 6
sigma_min = 1e-3
sigma_max = 10.0
rho = 7.0
s_churn = 0.0
resamples = 0
"""


def tiny_prior(name="tiny", device="cpu"):
    prior = GaussianStemPrior.independent(example_spectra(512, rate=8000.0), STEMS)
    prior.rate, prior.window = 8000, 512
    return prior


@pytest.fixture
def presets(tmp_path):
    (tmp_path / "loop-test.toml").write_text(TEST_PRESET)
    return Presets(tmp_path)


def test_loop_presets_reach_the_server_as_names_it_knows_or_as_sampler_settings(presets):
    """A shipped preset of the job's task goes by name; the loop preset on a generate job, or a preset from a
    folder the server has never seen, goes as the task's default preset plus its own sampler settings."""
    shipped = Presets().load("loop")
    assert sampler_params_for("accompany", shipped) == ("loop", {})
    name, overrides = sampler_params_for("generate", shipped)
    assert name == "generate" and overrides["steps"] == shipped.sampler.steps == 24
    name, overrides = sampler_params_for("accompany", presets.load("loop-test"))
    assert name == "accompany-fast" and overrides["steps"] == 6 and overrides["sigma_max"] == 10.0
    assert LoopSettings().preset == "loop"


def wrap_step(x):
    """(the step across the wrap point, the largest step inside the loop) of a (channels, frames) loop."""
    return np.abs(x[:, 0] - x[:, -1]).max(), np.abs(np.diff(x, axis=-1)).max()


def test_generated_loop_is_seamless_at_the_wrap(presets):
    frames = bar_frames(240, RATE)  # one bar at 240 BPM: 1 s
    stems = generated_loop(LocalBackend(tiny_prior(), presets), frames, RATE, 2, ["bass", "piano"], "loop-test", 3)
    assert set(stems) == {"bass", "piano"}
    for name, x in stems.items():
        assert x.shape == (2, frames)
        across, inside = wrap_step(x)
        assert across <= inside, f"{name}: a step of {across:.4f} at the wrap, at most {inside:.4f} inside"


def test_accompaniment_loop_is_seamless_at_the_wrap(presets):
    backend = LocalBackend(tiny_prior(), presets)
    frames = bar_frames(240, RATE)
    drums = generated_loop(backend, frames, RATE, 1, ["drums"], "loop-test", 5)["drums"]  # a seamless input loop
    made = accompaniment_loop(backend, {"drums": drums}, RATE, ["bass"], "loop-test", 7)
    assert set(made) == {"bass"} and made["bass"].shape == (1, frames)
    across, inside = wrap_step(made["bass"])
    assert across <= inside, f"a step of {across:.4f} at the wrap, at most {inside:.4f} inside"
    # Without the second pass the wrap of an accompaniment is as rough as a random jump: the pass is what fixes it.
    first = backend.run("accompany", RATE, preset="loop-test", seed=7, params={"stems": ["bass"]},
                        given={"drums": drums})["bass"]
    assert wrap_step(first)[0] > across


def test_engine_without_a_device_renders_loops_to_files(tmp_path, presets):
    messages = []
    engine = LoopEngine(LocalBackend(tiny_prior(), presets), rate=RATE, channels=2, output="virtual",
                        settings=LoopSettings(tempo=240.0, bars=1, preset="loop-test", stems=("bass", "drums"),
                                              method="prior"),
                        render_dir=tmp_path / "loops", log=messages.append)
    try:
        engine.start()
        deadline = time.monotonic() + 120
        while (engine.loops_made < 1 or engine.player.current is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.loops_made == 1, engine.last_error
        files = sorted(str(f.relative_to(tmp_path / "loops")) for f in (tmp_path / "loops").rglob("*.wav"))
        assert files == ["loop-0001-240bpm-1bars.wav", "loop-0001-240bpm-1bars/bass.wav",
                         "loop-0001-240bpm-1bars/drums.wav"]
        mix, rate = sf.read(tmp_path / "loops" / files[0], always_2d=True)
        assert rate == RATE and mix.shape == (RATE, 2)
        status = engine.status()
        assert status["output"].startswith("virtual") and status["loop"] == 1 and status["playing"]
    finally:
        engine.close()
