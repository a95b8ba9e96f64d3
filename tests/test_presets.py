"""Presets load by name or path, carry the papers' settings, and refuse what they do not understand."""

import pytest

from stemweave.engine.presets import list_presets, load_preset


def test_shipped_presets_hold_the_papers_settings():
    assert {"separate-dirac", "separate-gaussian", "generate", "accompany"} <= set(list_presets())
    dirac = load_preset("separate-dirac")
    assert (dirac.sampler.steps, dirac.sampler.s_churn, dirac.sampler.resamples, dirac.sampler.sigma_max) == (150, 20.0, 2, 1.0)
    assert dirac.options == {"likelihood": "dirac", "constrained": "bass"} and dirac.sampler.evaluations == 450
    gaussian = load_preset("separate-gaussian")
    assert gaussian.sampler.s_churn == 40.0 and gaussian.options["gamma"] == pytest.approx(0.75 * 2**0.5, abs=0.01)
    # generation starts at sigma 1 = 20 sigma_data, where the CPU priors are trained (the reference: 20; docs/priors.md)
    assert load_preset("generate").sampler.sigma_max == 1.0
    assert load_preset("accompany").sampler.steps == 256
    # accompaniment leans on the given stems (w = 2, docs/priors.md); a prior that cannot hear them clean ignores it
    assert load_preset("accompany").options == load_preset("accompany-fast").options == {"guidance": 2.0}


def test_overrides_replace_sampler_settings_and_options():
    preset = load_preset("separate-dirac").with_overrides(steps=10, constrained="drums", s_churn=None)
    assert preset.sampler.steps == 10 and preset.sampler.s_churn == 20.0 and preset.options["constrained"] == "drums"
    with pytest.raises(ValueError, match="not a setting"):
        load_preset("generate").with_overrides(gamma=1.0)
    assert load_preset("accompany-fast").with_overrides(guidance=3).options["guidance"] == 3
    with pytest.raises(ValueError, match="guidance must be 0 or more"):
        load_preset("accompany-fast").with_overrides(guidance=-0.5)


def test_a_preset_file_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('task = "separate"\n[sampler]\nsteps = 12\n[options]\nlikelihood = "gaussian"\ngamma = 2\n')
    preset = load_preset(path)
    assert preset.name == "mine" and preset.sampler.steps == 12 and preset.options["gamma"] == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ('task = "dance"', "task"),
        ('task = "separate"\n[sampler]\nstep = 3', "sampler"),
        ('task = "separate"\n[sampler]\nsteps = 0', "steps"),
        ('task = "separate"\n[options]\nlikelihood = "laplace"', "likelihood"),
        ('task = "accompany"\n[options]\nguidance = -1', "guidance must be 0 or more"),
        ('task = "accompany"\n[options]\nguidance = "strong"', "guidance must be a float"),
        ('task = "generate"\n[options]\nguidance = 1.0', "not a setting of generate"),
        ("task = ", "TOML"),
    ],
)
def test_bad_presets_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_preset(path)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="separate-dirac"):
        load_preset("nope")
