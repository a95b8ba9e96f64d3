"""The separator's spectral reassignment head: identity at the start, sum-preserving, odd, scale-equivariant,
silent on silence, a known matrix gives the known mix; saved and loaded (its training: test_spectral_head_training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stemweave.engine.checkpoints import save_model
from stemweave.engine.models import RegressionSeparator, load_separator
from stemweave.engine.spectral_head import ReassignHead, native_bfloat16
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
    for channels in ([], [4, 0]):
        with pytest.raises(ValueError, match="positive channels"):
            ReassignHead(4, {"channels": channels})
    assert ReassignHead(2, {"channels": [1]}).stems == 2  # the smallest head there is


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


@pytest.mark.parametrize("with_head", [True, False])
def test_a_bfloat16_separator_keeps_the_promises_and_the_answer(with_head):
    """Inference in bfloat16 (native CPUs): only the nets' precision changes (the U-Net's and the head's); silence,
    sum, bound and oddness hold, the stems stay within bfloat16's rounding of the float32 answer, and float32 again
    gives that answer back."""
    separator = tiny_separator(random_head() if with_head else None)
    fast = tiny_separator(random_head() if with_head else None)
    fast.load_state_dict(separator.state_dict())
    assert fast.use_bfloat16() is fast and fast.bfloat16
    if with_head:
        assert fast.head.bfloat16 and fast.head.out.weight.dtype == torch.float32
        assert fast.head.out.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(p.dtype == torch.float32 for p in fast.parameters())
    mixture = torch.randn(3, 1, 1024) * 0.2
    mixture[1] = 0.0
    with torch.no_grad():
        exact, stems, flipped = separator(mixture), fast(mixture), fast(-mixture)
        unet = fast.net(mixture)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            unet_bf16 = fast.net(mixture)
    assert stems.dtype == torch.float32 and torch.count_nonzero(stems[1]) == 0
    torch.testing.assert_close(stems.sum(1, keepdim=True), mixture, atol=1e-6, rtol=0)
    peak = mixture.abs().amax(-1, keepdim=True)
    assert (stems.abs() <= (2 * 1.5 + 0.25) * peak + 1e-6).all()
    torch.testing.assert_close(flipped, -stems, atol=1e-6, rtol=0)
    assert unet_bf16.dtype == torch.bfloat16 and 0 < (unet_bf16.float() - unet).norm() < 0.02 * unet.norm()
    assert 0 < (stems - exact).norm() < 0.02 * exact.norm()  # rounding, not another answer
    with torch.no_grad():
        torch.testing.assert_close(fast.use_bfloat16(False)(mixture), exact, atol=1e-6, rtol=0)
    assert not fast.bfloat16 and (not with_head or not fast.head.bfloat16)


def test_native_bfloat16_is_the_cpus_own_answer_and_only_a_cpus():
    expected = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert native_bfloat16("cpu") == expected and native_bfloat16(torch.device("cpu")) == expected
    assert not native_bfloat16("cuda") and not native_bfloat16("meta")


def test_use_bfloat16_lays_the_net_out_channels_last_and_back():
    head = random_head()
    kernels = [p for p in head.parameters() if p.dim() == 4 and p.shape[-1] > 1]  # 3 x 3: the layouts differ
    assert kernels and not head.bfloat16
    head.use_bfloat16()
    assert head.bfloat16 and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                                 for p in kernels)
    head.use_bfloat16(False)
    assert not head.bfloat16 and all(p.is_contiguous() for p in kernels)


def test_model_file_round_trip_and_mismatch(tmp_path):
    separator = tiny_separator(random_head())
    config = dict(TINY, unet=dict(TINY["unet"], in_channels=1, out_channels=4, conditioning=False))
    save_model(tmp_path, separator.net, name="s", kind="regression", stems=separator.stems, config=config,
               head=separator.head)
    loaded = load_separator(tmp_path / "s.safetensors", bfloat16=False)
    assert not loaded.bfloat16 and not loaded.head.bfloat16
    native = load_separator(tmp_path / "s.safetensors")
    assert native.bfloat16 == native.head.bfloat16 == native_bfloat16("cpu")
    card = json.loads((tmp_path / "s.json").read_text())
    assert card["head"] == dict(SMALL_HEAD, type="reassign")
    assert "window" not in separator.head.state_dict()  # the STFT window follows from n_fft: not in the file
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


def reference_head(head, mixture, stems):
    """The head written out from its docstring with functional ops: an independent check of the module's wiring."""
    n_fft, hop, k = head.config["n_fft"], head.config["hop"], stems.shape[1]
    window = torch.hann_window(n_fft)

    def stft(audio):
        return torch.stft(audio.reshape(-1, audio.shape[-1]), n_fft, hop, window=window, return_complex=True)

    batch, length = stems.shape[0], stems.shape[-1]
    stem_specs = stft(stems).reshape(batch, k, n_fft // 2 + 1, -1)
    mix_spec = stft(mixture).reshape(batch, 1, n_fft // 2 + 1, -1)
    level = torch.sqrt(torch.mean(mixture**2, dim=2)).clamp_min(1e-5).reshape(batch, 1, 1, 1)
    h = torch.log(torch.cat([stem_specs, mix_spec], 1).abs() / level + 1e-3)
    bins, frames = h.shape[-2:]
    levels = len(head.down)
    h = F.pad(h, (0, -frames % 2 ** (levels - 1), 0, -bins % 2 ** (levels - 1)))

    def block(seq, h, stride):
        assert seq[0].weight.shape[-2:] == (3, 3) and seq[2].weight.shape[-2:] == (3, 3)
        h = F.gelu(F.conv2d(h, seq[0].weight, seq[0].bias, stride=stride, padding=1))
        return F.gelu(F.conv2d(h, seq[2].weight, seq[2].bias, padding=1))

    skips = []
    for i, seq in enumerate(head.down):
        h = block(seq, h, 1 if i == 0 else 2)
        skips.append(h)
    for seq, skip in zip(head.up, reversed(skips[:-1])):
        h = block(seq, torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], 1), 1)
    assert head.out.weight.shape[-2:] == (1, 1)
    r = torch.tanh(F.conv2d(h, head.out.weight, head.out.bias)[..., :bins, :frames]).reshape(batch, k, k, bins, frames)
    matrices = torch.eye(k).reshape(1, k, k, 1, 1) + r - r.mean(1, keepdim=True)
    mixed = torch.einsum("bijfn,bjfn->bifn", matrices.to(stem_specs.dtype), stem_specs)
    out = torch.istft(mixed.reshape(-1, bins, frames), n_fft, hop, window=window, length=length)
    return out.reshape(batch, k, length)


@pytest.mark.parametrize("k, config", [(4, {"n_fft": 64, "hop": 25, "channels": [3, 5, 6]}),
                                       (2, {"n_fft": 32, "hop": 8, "channels": [1]})])
def test_the_module_matches_its_equation_written_out(k, config):
    head = random_head(k, seed=3, config=config)
    torch.nn.init.normal_(head.out.weight, std=0.5)  # moderate: tanh not saturated, so the wiring shows
    stems, mixture = stems_and_mixture(k, length=1010, seed=4)  # not a multiple of the hop; 41 frames, 4 * 10 + 1
    with torch.no_grad():
        torch.testing.assert_close(head(mixture, stems), reference_head(head, mixture, stems), atol=1e-6, rtol=0)
        # the matrices of a batch are each window's own (forward runs one window at a time; `mixing` takes batches)
        specs, mix_specs = head._stft(stems), head._stft(mixture)
        level = mixture.pow(2).mean(-1, keepdim=True).sqrt().unsqueeze(-1)
        batched = head.mixing(mix_specs, specs, level)
        one_by_one = torch.cat([head.mixing(mix_specs[i : i + 1], specs[i : i + 1], level[i : i + 1]) for i in range(2)])
        torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=0)
        torch.testing.assert_close(batched.sum(1), torch.ones_like(batched.sum(1)), atol=1e-6, rtol=0)
    assert [block[0].out_channels for block in head.down] == config["channels"]
