"""The text-conditioned mixture denoiser S_theta(y(t), z, sigma(t)) of GMSDI Eq. 1: the U-Net family plus FiLM from text.

`TextUNet1d` is `UNet1d` (one channel in and out: a mixture) whose noise
embedding, the vector every resnet block's FiLM reads, becomes

    e = MLP_sigma(c_noise) + MLP_text(z)

so the text embedding z scales and shifts every block, as sigma does. z* (the
"fixed learned embedding" of the unconditional score, Sec. 2.1) is a learned
vector `null_text` in the encoder's space; `label_dropout` replaces a training
caption's z by z* (classifier-free guidance). The last text layer starts at
zero: a fresh network ignores the text and learns to use it.

unet.py is not edited: the text reaches the embedding through a thread-local
slot set around `UNet1d.forward` (`conditioned`), so `EDMDenoiser` and
`edm_loss` are reused unchanged. (A hook `UNet1d.forward(x, c_noise,
embedding_offset=None)` would make that slot unnecessary.)
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Mapping

import torch
from torch import nn

from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.unet import UNet1d, UNetConfig


class _TextSlot(threading.local):
    """The text embeddings of the forward call running in this thread; a copy (EMA, pickling) starts empty."""

    def __deepcopy__(self, memo):
        return _TextSlot()

    def __reduce__(self):
        return (_TextSlot, ())


class _TextFiLMEmbedding(nn.Module):
    """e = time(c_noise) + text(z), z read from the owner's thread-local slot (z* when none is set)."""

    def __init__(self, time: nn.Module, text: nn.Module, owner_slot: _TextSlot, null: nn.Parameter):
        super().__init__()
        self.time = time
        self.text = text
        self._slot = owner_slot
        self._null = [null]  # not a submodule/parameter here: the owner holds it

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        e = self.time(c_noise)  # (B, E)
        z = getattr(self._slot, "text", None)
        if z is None:
            z = self._null[0][None].expand(e.shape[0], -1)
        return e + self.text(z.to(e.dtype)).expand(e.shape[0], -1)


class TextUNet1d(UNet1d):
    """F(y, c_noise, z): (B, 1, T), (B,), (B, D) -> (B, 1, T). z = None is the null embedding z* for every item."""

    def __init__(self, config: UNetConfig | Mapping[str, Any], text_features: int):
        config = UNetConfig.from_dict(config) if not isinstance(config, UNetConfig) else config
        if not config.conditioning:
            raise ValueError("a text-conditioned U-Net needs conditioning = true (the FiLM embedding)")
        super().__init__(config)
        width = config.embedding_features or 4 * config.channels
        self.text_features = int(text_features)
        self.null_text = nn.Parameter(0.02 * torch.randn(self.text_features))  # z*, Sec. 2.1
        text = nn.Sequential(nn.Linear(self.text_features, width), nn.GELU(), nn.Linear(width, width))
        nn.init.zeros_(text[-1].weight)
        nn.init.zeros_(text[-1].bias)
        self._slot = _TextSlot()
        self.embedding = _TextFiLMEmbedding(self.embedding, text, self._slot, self.null_text)

    @contextlib.contextmanager
    def conditioned(self, text: torch.Tensor | None):
        """Within the block, calls F(y, c_noise) use the text embeddings `text` (B, D) (None: z*)."""
        previous = getattr(self._slot, "text", None)
        self._slot.text = text
        try:
            yield self
        finally:
            self._slot.text = previous

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None, text: torch.Tensor | None = None) -> torch.Tensor:
        if text is None:
            return super().forward(x, c_noise)  # the bound text (conditioned), else z*
        with self.conditioned(text):
            return super().forward(x, c_noise)

    def drop_labels(self, text: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Label dropout for classifier-free guidance: each row of `text` (B, D) becomes z* with probability p."""
        drop = torch.rand(text.shape[0], generator=generator) < p
        return torch.where(drop[:, None].to(text.device), self.null_text[None].to(text.dtype), text)


class TextDenoiser(nn.Module):
    """D(y, sigma, z) = c_skip y + c_out F(c_in y, c_noise, z): EDMDenoiser around a `TextUNet1d`.

    Called with y (N, 1, T), sigma (a float or (N,)) and z (N, D) rows (z* rows
    for the unconditional score).
    """

    def __init__(self, net: TextUNet1d, sigma_data: float = 0.2, clamp: bool = True):
        super().__init__()
        self.net = net
        self.edm = EDMDenoiser(net, sigma_data=sigma_data, clamp=clamp)

    @property
    def null_text(self) -> torch.Tensor:
        return self.net.null_text

    def forward(self, y: torch.Tensor, sigma: torch.Tensor | float, text: torch.Tensor) -> torch.Tensor:
        with self.net.conditioned(text.to(y.device)):
            return self.edm(y, sigma)


def text_unet_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The [unet] table of an engine config made into a mixture model's: 1 channel in and out, FiLM on."""
    unet = dict(config["unet"])
    unet.update(in_channels=1, out_channels=1, conditioning=True)
    return unet


__all__ = ["TextDenoiser", "TextUNet1d", "text_unet_config"]
