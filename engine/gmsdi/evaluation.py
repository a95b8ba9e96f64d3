"""The GMSDI paper's tables on this project's data: Table 1 (w grid), Table 2 (per stem, with the ensemble), Fig. 2.

Separation uses the MSDM protocol of engine/evaluate.py on the same test
windows as `stemweave evaluate`, so the rows sit next to MSDM / ISDM. The
ensemble row is, per stem, the test score of the method (Separator or
Extractor) that scored higher on the validation tracks: that stem of the
ensemble is exactly that method's output (tasks.ensemble). Fig. 2 samples
single-stem prompts with and without the preset's negative prompt and
reports the share of silent clips (MSDM's rule) and the Fréchet distance of
their log-mel frames to real windows of the same stem.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from stemweave.engine.evaluate import (
    SeparationReport, evaluate_separation, frechet_distance, log_mel_frames, silent_share,
)
from stemweave.engine.gmsdi import tasks
from stemweave.engine.gmsdi.inference import GMSDIModel, GMSDIPreset, load_gmsdi_preset, window_separator

GUIDANCES = (3.0, 7.5, 15.0, 24.0)  # the paper's Table 1 grid
Log = Callable[[str], None]


def _preset(name: str, steps: int | None, **settings) -> GMSDIPreset:
    preset = load_gmsdi_preset(name)
    sampler = replace(preset.sampler, steps=steps) if steps else preset.sampler
    return replace(preset, sampler=sampler, **settings)


def separation_report(model: GMSDIModel, labels: Sequence[str], preset: GMSDIPreset, tracks, name: str,
                      seed: int = 0) -> SeparationReport:
    """SI-SDRi of one GMSDI separation setting on the tracks (every window of a track in one batch)."""
    separate = window_separator(model, list(labels), None, preset, allow_unknown=False)
    generator = torch.Generator().manual_seed(seed)

    def method(mixtures: np.ndarray, _references: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return separate(torch.from_numpy(mixtures).to(model.device), generator, None).cpu().numpy()

    steps = preset.sampler.steps * (1 + preset.sampler.resamples)
    return evaluate_separation(name, method, tracks, model.window, model.rate, tuple(labels), batch=64,
                               evaluations=steps)


def table1(model: GMSDIModel, labels: Sequence[str], tracks, guidances: Sequence[float] = GUIDANCES,
           steps: int | None = None, seed: int = 0, log: Log = print) -> list[SeparationReport]:
    """Table 1: the Extractor and the Separator with each constrained stem, for every w."""
    reports = []
    for w in guidances:
        settings = [(f"Extractor w={w:g}", _preset("gmsdi-extract", steps, guidance=w))]
        settings += [(f"Separator w={w:g} constrained {c}", _preset("gmsdi-separate", steps, guidance=w, constrained=c))
                     for c in labels]
        for name, preset in settings:
            began = time.perf_counter()
            reports.append(separation_report(model, labels, preset, tracks, name, seed))
            log(f"{name}: {reports[-1].overall:+.2f} dB ({time.perf_counter() - began:.0f} s)")
    return reports


def table2(model: GMSDIModel, labels: Sequence[str], tracks, valid_tracks, steps: int | None = None, seed: int = 0,
           log: Log = print) -> tuple[list[SeparationReport], dict[str, str]]:
    """Table 2: Separator (w 3, constrained drums), Extractor (w 7.5) and their ensemble chosen on validation."""
    presets = {"separator": _preset("gmsdi-separate", steps), "extractor": _preset("gmsdi-extract", steps)}
    test, valid = {}, {}
    for method, preset in presets.items():
        valid[method] = separation_report(model, labels, preset, valid_tracks, method, seed).per_stem
        test[method] = separation_report(model, labels, preset, tracks, f"GMSDI {method.capitalize()}", seed)
        log(f"{method}: validation {np.mean(list(valid[method].values())):+.2f} dB, test {test[method].overall:+.2f} dB")
    choice = tasks.choose_ensemble(valid)
    scores = np.stack([test[choice[s]].scores[:, k] for k, s in enumerate(labels)], axis=1)
    first = test["separator"]
    ensemble = SeparationReport("GMSDI Ensemble", tuple(labels), scores,
                                sum(test[m].seconds for m in set(choice.values())), first.audio_seconds,  # what it runs
                                extra={"choice": choice})
    return [test["separator"], test["extractor"], ensemble], choice


def fig2(model: GMSDIModel, labels: Sequence[str], real_stems: np.ndarray, clips: int, steps: int | None = None,
         seed: int = 0, log: Log = print) -> list[dict]:
    """Fig. 2: per label, single-stem prompting with and without the negative prompt: silent share and Fréchet
    distance (log-mel) to `real_stems` (N, K, T) of that stem."""
    preset = _preset("gmsdi-single", steps)
    rows = []
    for k, label in enumerate(labels):
        real = log_mel_frames(real_stems[:, k], model.rate)
        for negative in (None, preset.negative_for(label)):
            prior = model.prior([label], [negative or ""], preset)
            began = time.perf_counter()
            clip = tasks.generate(prior, clips, model.window, preset.sampler, gamma_x=preset.gamma_x,
                                  gamma_y=preset.gamma_y, generator=torch.Generator().manual_seed(seed),
                                  device=model.device)
            audio = clip.detach().cpu().numpy()  # (clips, 1, T)
            rows.append({"prompt": label, "negative": negative or "", "clips": clips,
                         "silent": float(silent_share(audio)[0]),
                         "frechet": frechet_distance(log_mel_frames(audio[:, 0], model.rate), real),
                         "rms_dbfs": float(20 * np.log10(np.sqrt((audio**2).mean()) + 1e-12)),
                         "seconds": time.perf_counter() - began})
            log(f"{label} negative {negative or '-'!r}: silent {rows[-1]['silent']:.0%}, Fréchet {rows[-1]['frechet']:.1f}")
    return rows


__all__ = ["GUIDANCES", "fig2", "separation_report", "table1", "table2"]
