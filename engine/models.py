"""The model registry: shipped models in engine/models/, and loading any model file as a prior or a separator.

A shipped model is `engine/models/<name>.safetensors` + `<name>.json` (package
data). `load_prior` turns an msdm or isdm model file into the engine's
`JointPrior` / `IndependentPrior` over EDM denoisers, and an msldm model file
(MSLDM: SourceVAE + latent prior, engine/latent/) into a `LatentPrior` that
generates and accompanies on audio (it cannot separate); `load_separator`
turns a regression model file into a `RegressionSeparator`.

Kinds: msdm, isdm (waveform priors), msldm (latent prior), regression, and gmsdi (a text-conditioned
mixture model, loaded by engine/gmsdi/train.load_gmsdi).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import nn

from stemweave.engine.checkpoints import ModelFile, load_model, read_card, save_model
from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.latent.prior import LatentPrior
from stemweave.engine.latent.vae import SourceVAE
from stemweave.engine.priors import IndependentPrior, JointPrior
from stemweave.engine.spectral_head import ReassignHead, native_bfloat16
from stemweave.engine.unet import UNet1d

MODEL_DIR = Path(__file__).resolve().parent / "models"
# The shipped defaults (README, "Shipped models"): separation's first answer, the prior that accompanies (it
# hears the given stems: docs/priors.md), and the prior for the rest (generation, refining a separation).
DEFAULT_SEPARATOR = "separator-cpu-small"
DEFAULT_ACCOMPANY_PRIOR = "msdm-cpu-small-given"
DEFAULT_PRIOR = "msdm-cpu-small"
# The shipped MSLDM (issue 11); `--model msldm` names it.
DEFAULT_MSLDM = "msldm-cpu-small"
# The shipped GMSDI model (issue 10): `stemweave gmsdi ...` uses it when no --model is given.
DEFAULT_GMSDI = "gmsdi-cpu-small"
ALIASES = {"msldm": DEFAULT_MSLDM, "gmsdi": DEFAULT_GMSDI}
KINDS = ("msdm", "isdm", "msldm", "regression", "gmsdi")
PRIOR_KINDS = ("msdm", "isdm", "msldm")


def list_models(kind: str | None = None) -> list[str]:
    """Names of the shipped models (optionally only one kind: msdm, isdm, msldm, regression)."""
    names = []
    for card_path in sorted(MODEL_DIR.glob("*.json")):
        if not card_path.with_suffix(".safetensors").exists():
            continue
        if kind is None or read_card(card_path).get("kind") == kind:
            names.append(card_path.stem)
    return names


def resolve_model(name_or_path: str | Path) -> Path:
    """The card path of a shipped model's name or of a model file path (.safetensors, .json, or their shared stem)."""
    path = Path(name_or_path)
    for candidate in (path, path.with_suffix(".json") if path.suffix != ".json" else path):
        if candidate.suffix in (".json", ".safetensors") and candidate.exists():
            return candidate.with_suffix(".json")
    shipped = MODEL_DIR / f"{ALIASES.get(str(name_or_path), name_or_path)}.json"
    if shipped.exists():
        return shipped
    known = ", ".join(list_models()) or "none shipped yet"
    raise ValueError(f"unknown model {str(name_or_path)!r}: not a model file and not a shipped model (known: {known})")


def project_to_mixture(stems: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
    """Add (y - sum_k s_k) / K to every stem, so the stems sum to the mixture y exactly (up to float rounding).

    stems: (batch, K, time); mixture: (batch, 1, time).
    """
    return stems + (mixture - stems.sum(dim=1, keepdim=True)) / stems.shape[1]


class RegressionSeparator(nn.Module):
    """A discriminative separator: mixture (B, 1, T) -> stems (B, K, T) that sum to the mixture.

    T must be a multiple of `stride`; the region layer pads windows.

    Level: each window is scaled to the training level (LEVEL_REFERENCE_RMS) before the network and scaled
    back after, so the separation does not depend on how loud the mix is, and silence stays silent: the
    network's biases alone put a -10 dBFS offset on every stem of a zero input (-24 dBFS after the sum
    projection), which scaling by the window's own level multiplies by zero. Digital silence in gives exactly
    zero stems; a quiet input gives quiet stems. Peak bound: before the projection each stem is clipped to
    STEM_PEAK_BOUND times the window's mixture peak (real stems reach 1.31x, 99.9th pct 1.2x, on 1.5 s
    training windows), so a returned stem never exceeds (2 * STEM_PEAK_BOUND + 1 / K) times it (3.25x, +10.2 dB).
    `level_normalise=False` (or the card's "level_normalise": false) runs the network on the raw window.

    Polarity: the stems of -y are minus the stems of y, but a trained network is not exactly odd. With
    `polarity_average` (the default; the card's "polarity_average": false turns it off) it runs on y and -y
    and keeps the odd part, (net(y) - net(-y)) / 2, which drops the network's even error: +0.15 to +0.24 dB
    on every split for 1.3x the time (docs/separation.md). Training fits the network itself (False there).

    Head: with a `ReassignHead` (engine/spectral_head.py; the card's "head"), the projected stems are re-mixed
    per STFT bin, then bounded and projected again, so every promise above holds for the head's stems too.
    """

    def __init__(self, net: nn.Module, stems: Sequence[str], card: dict[str, Any] | None = None,
                 level_normalise: bool | None = None, polarity_average: bool | None = None,
                 head: nn.Module | None = None):
        super().__init__()
        if net.in_channels != 1 or net.out_channels != len(stems):
            raise ValueError(f"a regression separator maps 1 channel to {len(stems)} stems; the network maps "
                             f"{net.in_channels} to {net.out_channels}")
        self.net = net
        self.stems = tuple(stems)
        self.card = dict(card or {})
        self.level_normalise = bool(self.card.get("level_normalise", True) if level_normalise is None
                                    else level_normalise)
        self.polarity_average = bool(self.card.get("polarity_average", True) if polarity_average is None
                                     else polarity_average)
        self.head = head
        self.bfloat16 = False

    def use_bfloat16(self, enabled: bool = True) -> RegressionSeparator:
        """Run the U-Net and the head's net under bfloat16 autocast (weights, STFTs, projections stay float32),
        or in float32 again: on a CPU with native bfloat16, 1.7x faster for the U-Net at the same SI-SDR."""
        self.bfloat16 = enabled
        if self.head is not None:
            self.head.use_bfloat16(enabled)
        return self

    @property
    def stride(self) -> int:
        return self.net.stride

    @property
    def rate(self) -> int | None:
        return self.card.get("rate")

    @property
    def window(self) -> int | None:
        return self.card.get("window")

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        if mixture.dim() != 3 or mixture.shape[1] != 1:
            raise ValueError(f"expected a mono mixture (batch, 1, time), got {tuple(mixture.shape)}")
        if not self.level_normalise:
            stems = project_to_mixture(self._odd_part(mixture), mixture)  # (batch, K, time)
            return stems if self.head is None else project_to_mixture(self.head(mixture, stems), mixture)
        peak = mixture.detach().abs().amax(dim=-1, keepdim=True)  # (batch, 1, 1)
        # RMS, floored at peak / MAX_CREST so one click in a silent window is not blown up past training peaks
        level = torch.maximum(mixture.detach().pow(2).mean(dim=-1, keepdim=True).sqrt(), peak / MAX_CREST)
        scale = level / LEVEL_REFERENCE_RMS  # exactly 0 for a silent window, so its stems are exactly 0
        stems = self._odd_part(mixture / torch.where(scale > 0, scale, torch.ones_like(scale))) * scale
        stems = self._bounded_projection(stems, mixture, peak)
        if self.head is not None:
            stems = self._bounded_projection(self.head(mixture, stems), mixture, peak)
        return stems  # (batch, K, time)

    @staticmethod
    def _bounded_projection(stems: torch.Tensor, mixture: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
        """Each stem clipped to STEM_PEAK_BOUND x the window's mixture peak, then projected to sum to the mixture."""
        bound = STEM_PEAK_BOUND * peak
        return project_to_mixture(torch.maximum(torch.minimum(stems, bound), -bound), mixture)

    def _odd_part(self, mixture: torch.Tensor) -> torch.Tensor:
        """(net(y) - net(-y)) / 2 in one batch when averaging polarities, else net(y)."""
        with torch.autocast(mixture.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            if not self.polarity_average:
                return self.net(mixture).float()
            both = self.net(torch.cat([mixture, -mixture])).float()
        return (both[: len(mixture)] - both[len(mixture) :]) / 2


# The window level the separators were trained at: the median RMS of 1.5 s mixture windows of data/train
# (1st..99th percentile 0.039..0.168); the largest crest factor (peak / RMS) there was 12.5.
LEVEL_REFERENCE_RMS = 0.1
MAX_CREST = 16.0
STEM_PEAK_BOUND = 1.5


def quality_warning(card: dict[str, Any]) -> str | None:
    """One line for users when the card says the model measured below the project's bar, else None.

    The card's `quality` entry ({"below_bar": bool, "note": str}) is written when a model is shipped,
    from its measured metrics (README), so every surface (CLI, server `list`, plugin status) says the same.
    """
    quality = card.get("quality") or {}
    if not quality.get("below_bar"):
        return None
    return f"{card.get('name', 'this model')} measures below the project's quality bar: {quality.get('note', 'see its card')}"


def load_model_file(name_or_path: str | Path, device: str | torch.device = "cpu") -> ModelFile:
    """A shipped model's name or a model file path as its card and float32 network(s)."""
    return load_model(resolve_model(name_or_path), device=device)


def denoiser_of(net: nn.Module, card: dict[str, Any]) -> EDMDenoiser:
    return EDMDenoiser(net, sigma_data=card.get("sigma_data", 0.2), clamp=card.get("clamp", True)).eval()


def given_sigma_data(card: dict[str, Any]) -> float | None:
    """The sigma_data at which a joint prior trained with given stems (`train --given-share`) hears them; else None."""
    return card.get("sigma_data", 0.2) if (card.get("training") or {}).get("given_share") else None


def model_kind(name_or_path: str | Path) -> str | None:
    """The kind on a model file's card (msdm, isdm, msldm, regression); ValueError for an unknown model."""
    return read_card(resolve_model(name_or_path)).get("kind")


def load_prior(name_or_path: str | Path, device: str | torch.device = "cpu"):
    """An msdm model as a `JointPrior`, an isdm model as an `IndependentPrior`, an msldm model as a `LatentPrior`
    (with its SourceVAE; generate and accompany only); the card is at `.card`."""
    if model_kind(name_or_path) == "msldm":
        return load_msldm(resolve_model(name_or_path), device=device)
    model = load_model_file(name_or_path, device)
    if model.kind == "msdm":
        prior = JointPrior(denoiser_of(model.net, model.card), model.stems, given_sigma_data(model.card))
    elif model.kind == "isdm":
        prior = IndependentPrior([denoiser_of(model.nets[s], model.card) for s in model.stems], model.stems)
    else:
        raise ValueError(f"{model.card['name']} is a {model.kind} model, not a prior; load it with load_separator")
    prior.card = model.card
    prior.stride = next(iter(model.nets.values())).stride
    return prior


def load_separator(name_or_path: str | Path, device: str | torch.device = "cpu",
                   bfloat16: bool | None = None) -> RegressionSeparator:
    """A regression model file as a `RegressionSeparator` (eval mode). Its U-Net and spectral head run in bfloat16
    where the CPU does that natively (`bfloat16` None), or as `bfloat16` says."""
    if model_kind(name_or_path) == "msldm":
        raise ValueError(f"{name_or_path} is an msldm latent prior, not a regression separator; load it with load_prior")
    model = load_model_file(name_or_path, device)
    if model.kind != "regression":
        raise ValueError(f"{model.card['name']} is a {model.kind} prior, not a regression separator; load it with load_prior")
    head = None
    if model.head_state is not None:
        head = ReassignHead(len(model.stems), model.card["head"])
        head.load_state_dict(model.head_state)
    separator = RegressionSeparator(model.net, model.stems, model.card, head=head).to(device).eval()
    return separator.use_bfloat16(native_bfloat16(device) if bfloat16 is None else bfloat16)


def _read_latent_file(name_or_path: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    card_path = resolve_model(name_or_path)
    card = json.loads(card_path.read_text())
    if card.get("kind") != kind:
        raise ValueError(f"{card_path} is a {card.get('kind')!r} model file, not {kind!r}")
    weights = card_path.with_suffix(".safetensors")
    if not weights.exists():
        raise FileNotFoundError(f"a model file needs both {card_path.name} and {weights.name}")
    return card, {k: v.float() for k, v in load_file(str(weights)).items()}


def load_vae(name_or_path: str | Path, device: str | torch.device = "cpu") -> SourceVAE:
    """A "vae" model file (or the VAE inside an "msldm" one) as a SourceVAE in eval mode; its card at `.card`."""
    card_path = resolve_model(name_or_path)
    kind = json.loads(card_path.read_text()).get("kind")
    card, tensors = _read_latent_file(card_path, "msldm" if kind == "msldm" else "vae")
    if kind == "msldm":
        tensors = {k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}
    vae = SourceVAE(card["config"]["vae"])
    vae.load_state_dict(tensors, strict=True)
    vae.card = card
    return vae.to(device).eval()


def load_msldm(name_or_path: str | Path, device: str | torch.device = "cpu") -> LatentPrior:
    """An "msldm" model file as a LatentPrior with its SourceVAE (generate / accompany on audio)."""
    card, tensors = _read_latent_file(name_or_path, "msldm")
    vae = SourceVAE(card["config"]["vae"])
    vae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}, strict=True)
    net = UNet1d(card["config"]["unet"])
    net.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}, strict=True)
    denoiser = EDMDenoiser(net, sigma_data=card["sigma_data"], clamp=card.get("clamp", False)).to(device).eval()
    return LatentPrior(denoiser, card["stems"], card["latent_dim"], vae=vae.to(device).eval(), stride=net.stride,
                       latent_scale=card.get("latent_scale", 1.0), card=card)


def _ledger_hours(ledger: list) -> float:
    return sum(float(entry.get("cpu_hours") or 0.0) for entry in ledger)


def combine_isdm(parts: Sequence[str | Path], out: str | Path, name: str, fp16: bool = False,
                 previous: str | Path | None = None) -> tuple[Path, Path]:
    """Merge one-stem isdm model files (one per `stemweave train --stem S` run) into one isdm model file.

    previous: the merged file this one replaces (a name or path): its ledger goes on, and the new entry counts
    the steps and CPU-hours added since it."""
    models = [load_model_file(p, "cpu") for p in parts]
    nets, training, metrics = {}, {}, {}
    for model in models:
        if model.kind != "isdm":
            raise ValueError(f"{model.card['name']} is {model.kind}, not isdm")
        for stem in model.stems:
            if stem in nets:
                raise ValueError(f"stem {stem!r} appears twice")
            nets[stem] = model.nets[stem]
            training[stem] = model.card.get("training", {})
            metrics[stem] = model.card.get("metrics", {})
    card = models[0].card
    config = {k: card[k] for k in ("rate", "window", "sigma_data", "clamp")} | {"name": card["config"].get("name")}
    # one ledger entry per merged version (issue 19): the stems' steps and CPU-hours, added up, after the
    # previous version's entries
    ledger = list(((read_card(resolve_model(previous)).get("training") or {}).get("ledger") or [])) if previous else []
    steps = {stem: int(t.get("total_steps") or t.get("steps") or 0) for stem, t in training.items()}
    hours = sum(_ledger_hours(t.get("ledger") or []) or float(t.get("train_seconds") or 0.0) / 3600
                for t in training.values())
    before = (ledger[-1].get("total_steps") or 0) if ledger else 0
    hours_before = _ledger_hours(ledger)
    entry = {"name": name, "steps": sum(steps.values()) - before, "total_steps": sum(steps.values()),
             "cpu_hours": round(hours - hours_before, 3), "per_stem_steps": steps, "metrics": {"per_stem": metrics},
             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if entry["steps"] < 0:
        raise ValueError(f"the merged stems have {entry['total_steps']} steps, fewer than the {before} of {previous}: "
                         "continue each stem from it (train --stem S --init-from it)")
    ledger.append(entry)
    return save_model(out, nets, name=name, kind="isdm", stems=list(nets), config=config,
                      training={"per_stem": training, "ledger": ledger, "total_steps": entry["total_steps"]},
                      metrics={"per_stem": metrics}, fp16=fp16)


__all__ = [
    "DEFAULT_ACCOMPANY_PRIOR",
    "DEFAULT_GMSDI",
    "DEFAULT_MSLDM",
    "DEFAULT_PRIOR",
    "DEFAULT_SEPARATOR",
    "KINDS",
    "MODEL_DIR",
    "PRIOR_KINDS",
    "RegressionSeparator",
    "combine_isdm",
    "list_models",
    "load_model_file",
    "load_msldm",
    "load_prior",
    "load_vae",
    "load_separator",
    "model_kind",
    "project_to_mixture",
    "quality_warning",
    "resolve_model",
]
