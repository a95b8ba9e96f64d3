"""The models that ship inside the package: each under 30 MB, its card true to its weights, and each one works."""

import hashlib

import pytest
import torch

from stemweave.engine import models
from stemweave.engine.checkpoints import read_card

SHIPPED = models.list_models()
LIMIT = 30 * 1024 * 1024


def test_the_defaults_ship():
    for name in (models.DEFAULT_SEPARATOR, models.DEFAULT_PRIOR, models.DEFAULT_MSLDM, models.DEFAULT_GMSDI):
        assert name in SHIPPED
    assert models.list_models("isdm"), "no ISDM model ships"


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_model_is_small_and_its_card_matches_its_weights(name):
    card_path = models.MODEL_DIR / f"{name}.json"
    weights = card_path.with_suffix(".safetensors")
    assert weights.stat().st_size < LIMIT
    card = read_card(card_path)
    assert card["name"] == name and card["weights"] == weights.name
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["stems"] == ["bass", "drums", "guitar", "piano"] and card["rate"] == 22050
    assert card.get("training") and card.get("metrics"), "a shipped card records its training and metrics"
    ledger = card["training"]["ledger"]  # one entry per shipped version (issue 19): steps add up across versions
    assert ledger and ledger[-1]["name"] == name and card["training"]["total_steps"] == ledger[-1]["total_steps"]
    assert all(entry["steps"] > 0 and entry["total_steps"] >= entry["steps"] for entry in ledger)
    assert [e["total_steps"] for e in ledger] == sorted(e["total_steps"] for e in ledger)


@pytest.mark.parametrize("name", [n for n in SHIPPED if models.model_kind(n) in ("msdm", "isdm")])
def test_a_shipped_waveform_prior_denoises_toward_its_input_at_low_noise(name):
    prior = models.load_prior(name)
    torch.manual_seed(0)
    clean = 0.1 * torch.randn(1, 4, prior.stride * 8)
    with torch.no_grad():
        denoised = prior.denoise(clean + 0.01 * torch.randn_like(clean), 0.01)
    assert denoised.shape == clean.shape and torch.isfinite(denoised).all()
    # at sigma 0.01 the EDM skip path dominates: the answer stays within the noise of the input
    assert (denoised - clean).abs().max() < 0.1


def test_the_shipped_separator_returns_stems_that_sum_to_the_mixture():
    separator = models.load_separator(models.DEFAULT_SEPARATOR)
    mixture = 0.1 * torch.randn(1, 1, separator.stride * 8)
    with torch.no_grad():
        stems = separator(mixture)
    assert stems.shape == (1, 4, mixture.shape[-1])
    assert torch.allclose(stems.sum(dim=1, keepdim=True), mixture, atol=1e-5)


def test_the_shipped_separator_carries_its_spectral_head():
    """The default separator's card names its head and the file holds it: loaded strictly into the default head
    (so an edit to the head's architecture that the weights do not fit fails here), it changes the stems."""
    from stemweave.engine.spectral_head import DEFAULT_HEAD

    separator = models.load_separator(models.DEFAULT_SEPARATOR)
    assert separator.card["head"] == DEFAULT_HEAD and separator.head is not None
    assert separator.head.out.weight.abs().max() > 0  # trained: not the identity it starts as
    torch.manual_seed(2)
    mixture = 0.1 * torch.randn(1, 1, separator.stride * 16)
    with torch.no_grad():
        with_head = separator(mixture)
        separator.head = None
        without = separator(mixture)
    assert (with_head - without).abs().max() > 1e-3


def test_the_shipped_gmsdi_model_denoises_from_its_packaged_captions():
    from stemweave.engine.gmsdi.inference import GMSDIModel, load_gmsdi_preset

    model = GMSDIModel.load(models.DEFAULT_GMSDI)
    assert (models.MODEL_DIR / f"{models.DEFAULT_GMSDI}.text.safetensors").exists()
    prior = model.prior(["bass", "drums, guitar"], None, load_gmsdi_preset("gmsdi-separate"))
    torch.manual_seed(0)
    clean = 0.1 * torch.randn(1, 2, model.window)
    with torch.no_grad():
        denoised = prior.denoise(clean + 0.01 * torch.randn_like(clean), 0.01)
    assert denoised.shape == clean.shape and (denoised - clean).abs().max() < 0.1
    assert model.encoder._model is None, "the shipped captions' embeddings come from the cache, no transformer load"


def test_polarity_averaging_keeps_the_networks_odd_part():
    """With polarity_average the separator is exactly odd (stems of -y are minus the stems of y) and, before the
    peak bound and the sum projection, equals (net(y) - net(-y)) / 2 computed from the plain network."""
    plain = models.load_separator(models.DEFAULT_SEPARATOR, bfloat16=False)  # the formula in float32
    plain.polarity_average, plain.level_normalise = False, False
    odd = models.load_separator(models.DEFAULT_SEPARATOR, bfloat16=False)
    odd.polarity_average, odd.level_normalise = True, False
    native = models.load_separator(models.DEFAULT_SEPARATOR)  # in bfloat16 where the CPU has it
    native.level_normalise = False
    torch.manual_seed(1)
    mixture = 0.1 * torch.randn(2, 1, plain.stride * 8)
    with torch.no_grad():
        assert not torch.allclose(plain(-mixture), -plain(mixture), atol=1e-3)  # the network alone is not odd
        torch.testing.assert_close(odd(-mixture), -odd(mixture), atol=1e-6, rtol=0)  # with its spectral head too
        torch.testing.assert_close(native(-mixture), -native(mixture), atol=1e-6, rtol=0)  # and in either precision
        odd.head = None  # the U-Net's odd part alone, against the formula
        expected = models.project_to_mixture((plain.net(mixture) - plain.net(-mixture)) / 2, mixture)
        torch.testing.assert_close(odd(mixture), expected, atol=1e-6, rtol=0)
        odd.level_normalise = True
        assert torch.count_nonzero(odd(torch.zeros(1, 1, plain.stride * 8))) == 0  # silence stays silent
    # on by default, also for a card that predates the flag; the trainer fits the plain network
    from stemweave.engine.train import Objective

    assert models.RegressionSeparator(plain.net, plain.stems, {"rate": 22050}).polarity_average
    trained = Objective(plain.net, "regression", {"train": {}, "sigma_data": 0.05}, stems=plain.stems)
    assert trained.separator.polarity_average is False


def test_each_task_defaults_to_the_model_measured_best_for_it(monkeypatch):
    """Accompaniment samples the prior that hears given stems (docs/priors.md); generation and refining a
    separation keep the default prior, which separates better; without the first, accompaniment falls back."""
    from stemweave import api

    assert api.default_model("separate") == models.DEFAULT_SEPARATOR
    assert api.default_model("accompany") == models.DEFAULT_ACCOMPANY_PRIOR != models.DEFAULT_PRIOR
    assert models.load_prior(models.DEFAULT_ACCOMPANY_PRIOR).given_sigma_data
    assert api.default_model("generate") == api.default_model("refine") == models.DEFAULT_PRIOR
    monkeypatch.setattr(models, "DEFAULT_ACCOMPANY_PRIOR", "not-shipped")
    assert api.default_model("accompany") == models.DEFAULT_PRIOR
