"""Training a joint prior to hear given stems (`train --given-share`): which stems are given, what the network is
shown, what the loss counts, and how the model card tells accompaniment to show them clean."""

from __future__ import annotations

import json

import pytest
import torch

from stemweave.engine.denoiser import EDMDenoiser, edm_loss, sample_given_stems, shown_clean
from stemweave.engine.models import load_prior
from stemweave.engine.train import export_model, train
from test_train import STEMS, SyntheticStems, settings


def test_a_share_of_the_items_gets_a_uniform_subset_of_the_stems_never_none_nor_all():
    given = sample_given_stems(20000, 4, 0.3, torch.Generator().manual_seed(0))[:, :, 0]
    count = given.sum(1)
    assert given.shape == (20000, 4) and given.dtype == torch.bool
    assert (count < 4).all()
    assert (count > 0).float().mean().item() == pytest.approx(0.3, abs=0.015)
    subsets = torch.unique(given[count > 0].long() @ torch.tensor([1, 2, 4, 8]), return_counts=True)[1]
    assert len(subsets) == 14 and subsets.max() < 1.2 * subsets.min()  # the 14 proper subsets, equally often
    assert not sample_given_stems(100, 4, 0.0).any()
    same, other = (sample_given_stems(64, 4, 0.5, torch.Generator().manual_seed(s)) for s in (0, 1))
    assert torch.equal(same, sample_given_stems(64, 4, 0.5, torch.Generator().manual_seed(0)))  # the seed decides
    assert not torch.equal(same, other)


def test_shown_clean_takes_one_sigma_or_one_per_item():
    clean = torch.randn(2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(shown_clean(clean, 0.3, 0.05), clean * (0.09 + 0.0025) ** 0.5 / 0.05)
    per_item = shown_clean(clean, torch.tensor([0.3, 2.0], dtype=torch.float64), 0.05)
    torch.testing.assert_close(per_item[1], clean[1] * (4.0 + 0.0025) ** 0.5 / 0.05)


class Recording(torch.nn.Module):
    """A network that records its input and returns a fixed answer."""

    def __init__(self, answer):
        super().__init__()
        self.answer, self.seen = answer, []

    def forward(self, x, c_noise):
        self.seen.append(x.clone())
        return self.answer


def test_the_loss_shows_given_stems_clean_at_unit_scale_and_counts_only_the_others():
    torch.manual_seed(0)
    x0, noise = 0.2 * torch.randn(3, 2, 64), torch.randn(3, 2, 64)
    sigma = torch.tensor([0.01, 0.5, 8.0])
    given = torch.tensor([[True, False], [False, True], [False, False]])[:, :, None]
    net = Recording(torch.zeros(3, 2, 64))
    denoiser = EDMDenoiser(net, sigma_data=0.2, clamp=False)
    loss = edm_loss(denoiser, x0, sigma, noise, given)
    shown = net.seen[0]
    c_in = 1 / (sigma**2 + 0.04).sqrt()
    torch.testing.assert_close(shown[0, 0], x0[0, 0] / 0.2)  # given: the clean stem / sigma_data at any sigma
    torch.testing.assert_close(shown[1, 1], x0[1, 1] / 0.2)
    torch.testing.assert_close(shown[2], c_in[2] * (x0[2] + 8.0 * noise[2]))  # none given: as before
    torch.testing.assert_close(shown[0, 1], c_in[0] * (x0[0, 1] + 0.01 * noise[0, 1]))
    # the network's output is zero, so D = c_skip * x: the loss is lambda-weighted over the unknown stems only
    c_skip = (0.04 / (sigma**2 + 0.04))[:, None, None]
    noisy = torch.where(given, shown_clean(x0, sigma, 0.2), x0 + sigma[:, None, None] * noise)
    error = (c_skip * noisy - x0).pow(2)
    per_item = torch.stack([error[0, 1].mean(), error[1, 0].mean(), error[2].mean()])
    torch.testing.assert_close(loss, (denoiser.loss_weight(sigma) * per_item).mean())


def test_a_prior_trained_with_given_stems_says_so_on_its_card_and_accompaniment_hears_them(tmp_path):
    train(settings(tmp_path / "g", steps=3, given_share=0.5), SyntheticStems(0), log=lambda *_: None)
    export_model(tmp_path / "g" / "run", "hears", out_dir=tmp_path / "models")
    card = json.loads((tmp_path / "models" / "hears.json").read_text())
    assert card["training"]["given_share"] == 0.5
    assert load_prior(tmp_path / "models" / "hears.json").given_sigma_data == card["sigma_data"]
    train(settings(tmp_path / "p", steps=2), SyntheticStems(0), log=lambda *_: None)
    export_model(tmp_path / "p" / "run", "plain", out_dir=tmp_path / "models")
    assert load_prior(tmp_path / "models" / "plain.json").given_sigma_data is None


@pytest.mark.parametrize("kind", [dict(objective="regression"), dict(stem="bass"), dict(given_share=1.5)])
def test_given_share_is_refused_where_it_means_nothing(tmp_path, kind):
    kind = {"given_share": 0.5, **kind}
    with pytest.raises(ValueError, match="--given-share"):
        train(settings(tmp_path, steps=1, **kind), SyntheticStems(0, stems=STEMS[:1] if "stem" in kind else STEMS),
              log=lambda *_: None)


def test_the_cli_refuses_a_given_share_for_a_separator(tmp_path, capsys):
    from stemweave.cli import main

    assert main(["train", "--objective", "regression", "--given-share", "0.5", "--run-dir", str(tmp_path / "x"),
                 "--data", str(tmp_path)]) == 2
    assert "--given-share" in capsys.readouterr().err
