"""`stemweave export`: a prior's denoiser(s) as ONNX or TorchScript files, parity-checked against eager torch."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from stemweave.cli import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a prior's denoiser to ONNX or TorchScript (with a parity check)",
        description="Export the denoiser of an msdm model (the U-Net with its EDM preconditioning and clamp; for an "
        "isdm model each stem's network) as one self-contained file per network, taking x (batch, channels, length) "
        "and sigma (batch,) with dynamic batch and length (any multiple of the model's stride). Writes "
        "DIR/<name>.onnx (or .torchscript.pt; isdm: <name>.<stem>.onnx) and DIR/<name>.<format>.json, the model "
        "card with an `export` section (format, opset, dtype, parity error against eager torch).",
    )
    p.add_argument("--model", required=True, help="a shipped model name or a model file path (.json / .safetensors)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="file format (default onnx)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="fp32 (default) or fp16: the U-Net in half precision, for GPUs (slower, not faster, on CPUs)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder (created if missing)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 18 or later (default 18)")
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                   help="ONNX exporter: dynamo (default, torch.export) or legacy (the TorchScript-based one: about 8x "
                   "faster to export, same speed at run time)")
    p.add_argument("--length", type=int, default=None,
                   help="example and parity-check length in samples, a multiple of the model's stride "
                   "(default: the model's window)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check against eager torch")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from stemweave.engine.checkpoints import read_card
    from stemweave.engine.models import resolve_model
    from stemweave.export.backends import check_length, export_model

    try:
        card_path = resolve_model(args.model)
    except ValueError as error:
        raise UserError(str(error)) from None
    card = read_card(card_path)
    if card.get("kind") not in ("msdm", "isdm"):
        raise UserError(f"{card.get('name')} is a {card.get('kind')} model: only diffusion priors (msdm, isdm) are exported")
    stride = _stride(card)
    if args.length is not None:
        try:
            check_length(args.length, stride)
        except ValueError as error:
            raise UserError(f"--length: {error}") from None
    if args.opset is not None and args.opset < 18:
        raise UserError(f"--opset {args.opset}: the export needs opset 18 or later")
    missing = [m for m in (("onnx", "onnxruntime", "onnxscript") if args.format == "onnx" else ()) if not importlib.util.find_spec(m)]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: `pip install 'stemweave[export]'` "
                        "(on an NVIDIA GPU machine install onnxruntime-gpu instead of onnxruntime)")
    _check_writable(args.out)
    if args.dtype == "fp16":
        print("stemweave: note: fp16 files are for GPUs; on a CPU they run slower than fp32 (and ONNX Runtime's CPU "
              "provider may not run them at all)", file=sys.stderr)

    card_out, exported = export_model(card_path, args.out, format=args.format, dtype=args.dtype, opset=args.opset,
                                      length=args.length, check=not args.no_check, exporter=args.exporter,
                                      log=lambda message: print(message, file=sys.stderr))
    info = exported["export"]
    for filename in info["files"].values():
        print(args.out / filename)
    print(card_out)
    parity = info.get("parity")
    if parity:
        print(f"parity: max abs error {parity['max_abs_error']:.2e} vs eager torch "
              f"(lengths {parity['lengths']}, batches {parity['batches']}); opset {info.get('opset')}", file=sys.stderr)
    return 0


def _stride(card: dict) -> int:
    from stemweave.engine.unet import UNetConfig

    unet = UNetConfig.from_dict(card["config"]["unet"])
    stride = unet.patch_factor
    for factor in unet.factors:
        stride *= factor
    return stride


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".stemweave-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(f"cannot write to -o {folder}: {error.strerror or error}; choose a folder you can write") from None
