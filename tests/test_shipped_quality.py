"""The shipped models' quality, not just their integrity: absolute bars on freshly rendered songs.

A prior must beat the zero output, c_skip * x and the best scalar shrink at every sigma its presets
sample (engine/denoiser_check.py); the separator must score within 1 dB of the SI-SDRi its card records
for exactly these songs, and beat the mixture by a wide margin; MSLDM's SourceVAE must reconstruct closer
than noise at the same level. The 4-stem prior shipped before issue 19 fails the first check from sigma
0.1 up, as did every prior whose config could not represent its output.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from stemweave.engine import models
from stemweave.engine.checkpoints import read_card
from stemweave.engine.denoiser_check import check_model

# The songs every check uses: the card's `quality_check` metric is measured on exactly these.
SONGS, SECONDS = 2, 12
RENDER = ["data", "render", "--songs", str(SONGS), "--split", "test", "--seconds", str(SECONDS)]
PRIORS = [n for n in models.list_models() if models.model_kind(n) in models.PRIOR_KINDS + ("gmsdi",)]
# Priors that measure below the bar today, each with the reason; strict, so a fixed one must be taken off.
# Empty since isdm-cpu-tiny was retrained on the fixed cpu-tiny config (issue 19).
KNOWN_BROKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quality") / "test"
    subprocess.run([sys.executable, "-m", "stemweave", *RENDER, "--out", str(folder)], check=True,
                   capture_output=True)
    return folder


@pytest.mark.parametrize("name", PRIORS)
def test_a_shipped_prior_beats_every_trivial_denoiser_where_its_presets_sample(name, songs):
    if name in KNOWN_BROKEN:
        pytest.xfail(KNOWN_BROKEN[name]) if not _passes(name, songs) else pytest.fail(
            f"{name} now passes the denoiser check: take it off KNOWN_BROKEN")
    rows, _ = check_model(name, str(songs), tracks=SONGS, seconds=SECONDS)
    losing = [(r.sigma, round(r.ratio, 3)) for r in rows if not r.passes]
    assert not losing, f"{name} loses to the best scalar shrink at (sigma, ratio) {losing}"
    assert min(r.ratio for r in rows) < 0.8, "a prior must denoise well somewhere, not merely tie"


def _passes(name, songs) -> bool:
    rows, _ = check_model(name, str(songs), tracks=SONGS, seconds=SECONDS)
    return all(r.passes for r in rows)


def test_the_shipped_separator_scores_as_its_card_says(songs):
    from stemweave.engine import evaluate as ev

    card = read_card(models.resolve_model(models.DEFAULT_SEPARATOR))
    recorded = card["metrics"]["quality_check"]
    assert recorded["command"].endswith(" ".join(RENDER)), "the card was measured on other songs"
    separator = models.load_separator(models.DEFAULT_SEPARATOR)
    stems = tuple(card["stems"])
    tracks = ev.test_tracks(str(songs), card["window"], stems, card["rate"])
    report = ev.evaluate_separation("separator", ev.regression_method(separator), tracks, card["window"],
                                    card["rate"], stems)
    assert abs(report.overall - recorded["si_sdri"]) < 1.0
    assert report.overall > 5.0 and min(report.per_stem.values()) > 3.0  # far above the mixture (0 dB)


def test_the_shipped_msldm_vae_reconstructs_closer_than_noise(songs):
    from stemweave.engine.evaluate import log_mel_frames, test_tracks

    prior = models.load_prior(models.DEFAULT_MSLDM)
    card = prior.card
    tracks = test_tracks(str(songs), card["window"], tuple(card["stems"]), card["rate"])
    audio = torch.from_numpy(np.stack([t[:, : card["window"]] for _, t in tracks])).float()  # (songs, K, window)
    with torch.no_grad():
        decoded = prior.decode(prior.encode(audio), audio.shape[-1])
    generator = np.random.default_rng(0)
    closer = []
    for song, out in zip(audio.numpy(), decoded.numpy()):
        for real, fake in zip(song, out):
            if np.sqrt(np.mean(real**2)) < 1e-3:
                continue  # a silent stem says nothing about reconstruction
            noise = generator.standard_normal(real.shape) * np.sqrt(np.mean(real**2))
            target = log_mel_frames(real[None], card["rate"])
            closer.append(np.abs(log_mel_frames(fake[None], card["rate"]) - target).mean()
                          < np.abs(log_mel_frames(noise[None], card["rate"]) - target).mean())
    assert closer and np.mean(closer) >= 0.75, f"reconstruction beat same-level noise on {np.mean(closer):.0%} of stems"
