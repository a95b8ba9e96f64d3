"""The separator's spectral reassignment head: identity at the start, sum-preserving, odd, scale-equivariant,
silent on silence, a known matrix gives the known mix; saved and loaded (its training: test_spectral_head_training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from stemweave.engine.checkpoints import save_model
from stemweave.engine.models import RegressionSeparator, load_separator
from stemweave.engine.spectral_head import ReassignHead
from stemweave.engine.unet import UNet1d

from test_train import TINY

SMALL_HEAD = {"n_fft": 64, "hop": 16, "channels": [4, 8]}


def random_head(k=4, seed=0, config=SMALL_HEAD):
    """A head whose last layer is not zero, so its matrices are far from the identity and vary per bin."""
    torch.manual_seed(seed)
    head = ReassignHead(k, config)
    torch.nn.init.normal_(head.out.weight, std=2.0)
    torch.nn.init.normal_(head.out.bias, std=1.0)
    return head.eval()


def stems_and_mixture(k=4, length=1024, seed=1):
    g = torch.Generator().manual_seed(seed)
    stems = torch.randn(2, k, length, generator=g) * torch.tensor([0.3, 0.1, 0.05, 0.2][:k])[None, :, None]
    return stems, stems.sum(1, keepdim=True)


def test_a_new_head_is_the_identity():
    stems, mixture = stems_and_mixture()
    with torch.no_grad():
        out = ReassignHead(4, SMALL_HEAD)(mixture, stems)
    torch.testing.assert_close(out, stems, atol=1e-6, rtol=0)


def test_a_constant_matrix_mixes_the_waveforms_by_that_matrix():
    """Bias only: R = tanh(b) in every bin, so the head is M = I + R - mean_i R applied to the waveforms."""
    head = ReassignHead(4, SMALL_HEAD).eval()
    bias = torch.linspace(-1.5, 2.0, 16)
    with torch.no_grad():
        head.out.bias.copy_(bias)
    r = np.tanh(bias.numpy()).reshape(4, 4)
    matrix = np.eye(4) + r - r.mean(axis=0, keepdims=True)
    stems, mixture = stems_and_mixture()
    with torch.no_grad():
        out = head(mixture, stems)
    expected = np.einsum("ij,bjt->bit", matrix, stems.numpy())
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-5)
    assert np.abs(matrix - np.eye(4)).max() > 0.5  # a real re-mix, not a near-identity


def test_stems_still_sum_to_the_mixture():
    stems, mixture = stems_and_mixture()
    with torch.no_grad():
        out = random_head()(mixture, stems)
    assert (out - stems).abs().max() > 0.05  # it moved content between stems
    torch.testing.assert_close(out.sum(1, keepdim=True), mixture, atol=1e-5, rtol=0)


def test_odd_and_scale_equivariant():
    head = random_head()
    stems, mixture = stems_and_mixture()
    with torch.no_grad():
        out = head(mixture, stems)
        torch.testing.assert_close(head(-mixture, -stems), -out, atol=1e-6, rtol=0)
        torch.testing.assert_close(head(0.01 * mixture, 0.01 * stems), 0.01 * out, atol=1e-6, rtol=1e-4)


def test_bad_shapes_and_configs_are_refused():
    head = ReassignHead(4, SMALL_HEAD)
    stems, mixture = stems_and_mixture()
    with pytest.raises(ValueError, match="stems"):
        head(mixture, stems[:, :3])
    with pytest.raises(ValueError, match="mixture"):
        head(stems[:, :2], stems)
    with pytest.raises(ValueError, match="type"):
        ReassignHead(4, {"type": "mask"})
    with pytest.raises(ValueError, match="two stems"):
        ReassignHead(1)


def tiny_separator(head=None):
    torch.manual_seed(0)
    unet = dict(TINY["unet"], in_channels=1, out_channels=4, conditioning=False)
    return RegressionSeparator(UNet1d(unet), ("bass", "drums", "guitar", "piano"), head=head).eval()


def test_separator_with_a_head_keeps_silence_sum_and_bound():
    separator = tiny_separator(random_head())
    mixture = torch.randn(3, 1, 1024) * 0.2
    mixture[1] = 0.0
    with torch.no_grad():
        stems = separator(mixture)
        plain = tiny_separator()(mixture)
    assert torch.count_nonzero(stems[1]) == 0  # digital silence in, exactly zero stems out
    torch.testing.assert_close(stems.sum(1, keepdim=True), mixture, atol=1e-6, rtol=0)
    peak = mixture.abs().amax(-1, keepdim=True)
    assert (stems.abs() <= (2 * 1.5 + 0.25) * peak + 1e-6).all()
    assert (stems - plain).abs().max() > 1e-3  # the head is in the path


def test_model_file_round_trip_and_mismatch(tmp_path):
    separator = tiny_separator(random_head())
    config = dict(TINY, unet=dict(TINY["unet"], in_channels=1, out_channels=4, conditioning=False))
    save_model(tmp_path, separator.net, name="s", kind="regression", stems=separator.stems, config=config,
               head=separator.head)
    loaded = load_separator(tmp_path / "s.safetensors")
    card = json.loads((tmp_path / "s.json").read_text())
    assert card["head"] == dict(SMALL_HEAD, type="reassign")
    mixture = torch.randn(2, 1, 1024) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(loaded(mixture), separator(mixture), atol=1e-6, rtol=0)
    del card["head"]
    (tmp_path / "s.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="disagree"):
        load_separator(tmp_path / "s.safetensors")
    with pytest.raises(ValueError, match="regression"):
        save_model(tmp_path, separator.net, name="p", kind="msdm", stems=separator.stems, config=config,
                   head=separator.head)
