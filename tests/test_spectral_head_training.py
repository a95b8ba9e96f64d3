"""Training the separator's spectral head: `--head` freezes the U-Net and moves the head; a U-Net run carries the head."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stemweave.engine.metrics import si_sdr
from stemweave.engine.models import load_separator
from stemweave.engine.train import export_model, train

from test_spectral_head import SMALL_HEAD
from test_train import TINY, SyntheticStems, settings

HEAD_TINY = dict(TINY, window=1024, head=SMALL_HEAD, train=dict(TINY["train"], lr=3e-3))


@pytest.mark.parametrize("bfloat16", [False, True], ids=["float32", "bfloat16"])
def test_head_training_freezes_the_unet_and_lowers_the_loss(tmp_path, bfloat16):
    """Both precisions train the head (`--bfloat16`: the convolutions under autocast, the weights float32)."""
    quiet = lambda *_: None  # noqa: E731
    train(settings(tmp_path / "u", "regression", config=dict(TINY, window=1024), steps=30), SyntheticStems(0, window=1024),
          log=quiet)
    export_model(tmp_path / "u" / "run", "sep", out_dir=tmp_path / "m")
    before = load_separator(tmp_path / "m" / "sep.safetensors")
    assert before.head is None

    s = settings(tmp_path / "h", "regression", config=HEAD_TINY, steps=150, head=True, valid_windows=16,
                 bfloat16=bfloat16, init_from=str(tmp_path / "m" / "sep.safetensors"))
    summary = train(s, SyntheticStems(0, window=1024), SyntheticStems(99, window=1024), log=quiet)
    export_model(tmp_path / "h" / "run", "sep-head", out_dir=tmp_path / "m")
    after = load_separator(tmp_path / "m" / "sep-head.safetensors")
    for key, value in before.net.state_dict().items():  # the U-Net did not move
        torch.testing.assert_close(after.net.state_dict()[key], value, atol=0, rtol=0)
    assert after.head is not None and after.head.out.weight.abs().max() > 0  # the head did
    windows = torch.stack([w for _, w in zip(range(16), SyntheticStems(99, window=1024))])
    mixture = windows.sum(1, keepdim=True)
    with torch.no_grad():
        with_head = after(mixture)
        head, after.head = after.head, None
        without = after(mixture)
        after.head = head
    gain = (si_sdr(with_head.numpy(), windows.numpy()) - si_sdr(without.numpy(), windows.numpy())).mean()
    assert gain > 1.0, gain  # two sinusoids in their own bands: a per-bin re-mix separates them far better
    assert not math.isnan(summary["validation"]["si_sdri"])  # validated through the head
    ledger = json.loads((tmp_path / "m" / "sep-head.json").read_text())["training"]["ledger"]
    assert [e["trained"] for e in ledger[-1:]] == ["head"] and ledger[-1]["total_steps"] == 180

    # A U-Net run from the file with a head carries the head, frozen, into its export.
    s = settings(tmp_path / "c", "regression", config=HEAD_TINY, steps=3, init_from=str(tmp_path / "m" / "sep-head.json"))
    train(s, SyntheticStems(0, window=1024), log=quiet)
    export_model(tmp_path / "c" / "run", "sep-cont", out_dir=tmp_path / "m")
    cont = load_separator(tmp_path / "m" / "sep-cont.safetensors")
    for key, value in after.head.state_dict().items():
        torch.testing.assert_close(cont.head.state_dict()[key], value, atol=0, rtol=0)
    assert any((cont.net.state_dict()[k] - v).abs().max() > 0 for k, v in after.net.state_dict().items())


def test_head_needs_a_trained_separator(tmp_path):
    with pytest.raises(ValueError, match="--init-from"):
        train(settings(tmp_path, "regression", head=True), SyntheticStems(0), log=lambda *_: None)
    with pytest.raises(ValueError, match="--objective regression"):
        train(settings(tmp_path, "diffusion", head=True, init_from="x"), SyntheticStems(0), log=lambda *_: None)
    with pytest.raises(ValueError, match="needs --objective regression"):
        train(settings(tmp_path, "diffusion", bfloat16=True), SyntheticStems(0), log=lambda *_: None)
