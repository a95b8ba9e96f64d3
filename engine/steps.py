"""The step loop every trainer shares (MSDM/ISDM/regression, GMSDI, SourceVAE, latent prior).

A trainer owns its model, data and checkpoint contents; this module owns what is the same for all of
them: stopping cleanly on SIGTERM / Ctrl-C, logging, validating and checkpointing on schedule, and
always leaving a checkpoint behind, whatever ends the run.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

TrainStep = Callable[[int], tuple[dict[str, float], dict[str, float]]]
"""One optimisation step at the given step number: (loss terms averaged into the log, "loss" first;
values reported as they are at a log line, e.g. the gradient norm)."""


@dataclass
class RunState:
    """Where a run stands; trainers put these fields into their checkpoints."""

    step: int = 0
    seconds: float = 0.0
    first_loss: float = math.nan
    last_loss: float = math.nan
    last_validation: dict[str, float] = field(default_factory=dict)


@dataclass
class Schedule:
    """When to stop, log, validate and checkpoint (in steps; a checkpoint also every checkpoint_minutes)."""

    steps: int
    log_every: int
    valid_every: int
    checkpoint_every: int
    checkpoint_minutes: float
    progress: bool = True


def run_steps(state: RunState, schedule: Schedule, train_step: TrainStep, save: Callable[[], None], *,
              metrics_path: Path | None, log: Callable[[str], None], validate: Callable[[], dict[str, float]] | None = None,
              stop_agreed: Callable[[bool], bool] = lambda requested: requested, show_progress: bool = True) -> None:
    """Step until `schedule.steps` or a stop request; `save` writes the trainer's checkpoint from `state`.

    `metrics_path` None (a DDP rank other than 0) logs nowhere; `stop_agreed` lets DDP processes stop at
    the same step."""
    bar = _progress_bar(schedule, state.step, enabled=show_progress)
    last_save = time.time()
    with StopRequested() as stop, open(metrics_path if metrics_path is not None else os.devnull, "a") as metrics:
        steps_log = StepLog(metrics, bar, log, quiet=not schedule.progress)
        try:
            while state.step < schedule.steps and not stop_agreed(stop.requested):
                started = time.time()
                terms, extra = train_step(state.step)
                state.step += 1
                state.seconds += time.time() - started
                state.last_loss = terms["loss"]
                if math.isnan(state.first_loss):
                    state.first_loss = state.last_loss
                steps_log.add(**terms)
                bar.update(1)
                if state.step % schedule.log_every == 0 or state.step == schedule.steps:
                    steps_log.report(state.step, **extra)
                if validate is not None and (state.step % schedule.valid_every == 0 or state.step == schedule.steps):
                    state.last_validation = validate()
                    metrics.write(json.dumps({"step": state.step, "valid": state.last_validation}) + "\n")
                    metrics.flush()
                    log(f"step {state.step} validation: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in state.last_validation.items()))
                if (state.step % schedule.checkpoint_every == 0
                        or time.time() - last_save > 60 * schedule.checkpoint_minutes):
                    save()
                    last_save = time.time()
        finally:
            bar.close()
            save()
            log(f"checkpoint at step {state.step}")


def descend(loss, optimizer, parameters, grad_clip: float) -> float:
    """One gradient step: clear, backpropagate, clip the norm to grad_clip, update. Returns the norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    return float(grad_norm)


def _progress_bar(schedule: Schedule, step: int, enabled: bool):
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(total=schedule.steps, initial=step, disable=not (schedule.progress and enabled), unit="step",
                dynamic_ncols=True, mininterval=1.0 if interactive else 60.0, file=sys.stderr)


class StepLog:
    """Averages loss terms over the steps since the last report; a report writes one metrics.jsonl line, the
    progress bar's postfix and, without a bar, a log line. One home for every training loop's logging."""

    def __init__(self, metrics, bar, log: Callable[[str], None], quiet: bool):
        self.metrics, self.bar, self.log, self.quiet = metrics, bar, log, quiet
        self._reset()

    def _reset(self) -> None:
        self.started, self.steps, self.terms = time.time(), 0, {}

    def add(self, **terms: float) -> None:
        self.steps += 1
        for key, value in terms.items():
            self.terms[key] = self.terms.get(key, 0.0) + float(value)

    def report(self, step: int, **extra: float) -> dict:
        rate = self.steps / max(time.time() - self.started, 1e-9)
        means = {key: total / max(self.steps, 1) for key, total in self.terms.items()}
        record = {"step": step, **means, **extra, "steps_per_s": rate, "time": time.time()}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        self.bar.set_postfix(**{k: f"{v:.4f}" for k, v in means.items()}, steps_s=f"{rate:.2f}")
        if self.quiet:
            self.log(f"step {step} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                     + f" {rate:.2f} steps/s ({rate * 3600:.0f}/h)")
        self._reset()
        return record


class StopRequested:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and exits at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
