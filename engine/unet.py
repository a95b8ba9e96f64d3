"""The score network: a 1-D U-Net of the MSDM family (audio-diffusion-pytorch 0.0.43 `UNet1d` style).

Written here from the description in msdm.txt (Appendix C) and
reference-notes.md; no public code is copied. The shape of the network:

    x (B, C_in, T)
    -> patch: fold P = patch_factor samples into channels (B, C_in*P, T/P), conv, resnet blocks
    -> encoder levels i = 0..n-1: strided conv (factor f_i), num_blocks resnet blocks
       (+ self-attention on the levels flagged in `attentions`), each block's output kept as a skip
    -> bottleneck: resnet block, self-attention, resnet block
    -> decoder levels (mirror): each block takes [x, skip * 2^-0.5] concatenated,
       then a transposed (or nearest + conv) upsampling by f_i
    -> unpatch: resnet blocks on [x, patch skip], conv to C_out*P, unfold to (B, C_out, T)

Every resnet block is GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM (scale, shift)
-> SiLU -> conv, plus a residual; FiLM takes an embedding of c_noise made of
learned Fourier features followed by an MLP. With `conditioning = False` there
is no embedding and no FiLM: the network is a plain regressor (the regression
separator maps the mixture, 1 channel, to K stems).

The input length must be a multiple of `UNet1d.stride` = patch_factor * prod(factors).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    """Hyperparameters of `UNet1d`; the `[unet]` table of a file in engine/configs/."""

    in_channels: int = 4
    out_channels: int = 4
    channels: int = 32
    patch_factor: int = 16
    patch_blocks: int = 1
    multipliers: Sequence[int] = (2, 4, 8, 8)  # channels * m per level; len(factors) + 1 entries
    factors: Sequence[int] = (4, 4, 2)  # down-sampling factor of each encoder level
    num_blocks: Sequence[int] | int = 2  # resnet blocks per encoder level (one number or one per level)
    attentions: Sequence[bool] = (False, False, True)  # self-attention after each block of a level
    attention_heads: int = 8
    attention_features: int = 32  # features per head
    attention_multiplier: int = 2  # feed-forward width after attention, times the channels
    use_attention_bottleneck: bool = True
    resnet_groups: int = 8
    kernel_multiplier_downsample: int = 2  # down-sampling conv kernel = factor * this + 1
    use_nearest_upsample: bool = False  # False: transposed conv; True: nearest + conv
    use_skip_scale: bool = True  # skips scaled by 2^-0.5
    fourier_features: int = 64  # learned Fourier features of c_noise
    embedding_features: int | None = None  # width of the c_noise MLP; default 4 * channels
    conditioning: bool = True  # False: ignore c_noise, no FiLM (a plain regressor)
    legacy_narrow_patch: bool = False  # only for shipped files made before the width invariant (validate)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown U-Net config keys {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def blocks_per_level(self) -> list[int]:
        if isinstance(self.num_blocks, int):
            return [self.num_blocks] * len(self.factors)
        return list(self.num_blocks)

    def validate(self) -> None:
        n = len(self.factors)
        if len(self.multipliers) != n + 1:
            raise ValueError(f"multipliers needs len(factors) + 1 = {n + 1} entries, got {len(self.multipliers)}")
        if len(self.attentions) != n:
            raise ValueError(f"attentions needs one flag per level ({n}), got {len(self.attentions)}")
        if len(self.blocks_per_level()) != n:
            raise ValueError(f"num_blocks needs one count per level ({n})")
        for m in self.multipliers:
            if (self.channels * m) % self.resnet_groups:
                raise ValueError(f"channels * multiplier {self.channels * m} is not divisible by resnet_groups {self.resnet_groups}")
        if any(f * self.kernel_multiplier_downsample % 2 for f in self.factors):
            raise ValueError("factor * kernel_multiplier_downsample must be even (exact length division)")
        patch_values = max(self.in_channels, self.out_channels) * self.patch_factor
        patch_width = self.channels * self.multipliers[0]
        if patch_width < patch_values and not self.legacy_narrow_patch:
            # The output conv maps patch_width channels to patch_values numbers per patch: narrower, and the
            # network's correction reaches only a subspace of each patch (DESIGN.md, "represent its output").
            raise ValueError(
                f"the patch level is channels * multipliers[0] = {self.channels} * {self.multipliers[0]} = {patch_width} "
                f"wide, but a patch holds max(in_channels, out_channels) * patch_factor = "
                f"max({self.in_channels}, {self.out_channels}) * {self.patch_factor} = {patch_values} numbers: the network "
                f"could not represent its own output; raise multipliers[0] to at least "
                f"{-(-patch_values // self.channels)}")


def _group_norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


class FourierEmbedding(nn.Module):
    """c_noise (B,) -> (B, E): [c, sin(2 pi w c), cos(2 pi w c)] with learned w, then a 2-layer MLP."""

    def __init__(self, fourier_features: int, out_features: int):
        super().__init__()
        assert fourier_features % 2 == 0
        self.weights = nn.Parameter(torch.randn(fourier_features // 2))
        self.mlp = nn.Sequential(
            nn.Linear(fourier_features + 1, out_features), nn.GELU(), nn.Linear(out_features, out_features), nn.GELU()
        )

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        c = c_noise.reshape(-1, 1)
        phase = 2 * math.pi * c * self.weights[None, :]
        return self.mlp(torch.cat([c, phase.sin(), phase.cos()], dim=1))


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> FiLM from the c_noise embedding -> SiLU -> conv, + residual."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, embedding_features: int | None):
        super().__init__()
        self.norm1 = _group_norm(groups, in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _group_norm(groups, out_channels)
        self.film = nn.Linear(embedding_features, 2 * out_channels) if embedding_features else None
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (plus its 1x1 projection)
        nn.init.zeros_(self.conv2.bias)
        self.residual = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.film is not None:
            scale, shift = self.film(embedding)[:, :, None].chunk(2, dim=1)  # (B, C, 1) each
            h = h * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.residual(x)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention over time, then a pre-norm feed-forward, both residual."""

    def __init__(self, channels: int, heads: int, head_features: int, multiplier: int):
        super().__init__()
        self.heads = heads
        inner = heads * head_features
        self.norm = nn.LayerNorm(channels)
        self.to_qkv = nn.Linear(channels, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, channels)
        self.ff_norm = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, channels * multiplier), nn.GELU(), nn.Linear(channels * multiplier, channels))
        for layer in (self.to_out, self.ff[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        h = x.transpose(1, 2)  # (B, T, C)
        q, k, v = self.to_qkv(self.norm(h)).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # (B, heads, T, d)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        h = h + self.to_out(a)
        h = h + self.ff(self.ff_norm(h))
        return h.transpose(1, 2)


class Level(nn.Module):
    """Resnet blocks, each optionally followed by self-attention (one encoder or decoder level)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, groups: int, embedding_features, attention: dict | None):
        super().__init__()
        self.blocks = nn.ModuleList(ResnetBlock(c, out_channels, groups, embedding_features) for c in in_channels)
        self.attentions = nn.ModuleList(
            AttentionBlock(out_channels, **attention) if attention else nn.Identity() for _ in in_channels
        )


class UNet1d(nn.Module):
    """F(x, c_noise): (B, C_in, T), (B,) -> (B, C_out, T). T must be a multiple of `self.stride`."""

    def __init__(self, config: UNetConfig | Mapping[str, Any]):
        super().__init__()
        if not isinstance(config, UNetConfig):
            config = UNetConfig.from_dict(config)
        config.validate()
        self.config = config
        c = config
        widths = [c.channels * m for m in c.multipliers]  # width of the patch level, then of each level
        blocks = c.blocks_per_level()
        emb = (c.embedding_features or 4 * c.channels) if c.conditioning else None
        groups = c.resnet_groups
        attention = dict(heads=c.attention_heads, head_features=c.attention_features, multiplier=c.attention_multiplier)
        self.stride = c.patch_factor * math.prod(c.factors)
        self.skip_scale = 2**-0.5 if c.use_skip_scale else 1.0

        self.embedding = FourierEmbedding(c.fourier_features, emb) if emb else None
        # Patching: (B, C_in, T) -> (B, C_in * P, T / P) -> widths[0] channels.
        self.patch_in = nn.Conv1d(c.in_channels * c.patch_factor, widths[0], 3, padding=1)
        self.patch_blocks = nn.ModuleList(ResnetBlock(widths[0], widths[0], groups, emb) for _ in range(c.patch_blocks))

        self.downsamples = nn.ModuleList()
        self.encoder = nn.ModuleList()
        for i, factor in enumerate(c.factors):
            k = factor * c.kernel_multiplier_downsample + 1
            self.downsamples.append(nn.Conv1d(widths[i], widths[i + 1], k, stride=factor, padding=(k - 1) // 2))
            self.encoder.append(Level([widths[i + 1]] * blocks[i], widths[i + 1], groups, emb, attention if c.attentions[i] else None))

        w = widths[-1]
        self.bottleneck = nn.ModuleList([ResnetBlock(w, w, groups, emb), ResnetBlock(w, w, groups, emb)])
        self.bottleneck_attention = AttentionBlock(w, **attention) if c.use_attention_bottleneck else nn.Identity()

        self.decoder = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i, factor in enumerate(c.factors):  # indexed like the encoder; run in reverse
            wi = widths[i + 1]
            self.decoder.append(Level([2 * wi] * blocks[i], wi, groups, emb, attention if c.attentions[i] else None))
            if c.use_nearest_upsample:
                self.upsamples.append(nn.Sequential(nn.Upsample(scale_factor=factor, mode="nearest"), nn.Conv1d(wi, widths[i], 3, padding=1)))
            else:
                self.upsamples.append(nn.ConvTranspose1d(wi, widths[i], 2 * factor, stride=factor, padding=factor // 2))

        self.unpatch_blocks = nn.ModuleList(
            ResnetBlock(2 * widths[0] if j == 0 else widths[0], widths[0], groups, emb) for j in range(max(1, c.patch_blocks))
        )
        self.unpatch_norm = _group_norm(groups, widths[0])
        self.patch_out = nn.Conv1d(widths[0], c.out_channels * c.patch_factor, 3, padding=1)

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | None = None) -> torch.Tensor:
        b, ch, t = x.shape
        if ch != self.config.in_channels:
            raise ValueError(f"expected {self.config.in_channels} input channels, got {ch}")
        if t % self.stride:
            raise ValueError(
                f"input length {t} is not a multiple of the U-Net stride {self.stride}; "
                f"pad or crop to {t // self.stride * self.stride} or {(t // self.stride + 1) * self.stride}"
            )
        embedding = None
        if self.embedding is not None:
            if c_noise is None:
                raise ValueError("this U-Net is conditioned on c_noise; pass c_noise of shape (batch,)")
            c_noise = torch.as_tensor(c_noise, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
            embedding = self.embedding(c_noise)

        p = self.config.patch_factor
        h = x.reshape(b, ch, t // p, p).permute(0, 1, 3, 2).reshape(b, ch * p, t // p)  # (B, C_in*P, T/P)
        h = self.patch_in(h)
        for block in self.patch_blocks:
            h = block(h, embedding)
        patch_skip = h

        skips = []
        for down, level in zip(self.downsamples, self.encoder):
            h = down(h)
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(h, embedding))
                skips.append(h)

        h = self.bottleneck[0](h, embedding)
        h = self.bottleneck_attention(h)
        h = self.bottleneck[1](h, embedding)

        for up, level in zip(reversed(self.upsamples), reversed(self.decoder)):
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(torch.cat([h, skips.pop() * self.skip_scale], dim=1), embedding))
            h = up(h)

        h = torch.cat([h, patch_skip * self.skip_scale], dim=1)
        for block in self.unpatch_blocks:
            h = block(h, embedding)
        h = self.patch_out(F.silu(self.unpatch_norm(h)))  # (B, C_out*P, T/P)
        co = self.config.out_channels
        return h.reshape(b, co, p, t // p).permute(0, 1, 3, 2).reshape(b, co, t)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def list_configs() -> list[str]:
    """Names of the configs shipped in engine/configs/ (cpu-tiny, cpu-small, cpu-medium, paper)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """A config as a dict: name, rate, window, sigma_data, clamp, unet (a table), train (a table).

    `name_or_path` is a shipped config's name or a path to a .toml file.
    """
    path = Path(name_or_path)
    if not path.suffix == ".toml" or not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ValueError(f"unknown config {str(name_or_path)!r}; known: {', '.join(list_configs())} (or a path to a .toml file)")
    with open(path, "rb") as f:
        config = tomllib.load(f)
    config.setdefault("name", path.stem)
    UNetConfig.from_dict(config.get("unet", {})).validate()
    return config


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["UNetConfig", "UNet1d", "count_parameters", "list_configs", "load_config"]
