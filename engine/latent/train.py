"""MSLDM training: the SourceVAE, a precomputed latent dataset, the latent prior, and their model files.

- `train_vae`: single-stem segments (every stem of StemChunks windows, silent
  ones dropped; one VAE for all stems), loss = mel 15 + STFT + KL 10 (+ feature
  matching 2 + adversarial 1 with `adversarial`, for GPUs); validation SI-SDR
  and mel distance per stem of the posterior-mean reconstruction.
- `encode_dataset`: encodes every track of a rendered dataset once into
  `<out>/<track>.npy` (K, C, frames) float16 + `<out>/latents.json`.
- `LatentChunks`: random (K*C, frames) windows of such a folder (memory-mapped).
- `train_prior`: the EDM latent prior (sigma ~ U(0.01, 3), F-space loss,
  prior.py), AdamW + EMA, validation loss per sigma.
- Model files: `<name>.safetensors` + `<name>.json` like engine/checkpoints.py,
  kinds "vae" (the SourceVAE) and "msldm" (keys `vae.*` + `unet.*`: one file
  generates and accompanies on audio).

Both loops reuse engine/train.py's pieces (EMA, device choice, SIGTERM-safe
stop, atomic resumable checkpoints in `<run>/checkpoints/last.pt`,
`<run>/metrics.jsonl`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import IterableDataset, get_worker_info

from stemweave.engine.audio_io import atomic_write
from stemweave.engine.checkpoints import _sha256, atomic_torch_save
from stemweave.engine.denoiser import EDMDenoiser
from stemweave.engine.latent.prior import LatentPrior, latent_edm_loss, sample_training_sigma
from stemweave.engine.latent.vae import (
    Discriminator, LossConfig, SourceVAE, VAEConfig, discriminator_loss, generator_losses, load_config,
    multiresolution_stft_loss, multiscale_mel_loss,
)
from stemweave.engine.metrics import SILENCE_THRESHOLD, si_sdr
from stemweave.engine.models import MODEL_DIR, load_vae, resolve_model
from stemweave.engine.steps import RunState, Schedule, descend, run_steps
from stemweave.engine.train import EMA, CHECKPOINT, _infinite, pick_device
from stemweave.engine.unet import UNet1d, count_parameters

STEMS = ("bass", "drums", "guitar", "piano")
CARD_FORMAT = 1
MANIFEST = "latents.json"
VALID_SIGMAS = (0.02, 0.1, 0.4, 1.0, 2.5)


# --------------------------------------------------------------------------- model files


def _write_model_file(out_dir: str | Path, name: str, tensors: dict[str, torch.Tensor], card: dict[str, Any],
                      fp16: bool = False) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path, card_path = out_dir / f"{name}.safetensors", out_dir / f"{name}.json"
    dtype = torch.float16 if fp16 else torch.float32
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp)))
    card = {"format": CARD_FORMAT, "name": name, **card, "dtype": "float16" if fp16 else "float32",
            "weights": weights_path.name, "sha256": _sha256(weights_path),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda tmp: tmp.write_text(text))
    return weights_path, card_path


def save_vae(vae: SourceVAE, out_dir: str | Path, name: str, training: dict | None = None,
             metrics: dict | None = None, fp16: bool = False) -> tuple[Path, Path]:
    card = {"kind": "vae", "rate": vae.rate, "hop": vae.hop, "latent_dim": vae.latent_dim,
            "config": {"vae": vae.config.to_dict()}, "parameters": count_parameters(vae),
            "training": dict(training or {}), "metrics": dict(metrics or {})}
    return _write_model_file(out_dir, name, vae.state_dict(), card, fp16)


# --------------------------------------------------------------------------- SourceVAE training


@dataclass
class VAETrainSettings:
    config: str | dict = "cpu-small"
    data: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    stems: tuple[str, ...] = STEMS
    run_dir: str = "runs/vae"
    steps: int = 10_000
    batch: int | None = None  # single-stem segments per step
    lr: float | None = None
    adversarial: bool | None = None  # default: the config's (false on CPU configs)
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    resume: str = "auto"
    log_every: int = 50
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    valid_every: int = 500
    valid_windows: int = 8
    progress: bool = True


def _config(config: str | dict) -> dict[str, Any]:
    return copy.deepcopy(config) if isinstance(config, dict) else load_config(config)


def _single_stems(batch: torch.Tensor, limit: int) -> torch.Tensor:
    """(B, K, N) windows -> (<= limit, 1, N) non-silent single-stem segments (at least one)."""
    flat = batch.reshape(-1, batch.shape[-1])
    active = flat.norm(dim=-1) / flat.shape[-1] >= SILENCE_THRESHOLD
    chosen = flat[active] if active.any() else flat[:1]
    return chosen[:limit, None]


def init_posterior_logvar(vae: SourceVAE, value: float) -> None:
    """Start the posterior log-variance near `value` (the bias of the encoder's log-variance channels).

    With the default initialisation the encoder's means are ~0.01 and its log-variances ~0, so the sampled latents
    are almost pure unit noise: on CPU (cpu-small, KL weight 1 with warm-up) the decoder learned to ignore them
    within 80 steps (KL 1e-4, posterior collapse). A small starting variance (e.g. exp(-6)) lets the latents carry
    the signal from the first step; the KL term then pulls the variance up only as far as reconstruction allows.
    """
    last = vae.encoder.block[-1]
    with torch.no_grad():
        last.bias[vae.latent_dim :] = value


def vae_loss(vae: SourceVAE, audio: torch.Tensor, losses: LossConfig, generator: torch.Generator | None = None,
             kl_factor: float = 1.0):
    """(total, terms, reconstruction) for single-stem audio (B, 1, N); no adversarial terms. `kl_factor` scales
    the KL weight (a warm-up)."""
    out = vae(audio, sample=True, generator=generator)
    estimate, target = out["audio"][:, 0], audio[:, 0]
    terms = {"mel": multiscale_mel_loss(estimate, target, vae.rate, losses), "kl": out["kl"].mean()}
    if losses.stft:
        terms["stft"] = multiresolution_stft_loss(estimate, target, losses)
    if losses.waveform:
        terms["waveform"] = (estimate - target).abs().mean()
    total = losses.mel * terms["mel"] + kl_factor * losses.kl * terms["kl"] + losses.stft * terms.get("stft", 0.0)
    total = total + losses.waveform * terms.get("waveform", 0.0)
    return total, terms, out["audio"]


@torch.no_grad()
def validate_vae(vae: SourceVAE, windows: torch.Tensor, stems: Sequence[str], losses: LossConfig) -> dict[str, float]:
    """Posterior-mean reconstruction of fixed (N, K, samples) windows: SI-SDR (dB) and mel distance per stem."""
    vae.eval()
    sdr: dict[str, list[float]] = {s: [] for s in stems}
    mel: dict[str, list[float]] = {s: [] for s in stems}
    for window in windows:
        recon = vae.decode_latents(vae.encode_audio(window), window.shape[-1])  # (K, N)
        for k, stem in enumerate(stems):
            if float(window[k].norm() / window.shape[-1]) < SILENCE_THRESHOLD:
                continue
            sdr[stem].append(float(si_sdr(recon[k].numpy(), window[k].numpy())))
            mel[stem].append(float(multiscale_mel_loss(recon[k : k + 1], window[k : k + 1], vae.rate, losses)))
    vae.train()
    out = {}
    for stem in stems:
        if sdr[stem]:
            out[f"si_sdr/{stem}"] = float(np.mean(sdr[stem]))
            out[f"mel/{stem}"] = float(np.mean(mel[stem]))
    values = [v for k, v in out.items() if k.startswith("si_sdr/")]
    out["si_sdr"] = float(np.mean(values)) if values else float("nan")
    return out


def train_vae(settings: VAETrainSettings, dataset=None, valid_windows: torch.Tensor | None = None, log=print) -> dict:
    """Train (or resume) a SourceVAE to `settings.steps`; returns a summary."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    config = _config(settings.config)
    hp = dict(config.get("vae_train", {}))
    losses = LossConfig.from_dict(config.get("vae_loss"))
    batch = settings.batch or hp.get("batch", 8)
    lr = settings.lr or hp.get("lr", 1e-4)
    adversarial = hp.get("adversarial", False) if settings.adversarial is None else settings.adversarial
    checkpoint_every = settings.checkpoint_every or hp.get("checkpoint_every", 500)
    run_dir = Path(settings.run_dir)
    checkpoint_path = run_dir / CHECKPOINT

    torch.manual_seed(settings.seed)
    vae = SourceVAE(config["vae"]).to(device)
    if hp.get("logvar_init") is not None:
        init_posterior_logvar(vae, float(hp["logvar_init"]))
    betas = tuple(hp.get("betas", (0.8, 0.99)))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, hp.get("lr_gamma", 1.0))
    disc = disc_optimizer = None
    if adversarial:
        disc = Discriminator().to(device)
        disc_optimizer = torch.optim.AdamW(disc.parameters(), lr=lr, betas=betas)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    run = RunState()
    resume_from = checkpoint_path if settings.resume == "auto" and checkpoint_path.exists() else (
        Path(settings.resume) if settings.resume not in ("auto", "never") else None)
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        if state["config"]["vae"] != config["vae"]:
            raise ValueError(f"{resume_from} has another VAE config; use another --run-dir or --resume never")
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if disc is not None and state.get("disc"):
            disc.load_state_dict(state["disc"])
            disc_optimizer.load_state_dict(state["disc_optimizer"])
        generator.set_state(state["generator"])
        run = RunState(step=int(state["step"]), seconds=float(state["seconds"]))
        log(f"resumed {resume_from} at step {run.step}")

    segment = vae.samples_for(hp.get("segment_frames", 32))
    if dataset is None:
        if not settings.data:
            raise ValueError("no training data: pass --data DIR")
        from stemweave.engine.data.datasets import StemChunks

        dataset = StemChunks(list(settings.data), segment, stems=settings.stems, rate=vae.rate, augment=True,
                             seed=settings.seed + run.step)
    if valid_windows is None and settings.valid:
        from stemweave.engine.data.datasets import StemChunks

        valid = StemChunks(list(settings.valid), 4 * segment, stems=settings.stems, rate=vae.rate, seed=12345,
                           min_active_stems=min(2, len(settings.stems)))
        valid_windows = torch.stack([w for _, w in zip(range(settings.valid_windows), valid)])
    windows_per_batch = max(1, math.ceil(batch / len(settings.stems)) + 1)  # a little spare for silent stems
    batches = _infinite(torch.utils.data.DataLoader(dataset, batch_size=windows_per_batch))
    parameters = count_parameters(vae)
    log(f"SourceVAE {config.get('name')} ({parameters / 1e6:.2f}M parameters, hop {vae.hop}, C {vae.latent_dim}) on "
        f"{device}, {torch.get_num_threads()} threads, batch {batch} x {segment} samples, adversarial {adversarial}, "
        f"steps {run.step} -> {settings.steps}")

    def save_checkpoint():
        atomic_torch_save({"step": run.step, "seconds": run.seconds, "vae": vae.state_dict(),
                           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "disc": disc.state_dict() if disc else None,
                           "disc_optimizer": disc_optimizer.state_dict() if disc else None,
                           "generator": generator.get_state(), "config": config,
                           "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()},
                           "last_validation": run.last_validation}, checkpoint_path)

    def train_step(step: int) -> tuple[dict[str, float], dict[str, float]]:
        audio = _single_stems(next(batches), batch).to(device)  # (B, 1, N)
        kl_factor = min(1.0, (step + 1) / hp["kl_warmup"]) if hp.get("kl_warmup") else 1.0
        total, terms, recon = vae_loss(vae, audio, losses, generator, kl_factor)
        if disc is not None:
            d_loss = discriminator_loss(disc(audio), disc(recon.detach()))
            disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_optimizer.step()
            adv, feat = generator_losses(disc(audio), disc(recon))
            total = total + losses.adversarial * adv + losses.features * feat
            terms.update(adv=adv, features=feat, disc=d_loss)
        descend(total, optimizer, vae.parameters(), hp.get("grad_clip", 100.0))
        scheduler.step()
        return {key: float(value.detach() if torch.is_tensor(value) else value)
                for key, value in {"loss": total, **terms}.items()}, {}

    run_dir.mkdir(parents=True, exist_ok=True)
    vae.train()
    schedule = Schedule(settings.steps, settings.log_every, settings.valid_every, checkpoint_every,
                        settings.checkpoint_minutes, settings.progress)
    run_steps(run, schedule, train_step, save_checkpoint, metrics_path=run_dir / "metrics.jsonl", log=log,
              validate=(lambda: validate_vae(vae, valid_windows, settings.stems, losses))
              if valid_windows is not None else None)
    return {"step": run.step, "first_loss": run.first_loss, "loss": run.last_loss, "validation": run.last_validation,
            "checkpoint": str(checkpoint_path), "parameters": parameters, "seconds": run.seconds}


def export_vae(run_dir: str | Path, name: str, out_dir: str | Path = MODEL_DIR, fp16: bool = False) -> tuple[Path, Path]:
    """Write a VAE run's last weights as a "vae" model file."""
    state = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=True)
    vae = SourceVAE(state["config"]["vae"])
    vae.load_state_dict(state["vae"])
    training = {"steps": state["step"], "train_seconds": round(state["seconds"], 1), "config": state["config"].get("name"),
                "data": state["settings"].get("data"), "loss": state["config"].get("vae_loss", {})}
    return save_vae(vae, out_dir, name, training, {"validation": state.get("last_validation") or {}}, fp16)


# --------------------------------------------------------------------------- latent dataset


@torch.no_grad()
def encode_long(vae: SourceVAE, audio: torch.Tensor, chunk_frames: int = 256, context_frames: int = 32) -> torch.Tensor:
    """Posterior means of long mono audio (N,) -> (C, frames_for(N)), chunk by chunk with `context_frames` of
    context on each side (the encoder is shift-equivariant for shifts of one hop, so chunks line up)."""
    hop, frames = vae.hop, vae.frames_for(audio.shape[-1])
    padded = torch.nn.functional.pad(audio, (context_frames * hop, (frames + context_frames) * hop - audio.shape[-1]))
    out = []
    for start in range(0, frames, chunk_frames):
        length = min(chunk_frames, frames - start)
        piece = padded[start * hop : (start + length + 2 * context_frames) * hop]
        z = vae.posterior(piece[None, None]).mean[0]  # (C, length + 2 context)
        out.append(z[:, context_frames : context_frames + length])
    return torch.cat(out, dim=-1)


def encode_dataset(vae: SourceVAE | str | Path, data: str | Path | Sequence, out: str | Path,
                   stems: Sequence[str] = STEMS, log=print, limit: int | None = None,
                   seconds: float | None = None) -> Path:
    """Encode every track under `data` once: `<out>/<track>.npy` (K, C, frames) float16 and `<out>/latents.json`.
    `limit`: only the first N tracks; `seconds`: only the first S seconds of each (CPU budgets)."""
    from stemweave.engine.data.datasets import _as_roots, list_tracks, read_window

    vae_name = str(vae) if not isinstance(vae, SourceVAE) else getattr(vae, "card", {}).get("name", "in-memory")
    vae = load_vae(vae) if not isinstance(vae, SourceVAE) else vae.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracks = [t for root in _as_roots(data) for t in list_tracks(root)][:limit]
    if not tracks:
        raise ValueError(f"no tracks under {data}")
    index, total, square, count = {}, 0.0, 0.0, 0
    began = time.time()
    for i, track in enumerate(tracks):
        length = track.length_at(vae.rate) if seconds is None else min(track.length_at(vae.rate),
                                                                         int(seconds * vae.rate))
        audio = torch.from_numpy(read_window(track, 0, length, stems, vae.rate))  # (K, N)
        z = torch.stack([encode_long(vae, a) for a in audio])  # (K, C, T)
        file = out / f"{track.name.replace('/', '__')}.npy"
        np.save(file, z.numpy().astype(np.float16))
        index[track.name] = {"file": file.name, "frames": int(z.shape[-1])}
        total, square, count = total + float(z.sum()), square + float(z.pow(2).sum()), count + z.numel()
        log(f"[{i + 1}/{len(tracks)}] {track.name}: {z.shape[-1]} frames ({time.time() - began:.0f} s)")
    mean = total / count
    manifest = {"vae": vae_name, "vae_sha256": getattr(vae, "card", {}).get("sha256"),
                "vae_config": vae.config.to_dict(), "rate": vae.rate, "hop": vae.hop, "latent_dim": vae.latent_dim,
                "stems": list(stems), "seconds_per_track": seconds, "tracks": index, "mean": mean, "std": math.sqrt(max(square / count - mean**2, 0.0))}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out / MANIFEST


class LatentChunks(IterableDataset):
    """An endless stream of (K * C, frames) float32 stacked latent windows from an `encode_dataset` folder."""

    def __init__(self, root: str | Path, frames: int, seed: int = 0, scale: float = 1.0):
        super().__init__()
        self.root = Path(root)
        manifest_path = self.root / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"no {MANIFEST} in {self.root}: run `stemweave vae encode` first")
        self.manifest = json.loads(manifest_path.read_text())
        self.frames, self.seed, self.scale = int(frames), int(seed), float(scale)
        self.arrays = [np.load(self.root / info["file"], mmap_mode="r") for info in self.manifest["tracks"].values()]
        lengths = np.array([max(a.shape[-1] - self.frames, 0) + 1 for a in self.arrays], np.float64)
        self.weights = lengths / lengths.sum()
        self.epoch = 0

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self.manifest["stems"])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def window(self, array: np.ndarray, offset: int) -> torch.Tensor:
        z = np.zeros((*array.shape[:2], self.frames), np.float32)
        piece = np.asarray(array[..., offset : offset + self.frames], np.float32)
        z[..., : piece.shape[-1]] = piece
        return torch.from_numpy(z).reshape(-1, self.frames) * self.scale  # (K*C, frames), stem-major

    def fixed(self, n: int) -> torch.Tensor:
        """n deterministic windows (the first window of each track, in order): validation."""
        return torch.stack([self.window(a, 0) for a in self.arrays[:n]])

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, worker.id if worker else 0, self.epoch])
        while True:
            array = self.arrays[rng.choice(len(self.arrays), p=self.weights)]
            yield self.window(array, int(rng.integers(0, max(array.shape[-1] - self.frames, 0) + 1)))


# --------------------------------------------------------------------------- latent prior training


@dataclass
class PriorTrainSettings:
    config: str | dict = "cpu-small"
    latents: str = ""  # an encode_dataset folder
    valid_latents: str = ""
    run_dir: str = "runs/msldm"
    steps: int = 100_000
    batch: int | None = None
    lr: float | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    resume: str = "auto"
    log_every: int = 50
    checkpoint_every: int | None = None
    checkpoint_minutes: float = 10.0
    valid_every: int = 500
    valid_windows: int = 16
    progress: bool = True


def prior_network_config(config: dict[str, Any], stems: int) -> dict[str, Any]:
    """The U-Net table with in = out = K * C channels and noise conditioning."""
    channels = stems * config["vae"]["latent_dim"]
    return dict(config["unet"], in_channels=channels, out_channels=channels, conditioning=True)


@torch.no_grad()
def validate_prior(denoiser: EDMDenoiser, windows: torch.Tensor, seed: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for s in VALID_SIGMAS:
        noise = torch.randn(windows.shape, generator=generator)
        sigma = torch.full((windows.shape[0],), s)
        out[f"loss@sigma={s:g}"] = float(latent_edm_loss(denoiser, windows, sigma, noise))
    out["loss"] = float(np.mean(list(out.values())))
    return out


def train_prior(settings: PriorTrainSettings, dataset=None, valid_windows: torch.Tensor | None = None, log=print) -> dict:
    """Train (or resume) the latent prior on a precomputed latent folder to `settings.steps`."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    config = _config(settings.config)
    hp, prior_cfg = dict(config.get("prior_train", {})), dict(config.get("prior", {}))
    batch, lr = settings.batch or hp.get("batch", 16), settings.lr or hp.get("lr", 1e-4)
    frames = prior_cfg.get("window_frames", 128)
    sigma_min, sigma_max = prior_cfg.get("sigma_min", 0.01), prior_cfg.get("sigma_max", 3.0)
    checkpoint_every = settings.checkpoint_every or hp.get("checkpoint_every", 500)
    if dataset is None:
        dataset = LatentChunks(settings.latents, frames, seed=settings.seed, scale=prior_cfg.get("latent_scale", 1.0))
    stems = tuple(getattr(dataset, "stems", STEMS))
    manifest = getattr(dataset, "manifest", {})
    if manifest and manifest.get("latent_dim") != config["vae"]["latent_dim"]:
        raise ValueError(f"the latents have C = {manifest.get('latent_dim')}, the config's VAE C = "
                         f"{config['vae']['latent_dim']}: encode with a VAE of this config")
    if valid_windows is None and settings.valid_latents:
        valid_windows = LatentChunks(settings.valid_latents, frames, scale=prior_cfg.get("latent_scale", 1.0)).fixed(
            settings.valid_windows)
    unet_config = prior_network_config(config, len(stems))
    run_dir = Path(settings.run_dir)
    checkpoint_path = run_dir / CHECKPOINT

    torch.manual_seed(settings.seed)
    net = UNet1d(unet_config).to(device)
    denoiser = EDMDenoiser(net, sigma_data=prior_cfg.get("sigma_data", 0.4), clamp=False).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, betas=tuple(hp.get("betas", (0.9, 0.99))))
    ema = EMA(denoiser, hp.get("ema_decay", 0.999))
    generator = torch.Generator().manual_seed(settings.seed + 1)
    run = RunState()
    resume_from = checkpoint_path if settings.resume == "auto" and checkpoint_path.exists() else (
        Path(settings.resume) if settings.resume not in ("auto", "never") else None)
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        if state["unet"] != unet_config:
            raise ValueError(f"{resume_from} has another network config; use another --run-dir or --resume never")
        net.load_state_dict(state["net"])
        ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        run = RunState(step=int(state["step"]), seconds=float(state["seconds"]))
        log(f"resumed {resume_from} at step {run.step}")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(run.step)
    batches = _infinite(torch.utils.data.DataLoader(dataset, batch_size=batch))
    parameters = count_parameters(net)
    log(f"MSLDM prior {config.get('name')} ({parameters / 1e6:.2f}M parameters) on {device}, "
        f"{torch.get_num_threads()} threads, batch {batch} x {unet_config['in_channels']} channels x {frames} frames, "
        f"sigma ~ U({sigma_min}, {sigma_max}), steps {run.step} -> {settings.steps}")

    def save_checkpoint():
        atomic_torch_save({"step": run.step, "seconds": run.seconds, "net": net.state_dict(),
                           "ema": ema.module.state_dict(), "optimizer": optimizer.state_dict(),
                           "generator": generator.get_state(), "config": config, "unet": unet_config,
                           "stems": list(stems), "manifest": {k: v for k, v in manifest.items() if k != "tracks"},
                           "settings": asdict(settings), "last_validation": run.last_validation}, checkpoint_path)

    def train_step(step: int) -> tuple[dict[str, float], dict[str, float]]:
        x0 = next(batches).to(device)  # (batch, K*C, frames)
        sigma = sample_training_sigma(x0.shape[0], sigma_min, sigma_max, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        loss = latent_edm_loss(denoiser, x0, sigma, noise)
        descend(loss, optimizer, net.parameters(), hp.get("grad_clip", 1.0))
        ema.update(denoiser, step)
        return {"loss": loss.item()}, {}

    run_dir.mkdir(parents=True, exist_ok=True)
    denoiser.train()
    schedule = Schedule(settings.steps, settings.log_every, settings.valid_every, checkpoint_every,
                        settings.checkpoint_minutes, settings.progress)
    run_steps(run, schedule, train_step, save_checkpoint, metrics_path=run_dir / "metrics.jsonl", log=log,
              validate=(lambda: validate_prior(ema.module, valid_windows.to(device), settings.seed))
              if valid_windows is not None else None)
    return {"step": run.step, "first_loss": run.first_loss, "loss": run.last_loss, "validation": run.last_validation,
            "checkpoint": str(checkpoint_path), "parameters": parameters, "seconds": run.seconds}


def export_msldm(run_dir: str | Path, vae: str | Path, name: str, out_dir: str | Path = MODEL_DIR,
                 fp16: bool = False, metrics: dict | None = None) -> tuple[Path, Path]:
    """Write a prior run's EMA weights and the SourceVAE its latents came from as one "msldm" model file."""
    state = torch.load(Path(run_dir) / CHECKPOINT, map_location="cpu", weights_only=True)
    vae_model = load_vae(vae)
    config, manifest = state["config"], state.get("manifest") or {}
    if vae_model.config.to_dict() != VAEConfig.from_dict(config["vae"]).to_dict():
        raise ValueError(f"the VAE {vae} has another config than the prior run's ({config.get('name')})")
    if manifest.get("vae_sha256") and manifest["vae_sha256"] != vae_model.card.get("sha256"):
        raise ValueError(f"the prior was trained on latents of another VAE ({manifest.get('vae')}), not {vae}")
    net = UNet1d(state["unet"])
    net.load_state_dict({k[len("net."):]: v for k, v in state["ema"].items() if k.startswith("net.")}, strict=True)
    prior = config.get("prior", {})
    training = {"steps": state["step"], "train_seconds": round(state["seconds"], 1), "vae": str(vae),
                "vae_training": vae_model.card.get("training", {}), "weights": "ema",
                "latents": state["settings"].get("latents")}
    metrics = {"validation": state.get("last_validation") or {}, "vae": vae_model.card.get("metrics", {}),
               **(metrics or {})}
    return save_msldm(vae_model, net, state["stems"], out_dir, name, sigma_data=prior.get("sigma_data", 0.4),
                      latent_scale=prior.get("latent_scale", 1.0), window_frames=prior.get("window_frames", 128),
                      config_name=config.get("name"), prior_config=prior, training=training, metrics=metrics, fp16=fp16)


def save_msldm(vae: SourceVAE, net: UNet1d, stems: Sequence[str], out_dir: str | Path, name: str, *,
               sigma_data: float = 0.4, latent_scale: float = 1.0, window_frames: int = 128,
               config_name: str | None = None, prior_config: dict | None = None, training: dict | None = None,
               metrics: dict | None = None, fp16: bool = False) -> tuple[Path, Path]:
    """One "msldm" model file: the SourceVAE (`vae.*`) and the latent prior's U-Net (`unet.*`), with its card.

    The card's `window` (samples of `window_frames` latent frames) is the region layer's window for this model."""
    if net.in_channels != len(stems) * vae.latent_dim:
        raise ValueError(f"the U-Net takes {net.in_channels} channels, not K * C = {len(stems)} x {vae.latent_dim}")
    tensors = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    tensors.update({f"unet.{k}": v for k, v in net.state_dict().items()})
    card = {"kind": "msldm", "stems": list(stems), "rate": vae.rate, "hop": vae.hop,
            "latent_dim": vae.latent_dim, "window_frames": int(window_frames), "window": vae.samples_for(window_frames),
            "sigma_data": float(sigma_data), "clamp": False, "latent_scale": float(latent_scale),
            "config": {"name": config_name, "vae": vae.config.to_dict(), "unet": net.config.to_dict(),
                       "prior": dict(prior_config or {})},
            "parameters": {"vae": count_parameters(vae), "unet": count_parameters(net)},
            "training": dict(training or {}), "metrics": dict(metrics or {})}
    return _write_model_file(out_dir, name, tensors, card, fp16)


__all__ = [
    "LatentChunks", "PriorTrainSettings", "VAETrainSettings", "encode_dataset", "encode_long", "export_msldm",
    "export_vae", "save_msldm", "save_vae", "train_prior", "train_vae", "validate_vae",
]
