"""Rendering written parts through the project's soundfont synth, level-matched, and as a standard MIDI file."""

from __future__ import annotations

import math

import mido
import numpy as np

from stemweave.engine.data.loudness import integrated_loudness
from stemweave.engine.data.render import PEAK_LIMIT, STEM_LOUDNESS, default_soundfont, shared_synth
from stemweave.engine.data.songs import DRUM_CHANNEL, TICKS_PER_BEAT, Note, append_events
from stemweave.engine.resample import resample

SYNTH_RATES = (22_050, 96_000)  # FluidSynth renders directly at rates in this range; others go through 44.1 kHz
CHANNEL_OF = {"bass": 0, "guitar": 2, "piano": 3, "drums": DRUM_CHANNEL}


def clip_to_region(notes: list[Note], seconds: float) -> list[Note]:
    """Notes that sound inside [0, seconds): a note begun before the region starts at 0 with what remains."""
    out = []
    for n in notes:
        end = n.start + n.length
        if n.start >= seconds or end <= 0.02:
            continue
        if n.start < 0:
            if end < 0.08:
                continue
            n = Note(0.0, end, n.pitch, n.velocity)
        out.append(n)
    return out


def render_notes(notes: list[Note], program: int, drums: bool, rate: int, frames: int) -> np.ndarray:
    """Mono float32 (frames,) of one part at `rate`; note times in seconds from frame 0."""
    synth_rate = rate if SYNTH_RATES[0] <= rate <= SYNTH_RATES[1] else 44_100
    synth = shared_synth(default_soundfont(), synth_rate)
    synth_frames = int(math.ceil(frames * synth_rate / rate)) + 1
    audio = synth.render_part(notes, int(program), drums, 1.0, synth_frames)  # seconds_per_beat 1: times in seconds
    if synth_rate != rate:
        audio = resample(audio, synth_rate, rate)
    audio = audio[:frames]
    return np.pad(audio, (0, frames - audio.size)).astype(np.float32)


def target_loudness(stem: str, given: dict[str, np.ndarray], rate: int) -> float:
    """LUFS for a generated stem: the given stems' loudness, shifted by the mix balance of the rendered data."""
    measured = {}
    for name, audio in given.items():
        lufs = integrated_loudness(np.asarray(audio, np.float64).reshape(-1, audio.shape[-1]).mean(0), rate)
        if not math.isinf(lufs) and name in STEM_LOUDNESS:
            measured[name] = lufs
    if not measured:
        return STEM_LOUDNESS[stem] - 4.0  # about where the rendered data's stems sit in its mixes
    offsets = [lufs - STEM_LOUDNESS[name] for name, lufs in measured.items()]
    return STEM_LOUDNESS[stem] + float(np.mean(offsets))


def level_match(audio: np.ndarray, rate: int, target: float) -> np.ndarray:
    """Gain to `target` LUFS, then down to the -1 dBFS peak limit if that would pass it."""
    lufs = integrated_loudness(audio.astype(np.float64), rate)
    if math.isinf(lufs):
        return audio
    gain = 10 ** ((target - lufs) / 20)
    peak = float(np.abs(audio).max()) * gain
    if peak > PEAK_LIMIT:
        gain *= PEAK_LIMIT / peak
    return (audio * gain).astype(np.float32)


def to_channels(mono: np.ndarray, channels: int) -> np.ndarray:
    """(frames,) -> (channels, frames): a centred part."""
    return np.repeat(mono[None], channels, axis=0).astype(np.float32)


def parts_midi(notes: dict[str, list[Note]], programs: dict[str, int], bpm: float, meter: int, key: str,
               seconds: float | None = None) -> mido.MidiFile:
    """A type-1 MIDI file, time 0 = the region start: a conductor track (tempo, meter, key), then one track per
    stem. Note times are converted from seconds at the heard tempo; notes end by `seconds` when given."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    tonic, mode = key.split()
    midi.tracks.append(mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=0),
        mido.MetaMessage("time_signature", numerator=int(meter), denominator=4, time=0),
        mido.MetaMessage("key_signature", key=tonic + ("m" if mode == "minor" else ""), time=0),
        mido.MetaMessage("end_of_track", time=0),
    ]))
    ticks_per_second = bpm / 60.0 * TICKS_PER_BEAT
    for stem, stem_notes in notes.items():
        channel = CHANNEL_OF.get(stem, 4)
        track = mido.MidiTrack([mido.MetaMessage("track_name", name=stem, time=0),
                                mido.Message("program_change", channel=channel, program=int(programs[stem]), time=0)])
        events = []
        for n in stem_notes:
            on = max(0, round(n.start * ticks_per_second))
            end = n.start + n.length if seconds is None else min(n.start + n.length, seconds)
            off = max(on + 1, round(end * ticks_per_second))
            events.append((on, 2, mido.Message("note_on", channel=channel, note=n.pitch, velocity=n.velocity)))
            events.append((off, 1, mido.Message("note_off", channel=channel, note=n.pitch, velocity=0)))
        append_events(track, events)
        midi.tracks.append(track)
    return midi


def midi_note_times(midi: mido.MidiFile) -> dict[str, list[tuple[float, int]]]:
    """(onset seconds, pitch) per named track: how tests and the benchmark read a written file back."""
    out: dict[str, list[tuple[float, int]]] = {}
    tempo = 500_000
    for track in midi.tracks:
        name, now, notes = None, 0, []
        for message in track:
            now += message.time
            if message.type == "set_tempo":
                tempo = message.tempo
            elif message.type == "track_name":
                name = message.name
            elif message.type == "note_on" and message.velocity > 0:
                notes.append((mido.tick2second(now, midi.ticks_per_beat, tempo), message.note))
        if name:
            out[name] = notes
    return out
