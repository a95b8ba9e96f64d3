"""Timbre palettes: which soundfont or sampled drum kit renders each stem of a song, and a Hydrogen drum-kit player.

FluidR3 alone gave a separator that lost 3 dB on other fonts (issue 22). A palette lists the soundfonts for the
pitched stems and the drum sources (a soundfont's GM kits or a Hydrogen kit of real samples); each stem of a
song draws one from the song's seed, so track n is still always the same audio. The `unseen` palette holds a
font and a kit that no training palette uses: the unseen-timbre split measures what was never heard.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from stemweave.engine.data.songs import Note
from stemweave.engine.resample import resample

SF2 = Path("/usr/share/sounds/sf2")
SF3 = Path("/usr/share/sounds/sf3")
HYDROGEN_KITS = Path("/usr/share/hydrogen/data/drumkits")
# Debian packages: fluid-soundfont-gm, timgm6mb-soundfont, opl3-soundfont, musescore-general-soundfont-small,
# hydrogen-drumkits. csound-soundfont's sf_GMbank is left out: its samples are TimGM6mb's (drums correlate 0.996).
FONTS = {
    "fluidr3": SF2 / "FluidR3_GM.sf2",
    "timgm6mb": SF2 / "TimGM6mb.sf2",
    "opl3": SF2 / "OPL-3_FM_128M.sf2",  # FM synthesis: far from samples, widens what "bass" can sound like
    "musescore": SF3 / "MuseScore_General_Lite.sf3",
}
KITS = {name: HYDROGEN_KITS / name for name in (
    "Audiophob", "BJA_Pacific", "ColomboAcousticDrumkit", "Millo-Drums_v.1", "Millo_MultiLayered2",
    "Millo_MultiLayered3", "VariBreaks", "HardElectro1", "rumpf_kit_z01_h2", "The Black Pearl 1.0")}


@dataclass(frozen=True)
class Palette:
    """Soundfonts for bass/guitar/piano and drum sources ("font:<name>" GM kits or "kit:<name>" Hydrogen kits)."""

    name: str
    fonts: tuple[str, ...]
    drums: tuple[str, ...]

    def choose(self, stem: str, rng: np.random.Generator) -> str:
        """The source of one stem: "font:<name>" or "kit:<name>"."""
        if stem == "drums":
            return self.drums[int(rng.integers(len(self.drums)))]
        return "font:" + self.fonts[int(rng.integers(len(self.fonts)))]


PALETTES = {
    # Training: three fonts, their GM kits, and nine of the ten Hydrogen kits (half of the drums are real kits).
    "varied": Palette("varied", ("fluidr3", "fluidr3", "timgm6mb", "opl3"),
                      ("font:fluidr3", "font:timgm6mb") * 4 + tuple(f"kit:{k}" for k in KITS if k != "The Black Pearl 1.0")),
    # Held out of every training palette: the MuseScore General font and The Black Pearl kit.
    "unseen": Palette("unseen", ("musescore",), ("kit:The Black Pearl 1.0",)),
}
TIMBRES = ("gm",) + tuple(PALETTES)  # gm: the one --soundfont for every stem (the standard data)


def check_timbres(timbres: str) -> None:
    if timbres not in TIMBRES:
        raise ValueError(f"unknown timbres {timbres!r}: use one of {', '.join(TIMBRES)}")
    if timbres != "gm":
        missing = [str(p) for p in _sources_of(PALETTES[timbres]) if not p.exists()]
        if missing:
            raise FileNotFoundError(f"timbres {timbres!r} need {', '.join(missing)} (scripts/install-system-packages: "
                                    "timgm6mb-soundfont opl3-soundfont musescore-general-soundfont-small hydrogen-drumkits)")


def _sources_of(palette: Palette) -> list[Path]:
    paths = [FONTS[f] for f in palette.fonts]
    for source in palette.drums:
        kind, name = source.split(":", 1)
        paths.append(FONTS[name] if kind == "font" else KITS[name] / "drumkit.xml")
    return paths


# GM drum notes -> what a Hydrogen instrument's name says it is; fallbacks when a kit lacks one.
DRUM_ROLES = {
    36: "kick", 35: "kick", 37: "stick", 38: "snare", 40: "snare", 39: "clap", 42: "closed", 44: "pedal",
    46: "open", 49: "crash", 57: "crash", 51: "ride", 59: "ride", 53: "ride", 50: "tomhi", 48: "tomhi",
    47: "tommid", 45: "tommid", 43: "tomlow", 41: "tomlow",
}
ROLE_PATTERNS = {
    "kick": r"kick|bass ?drum|bassdrum", "stick": r"stick|rim click", "snare": r"snare",
    "clap": r"clap", "closed": r"closed|hat.*\bcl\b", "pedal": r"pedal|\bpd\b", "open": r"open|\bop\b",
    "crash": r"crash", "ride": r"ride", "tomhi": r"tom.*(hi|high|\b1\b)|hi.*tom", "tommid": r"tom.*(mid|\b2\b)",
    "tomlow": r"tom.*(low|floor)|floor",
}
ROLE_FALLBACK = {"stick": "snare", "clap": "snare", "pedal": "closed", "open": "closed", "ride": "crash",
                 "crash": "ride", "tomhi": "tommid", "tommid": "tomlow", "tomlow": "snare", "closed": "pedal"}


@dataclass(frozen=True)
class Layer:
    low: float  # velocity range 0..1
    high: float
    gain: float
    path: Path


class HydrogenKit:
    """A Hydrogen drum kit (drumkit.xml + samples) played from GM drum notes: one sample per hit, chosen by the
    velocity layer, scaled by velocity, resampled once to the render rate."""

    def __init__(self, folder: str | Path, rate: int):
        self.folder, self.rate = Path(folder), int(rate)
        root = ET.parse(self.folder / "drumkit.xml").getroot()
        ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        instruments = []
        for inst in root.iter(f"{ns}instrument"):
            name = (inst.findtext(f"{ns}name") or "").strip().lower()
            gain = float(inst.findtext(f"{ns}gain") or 1.0) * float(inst.findtext(f"{ns}volume") or 1.0)
            layers = []
            for layer in inst.iter(f"{ns}layer"):
                path = self.folder / (layer.findtext(f"{ns}filename") or "")
                if path.is_file():
                    layers.append(Layer(float(layer.findtext(f"{ns}min") or 0), float(layer.findtext(f"{ns}max") or 1),
                                        gain * float(layer.findtext(f"{ns}gain") or 1.0), path))
            direct = self.folder / (inst.findtext(f"{ns}filename") or "")  # the old format: one sample, no layers
            if not layers and direct.is_file():
                layers.append(Layer(0.0, 1.0, gain, direct))
            if name and layers:
                instruments.append((name, tuple(layers)))
        self.roles: dict[str, tuple[Layer, ...]] = {}
        for role, pattern in ROLE_PATTERNS.items():  # the first instrument whose name fits, in kit order
            for name, layers in instruments:
                if re.search(pattern, name) and not (role == "snare" and re.search("roll", name)):
                    self.roles[role] = layers
                    break
        if "kick" not in self.roles or "snare" not in self.roles:
            raise ValueError(f"{self.folder.name}: no kick or snare found in drumkit.xml")

    def layers_for(self, pitch: int) -> tuple[Layer, ...] | None:
        role, seen = DRUM_ROLES.get(pitch, "snare"), set()
        while role not in self.roles and role not in seen:
            seen.add(role)
            role = ROLE_FALLBACK.get(role, "snare")
        return self.roles.get(role)

    def sample(self, layer: Layer) -> np.ndarray:
        return _load_sample(layer.path, self.rate)

    def render_part(self, notes: list[Note], seconds_per_beat: float, frames: int,
                    velocity_curve: float = 1.6) -> np.ndarray:
        """Mono float32 (frames,): each hit's sample added at its onset (a new hi-hat hit cuts an open one)."""
        out = np.zeros(frames, np.float32)
        open_hat = np.zeros(frames, np.float32)  # kept apart so the next hi-hat hit can choke it alone
        ringing = None  # (start, stop) of the last open hat
        for note in sorted(notes, key=lambda n: n.start):
            start = int(round(note.start * seconds_per_beat * self.rate))
            layers = self.layers_for(note.pitch)
            if start >= frames or not layers:
                continue
            velocity = note.velocity / 127
            layer = next((l for l in layers if l.low <= velocity <= l.high), layers[-1])
            audio = self.sample(layer) * (layer.gain * velocity ** velocity_curve)
            stop = min(frames, start + audio.size)
            role = DRUM_ROLES.get(note.pitch)
            if role in ("closed", "pedal", "open") and ringing is not None and ringing[0] < start < ringing[1]:
                choke = min(ringing[1], start + self.rate // 200) - start  # a 5 ms fade
                open_hat[start:start + choke] *= np.linspace(1, 0, choke, dtype=np.float32)
                open_hat[start + choke:ringing[1]] = 0
                ringing = None
            target = open_hat if role == "open" else out
            target[start:stop] += audio[: stop - start]
            if role == "open":
                ringing = (start, stop)
        return out + open_hat


@lru_cache(maxsize=512)
def _load_sample(path: Path, rate: int) -> np.ndarray:
    audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if file_rate != rate:
        audio = resample(audio, file_rate, rate)
    audio.setflags(write=False)
    return audio


@lru_cache(maxsize=16)
def shared_kit(name: str, rate: int) -> HydrogenKit:
    return HydrogenKit(KITS[name], rate)
