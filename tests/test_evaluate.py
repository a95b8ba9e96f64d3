"""Evaluation: baselines that sum to the mixture and rank as they must, the Fréchet distance, and the CLI."""

import json

import numpy as np
import pytest

from stemweave.cli import main
from stemweave.engine import evaluate as ev
from stemweave.engine.baselines import classical_split, oracle_ratio_mask

STEMS = ("bass", "drums", "guitar", "piano")


def synthetic_stems(rate=8000, seconds=4.0, seed=0):
    """A low sine 'bass', clicks 'drums', and two harmonic tones: enough structure for the baselines."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    bass = 0.3 * np.sin(2 * np.pi * 55 * t)
    drums = np.zeros_like(t)
    drums[:: rate // 4] = 1.0
    drums = np.convolve(drums, rng.standard_normal(200) * np.exp(-np.arange(200) / 30), mode="same") * 0.3
    guitar = 0.1 * np.sin(2 * np.pi * 660 * t)
    piano = 0.1 * np.sin(2 * np.pi * 1500 * t)
    return np.stack([bass, drums, guitar, piano]).astype(np.float32)


def test_baselines_sum_to_the_mixture_and_the_oracle_beats_the_classical_split():
    rate, stems = 8000, synthetic_stems()
    mixture = stems.sum(0)
    oracle, classical = oracle_ratio_mask(mixture, stems), classical_split(mixture, rate, STEMS)
    assert np.abs(oracle.sum(0) - mixture).max() < 1e-3 and np.abs(classical.sum(0) - mixture).max() < 1e-5
    def score(estimate):
        return ev.msdm_protocol(estimate, stems, rate).mean(0)

    oracle_score, classical_score = score(oracle), score(classical)
    assert np.all(oracle_score > 10)
    assert np.all(oracle_score > classical_score)
    assert classical_score[0] > 3 and classical_score[1] > 3  # the low-pass bass and the percussive drums


def test_evaluate_separation_scores_the_mixture_at_zero_and_counts_time():
    rate, window = 8000, 4000
    tracks = [("a", synthetic_stems(seed=1)), ("b", synthetic_stems(seed=2))]
    report = ev.evaluate_separation("mixture", ev.mixture_method, tracks, window, rate, STEMS, batch=3)
    np.testing.assert_allclose(report.scores, 0.0, atol=1e-6)
    assert report.audio_seconds == pytest.approx(8.0) and report.scores.shape == (2 * 1, 4)


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    rng = np.random.default_rng(3)
    a_var, b_var = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    a = rng.standard_normal((200_000, 3)) * np.sqrt(a_var)
    b = rng.standard_normal((200_000, 3)) * np.sqrt(b_var) + np.array([1.0, 0.0, 0.0])
    expected = 1.0 + ((np.sqrt(a_var) - np.sqrt(b_var)) ** 2).sum()
    assert ev.frechet_distance(a, b) == pytest.approx(expected, abs=0.05)
    assert ev.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_silent_share_uses_the_msdm_rule():
    stems = np.zeros((4, 2, 1000))
    stems[:2, 0] = 0.1
    np.testing.assert_allclose(ev.silent_share(stems), [0.5, 1.0])


def test_evaluate_cli_on_a_rendered_test_split(tmp_path, capsys):
    assert main(["data", "render", "--out", str(tmp_path / "test"), "--songs", "1", "--seconds", "4.5", "--split", "test", "--jobs", "1"]) == 0
    out = tmp_path / "report.json"
    code = main(["evaluate", "--data", str(tmp_path / "test"), "--baselines", "mixture,classical", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| mixture | 0.00 | 0.00 | 0.00 | 0.00 |" in table
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["results"]] == ["mixture", "classical"]


def test_evaluate_cli_refuses_unknown_baselines_and_models(tmp_path):
    assert main(["evaluate", "--data", str(tmp_path), "--baselines", "magic"]) == 2
    assert main(["evaluate", "--data", str(tmp_path), "--model", "no-such-model"]) == 2


def test_generation_subsets_are_the_fifteen_of_msdm_table_2():
    subsets = ev.generation_subsets(STEMS)
    assert len(subsets) == 15 and subsets[0] == ("bass",) and subsets[-1] == STEMS


def test_evaluate_generation_cli_scores_every_subset_and_writes_examples(tmp_path, capsys):
    from test_cli_tasks import tiny_models

    _, prior = tiny_models(tmp_path)
    assert main(["data", "render", "--out", str(tmp_path / "test"), "--songs", "1", "--seconds", "2", "--split", "test",
                 "--rate", "8000", "--jobs", "1"]) == 0
    out = tmp_path / "gen.json"
    assert main(["evaluate", "--generation", "--model", str(prior), "--data", str(tmp_path / "test"), "--windows", "4",
                 "--preset", "accompany-fast", "--examples", str(tmp_path / "ex"), "--json", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "Fréchet" not in line]
    assert len(rows) == 15
    report = json.loads(out.read_text())["generation"]
    assert all(np.isfinite(r["frechet"]) and r["frechet"] >= 0 for r in next(iter(report.values())))
    assert (tmp_path / "ex" / "pri" / "bass_0_mix.wav").exists()
