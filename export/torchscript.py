"""TorchScript export of one denoiser graph: traced, checked at a second length, one file loadable without this package."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn


def export_torchscript(graph: nn.Module, path: str | Path, *, channels: int, stride: int,
                       lengths: Sequence[int]) -> dict[str, Any]:
    """Trace `graph` ((x (B, C, T), sigma (B,)) -> (B, C, T)) and save it to `path`.

    Tracing records the U-Net's shape arithmetic (T / patch, the reshapes)
    as operations on the input's size, so the traced file takes any batch
    and any multiple of the stride; `torch.jit.trace` re-runs it on a second
    length and batch (check_inputs) and fails if the trace diverges.
    """
    first, *others = lengths
    example = (torch.zeros(2, channels, first), torch.full((2,), 0.5))
    checks = [(torch.randn(1, channels, n) * 0.2, torch.full((1,), 0.1)) for n in (others or [2 * first])]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notes
        traced = torch.jit.trace(graph.eval(), example, check_inputs=checks, check_tolerance=1e-5)
        traced = torch.jit.freeze(traced)
    torch.jit.save(traced, str(path))
    return {"opset": None, "exporter": "torch.jit.trace (frozen)"}


__all__ = ["export_torchscript"]
