"""Model files (safetensors + a JSON model card) and loading published MSDM Lightning checkpoints.

A model file is two files side by side:

    <name>.safetensors   the weights (float32, or float16 with `fp16=True`); for ISDM
                         all per-stem networks in one file, keys prefixed "<stem>."
    <name>.json          the model card: name, kind ("msdm" | "isdm" | "regression"),
                         stems, rate, window, sigma_data, clamp, config (the U-Net
                         hyperparameters), training (data, steps, ...), metrics,
                         dtype, layout and the sha256 of the weights file

Published MSDM checkpoints are PyTorch Lightning files (reference-notes.md):
`state_dict` holds the U-Net under `model.unet.*` and the same tensors again
under `model.diffusion.net.*`; `hyper_parameters` pickles a class of the
training code. `load_lightning_unet` never imports or runs that code: it tries
`torch.load(weights_only=True)` and falls back to `RestrictedUnpickler`, which
rebuilds tensors and containers, turns every other global into an inert
placeholder, and refuses to *call* anything that is not on its allow-list
(the code-execution path of a malicious pickle).

Honest limits of the published-checkpoint loader. The loader accepts this
project's U-Net naming under `model.unet.` (a Lightning file of this
project's U-Net loads exactly). The real MSDM files were written by
audio-diffusion-pytorch 0.0.43, whose parameter names and some block details
differ from this implementation (its network has ~405M parameters, ours ~420M
in the paper config). No published file is reachable from this machine, so a
name mapping could not be checked against one. What a mapping has to do,
from the library's module layout (unverified):

    ADP 0.0.43 (expected)                 this repo
    to_in.*          (Patcher)            patch_in.*, patch_blocks.*
    to_time.* / to_mapping.*              embedding.*
    downsamples.{i}.downsample.*          downsamples.{i}.*
    downsamples.{i}.blocks.{j}.*          encoder.{i}.blocks.{j}.*
    downsamples.{i}.transformer.*         encoder.{i}.attentions.{j}.*
    bottleneck.pre_block / attention / post_block
                                          bottleneck.0 / bottleneck_attention / bottleneck.1
    upsamples.{i}.blocks.{j}.*            decoder.{n-1-i}.blocks.{j}.*
    upsamples.{i}.upsample.*              upsamples.{n-1-i}.*
    to_out.*         (Unpatcher)          unpatch_blocks.*, unpatch_norm.*, patch_out.*
    block1/block2 .groupnorm/.project     norm1/conv1, norm2/conv2; to_scale_shift -> film

Where tensors differ in shape (ADP's patcher runs its resnet block before
folding; its upsampling blocks may have one block more on attention levels),
no renaming can make them load, and the paper config would need those
details matched first. `load_lightning_unet(..., key_map=fn)` takes such a
renaming; with none, only this project's own naming loads, and a mismatch
raises a ValueError that says how many keys were missing and unexpected.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from stemweave.engine.audio_io import atomic_write
from stemweave.engine.unet import UNet1d, load_config

CARD_FORMAT = 1
HEAD_PREFIX = "head"  # a regression model's spectral head: its tensors are "head.*" beside the U-Net's
KINDS = ("msdm", "isdm", "regression")


# --------------------------------------------------------------------------- model files


@dataclass
class ModelFile:
    """A loaded model file: its card and its network(s), keyed by stem for ISDM, by "" otherwise."""

    card: dict[str, Any]
    nets: dict[str, UNet1d] = field(default_factory=dict)
    head_state: dict[str, torch.Tensor] | None = None  # a regression model's spectral head (card "head"), float32

    @property
    def kind(self) -> str:
        return self.card["kind"]

    @property
    def stems(self) -> tuple[str, ...]:
        return tuple(self.card["stems"])

    @property
    def net(self) -> UNet1d:
        """The single network of an msdm or regression model."""
        if "" not in self.nets:
            raise ValueError(f"{self.card['name']} is an {self.kind} model with one network per stem; use .nets")
        return self.nets[""]


def _paths(dir_or_path: str | Path, name: str | None) -> tuple[Path, Path]:
    path = Path(dir_or_path)
    if path.suffix in (".safetensors", ".json"):
        base = path.with_suffix("")
    elif path.is_dir() or name is not None and not path.suffix:
        if name is None:
            raise ValueError("save_model(dir) needs a name")
        base = path / name
    else:
        base = path
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def save_model(
    dir_or_path: str | Path,
    net: nn.Module | Mapping[str, nn.Module],
    *,
    name: str,
    kind: str,
    stems: list[str] | tuple[str, ...],
    config: Mapping[str, Any],
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    fp16: bool = False,
    head: nn.Module | None = None,
) -> tuple[Path, Path]:
    """Write `<name>.safetensors` + `<name>.json` and return both paths.

    `dir_or_path` is a folder (the files are named after `name`) or a path
    ending in .safetensors / .json. `net` is one U-Net (msdm, regression) or a
    mapping stem -> U-Net (isdm). `config` is a config dict as `load_config`
    returns it (rate, window, sigma_data, clamp, unet); the card records the
    U-Net's actual in/out channels. `head` (regression only) is a spectral head
    (engine/spectral_head.py): its weights go under "head." and its config to
    the card's "head".
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    nets = dict(net) if isinstance(net, Mapping) else {"": net}
    if kind == "isdm" and set(nets) != set(stems):
        raise ValueError(f"an isdm model needs one network per stem {list(stems)}, got {sorted(nets)}")
    if kind != "isdm" and set(nets) != {""}:
        raise ValueError(f"an {kind} model has one network")
    if head is not None and kind != "regression":
        raise ValueError(f"only a regression model carries a spectral head, not an {kind} model")
    modules = dict(nets, **({HEAD_PREFIX: head} if head is not None else {}))
    tensors = {}
    for stem, module in modules.items():
        prefix = f"{stem}." if stem else ""
        for key, value in module.state_dict().items():
            value = value.detach().to("cpu")
            if fp16 and value.is_floating_point():
                value = value.half()
            tensors[prefix + key] = value.contiguous()
    first = next(iter(nets.values()))
    unet = first.config.to_dict() if isinstance(first, UNet1d) else dict(config.get("unet", {}))
    weights_path, card_path = _paths(dir_or_path, name)
    atomic_write(weights_path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", "name": name}))
    card = {
        "format": CARD_FORMAT,
        "name": name,
        "kind": kind,
        "stems": list(stems),
        "rate": int(config["rate"]),
        "window": int(config["window"]),
        "sigma_data": float(config.get("sigma_data", 0.2)),
        "clamp": bool(config.get("clamp", True)),
        "config": {"name": config.get("name"), "unet": unet},
        "layout": "per-stem-prefix" if kind == "isdm" else "single",
        "dtype": "float16" if fp16 else "float32",
        "weights": weights_path.name,
        "sha256": _sha256(weights_path),
        "parameters": sum(p.numel() for m in modules.values() for p in m.parameters()),
        "training": dict(training or {}),
        "metrics": dict(metrics or {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if head is not None:
        card["head"] = dict(head.config)
    text = json.dumps(card, indent=2) + "\n"
    atomic_write(card_path, lambda tmp: tmp.write_text(text))
    return weights_path, card_path


def read_card(path: str | Path) -> dict[str, Any]:
    _, card_path = _paths(path, None)
    if not card_path.exists():
        raise FileNotFoundError(f"no model card {card_path}")
    return json.loads(card_path.read_text())


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ModelFile:
    """Read a model file (path to its .safetensors, its .json, or the shared stem) into float32 U-Nets in eval mode."""
    weights_path, card_path = _paths(path, None)
    if not weights_path.exists() or not card_path.exists():
        raise FileNotFoundError(f"a model file needs both {weights_path.name} and {card_path.name} in {weights_path.parent}")
    card = json.loads(card_path.read_text())
    tensors = load_file(str(weights_path), device="cpu")
    head_prefix = HEAD_PREFIX + "."
    head_state = {k[len(head_prefix):]: v.float() for k, v in tensors.items() if k.startswith(head_prefix)}
    if bool(head_state) != ("head" in card):
        raise ValueError(f"{weights_path.name} and {card_path.name} disagree on whether the model has a spectral head")
    keys = card["stems"] if card["layout"] == "per-stem-prefix" else [""]
    nets = {}
    for stem in keys:
        prefix = f"{stem}." if stem else ""
        state = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix) and not k.startswith(head_prefix)}
        net = UNet1d(card["config"]["unet"])
        net.load_state_dict(state, strict=True)
        nets[stem] = net.to(device).eval()
    return ModelFile(card=card, nets=nets, head_state=head_state or None)


# --------------------------------------------------------------------------- published Lightning checkpoints

# Globals a Lightning state_dict needs to be rebuilt; they may be called while unpickling.
_CALLABLE_ALLOWLIST = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
}
# Storage classes and dtypes are looked up (not called) by torch's persistent_load.
_STORAGES = {
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage",
}


class _InertMeta(type):
    """Metaclass of placeholders: calling one (pickle's REDUCE) is refused, so no pickled code ever runs."""

    def __call__(cls, *args, **kwargs):
        raise pickle.UnpicklingError(
            f"refusing to call {cls.__module__}.{cls.__qualname__} while unpickling "
            "(not on the allow-list; a checkpoint's weights never need it)"
        )


class InertPlaceholder(metaclass=_InertMeta):
    """Stands in for a pickled global of the training code: holds its state, never imports or runs it."""

    def __setstate__(self, state):
        self.__dict__["_pickled_state"] = state

    def __setitem__(self, key, value):  # dict subclasses (Lightning's AttributeDict)
        self.__dict__.setdefault("_pickled_items", {})[key] = value

    def append(self, value):  # list subclasses
        self.__dict__.setdefault("_pickled_list", []).append(value)

    def extend(self, values):
        for value in values:
            self.append(value)

    def __repr__(self):
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _placeholder(module: str, name: str) -> type:
    return _InertMeta(name, (InertPlaceholder,), {"__module__": f"inert:{module}", "__qualname__": name})


class RestrictedUnpickler(pickle.Unpickler):
    """Allows tensor rebuilding and plain containers; every other global becomes an inert placeholder class."""

    def find_class(self, module: str, name: str):
        if (module, name) in _CALLABLE_ALLOWLIST or (module == "torch" and name in _STORAGES):
            return super().find_class(module, name)
        if module == "copyreg" and name == "_reconstructor":
            return _safe_reconstructor
        return _placeholder(module, name)


def _safe_reconstructor(cls, base, state):
    """copyreg._reconstructor for protocol 0/1 pickles, only for placeholders over object."""
    if not (isinstance(cls, _InertMeta) and base is object):
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor({cls!r}, {base!r})")
    obj = object.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


class _RestrictedPickleModule:
    """The `pickle_module` torch.load uses: the restricted Unpickler, the rest from pickle."""

    Unpickler = RestrictedUnpickler
    __name__ = "stemweave_restricted_pickle"

    @staticmethod
    def load(file, **kwargs):
        return RestrictedUnpickler(file, **kwargs).load()

    def __getattr__(self, name):
        return getattr(pickle, name)


def load_lightning_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint as a dict, without running any code it pickles.

    First `torch.load(weights_only=True)`; if the file pickles classes that
    refuses (MSDM's `hyper_parameters` does), the restricted unpickler: the
    classes become inert placeholders and any attempt to call a non-allowed
    global raises `pickle.UnpicklingError`.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule())


def lightning_unet_state(checkpoint: Mapping[str, Any], prefix: str = "model.unet.") -> dict[str, torch.Tensor]:
    """The U-Net tensors of a Lightning state_dict (`model.unet.*`); the duplicate `model.diffusion.net.*` is ignored."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping):
        raise ValueError("checkpoint has no state_dict mapping")
    unet = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not unet:
        found = sorted({k.split(".")[0] + "." + k.split(".")[1] if k.count(".") else k for k in state})[:8]
        raise ValueError(f"no '{prefix}*' keys in the checkpoint (found prefixes {found})")
    return unet


def load_lightning_unet(
    path: str | Path,
    config: str | Mapping[str, Any] = "paper",
    key_map: Callable[[str], str] | None = None,
    in_channels: int | None = None,
) -> tuple[UNet1d, dict[str, Any]]:
    """Load the `model.unet.*` weights of a Lightning checkpoint into a U-Net of `config`; returns (net, config).

    `key_map` renames keys (e.g. from audio-diffusion-pytorch 0.0.43 naming, see
    the module docstring); without it the file must use this project's naming.
    `in_channels` sets in = out channels (4 for MSDM, 1 for an ISDM stem); by
    default it is read from the first patch conv's weight.
    """
    config = dict(load_config(config) if isinstance(config, str) else config)
    state = lightning_unet_state(load_lightning_checkpoint(path))
    if key_map is not None:
        state = {key_map(k): v for k, v in state.items()}
    unet_config = dict(config["unet"])
    if in_channels is None and "patch_in.weight" in state:
        in_channels = state["patch_in.weight"].shape[1] // unet_config["patch_factor"]
    if in_channels is not None:
        unet_config["in_channels"] = unet_config["out_channels"] = in_channels
    config["unet"] = unet_config
    net = UNet1d(unet_config)
    missing, unexpected = _key_mismatch(net, state)
    if missing or unexpected:
        raise ValueError(
            f"{path}: {len(missing)} U-Net keys missing (e.g. {missing[:3]}) and {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}) for config {config.get('name')!r}; a file from audio-diffusion-pytorch "
            "needs a key_map (see stemweave.engine.checkpoints' docstring)"
        )
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net.eval(), config


def _key_mismatch(net: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = net.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    unexpected += sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    return missing, unexpected


__all__ = [
    "ModelFile",
    "RestrictedUnpickler",
    "atomic_torch_save",
    "load_lightning_checkpoint",
    "load_lightning_unet",
    "load_model",
    "read_card",
    "save_model",
]
