"""Presets' messages and fields in full: a person reads these (mutation survivors of engine/presets.py, issue 23)."""

import re

import pytest

from stemweave.engine.presets import list_presets, load_preset


def refused(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_preset(path)
    return str(caught.value)


def test_messages_name_the_preset_the_key_and_the_choices(tmp_path):
    assert refused(tmp_path, 'task = "dance"') == ("preset 'bad': 'task' must be one of separate, accompany, generate, "
                                                   "got 'dance'")
    assert refused(tmp_path, 'task = "separate"\n[options]\nlikelihood = "laplace"') == (
        "preset 'bad': likelihood must be one of dirac, gaussian")
    assert refused(tmp_path, 'task = "separate"\n[options]\ngamma = "big"') == "preset 'bad': gamma must be a float, got 'big'"
    assert refused(tmp_path, 'task = "separate"\n[options]\nwarm_start = 1') == (
        "preset 'bad': warm_start must be a bool, got 1")  # an int is a float, never a bool
    assert refused(tmp_path, 'task = "generate"\n[options]\ngamma = 1.0') == (
        "preset 'bad': 'gamma' is not a setting of generate (known: steps, sigma_min, sigma_max, rho, s_churn, "
        "resamples, method)")
    with pytest.raises(ValueError) as caught:
        load_preset("separate-dirac").with_overrides(volume=2.0)
    assert str(caught.value).startswith("preset 'separate-dirac': 'volume' is not a setting of separate (known: steps,")


def test_an_unknown_name_lists_every_shipped_preset():
    with pytest.raises(ValueError) as caught:
        load_preset("no-such-preset")
    assert str(caught.value) == (f"unknown preset 'no-such-preset': choose one of {', '.join(list_presets())} or give "
                                 f"a .toml file")


def test_a_toml_path_that_does_not_exist_is_an_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"unknown preset '{tmp_path / 'gone.toml'}'")):
        load_preset(tmp_path / "gone.toml")


def test_description_and_name_come_from_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('description = "few steps"\ntask = "generate"\n[sampler]\nsteps = 3\n')
    preset = load_preset(path)
    assert (preset.name, preset.description, preset.task) == ("mine", "few steps", "generate")
    path.write_text('task = "generate"\n')
    assert load_preset(path).description == ""
    shipped = load_preset("separate-fast")
    assert shipped.name == "separate-fast" and shipped.description  # every shipped preset says what it is for
    assert all(load_preset(name).description for name in list_presets() if not name.startswith(("gmsdi", "msldm")))
