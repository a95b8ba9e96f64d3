"""Offline FluidSynth rendering of a song's parts to separate stems, levelled like a mix; the mixture is their exact sum."""

from __future__ import annotations

import ctypes
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stemweave.engine.data.loudness import integrated_loudness
from stemweave.engine.data.songs import DRUM_CHANNEL, STEMS, Note, Song
from stemweave.engine.resample import resample

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SOUNDFONT_ENV = "STEMWEAVE_SOUNDFONT"
RENDER_RATE = 44_100  # FluidSynth runs here; stems are then resampled to the dataset rate
PCM_SCALE = 32_768  # stems are stored as 16-bit PCM; integers sum exactly, so the mixture is their exact sum
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS for every stem and the mixture
MIX_LOUDNESS = -14.0  # LUFS the mixture is brought to unless that would break the peak limit
# Stem loudness before the mix gain, in LUFS, as a mix engineer would balance them; each song jitters them.
STEM_LOUDNESS = {"bass": -17.0, "drums": -16.0, "guitar": -18.0, "piano": -18.5}
STEM_LOUDNESS_JITTER_DB = 2.5
FADE_OUT_SECONDS = 0.02
FLUID_WARN = 2  # FluidSynth's log level for warnings


def default_soundfont() -> str:
    return os.environ.get(SOUNDFONT_ENV, DEFAULT_SOUNDFONT)


class SoundfontSynth:
    """Offline FluidSynth rendering (no audio driver) with a soundfont loaded once per process.

    Every part is rendered by a fresh synth that borrows the loaded soundfont: a reused synth keeps voice
    state (amplitude ramps, filter memory, the position in its 64-sample block) from the previous part, which
    made the same song render differently depending on what was rendered before it.
    """

    def __init__(self, soundfont: str | Path, rate: int = RENDER_RATE):
        import fluidsynth  # imported here so the package imports without libfluidsynth

        if not Path(soundfont).is_file():
            raise FileNotFoundError(f"soundfont not found: {soundfont}")
        self._fluidsynth = fluidsynth
        self._lib = _declare_functions(fluidsynth._fl)
        self._lib.fluid_set_log_function(FLUID_WARN, None, None)  # fresh synths warn about empty channels
        self.rate = int(rate)
        self._loader = self._new_synth()  # owns the soundfont
        loaded_id = self._loader.sfload(str(soundfont))
        if loaded_id < 0:
            raise ValueError(f"FluidSynth could not load the soundfont {soundfont}")
        self._soundfont = self._lib.fluid_synth_get_sfont_by_id(self._loader.synth, loaded_id)

    def _new_synth(self):
        # Reverb and chorus off: stems stay dry, as the mix is made by summing them.
        settings = {"synth.reverb.active": 0, "synth.chorus.active": 0, "synth.polyphony": 256,
                    "synth.midi-channels": 16}
        return self._fluidsynth.Synth(gain=0.5, samplerate=float(self.rate), **settings)

    def render_part(self, notes: list[Note], program: int, drums: bool, seconds_per_beat: float,
                    frames: int) -> np.ndarray:
        """Mono float32 audio (frames,) of one part; notes past the end are cut."""
        synth = self._new_synth()
        soundfont_id = self._lib.fluid_synth_add_sfont(synth.synth, self._soundfont)
        try:
            channel = DRUM_CHANNEL if drums else 0
            synth.program_select(channel, soundfont_id, 128 if drums else 0, program)
            events = []  # (frame, is_note_on, pitch, velocity): offs sort before ons at the same frame
            samples_per_beat = seconds_per_beat * self.rate
            for note in notes:
                on = int(round(note.start * samples_per_beat))
                off = int(round((note.start + note.length) * samples_per_beat))
                if on < frames:
                    events.append((on, 1, note.pitch, note.velocity))
                    events.append((max(off, on + 1), 0, note.pitch, 0))
            events.sort()
            left, right = np.zeros(frames, np.float32), np.zeros(frames, np.float32)
            position = 0
            for frame, is_on, pitch, velocity in events:
                frame = min(frame, frames)
                self._render_into(synth, left, right, position, frame)
                position = frame
                if is_on:
                    synth.noteon(channel, pitch, velocity)
                else:
                    synth.noteoff(channel, pitch)
            self._render_into(synth, left, right, position, frames)
        finally:
            self._lib.fluid_synth_remove_sfont(synth.synth, self._soundfont)  # so deleting the synth keeps it
            synth.delete()
        return 0.5 * (left + right)

    def _render_into(self, synth, left: np.ndarray, right: np.ndarray, start: int, stop: int) -> None:
        if stop > start:
            self._lib.fluid_synth_write_float(synth.synth, stop - start, left[start:].ctypes.data, 0, 1,
                                              right[start:].ctypes.data, 0, 1)


def _declare_functions(lib):
    """ctypes signatures of the libfluidsynth calls pyfluidsynth does not wrap."""
    lib.fluid_synth_write_float.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.fluid_synth_write_float.restype = ctypes.c_int
    lib.fluid_synth_get_sfont_by_id.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.fluid_synth_get_sfont_by_id.restype = ctypes.c_void_p
    lib.fluid_synth_add_sfont.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.fluid_synth_add_sfont.restype = ctypes.c_int
    lib.fluid_synth_remove_sfont.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.fluid_synth_remove_sfont.restype = ctypes.c_int
    lib.fluid_set_log_function.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    lib.fluid_set_log_function.restype = ctypes.c_void_p
    return lib


_SYNTHS: dict[tuple[str, int], SoundfontSynth] = {}


def shared_synth(soundfont: str | Path, rate: int = RENDER_RATE) -> SoundfontSynth:
    """A per-process synth per (soundfont, rate): loading FluidR3 takes about half a second."""
    key = (str(Path(soundfont).resolve()), int(rate))
    if key not in _SYNTHS:
        _SYNTHS[key] = SoundfontSynth(soundfont, rate)
    return _SYNTHS[key]


@dataclass
class RenderedSong:
    """Stems and mixture as float32 (exactly the 16-bit values stored on disk) at `rate`."""

    rate: int
    stems: dict[str, np.ndarray]  # stem -> (frames,)
    mixture: np.ndarray  # (frames,), the exact sum of the stems
    loudness: dict[str, float] = field(default_factory=dict)  # LUFS per stem and "mixture"; -inf when silent
    render_seconds: float = 0.0  # wall-clock time of render_song
    render_cpu_seconds: float = 0.0  # CPU time of this process: the speed on an unshared core
    sources: dict[str, str] = field(default_factory=dict)  # stem -> "font:<name>" / "kit:<name>" (varied timbres)
    effects: dict[str, list] = field(default_factory=dict)  # stem -> its effect chain (a producer's mix)

    @property
    def seconds(self) -> float:
        return self.mixture.size / self.rate


def level_like_a_mix(stems: dict[str, np.ndarray], rate: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Balance stems to per-class loudness (jittered per song), then one gain for all of them that brings the
    mixture towards -14 LUFS without any stem or the mixture passing -1 dBFS. Returns the levelled stems and
    the loudness (LUFS, -inf when silent) of each and of their sum."""
    rng = np.random.default_rng([seed, 3])
    levelled, loudness = {}, {}
    for stem, audio in stems.items():
        target = STEM_LOUDNESS[stem] + rng.uniform(-STEM_LOUDNESS_JITTER_DB, STEM_LOUDNESS_JITTER_DB)
        measured = integrated_loudness(audio, rate)
        levelled[stem] = audio * (0.0 if math.isinf(measured) else 10 ** ((target - measured) / 20))
        loudness[stem] = target if not math.isinf(measured) else -math.inf
    mixture = sum(levelled.values())
    loudness["mixture"] = integrated_loudness(mixture, rate)
    peak = max([float(np.abs(mixture).max())] + [float(np.abs(a).max()) for a in levelled.values()])
    if peak == 0.0:
        return levelled, loudness
    gain = min(10 ** ((MIX_LOUDNESS - loudness["mixture"]) / 20), PEAK_LIMIT / peak)
    gain_db = 20 * math.log10(gain)
    return ({stem: audio * gain for stem, audio in levelled.items()},
            {name: value + gain_db for name, value in loudness.items()})


def quantise_pcm16(audio: np.ndarray) -> np.ndarray:
    """Round to 16-bit steps and return float32 in soundfile's scale (int / 32768)."""
    steps = np.clip(np.round(audio * PCM_SCALE), -PCM_SCALE, PCM_SCALE - 1)
    return (steps / PCM_SCALE).astype(np.float32)


def render_song(song: Song, rate: int = 22_050, soundfont: str | Path | None = None,
                render_rate: int = RENDER_RATE, timbres: str = "gm", effects: bool = False) -> RenderedSong:
    """Render every part to its own stem, resample to `rate`, level like a mix, quantise; mixture = sum.

    timbres "gm" renders every stem with `soundfont`; a palette name (engine/data/timbres.py) draws each stem's
    font or drum kit from the song's seed. `effects` puts each stem through a random producer's chain
    (engine/data/effects.py) before the levelling, so the processed stems are the targets and still sum."""
    from stemweave.engine.data.timbres import PALETTES, check_timbres, shared_kit

    check_timbres(timbres)
    plan = song.plan
    sources = {}
    if timbres != "gm":
        rng = np.random.default_rng([plan.seed, 22, 1])
        sources = {stem: PALETTES[timbres].choose(stem, rng) for stem in STEMS}
        velocity_curve = float(rng.uniform(1.0, 2.2))  # how hard a sampled kit responds to velocity, per song
        for source in sources.values():  # loaded once per process, not timed
            kind, name = source.split(":", 1)
            shared_kit(name, render_rate) if kind == "kit" else _font_synth(name, render_rate)
    else:
        synth = shared_synth(soundfont or default_soundfont(), render_rate)  # loaded once per process, not timed
    started, started_cpu = time.perf_counter(), time.process_time()
    render_frames = int(round(plan.seconds * render_rate))
    frames = int(round(plan.seconds * rate))
    raw = {}
    for stem in STEMS:
        kind, name = sources[stem].split(":", 1) if sources else ("gm", "")
        if kind == "kit":
            audio = shared_kit(name, render_rate).render_part(song.notes[stem], plan.seconds_per_beat, render_frames,
                                                              velocity_curve)
        else:
            part_synth = synth if kind == "gm" else _font_synth(name, render_rate)
            audio = part_synth.render_part(song.notes[stem], plan.programs[stem], stem == "drums",
                                           plan.seconds_per_beat, render_frames)
        audio = resample(audio, render_rate, rate)[:frames]
        raw[stem] = np.pad(audio, (0, frames - audio.size))
    chains = {}
    if effects:
        from stemweave.engine.data.effects import producer_mix

        raw, chains = producer_mix(raw, rate, plan.seed)
    fade = np.ones(frames, np.float32)
    fade_frames = min(frames, int(FADE_OUT_SECONDS * rate))
    fade[frames - fade_frames:] = np.linspace(1.0, 0.0, fade_frames, dtype=np.float32)
    levelled, loudness = level_like_a_mix(raw, rate, plan.seed)
    stems = {stem: quantise_pcm16(audio * fade) for stem, audio in levelled.items()}
    mixture = np.zeros(frames, np.float32)
    for stem in STEMS:  # float32 sums of 16-bit steps are exact; the order is fixed anyway
        mixture += stems[stem]
    assert np.abs(mixture).max(initial=0.0) < 1.0, "the peak limit keeps the mixture inside 16 bits"
    return RenderedSong(rate, stems, mixture, loudness, time.perf_counter() - started,
                        time.process_time() - started_cpu, sources, chains)


def _font_synth(name: str, render_rate: int) -> SoundfontSynth:
    from stemweave.engine.data.timbres import FONTS

    return shared_synth(FONTS[name], render_rate)
