"""Training the text-conditioned mixture model on mixtures only (GMSDI Sec. 2.1, 4), and its model files.

Each training example is a mixture y = sum_k x_k of a stem window and the
caption of the stems that sound in it, labels joined in a random order
("drums, bass"): the paper's weakly supervised setting. `MixtureCaptions`
sums the stems where they are read; nothing downstream ever holds a stem.
Mixture augmentation is a global gain (-6..+2 dB) and polarity: per-stem
gains would need the stems, which a mixture-only setting does not have.

The loss is the EDM loss of `EDMDenoiser` (sigma ~ LogNormal(-3, 1)) on the
caption's embedding, replaced by the learned null embedding z* with
probability `label_dropout` (classifier-free guidance). The loop reuses
engine/train.py's pieces: EMA, atomic resumable checkpoints
(`<run>/checkpoints/last.pt`, also on SIGTERM), metrics.jsonl, validation
loss per sigma with the EMA weights.

A GMSDI model file is the usual pair plus the encoder's cache:

    <name>.safetensors        the TextUNet1d (EMA) weights, null_text included
    <name>.json               the card: kind "gmsdi", text {encoder, features,
                              vocabulary, label_dropout}, rate, window, config
    <name>.text.safetensors   embeddings of the training captions, so known
                              prompts need no transformer at run time
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset

from stemweave.engine.audio_io import atomic_write
from stemweave.engine.checkpoints import CARD_FORMAT, atomic_torch_save
from stemweave.engine.denoiser import edm_loss, sample_training_sigma
from stemweave.engine.gmsdi.model import TextDenoiser, TextUNet1d, text_unet_config
from stemweave.engine.gmsdi.text import DEFAULT_ENCODER, TextEncoder, caption
from stemweave.engine.steps import RunState, Schedule, descend, run_steps
from stemweave.engine.train import EMA, VALID_SIGMAS, _infinite, pick_device
from stemweave.engine.unet import count_parameters, load_config

LABELS = ("bass", "drums", "guitar", "piano")
CHECKPOINT = "checkpoints/last.pt"
TEXT_CACHE = "text-cache.safetensors"
MIXTURE_GAIN_DB = (-6.0, 2.0)


# --------------------------------------------------------------------------- data: mixtures and captions


def all_captions(labels: Sequence[str]) -> list[str]:
    """Every caption a window can get: each non-empty subset of the labels in every order."""
    return [caption(order) for r in range(1, len(labels) + 1) for subset in itertools.combinations(labels, r)
            for order in itertools.permutations(subset)]


class MixtureCaptions(IterableDataset):
    """(mixture (1, window), caption) pairs from a stream of (K, window) stem windows; the stems stop here.

    A caption lists the non-silent stems (MSDM's silence rule,
    `mixture_captions`) in a random order; windows where every stem is silent
    are skipped.
    """

    def __init__(self, stems_stream: Iterable, labels: Sequence[str] = LABELS, seed: int = 0, augment: bool = True,
                 shuffle_labels: bool = True):
        super().__init__()
        self.stems_stream, self.labels = stems_stream, tuple(labels)
        self.seed, self.augment, self.shuffle_labels = seed, augment, shuffle_labels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.stems_stream, "set_epoch"):
            self.stems_stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        from stemweave.engine.data.datasets import mixture_captions

        rng = random.Random(f"{self.seed}/{self.epoch}")
        for stems in self.stems_stream:
            labels = mixture_captions(stems, self.labels)
            if not labels:
                continue
            if self.shuffle_labels:
                rng.shuffle(labels)
            mixture = torch.as_tensor(stems, dtype=torch.float32).sum(0, keepdim=True)  # (1, window): y = sum_k x_k
            if self.augment:
                gain = 10 ** (rng.uniform(*MIXTURE_GAIN_DB) / 20) * rng.choice((-1.0, 1.0))
                mixture = mixture * gain
            yield mixture, caption(labels)


def caption_statistics(stems_stream: Iterable, windows: int, labels: Sequence[str] = LABELS) -> dict[str, Any]:
    """How often each caption (in label order) and each number of active stems occurs in `windows` windows."""
    from collections import Counter

    from stemweave.engine.data.datasets import mixture_captions

    captions, counts = Counter(), Counter()
    for i, stems in enumerate(stems_stream):
        if i >= windows:
            break
        active = mixture_captions(stems, labels)
        captions[caption(active) or "(silence)"] += 1
        counts[len(active)] += 1
    return {"windows": windows, "captions": dict(captions.most_common()), "active_stems": dict(sorted(counts.items()))}


# --------------------------------------------------------------------------- training


@dataclass
class GMSDISettings:
    config: str | dict = "cpu-small"
    run_dir: str = "runs/gmsdi"
    data: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    labels: tuple[str, ...] = LABELS
    encoder: str = DEFAULT_ENCODER
    label_dropout: float = 0.1  # p(z -> z*), classifier-free guidance
    steps: int = 100_000
    batch: int | None = None
    lr: float | None = None
    ema_decay: float | None = None
    grad_clip: float | None = None
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    valid_every: int | None = None
    valid_windows: int = 32
    log_every: int = 50
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    workers: int = 0
    resume: str = "auto"
    progress: bool = True


def resolve_gmsdi_config(settings: GMSDISettings) -> dict[str, Any]:
    config = copy.deepcopy(settings.config if isinstance(settings.config, dict) else load_config(settings.config))
    config["unet"] = text_unet_config(config)
    train = dict(config.get("train", {}))
    for key, default in (("batch", 8), ("lr", 1e-4), ("ema_decay", 0.999), ("grad_clip", 1.0), ("checkpoint_every", 500),
                         ("valid_every", 500)):
        value = getattr(settings, key)
        train[key] = value if value is not None else train.get(key, default)
    train.setdefault("betas", [0.9, 0.99])
    train.setdefault("weight_decay", 0.0)
    config["train"] = train
    return config


class MixtureObjective(torch.nn.Module):
    """The EDM loss of the text-conditioned denoiser on (mixtures (B, 1, T), text embeddings (B, D))."""

    def __init__(self, net: TextUNet1d, config: dict[str, Any], label_dropout: float):
        super().__init__()
        self.net = net
        self.denoiser = TextDenoiser(net, sigma_data=config.get("sigma_data", 0.2), clamp=config.get("clamp", True))
        self.label_dropout = label_dropout

    def forward(self, mixtures: torch.Tensor, text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if mixtures.dim() != 3 or mixtures.shape[1] != 1:
            raise ValueError(f"the GMSDI model trains on mono mixtures (batch, 1, time), got {tuple(mixtures.shape)}")
        text = self.net.drop_labels(text, self.label_dropout, generator)  # z or z* (label dropout)
        sigma = sample_training_sigma(mixtures.shape[0], generator=generator).to(mixtures.device)
        noise = torch.randn(mixtures.shape, generator=generator).to(mixtures.device)
        with self.net.conditioned(text):
            return edm_loss(self.denoiser.edm, mixtures, sigma, noise)

    @torch.no_grad()
    def validate(self, mixtures: torch.Tensor, text: torch.Tensor, batch: int, seed: int) -> dict[str, float]:
        """The EDM loss at each sigma of VALID_SIGMAS with fixed noise, conditioned on the true captions."""
        generator = torch.Generator().manual_seed(seed)
        results = {}
        for s in VALID_SIGMAS:
            total = 0.0
            for start in range(0, len(mixtures), batch):
                y, z = mixtures[start : start + batch], text[start : start + batch]
                noise = torch.randn(y.shape, generator=generator).to(y.device)
                with self.net.conditioned(z):
                    total += edm_loss(self.denoiser.edm, y, torch.full((len(y),), s, device=y.device), noise).item() * len(y)
            results[f"loss@sigma={s:g}"] = total / len(mixtures)
        results["loss"] = sum(results.values()) / len(VALID_SIGMAS)
        return results


def _collate(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.stack([m for m, _ in items]), [c for _, c in items]


def train_gmsdi(settings: GMSDISettings, dataset: Iterable | None = None, valid_dataset: Iterable | None = None,
                encoder=None, log=print) -> dict[str, Any]:
    """Train (or resume) the mixture model to `settings.steps`. Datasets yield (mixture (1, T), caption) pairs."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    config = resolve_gmsdi_config(settings)
    hp = config["train"]
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT
    encoder = encoder or TextEncoder(settings.encoder, cache_file=run_dir / TEXT_CACHE)
    encoder.embed(all_captions(settings.labels))  # every training caption encoded once, up front
    if hasattr(encoder, "save_cache") and getattr(encoder, "cache_file", None) is not None:
        encoder.save_cache()
    features = encoder.embed([settings.labels[0]]).shape[-1]

    torch.manual_seed(settings.seed)
    net = TextUNet1d(config["unet"], features).to(device)
    model = MixtureObjective(net, config, settings.label_dropout).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
    ema = EMA(model, hp["ema_decay"])
    generator = torch.Generator().manual_seed(settings.seed + 1)
    run = RunState()
    resume_from = checkpoint_path if settings.resume == "auto" and checkpoint_path.exists() else None
    if settings.resume not in ("auto", "never"):
        resume_from = Path(settings.resume)
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        if state["config"]["unet"] != config["unet"] or state["text"]["features"] != features:
            raise ValueError(f"{resume_from} has another network config or text encoder; use another --run-dir")
        net.load_state_dict(state["net"])
        ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        run = RunState(step=int(state["step"]), seconds=float(state["seconds"]))
        log(f"resumed {resume_from} at step {run.step}")

    if dataset is None:
        dataset = _mixture_stream(settings.data, config, settings.labels, settings.seed, augment=True)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(run.step)
    valid = None
    if valid_dataset is None and settings.valid:
        valid_dataset = _mixture_stream(settings.valid, config, settings.labels, 12345, augment=False)
    if valid_dataset is not None:
        pairs = list(itertools.islice(iter(valid_dataset), settings.valid_windows))
        valid = (torch.stack([m for m, _ in pairs]).to(device), encoder.embed([c for _, c in pairs]).to(device))
    loader = torch.utils.data.DataLoader(dataset, batch_size=hp["batch"], num_workers=settings.workers, collate_fn=_collate)
    batches = _infinite(loader)
    log(f"gmsdi {config.get('name')} ({count_parameters(net) / 1e6:.2f}M parameters) on {device}, "
        f"{torch.get_num_threads()} threads, batch {hp['batch']} x {config['window']} samples, labels {list(settings.labels)}, "
        f"encoder {settings.encoder} ({features} features), steps {run.step} -> {settings.steps}")

    def save_checkpoint() -> None:
        atomic_torch_save({"step": run.step, "seconds": run.seconds, "net": net.state_dict(),
                           "ema": ema.module.state_dict(), "optimizer": optimizer.state_dict(),
                           "generator": generator.get_state(), "config": config, "settings": _record(settings),
                           "text": {"encoder": settings.encoder, "features": features},
                           "last_validation": run.last_validation}, checkpoint_path)

    def train_step(step: int) -> tuple[dict[str, float], dict[str, float]]:
        mixtures, captions = next(batches)
        mixtures = mixtures.to(device)  # (batch, 1, time): mixtures only
        loss = model(mixtures, encoder.embed(captions).to(device), generator)
        grad_norm = descend(loss, optimizer, net.parameters(), hp["grad_clip"])
        ema.update(model, step)
        return {"loss": loss.item()}, {"grad_norm": grad_norm}

    def validate() -> dict[str, float]:
        ema.module.eval()
        return ema.module.validate(*valid, hp["batch"], settings.seed)

    model.train()
    schedule = Schedule(settings.steps, settings.log_every, hp["valid_every"], hp["checkpoint_every"],
                        settings.checkpoint_minutes, settings.progress)
    run_steps(run, schedule, train_step, save_checkpoint, metrics_path=run_dir / "metrics.jsonl", log=log,
              validate=validate if valid is not None else None)
    return {"step": run.step, "loss": run.last_loss, "validation": run.last_validation,
            "checkpoint": str(checkpoint_path), "seconds": run.seconds}


def _mixture_stream(roots: Sequence[str], config: dict, labels: Sequence[str], seed: int, augment: bool) -> MixtureCaptions:
    if not roots:
        raise ValueError("no training data: pass --data DIR")
    from stemweave.engine.data.datasets import StemChunks

    chunks = StemChunks(list(roots), config["window"], stems=tuple(labels), rate=config["rate"], augment=False, seed=seed,
                        min_active_stems=1)
    return MixtureCaptions(chunks, labels, seed=seed, augment=augment)


def _record(settings: GMSDISettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


# --------------------------------------------------------------------------- model files


def export_gmsdi(run_dir: str | Path, name: str, out_dir: str | Path, fp16: bool = False) -> tuple[Path, Path]:
    """Write the EMA weights of a run's last checkpoint as `<out_dir>/<name>.safetensors` + `.json` + `.text.safetensors`
    (fp16 halves the file for shipping; the loader computes in fp32)."""
    checkpoint_path = Path(run_dir) / CHECKPOINT
    if not checkpoint_path.exists():
        raise FileNotFoundError(f"no checkpoint {checkpoint_path} to export")
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config, saved = state["config"], state["settings"]
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k[len("net."):]: v.to(dtype).contiguous() for k, v in state["ema"].items() if k.startswith("net.")}
    out_dir = Path(out_dir)
    weights_path, card_path = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "name": name}))
    cache = Path(run_dir) / TEXT_CACHE
    if cache.exists():
        atomic_write(out_dir / f"{name}.text.safetensors", lambda tmp: tmp.write_bytes(cache.read_bytes()))
    card = {
        "format": CARD_FORMAT, "name": name, "kind": "gmsdi", "stems": list(saved["labels"]),
        "rate": int(config["rate"]), "window": int(config["window"]), "sigma_data": float(config.get("sigma_data", 0.2)),
        "clamp": bool(config.get("clamp", True)), "config": {"name": config.get("name"), "unet": config["unet"]},
        "text": {"encoder": saved["encoder"], "features": int(state["text"]["features"]), "vocabulary": list(saved["labels"]),
                 "label_dropout": saved["label_dropout"], "captions": "non-silent stem labels joined with ', ', random order"},
        "layout": "single", "dtype": "float16" if fp16 else "float32", "weights": weights_path.name,
        "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "parameters": int(sum(v.numel() for v in tensors.values())),
        "training": {"objective": "gmsdi (EDM loss on mixtures + captions)", "steps": state["step"],
                     "train_seconds": round(state["seconds"], 1), "data": saved.get("data"), "seed": saved.get("seed"),
                     "weights": "ema"},
        "metrics": {"validation": state.get("last_validation") or {}},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda tmp: tmp.write_text(text))
    return weights_path, card_path


def load_gmsdi(path: str | Path, device: str | torch.device = "cpu") -> tuple[TextDenoiser, dict[str, Any], TextEncoder]:
    """(denoiser in eval mode, card, text encoder with the model's caption cache) of a GMSDI model file."""
    base = Path(path)
    if not base.suffix and not base.with_suffix(".json").exists():
        from stemweave.engine.models import resolve_model

        base = resolve_model(str(path))  # a shipped model's name ("gmsdi-cpu-small", "gmsdi")
    base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
    card_path, weights_path = base.with_suffix(".json"), base.with_suffix(".safetensors")
    if not card_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"a GMSDI model file needs {weights_path.name} and {card_path.name} in {base.parent}")
    card = json.loads(card_path.read_text())
    if card.get("kind") != "gmsdi":
        raise ValueError(f"{card.get('name')} is an {card.get('kind')} model, not a GMSDI (text-conditioned) one")
    net = TextUNet1d(card["config"]["unet"], card["text"]["features"])
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights_path)).items()}, strict=True)
    denoiser = TextDenoiser(net.to(device).eval(), sigma_data=card["sigma_data"], clamp=card["clamp"]).eval()
    cache = base.parent / f"{base.name}.text.safetensors"
    encoder = TextEncoder(card["text"]["encoder"], cache_file=cache if cache.exists() else None)
    return denoiser, card, encoder


__all__ = ["GMSDISettings", "MixtureCaptions", "MixtureObjective", "all_captions", "caption_statistics", "export_gmsdi",
           "load_gmsdi", "train_gmsdi"]
