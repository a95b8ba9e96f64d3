"""Training loop for the score network (EDM diffusion: MSDM / ISDM) and the regression separator.

One loop for both objectives, on CPU or CUDA unchanged:

- diffusion: EDM loss (`edm_loss`) with sigma ~ LogNormal(sigma_mean, sigma_std) from the config's [train]
  (the reference's (-3, 1) by default; the CPU configs widen it to cover the samplers' range),
  the K stems as channels (MSDM) or one stem (ISDM, `stem=`);
- regression: mixture (sum of the stems) -> K stems, projected to sum to the
  mixture, L1 against the true stems.

AdamW, an EMA of the weights, gradient clipping, bf16 autocast on CUDA only,
atomic resumable checkpoints (`<run>/checkpoints/last.pt`, every N steps and
at exit, also on SIGTERM), a tqdm bar with loss and steps/s,
`<run>/metrics.jsonl`, validation loss per sigma bucket (diffusion) or
SI-SDR / SI-SDRi per stem (regression) with the EMA weights, and
deterministic seeds (a resumed run draws a new, seeded data stream).
`export_model` writes the EMA weights as a model file (safetensors + card).
Several GPUs: `torchrun --nproc_per_node N -m stemweave train ...` (DDP; each
process draws its own data stream, rank 0 logs, validates and checkpoints).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stemweave.engine.checkpoints import atomic_torch_save, save_model
from stemweave.engine.denoiser import EDMDenoiser, edm_loss, sample_given_stems, sample_training_sigma
from stemweave.engine.metrics import si_sdr
from stemweave.engine.models import MODEL_DIR, RegressionSeparator, load_model_file
from stemweave.engine.spectral_head import DEFAULT_HEAD, ReassignHead, native_bfloat16
from stemweave.engine.steps import RunState, Schedule, descend, run_steps
from stemweave.engine.unet import UNet1d, count_parameters, load_config

STEMS = ("bass", "drums", "guitar", "piano")
OBJECTIVES = ("diffusion", "regression")
HEAD_LR = 1e-3  # `--head`'s default learning rate (the probe of docs/separation.md)
VALID_SIGMAS = (0.005, 0.02, 0.05, 0.2, 0.5, 1.0)  # buckets of the validation loss (diffusion)
CHECKPOINT = "checkpoints/last.pt"
EMA_HEAD = "separator.head."  # where a spectral head's weights sit in the EMA copy of the objective


@dataclass
class TrainSettings:
    config: str | dict = "cpu-small"  # a config name or path (engine/configs), or a config dict
    objective: str = "diffusion"
    stems: tuple[str, ...] = STEMS
    stem: str | None = None  # ISDM: train a one-stem prior on this stem
    run_dir: str = "runs/default"
    steps: int = 100_000  # the step count to reach (a resumed run continues to it)
    batch: int | None = None  # default: the config's [train] batch
    lr: float | None = None
    weight_decay: float | None = None
    ema_decay: float | None = None
    grad_clip: float | None = None
    checkpoint_every: int | None = None  # steps
    checkpoint_minutes: float = 10.0  # also checkpoint at least this often
    valid_every: int | None = None
    valid_windows: int = 32
    log_every: int = 50
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    workers: int = 0
    resume: str = "auto"  # "auto" (last checkpoint if any), "never", or a checkpoint path
    init_from: str | None = None  # a model file (shipped name or path) whose weights and network start a new run
    remix: float = 0.0  # regression only: this share of windows takes each stem from its own song (the Demucs remix)
    given_share: float = 0.0  # MSDM only: this share of windows shows a random subset of stems clean (`edm_loss`)
    head: bool = False  # regression only: train the spectral head (engine/spectral_head.py) on the frozen U-Net
    bfloat16: bool = False  # regression only: the separator's nets under bfloat16 autocast, as inference runs them
    data: tuple[str, ...] = ()
    valid: tuple[str, ...] = ()
    progress: bool = True

    def model_stems(self) -> tuple[str, ...]:
        return (self.stem,) if self.stem else tuple(self.stems)

    def kind(self) -> str:
        if self.objective == "regression":
            return "regression"
        return "isdm" if self.stem else "msdm"


def resolve_config(settings: TrainSettings) -> dict[str, Any]:
    """The config dict with in/out channels and conditioning set from the objective and the stems."""
    config = copy.deepcopy(settings.config if isinstance(settings.config, dict) else load_config(settings.config))
    k = len(settings.model_stems())
    unet = dict(config["unet"])
    if settings.objective == "diffusion":
        unet.update(in_channels=k, out_channels=k, conditioning=True)
    else:
        unet.update(in_channels=1, out_channels=k, conditioning=False)
    config["unet"] = unet
    train = dict(config.get("train", {}))
    for key, default in (("batch", 8), ("lr", 1e-4), ("weight_decay", 0.0), ("ema_decay", 0.999), ("grad_clip", 1.0),
                         ("checkpoint_every", 500), ("valid_every", 500)):
        value = getattr(settings, key)
        train[key] = value if value is not None else train.get(key, default)
    if settings.head and settings.lr is None:
        train["lr"] = HEAD_LR  # a small network from zero: the U-Net's 1e-4 would barely move it
    train.setdefault("betas", [0.9, 0.99])
    config["train"] = train
    return config


def start_from_model(settings: TrainSettings, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor], list,
                                                                             dict[str, torch.Tensor] | None]:
    """`--init-from`: the model file's network config, weights, ledger and spectral head (or None), checked
    against the run's objective. A separator's head comes along (a `--head` run continues it); the file's
    head config lands in the config's "head".

    The shipped file is the durable checkpoint (a run folder dies with its machine): its architecture,
    rate, window and sigma_data win over the named config, whose [train] section still applies.
    """
    model = load_model_file(settings.init_from)
    if model.kind != settings.kind():
        raise ValueError(f"{settings.init_from} is a {model.kind} model; this run trains {settings.kind()}")
    card = model.card
    ledger = ledger_of(card)
    if settings.stem:  # ISDM: one stem's prior, out of a one-stem or a merged isdm file, with that stem's ledger
        if settings.stem not in model.stems:
            raise ValueError(f"{settings.init_from} has no {settings.stem!r} prior (its stems: {list(model.stems)})")
        per_stem = card.get("training", {}).get("per_stem", {}).get(settings.stem)
        ledger = ledger_of({"name": card.get("name"), "training": per_stem}) if per_stem else ledger
    elif tuple(model.stems) != settings.model_stems():
        raise ValueError(f"{settings.init_from} models stems {list(model.stems)}, not {list(settings.model_stems())}")
    config = dict(config, rate=card["rate"], window=card["window"], sigma_data=card["sigma_data"], clamp=card["clamp"],
                  unet=dict(card["config"]["unet"]))
    if "head" in card:
        config["head"] = dict(card["head"])
    net = model.nets[settings.stem] if settings.stem else model.net
    weights = {k: v.float() for k, v in net.state_dict().items()}
    return config, weights, ledger, model.head_state


def ledger_of(card: dict[str, Any]) -> list[dict[str, Any]]:
    """A model card's training ledger (one entry per shipped version); cards from before the ledger get one entry."""
    training = card.get("training", {})
    if "ledger" in training:
        return list(training["ledger"])
    return [{"name": card.get("name"), "steps": training.get("steps"), "total_steps": training.get("steps"),
             "cpu_hours": round(training.get("train_seconds", 0) / 3600, 2) if training.get("train_seconds") else None,
             "metrics": card.get("metrics", {}), "created": card.get("created")}]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available here; use --device cpu")
    return device


class Objective(nn.Module):
    """Wraps the U-Net with its loss: `loss(batch)` for training, `validate(batches)` for the EMA copy."""

    def __init__(self, net: UNet1d, objective: str, config: dict[str, Any], stems: Sequence[str] | None = None,
                 given_share: float = 0.0, head: nn.Module | None = None, polarity_average: bool = False):
        super().__init__()
        self.given_share = given_share
        self.net = net
        self.objective = objective
        self.stems = tuple(stems) if stems else tuple(str(k) for k in range(net.out_channels))
        if objective == "diffusion":
            self.denoiser = EDMDenoiser(net, sigma_data=config.get("sigma_data", 0.2), clamp=config.get("clamp", True))
            train = config.get("train", {})
            self.sigma_mean, self.sigma_std = train.get("sigma_mean", -3.0), train.get("sigma_std", 1.0)  # LogNormal
        else:
            # The U-Net trains on its own output; a head on the U-Net's answer as inference gives it (averaged).
            self.separator = RegressionSeparator(net, self.stems, polarity_average=polarity_average, head=head)

    def forward(self, stems: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training loss (forward, so DistributedDataParallel can wrap the objective)."""
        return self.loss(stems, generator)

    def loss(self, stems: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """stems: (batch, K, time) clean stems."""
        if self.objective == "diffusion":
            sigma = sample_training_sigma(stems.shape[0], self.sigma_mean, self.sigma_std, generator).to(stems.device)
            noise = torch.randn(stems.shape, generator=generator).to(stems.device)
            given = None
            if self.given_share:
                given = sample_given_stems(stems.shape[0], stems.shape[1], self.given_share, generator).to(stems.device)
            return edm_loss(self.denoiser, stems, sigma, noise, given)
        mixture = stems.sum(dim=1, keepdim=True)  # (batch, 1, time)
        return F.l1_loss(self.separator(mixture), stems)


@torch.no_grad()
def validate(model: Objective, windows: torch.Tensor, batch: int, device: torch.device, seed: int) -> dict[str, float]:
    """Diffusion: the EDM loss at each fixed sigma of VALID_SIGMAS (fixed noise). Regression: SI-SDR(i) per stem.

    windows: (N, K, time) fixed validation windows.
    """
    model.eval()
    results: dict[str, float] = {}
    generator = torch.Generator().manual_seed(seed)
    if model.objective == "diffusion":
        totals = {s: 0.0 for s in VALID_SIGMAS}
        for start in range(0, len(windows), batch):
            x0 = windows[start : start + batch].to(device)
            for s in VALID_SIGMAS:
                noise = torch.randn(x0.shape, generator=generator).to(device)
                sigma = torch.full((x0.shape[0],), s, device=device)
                totals[s] += edm_loss(model.denoiser, x0, sigma, noise).item() * x0.shape[0]
        for s, total in totals.items():
            results[f"loss@sigma={s:g}"] = total / len(windows)
        results["loss"] = sum(results.values()) / len(VALID_SIGMAS)
    else:
        sums: dict[str, list[float]] = {}
        for start in range(0, len(windows), batch):
            stems = windows[start : start + batch].to(device)
            mixture = stems.sum(dim=1, keepdim=True)
            estimate = model.separator(mixture)
            active = stems.pow(2).mean(-1).sqrt() > 1e-4  # score only non-silent reference stems
            score = torch.from_numpy(si_sdr(estimate.cpu().numpy(), stems.cpu().numpy()))
            improvement = score - torch.from_numpy(si_sdr(mixture.expand_as(stems).cpu().numpy(), stems.cpu().numpy()))
            for k, name in enumerate(model.stems):
                sums.setdefault(f"si_sdr/{name}", []).extend(score[active[:, k], k].tolist())
                sums.setdefault(f"si_sdri/{name}", []).extend(improvement[active[:, k], k].tolist())
        for key, values in sums.items():
            results[key] = sum(values) / len(values) if values else float("nan")
        stems_i = [v for k, v in results.items() if k.startswith("si_sdri/") and not math.isnan(v)]
        results["si_sdri"] = sum(stems_i) / len(stems_i) if stems_i else float("nan")
    model.train()
    return results


class EMA:
    """Exponential moving average of a module's parameters (buffers copied), with a short warm-up."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema, p in zip(self.module.parameters(), module.parameters()):
            ema.lerp_(p.detach(), 1 - decay)
        for ema, b in zip(self.module.buffers(), module.buffers()):
            ema.copy_(b)


def _infinite(loader: Iterable) -> Iterator[torch.Tensor]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("the training data yielded no windows")


def _take_windows(dataset: Iterable, n: int) -> torch.Tensor:
    windows = []
    for window in dataset:
        windows.append(torch.as_tensor(window, dtype=torch.float32))
        if len(windows) >= n:
            break
    return torch.stack(windows)


def _settings_record(settings: TrainSettings) -> dict[str, Any]:
    record = asdict(settings)
    for key, value in record.items():
        if isinstance(value, tuple):
            record[key] = list(value)
    return record


def train(
    settings: TrainSettings,
    dataset: Iterable | None = None,
    valid_dataset: Iterable | None = None,
    log=print,
) -> dict[str, Any]:
    """Run (or resume) a training run to `settings.steps`; returns a summary (step, last loss, validation).

    `dataset` / `valid_dataset` are iterables of (K, window) float32 windows; by
    default StemChunks over `settings.data` / `settings.valid`.
    """
    if settings.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {settings.objective!r}")
    if settings.remix and (settings.objective != "regression" or not 0 < settings.remix <= 1):
        raise ValueError("--remix P (0 < P <= 1) is for --objective regression: a joint prior needs stems that play together")
    if settings.head and (settings.objective != "regression" or not settings.init_from):
        raise ValueError("--head trains a regression separator's spectral head on a trained U-Net: it needs "
                         "--objective regression and --init-from a separator")
    if settings.bfloat16 and settings.objective != "regression":
        raise ValueError("--bfloat16 runs a regression separator's nets in bfloat16: it needs --objective regression")
    if settings.given_share and (settings.kind() != "msdm" or len(settings.stems) < 2 or not 0 < settings.given_share <= 1):
        raise ValueError("--given-share P (0 < P <= 1) is for a joint prior (MSDM, two stems or more): it shows some "
                         "stems clean so the prior learns to hear them")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    rank, world, device = _init_distributed(device)
    if rank != 0:
        log = lambda *_: None  # noqa: E731  (rank 0 alone logs, validates and writes checkpoints)
    config = resolve_config(settings)
    hp = config["train"]
    run_dir = Path(settings.run_dir)
    checkpoint_path = run_dir / CHECKPOINT
    stems = settings.model_stems()

    ledger: list = []
    init_weights = head_state = None
    resuming = settings.resume != "never" and (settings.resume != "auto" or checkpoint_path.exists())
    if settings.init_from:  # its network config applies to a resumed run too; its weights only to a new one
        config, init_weights, ledger, head_state = start_from_model(settings, config)
        init_weights = None if resuming else init_weights
    torch.manual_seed(settings.seed)
    net = UNet1d(config["unet"]).to(device)
    if init_weights is not None:
        net.load_state_dict(init_weights)
        log(f"started from the weights of {settings.init_from} ({ledger[-1].get('total_steps')} steps before this run)")
    head = None
    if settings.head or head_state is not None:
        # --head trains the head on the frozen U-Net, from the file's head or from the identity; a U-Net run from
        # a file with a head trains the U-Net through that head, frozen, so the run continues what shipped.
        config["head"] = config.get("head") or dict(DEFAULT_HEAD)
        head = ReassignHead(len(stems), config["head"])
        if head_state is not None and not resuming:
            head.load_state_dict(head_state)
        (net if settings.head else head).requires_grad_(False)
    if settings.bfloat16 and device.type == "cpu" and not native_bfloat16(device):
        log("warning: this CPU has no native bfloat16 convolutions; --bfloat16 emulates them and runs slower")
    model = Objective(net, settings.objective, config, stems, given_share=settings.given_share, head=head,
                      polarity_average=settings.head).to(device)
    if settings.bfloat16:
        model.separator.use_bfloat16()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
    ema = EMA(model, hp["ema_decay"])
    generator = torch.Generator().manual_seed(settings.seed + 1 + 1000 * rank)  # sigma and noise draws, per rank
    run = RunState()

    resume_from = None
    if settings.resume == "auto" and checkpoint_path.exists():
        resume_from = checkpoint_path
    elif settings.resume not in ("auto", "never"):
        resume_from = Path(settings.resume)
        if not resume_from.exists():
            raise ValueError(f"no checkpoint {resume_from} to resume from")
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        saved = state["settings"]
        for key in ("objective", "stem", "head"):
            if saved.get(key, False if key == "head" else None) != getattr(settings, key):
                raise ValueError(f"{resume_from} was trained with {key}={saved.get(key)!r}, not {getattr(settings, key)!r}; "
                                 "use another --run-dir or --resume never")
        if state["config"]["unet"] != config["unet"] or tuple(saved["stems"]) != tuple(settings.stems) and not settings.stem:
            raise ValueError(f"{resume_from} has another network config or stems; use another --run-dir or --resume never")
        net.load_state_dict(state["net"])
        if head is not None:
            head.load_state_dict(state["head"])
        ema.module.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        for group in optimizer.param_groups:
            group["lr"] = hp["lr"]
        if rank == 0:
            generator.set_state(state["generator"])
        else:
            generator.manual_seed(settings.seed + 1 + 1000 * rank + int(state["step"]))
        run = RunState(step=int(state["step"]), seconds=float(state["seconds"]))
        ledger = state.get("ledger", [])
        log(f"resumed {resume_from} at step {run.step}")

    if dataset is None:
        if not settings.data:
            raise ValueError("no training data: pass --data DIR")
        from stemweave.engine.data.datasets import StemChunks

        dataset = StemChunks(list(settings.data), config["window"], stems=stems, rate=config["rate"],
                             augment=True, seed=settings.seed + rank, remix=settings.remix)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(run.step)  # a resumed run gets a new, seeded stream, not a replay of the first windows
    if valid_dataset is None and settings.valid:
        from stemweave.engine.data.datasets import StemChunks

        valid_dataset = StemChunks(list(settings.valid), config["window"], stems=stems, rate=config["rate"],
                                   seed=12345, min_active_stems=min(2, len(stems)))
    valid_windows = _take_windows(valid_dataset, settings.valid_windows) if valid_dataset is not None and rank == 0 else None
    trained = model
    if world > 1:
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    loader = torch.utils.data.DataLoader(dataset, batch_size=hp["batch"], num_workers=settings.workers,
                                         pin_memory=device.type == "cuda")
    batches = _infinite(loader)
    parameters = count_parameters(net)
    log(f"{settings.kind()} {config.get('name')} ({parameters / 1e6:.2f}M parameters) on {device}, "
        f"{torch.get_num_threads()} threads, batch {hp['batch']} x {config['window']} samples, stems {list(stems)}, "
        f"steps {run.step} -> {settings.steps}" + (f", {world} processes (DDP)" if world > 1 else ""))

    def save_checkpoint() -> None:
        if rank != 0:
            return
        atomic_torch_save(
            {
                "step": run.step,
                "seconds": run.seconds,
                "net": net.state_dict(),
                **({"head": head.state_dict()} if head is not None else {}),
                "ema": ema.module.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "config": config,
                "settings": _settings_record(settings),
                "last_validation": run.last_validation,
                "ledger": ledger,
                "threads": torch.get_num_threads(),
                "processes": world,
                "device": str(device),
            },
            checkpoint_path,
        )

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def train_step(step: int) -> tuple[dict[str, float], dict[str, float]]:
        stems_batch = next(batches).to(device, non_blocking=True)  # (batch, K, time)
        with autocast:
            loss = trained(stems_batch, generator)
        grad_norm = descend(loss, optimizer, trainable, hp["grad_clip"])
        ema.update(model, step)
        return {"loss": loss.item()}, {"grad_norm": grad_norm}

    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = Schedule(settings.steps, settings.log_every, hp["valid_every"], hp["checkpoint_every"],
                        settings.checkpoint_minutes, settings.progress)
    model.train()
    try:
        run_steps(run, schedule, train_step, save_checkpoint, log=log,
                  metrics_path=run_dir / "metrics.jsonl" if rank == 0 else None,
                  validate=(lambda: validate(ema.module, valid_windows, hp["batch"], device, settings.seed))
                  if valid_windows is not None else None,
                  stop_agreed=lambda requested: _stop_agreed(requested, world, device), show_progress=rank == 0)
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return {"step": run.step, "loss": run.last_loss, "validation": run.last_validation, "checkpoint": str(checkpoint_path),
            "parameters": parameters, "seconds": run.seconds}


def _init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; each process takes its LOCAL_RANK GPU (or the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size(), device


def _stop_agreed(requested: bool, world: int, device: torch.device) -> bool:
    """A stop request (SIGTERM / Ctrl-C) on any process stops all of them at the same step."""
    if world <= 1:
        return requested
    flag = torch.tensor([float(requested)], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


def export_model(
    run_dir: str | Path,
    name: str,
    out_dir: str | Path = MODEL_DIR,
    fp16: bool = False,
    metrics: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the EMA weights of a run's last checkpoint as `<out_dir>/<name>.safetensors` + `.json`."""
    checkpoint_path = Path(run_dir) / CHECKPOINT
    if not checkpoint_path.exists():
        raise FileNotFoundError(f"no checkpoint {checkpoint_path} to export")
    state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    config, saved = state["config"], state["settings"]
    net = UNet1d(config["unet"])
    net.load_state_dict({k[len("net."):]: v for k, v in state["ema"].items() if k.startswith("net.")})
    head = None
    if "head" in config:  # a regression separator's spectral head: trained in this run or carried from --init-from
        head = ReassignHead(net.out_channels, config["head"])
        head.load_state_dict({k[len(EMA_HEAD):]: v for k, v in state["ema"].items() if k.startswith(EMA_HEAD)})
    objective = saved["objective"]
    stem = saved.get("stem")
    stems = [stem] if stem else list(saved["stems"])
    kind = "regression" if objective == "regression" else ("isdm" if stem else "msdm")
    training = {
        "objective": objective,
        "steps": state["step"],
        "train_seconds": round(state["seconds"], 1),
        "data": saved.get("data"),
        "valid": saved.get("valid"),
        "config": config.get("name"),
        "batch": config["train"]["batch"],
        "lr": config["train"]["lr"],
        "ema_decay": config["train"]["ema_decay"],
        "seed": saved.get("seed"),
        "weights": "ema",
        "given_share": saved.get("given_share") or 0.0,  # > 0: the prior hears given stems clean (priors.JointPrior)
    }
    card_metrics = {"validation": state.get("last_validation") or {}}
    card_metrics.update(metrics or {})
    ledger = list(state.get("ledger", []))
    before = (ledger[-1].get("total_steps") or 0) if ledger else 0
    # CPU-hours count the threads of every process a CPU run used; a GPU run records its device hours instead.
    on_cpu = str(state.get("device", "cpu")) == "cpu"
    hours = state["seconds"] / 3600 * (state.get("threads", 1) * state.get("processes", 1) if on_cpu else 1)
    ledger.append({"name": name, "steps": state["step"], "total_steps": before + state["step"],
                   "trained": "head" if saved.get("head") else "network",
                   "device": str(state.get("device", "cpu")),
                   ("cpu_hours" if on_cpu else "device_hours"): round(hours, 3),
                   "metrics": card_metrics, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    training["total_steps"] = before + state["step"]
    training["ledger"] = ledger
    return save_model(out_dir, {stem: net} if kind == "isdm" else net, name=name, kind=kind, stems=stems,
                      config=config, training=training, metrics=card_metrics, fp16=fp16, head=head)


__all__ = ["TrainSettings", "export_model", "resolve_config", "train", "validate", "si_sdr"]
