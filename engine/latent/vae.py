"""SourceVAE: MSLDM's per-stem VAE, a DAC-style encoder/decoder with a Gaussian posterior instead of a quantizer.

Written here from the DAC paper (Kumar et al. 2023) and the facts in
reference-notes.md; no public code is copied. The network:

    encoder  WNConv(1 -> d, k7)
             EncoderBlock x len(rates): 3 ResidualUnits (dilation 1, 3, 9) at d, Snake,
                                        WNConv(d -> 2d, k 2s, stride s, pad ceil(s/2)); d doubles
             Snake, WNConv(d -> 2C, k3)                      -> mean, log-variance (clamped to [-30, 20])
    decoder  WNConv(C -> D, k7)
             DecoderBlock i: Snake, WNConvTranspose(D/2^i -> D/2^(i+1), k 2s, stride s, pad ceil(s/2)),
                             3 ResidualUnits (dilation 1, 3, 9)
             Snake, WNConv(-> 1, k7)                          (no tanh, as in MSLDM's SourceVAE)
    ResidualUnit: x + WNConv(k1)(Snake(WNConv(k7, dilation)(Snake(x))))
    Snake: x + sin^2(alpha x) / alpha, one alpha per channel

Parameter names follow the DAC layout (`encoder.block.N...`, `decoder.model.N...`,
`weight_g` / `weight_v` of weight norm, Snake `alpha` shaped (1, C, 1)), so a
DAC-format state dict of the paper configuration loads with `load_dac_state`.

Lengths: with these paddings an even stride s maps L -> L/s (floor) and an odd
one L -> floor((L + 1) / s); the transposed convs map L -> L s (even s) or
L s - 1 (odd s). For rates [2, 4, 5, 8] that is 320 T - 8 samples <-> exactly T
frames (reference-notes.md); `samples_for(T)` and `frames_for(N)` give the
general relation and `encode_audio` / `decode_latents` pad and crop any length.
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

LOGVAR_RANGE = (-30.0, 20.0)  # clamp of the posterior log-variance (reference-notes.md)
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


# --------------------------------------------------------------------------- config


@dataclass
class VAEConfig:
    """Hyperparameters of `SourceVAE`; the `[vae]` table of a file in engine/latent/configs/."""

    rate: int = 22050
    encoder_dim: int = 64
    encoder_rates: Sequence[int] = (2, 4, 5, 8)
    latent_dim: int = 80  # C: latent channels per stem
    decoder_dim: int = 1536
    decoder_rates: Sequence[int] = (8, 5, 4, 2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VAEConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown VAE config keys {unknown}; known: {sorted(known)}")
        config = cls(**dict(data))
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def hop(self) -> int:
        return math.prod(self.encoder_rates)

    def validate(self) -> None:
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ValueError(f"encoder rates {list(self.encoder_rates)} and decoder rates {list(self.decoder_rates)} "
                             "must have the same product (the hop)")
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ValueError(f"decoder_dim {self.decoder_dim} must be divisible by 2^{len(self.decoder_rates)}")


def list_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(name_or_path: str | Path) -> dict[str, Any]:
    """A latent config (engine/latent/configs/<name>.toml or a path): name, [vae], [vae_train], [unet], [prior_train]."""
    path = Path(name_or_path)
    if path.suffix != ".toml" or not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.exists():
        raise ValueError(f"unknown latent config {str(name_or_path)!r}; known: {', '.join(list_configs())} "
                         "(or a path to a .toml file)")
    with open(path, "rb") as f:
        config = tomllib.load(f)
    config.setdefault("name", path.stem)
    VAEConfig.from_dict(config.get("vae", {}))
    return config


# --------------------------------------------------------------------------- layers


class Snake1d(nn.Module):
    """snake(x) = x + sin^2(alpha x) / alpha with a learned alpha per channel (DAC)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class _WeightNorm:
    """weight = g v / ||v||, the norm over every axis but `norm_dim`; parameters named weight_g / weight_v.

    The same reparametrisation and state-dict keys as torch.nn.utils.weight_norm
    (default dim 0), without its deprecated hook machinery.
    """

    norm_dim = 0

    def _init_weight_norm(self) -> None:
        weight = self.weight.detach()
        del self.weight
        self.weight_v = nn.Parameter(weight.clone())
        self.weight_g = nn.Parameter(self._norm(weight))

    def _norm(self, v: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(v.dim()) if d != self.norm_dim]
        return v.pow(2).sum(dim=dims, keepdim=True).sqrt()

    def normed_weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self._norm(self.weight_v)


class WNConv1d(_WeightNorm, nn.Conv1d):
    def __init__(self, *args, **kwargs):
        nn.Conv1d.__init__(self, *args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WNConvTranspose1d(_WeightNorm, nn.ConvTranspose1d):
    """Transposed conv; its weight is (in, out, k), so weight_g is (in, 1, 1) as with torch's weight_norm."""

    def __init__(self, *args, **kwargs):
        nn.ConvTranspose1d.__init__(self, *args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(x, self.normed_weight(), self.bias, self.stride, self.padding,
                                  self.output_padding, self.groups, self.dilation)


class WNConv2d(_WeightNorm, nn.Conv2d):
    def __init__(self, *args, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_weight_norm()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class ResidualUnit(nn.Module):
    """x + [Snake, WNConv k7 dilated, Snake, WNConv k1](x): a dilated residual unit (length-preserving)."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EncoderBlock(nn.Module):
    """Three residual units at dim/2, then a strided conv to dim (down-sampling by `stride`)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            ResidualUnit(dim // 2, 1),
            ResidualUnit(dim // 2, 3),
            ResidualUnit(dim // 2, 9),
            Snake1d(dim // 2),
            WNConv1d(dim // 2, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, a transposed conv up-sampling by `stride`, then three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            WNConvTranspose1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(out_dim, 1),
            ResidualUnit(out_dim, 3),
            ResidualUnit(out_dim, 9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Encoder(nn.Module):
    """(B, 1, N) -> (B, out_channels, frames)."""

    def __init__(self, dim: int, rates: Sequence[int], out_channels: int):
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(1, dim, kernel_size=7, padding=3)]
        for stride in rates:
            dim *= 2
            layers.append(EncoderBlock(dim, stride))
        layers += [Snake1d(dim), WNConv1d(dim, out_channels, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Decoder(nn.Module):
    """(B, in_channels, frames) -> (B, 1, samples_for(frames))."""

    def __init__(self, in_channels: int, dim: int, rates: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = [WNConv1d(in_channels, dim, kernel_size=7, padding=3)]
        for i, stride in enumerate(rates):
            layers.append(DecoderBlock(dim // 2**i, dim // 2 ** (i + 1), stride))
        out_dim = dim // 2 ** len(rates)
        layers += [Snake1d(out_dim), WNConv1d(out_dim, 1, kernel_size=7, padding=3)]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


# --------------------------------------------------------------------------- the VAE


@dataclass
class Posterior:
    """Diagonal Gaussian q(z | s) = N(mean, exp(logvar)); each (B, C, frames)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype).to(self.mean.device)
        return self.mean + (0.5 * self.logvar).exp() * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) averaged over channels and frames, per item (B,) (the reference's normalisation)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).mean(dim=(1, 2))


class SourceVAE(nn.Module):
    """One VAE shared by all stems: mono audio (B, 1, N) <-> latents (B, C, frames), hop = prod(encoder_rates)."""

    def __init__(self, config: VAEConfig | Mapping[str, Any] | None = None):
        super().__init__()
        if config is None:
            config = VAEConfig()
        self.config = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(config)
        c = self.config
        c.validate()
        self.encoder = Encoder(c.encoder_dim, c.encoder_rates, 2 * c.latent_dim)
        self.decoder = Decoder(c.latent_dim, c.decoder_dim, c.decoder_rates)
        self.apply(_init_weights)

    @property
    def hop(self) -> int:
        return self.config.hop

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def rate(self) -> int:
        return self.config.rate

    # lengths -------------------------------------------------------------

    def samples_for(self, frames: int) -> int:
        """Samples the decoder makes from `frames` latent frames (320 T - 8 for rates [8, 5, 4, 2])."""
        n = frames
        for s in self.config.decoder_rates:
            n = n * s - (s % 2)
        return n

    def frames_of(self, samples: int) -> int:
        """Frames the encoder makes from `samples` samples."""
        n = samples
        for s in self.config.encoder_rates:
            n = n // s if s % 2 == 0 else (n + 1) // s
        return n

    def frames_for(self, samples: int, multiple: int = 1) -> int:
        """The fewest frames (a multiple of `multiple`) whose decoded length covers `samples`."""
        frames = max(1, math.ceil((samples + self.hop - self.samples_for(1)) / self.hop))
        while self.samples_for(frames) < samples:
            frames += 1
        return math.ceil(frames / multiple) * multiple

    # encode / decode ------------------------------------------------------

    def posterior(self, audio: torch.Tensor) -> Posterior:
        """audio (B, 1, N) -> q(z | audio); N should be samples_for(T) (see encode_audio for any N)."""
        moments = self.encoder(audio)  # (B, 2C, T)
        mean, logvar = moments.chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(*LOGVAR_RANGE))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, T) -> audio (B, 1, samples_for(T))."""
        return self.decoder(z)

    def forward(self, audio: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> dict:
        """Training pass on (B, 1, N) with N = samples_for(T): reconstruction, latents, KL per item."""
        posterior = self.posterior(audio)
        z = posterior.sample(generator) if sample else posterior.mean
        return {"audio": self.decode(z)[..., : audio.shape[-1]], "z": z, "kl": posterior.kl(), "posterior": posterior}

    def encode_audio(self, audio: torch.Tensor, multiple: int = 1) -> torch.Tensor:
        """Latents = posterior means of any-length audio (..., N) -> (..., C, T), zero-padded on the right to
        samples_for(T) with T = frames_for(N, multiple)."""
        lead, n = audio.shape[:-1], audio.shape[-1]
        frames = self.frames_for(n, multiple)
        padded = F.pad(audio.reshape(-1, 1, n), (0, self.samples_for(frames) - n))
        mean = self.posterior(padded).mean
        assert mean.shape[-1] == frames, (mean.shape, frames)
        return mean.reshape(*lead, self.latent_dim, frames)

    def decode_latents(self, z: torch.Tensor, samples: int | None = None) -> torch.Tensor:
        """(..., C, T) -> audio (..., samples) (cropped; default samples_for(T))."""
        lead, (c, t) = z.shape[:-2], z.shape[-2:]
        audio = self.decode(z.reshape(-1, c, t))[:, 0]
        if samples is not None:
            audio = audio[..., :samples]
        return audio.reshape(*lead, audio.shape[-1])


def _init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) conv weights and zero biases, as DAC; the weight-norm g follows v."""
    if isinstance(module, (WNConv1d, WNConvTranspose1d)):
        with torch.no_grad():
            nn.init.trunc_normal_(module.weight_v, std=0.02)
            module.weight_g.copy_(module._norm(module.weight_v))
            if module.bias is not None:
                module.bias.zero_()


# --------------------------------------------------------------------------- DAC-format weights


def dac_state_dict(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The encoder/decoder tensors of a DAC-format checkpoint.

    Accepts a plain state dict, DAC's own `{"state_dict": ..., "metadata": ...}`,
    a `{"generator": state_dict}` file, keys prefixed `module.` / `generator.` /
    `model.`, and drops every key that is not `encoder.*` or `decoder.*`
    (DAC's quantizer, discriminators).
    """
    for key in ("state_dict", "generator", "model"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "generator.", "model."):
            if key.startswith(prefix) and key[len(prefix):].split(".")[0] in ("encoder", "decoder"):
                key = key[len(prefix):]
        if key.split(".")[0] in ("encoder", "decoder"):
            state[key] = value
    if not state:
        raise ValueError("no encoder.* / decoder.* tensors in this file: not a DAC-format SourceVAE checkpoint")
    return state


def config_from_dac_state(state: Mapping[str, torch.Tensor], rate: int = 22050,
                          encoder_rates: Sequence[int] | None = None) -> VAEConfig:
    """Infer encoder_dim, latent_dim, decoder_dim and the rates from the tensor shapes of a DAC-format state dict."""
    encoder_dim = state["encoder.block.0.weight_v"].shape[0]
    last = max(int(k.split(".")[2]) for k in state if k.startswith("encoder.block."))
    latent_dim = state[f"encoder.block.{last}.weight_v"].shape[0] // 2
    decoder_dim = state["decoder.model.0.weight_v"].shape[0]
    up = sorted({int(k.split(".")[2]) for k in state if k.startswith("decoder.model.") and ".block.1.weight_v" in k})
    decoder_rates = [state[f"decoder.model.{i}.block.1.weight_v"].shape[-1] // 2 for i in up]
    down = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.block.") and ".block.4.weight_v" in k})
    inferred = [state[f"encoder.block.{i}.block.4.weight_v"].shape[-1] // 2 for i in down]
    return VAEConfig(rate=rate, encoder_dim=encoder_dim, encoder_rates=tuple(encoder_rates or inferred),
                     latent_dim=latent_dim, decoder_dim=decoder_dim, decoder_rates=tuple(decoder_rates))


def load_dac_state(vae: SourceVAE, obj: Mapping[str, Any]) -> SourceVAE:
    """Load a DAC-format state dict (or checkpoint dict) into `vae`, strictly: every key and shape must match."""
    state = dac_state_dict(obj)
    own = vae.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(f"DAC-format weights do not fit this SourceVAE config ({vae.config.to_dict()}): "
                         f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]}), {len(wrong)} of another shape (e.g. {wrong[:3]})")
    vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return vae


def load_dac_file(path: str | Path, rate: int = 22050) -> SourceVAE:
    """A SourceVAE from a DAC-format .pth/.ckpt (loaded without running pickled code) or .safetensors file;
    the config is read from DAC's `metadata.kwargs` when present, else inferred from the shapes."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: Mapping[str, Any] = load_file(str(path))
    else:
        from stemweave.engine.checkpoints import load_lightning_checkpoint

        obj = load_lightning_checkpoint(path)
    kwargs = {}
    metadata = obj.get("metadata") if isinstance(obj, Mapping) else None
    if isinstance(metadata, Mapping) and isinstance(metadata.get("kwargs"), Mapping):
        known = {f.name for f in fields(VAEConfig)}
        kwargs = {k: v for k, v in metadata["kwargs"].items() if k in known}
        if "sample_rate" in metadata["kwargs"]:
            kwargs["rate"] = int(metadata["kwargs"]["sample_rate"])
    state = dac_state_dict(obj)
    config = VAEConfig.from_dict(kwargs) if {"encoder_dim", "latent_dim"} <= set(kwargs) else \
        config_from_dac_state(state, rate=kwargs.get("rate", rate))
    return load_dac_state(SourceVAE(config), state).eval()


# --------------------------------------------------------------------------- losses


def _stft_magnitude(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """|STFT| of (B, N) with a Hann window: (B, n_fft // 2 + 1, frames)."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    return torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True).abs()


_MEL_CACHE: dict = {}


def _mel_matrix(rate: int, n_fft: int, bands: int, device, dtype) -> torch.Tensor:
    key = (rate, n_fft, bands, str(device), dtype)
    if key not in _MEL_CACHE:
        from stemweave.engine.evaluate import mel_filterbank

        _MEL_CACHE[key] = torch.as_tensor(mel_filterbank(rate, n_fft, bands, fmin=0.0), dtype=dtype, device=device)
    return _MEL_CACHE[key]


@dataclass
class LossConfig:
    """Weights and resolutions of the SourceVAE loss (Eq. 1; reference: mel 15, features 2, adversarial 1, KL 10)."""

    mel: float = 15.0
    stft: float = 1.0  # multi-resolution STFT (log + linear magnitude); the reference's mag weight is 0
    waveform: float = 0.0  # L1 on the samples (not in the reference; CPU configs use it to learn phase sooner)
    kl: float = 10.0
    features: float = 2.0
    adversarial: float = 1.0
    mel_windows: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bands: Sequence[int] = (5, 10, 20, 40, 80, 160, 320)
    stft_windows: Sequence[int] = (2048, 512)
    clamp_eps: float = 1e-5

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "LossConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(data or {}).items() if k in known})


def multiscale_mel_loss(estimate: torch.Tensor, target: torch.Tensor, rate: int, config: LossConfig = LossConfig()) -> torch.Tensor:
    """Mean over resolutions of L1(log10 mel(est), log10 mel(target)) (DAC's mel loss, pow 1); (B, N) inputs."""
    total = estimate.new_zeros(())
    for n_fft, bands in zip(config.mel_windows, config.mel_bands):
        mel = _mel_matrix(rate, n_fft, bands, estimate.device, estimate.dtype)
        a = torch.einsum("mf,bft->bmt", mel, _stft_magnitude(estimate, n_fft, n_fft // 4))
        b = torch.einsum("mf,bft->bmt", mel, _stft_magnitude(target, n_fft, n_fft // 4))
        total = total + (a.clamp_min(config.clamp_eps).log10() - b.clamp_min(config.clamp_eps).log10()).abs().mean()
    return total / len(config.mel_windows)


def multiresolution_stft_loss(estimate: torch.Tensor, target: torch.Tensor, config: LossConfig = LossConfig()) -> torch.Tensor:
    """Mean over resolutions of L1 on log10 magnitudes plus L1 on magnitudes; (B, N) inputs."""
    total = estimate.new_zeros(())
    for n_fft in config.stft_windows:
        a, b = _stft_magnitude(estimate, n_fft, n_fft // 4), _stft_magnitude(target, n_fft, n_fft // 4)
        log_term = (a.clamp_min(config.clamp_eps).log10() - b.clamp_min(config.clamp_eps).log10()).abs().mean()
        total = total + log_term + (a - b).abs().mean()
    return total / len(config.stft_windows)


# --------------------------------------------------------------------------- discriminators (GPU option)


class PeriodDiscriminator(nn.Module):
    """Audio folded into (frames, period) columns, then 2-D convs along time (HiFi-GAN's MPD, as in DAC)."""

    def __init__(self, period: int, widths: Sequence[int] = (32, 128, 512, 1024, 1024)):
        super().__init__()
        self.period = period
        layers, previous = [], 1
        for i, width in enumerate(widths):
            layers.append(WNConv2d(previous, width, (5, 1), (3, 1) if i < len(widths) - 1 else (1, 1), padding=(2, 0)))
            previous = width
        self.convs = nn.ModuleList(layers)
        self.post = WNConv2d(previous, 1, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.pad(x, (0, -x.shape[-1] % self.period), mode="reflect")
        x = x.reshape(x.shape[0], 1, -1, self.period)  # (B, 1, N / p, p)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            features.append(x)
        features.append(self.post(x))
        return features


class BandSTFTDiscriminator(nn.Module):
    """A complex STFT (real, imaginary as channels) split into frequency bands, 2-D convs per band, merged (DAC's MRD)."""

    def __init__(self, n_fft: int, bands: Sequence[Sequence[float]], width: int = 32):
        super().__init__()
        self.n_fft = n_fft
        bins = n_fft // 2 + 1
        self.bands = [(int(lo * bins), int(hi * bins)) for lo, hi in bands]

        def stack() -> nn.ModuleList:
            return nn.ModuleList([
                WNConv2d(2, width, (3, 9), padding=(1, 4)),
                WNConv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                WNConv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                WNConv2d(width, width, (3, 9), (1, 2), padding=(1, 4)),
                WNConv2d(width, width, (3, 3), padding=(1, 1)),
            ])

        self.band_convs = nn.ModuleList(stack() for _ in self.bands)
        self.post = WNConv2d(width, 1, (3, 3), padding=(1, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        spec = torch.stft(x[:, 0], self.n_fft, self.n_fft // 4, window=window, return_complex=True)
        spec = torch.view_as_real(spec).permute(0, 3, 2, 1)  # (B, 2, frames, bins)
        features, outs = [], []
        for (lo, hi), convs in zip(self.bands, self.band_convs):
            h = spec[..., lo:hi]
            for conv in convs:
                h = F.leaky_relu(conv(h), 0.1)
                features.append(h)
            outs.append(h)
        out = self.post(torch.cat(outs, dim=-1))
        return features + [out]


class Discriminator(nn.Module):
    """Multi-period + multi-band STFT discriminators; forward returns one feature list per sub-discriminator
    (the last entry of each list is its logit map)."""

    def __init__(self, periods: Sequence[int] = (2, 3, 5, 7, 11), fft_sizes: Sequence[int] = (2048, 1024, 512),
                 bands: Sequence[Sequence[float]] = ((0.0, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))):
        super().__init__()
        self.discriminators = nn.ModuleList(
            [PeriodDiscriminator(p) for p in periods] + [BandSTFTDiscriminator(n, bands) for n in fft_sizes]
        )

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discriminators]


def discriminator_loss(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Least-squares GAN: mean (1 - D(real))^2 + D(fake)^2 over sub-discriminators."""
    return sum(((1 - r[-1]).pow(2).mean() + f[-1].pow(2).mean()) for r, f in zip(real, fake))


def generator_losses(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(adversarial (1 - D(fake))^2, feature matching L1 between real and fake intermediate features)."""
    adversarial = sum((1 - f[-1]).pow(2).mean() for f in fake)
    features = sum(
        (fr.detach() - ff).abs().mean() for r, f in zip(real, fake) for fr, ff in zip(r[:-1], f[:-1])
    )
    return adversarial, features


__all__ = [
    "Discriminator", "LossConfig", "Posterior", "SourceVAE", "VAEConfig", "config_from_dac_state",
    "dac_state_dict", "discriminator_loss", "generator_losses", "list_configs", "load_config", "load_dac_file",
    "load_dac_state", "multiresolution_stft_loss", "multiscale_mel_loss",
]
