"""A producer's mix: per-stem effects (EQ, compression, saturation, chorus, reverb) with random settings per song.

Real tracks are not dry soundfont stems summed (issue 22). Each stem goes through its own pedalboard chain,
drawn from the song's seed, before the stems are levelled and summed; the targets are the processed stems, so
the stems still sum to the mixture exactly. The data is mono, so stereo width has nothing to act on here.
"""

from __future__ import annotations

import numpy as np

# Probability that a stem gets each optional effect.
SATURATION = {"bass": 0.35, "drums": 0.2, "guitar": 0.5, "piano": 0.1}
REVERB = {"bass": 0.1, "drums": 0.5, "guitar": 0.6, "piano": 0.7}
CHORUS = {"bass": 0.05, "drums": 0.0, "guitar": 0.3, "piano": 0.15}


def draw_chain(stem: str, rng: np.random.Generator) -> list[tuple[str, dict]]:
    """One stem's effects as (pedalboard class name, parameters), in signal order."""
    chain: list[tuple[str, dict]] = []
    chain.append(("HighpassFilter", {"cutoff_frequency_hz": float(rng.uniform(25, 45) if stem == "bass"
                                                                  else rng.uniform(30, 160))}))
    for _ in range(int(rng.integers(1, 3))):  # one or two bell EQ bands
        centre = float(np.exp(rng.uniform(np.log(80), np.log(8000))))
        chain.append(("PeakFilter", {"cutoff_frequency_hz": centre, "gain_db": float(rng.uniform(-6, 6)),
                                     "q": float(rng.uniform(0.5, 2.0))}))
    if rng.random() < 0.5:
        chain.append(("HighShelfFilter", {"cutoff_frequency_hz": float(rng.uniform(2500, 8000)),
                                          "gain_db": float(rng.uniform(-6, 4))}))
    if rng.random() < SATURATION[stem]:
        chain.append(("Distortion", {"drive_db": float(rng.uniform(3, 18))}))
    if rng.random() < 0.8:
        chain.append(("Compressor", {"threshold_db": float(rng.uniform(-30, -10)), "ratio": float(rng.uniform(1.5, 6)),
                                     "attack_ms": float(rng.uniform(1, 30)), "release_ms": float(rng.uniform(40, 300))}))
    if rng.random() < CHORUS[stem]:
        chain.append(("Chorus", {"rate_hz": float(rng.uniform(0.3, 2)), "depth": float(rng.uniform(0.1, 0.4)),
                                 "mix": float(rng.uniform(0.2, 0.5))}))
    if rng.random() < REVERB[stem]:
        chain.append(("Reverb", {"room_size": float(rng.uniform(0.1, 0.8)), "damping": float(rng.uniform(0.2, 0.8)),
                                 "wet_level": float(rng.uniform(0.05, 0.3)), "dry_level": 1.0, "width": 0.0}))
    return chain


def apply_chain(audio: np.ndarray, rate: int, chain: list[tuple[str, dict]]) -> np.ndarray:
    """Run mono float32 audio through the chain; the level is set afterwards by the mix levelling."""
    import pedalboard

    if not chain or not np.any(audio):
        return audio
    board = pedalboard.Pedalboard([getattr(pedalboard, name)(**params) for name, params in chain])
    out = board(audio[None].astype(np.float32), float(rate), reset=True)[0]
    return np.nan_to_num(out[: audio.size], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def producer_mix(stems: dict[str, np.ndarray], rate: int, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Each stem through its own random chain (drawn from the song seed); returns the stems and the chains."""
    rng = np.random.default_rng([seed, 22, 2])
    chains = {stem: draw_chain(stem, rng) for stem in stems}
    return {stem: apply_chain(audio, rate, chains[stem]) for stem, audio in stems.items()}, chains
