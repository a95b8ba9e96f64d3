"""Presets: named sampler and task settings read from presets/*.toml (shipped as package data)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Callable

from stemweave.engine.sampler import SamplerSettings

TASKS = ("separate", "accompany", "generate")
TASK_OPTIONS = {  # what each task accepts in a preset's [options] table, with its type
    "separate": {"likelihood": str, "constrained": str, "gamma": float, "warm_start": bool},
    "accompany": {"guidance": float},
    "generate": {},
}
LIKELIHOODS = ("dirac", "gaussian")


@dataclass(frozen=True)
class Preset:
    name: str
    task: str  # separate | accompany | generate
    description: str
    sampler: SamplerSettings
    options: dict = field(default_factory=dict)

    def with_overrides(self, **overrides) -> "Preset":
        """A copy with sampler settings or task options replaced (None values are ignored)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        sampler_keys = {f.name for f in fields(SamplerSettings)}
        sampler = {k: v for k, v in overrides.items() if k in sampler_keys}
        options = {k: v for k, v in overrides.items() if k not in sampler_keys}
        _check_options(self.name, self.task, options)
        return replace(self, sampler=replace(self.sampler, **sampler), options={**self.options, **options})


def list_presets() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in resources.files("stemweave.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A shipped preset by name (e.g. 'separate-dirac') or a .toml file by path."""
    name, data, sampler, _ = read_preset(name_or_path, list_presets)
    options = dict(data.get("options", {}))
    _check_options(name, data["task"], options)
    return Preset(name=name, task=data["task"], description=data.get("description", ""), sampler=sampler, options=options)


def read_preset(name_or_path: str | Path, known: Callable[[], list[str]]) -> tuple[str, dict, SamplerSettings, Path | None]:
    """(name, TOML data, sampler settings, folder of a preset file or None) with the task and [sampler] checked;
    the one reader behind MSDM's and GMSDI's presets. `known` lists the names offered when one is unknown."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text, name, folder = path.read_text(), path.stem, path.parent
    else:
        resource = resources.files("stemweave.presets") / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ValueError(f"unknown preset {str(name_or_path)!r}: choose one of {', '.join(known())} or give a .toml file")
        text, name, folder = resource.read_text(), str(name_or_path), None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"preset {name!r} is not valid TOML: {error}") from None
    task = data.get("task")
    if task not in TASKS:
        raise ValueError(f"preset {name!r}: 'task' must be one of {', '.join(TASKS)}, got {task!r}")
    try:
        sampler = SamplerSettings(**data.get("sampler", {}))
    except TypeError as error:
        raise ValueError(f"preset {name!r}: bad [sampler] table: {error}") from None
    return name, data, sampler, folder


def _check_options(name: str, task: str, options: dict) -> None:
    allowed = TASK_OPTIONS[task]
    for key, value in options.items():
        if key not in allowed:
            known = ", ".join([f.name for f in fields(SamplerSettings)] + list(allowed))
            raise ValueError(f"preset {name!r}: {key!r} is not a setting of {task} (known: {known})")
        if not isinstance(value, allowed[key]) and not (allowed[key] is float and isinstance(value, int)):
            raise ValueError(f"preset {name!r}: {key} must be a {allowed[key].__name__}, got {value!r}")
    if options.get("guidance", 0.0) < 0:
        raise ValueError(f"preset {name!r}: guidance must be 0 or more, got {options['guidance']!r}")
    if options.get("likelihood", "dirac") not in LIKELIHOODS:
        raise ValueError(f"preset {name!r}: likelihood must be one of {', '.join(LIKELIHOODS)}")
