"""Training that accumulates across machines: --init-from a model file, and the card's ledger (issue 19)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from stemweave.engine.checkpoints import read_card
from stemweave.engine.train import export_model, train

from test_train import SyntheticStems, settings


def run_and_export(tmp_path, name, **kw):
    s = settings(tmp_path / name, **kw)
    train(s, dataset=SyntheticStems(1))
    return export_model(s.run_dir, name, tmp_path / "models")


def test_a_run_from_a_model_file_starts_at_its_weights_and_extends_its_ledger(tmp_path):
    weights, card_path = run_and_export(tmp_path, "first", steps=6)
    first = read_card(card_path)
    assert [e["steps"] for e in first["training"]["ledger"]] == [6] and first["training"]["total_steps"] == 6
    # lr 0 and an EMA that follows the weights: the continued file must hold exactly the first file's weights
    _, card2 = run_and_export(tmp_path, "second", steps=3, init_from=str(card_path), lr=0.0, ema_decay=0.0)
    second = read_card(card2)
    a, b = load_file(str(weights)), load_file(str(card2.with_suffix(".safetensors")))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ledger = second["training"]["ledger"]
    assert [(e["name"], e["steps"], e["total_steps"]) for e in ledger] == [("first", 6, 6), ("second", 3, 9)]
    assert ledger[0] == first["training"]["ledger"][0] and ledger[1]["cpu_hours"] >= 0


def test_a_fresh_run_differs_from_one_started_from_a_file(tmp_path):
    weights, card_path = run_and_export(tmp_path, "first", steps=6)
    _, fresh = run_and_export(tmp_path, "fresh", steps=3, lr=0.0, ema_decay=0.0)
    a, b = load_file(str(weights)), load_file(str(fresh.with_suffix(".safetensors")))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the init really came from the file, not the seed


def test_init_from_refuses_another_kind_or_other_stems(tmp_path):
    _, card_path = run_and_export(tmp_path, "prior", steps=2)
    with pytest.raises(ValueError, match="msdm model; this run trains regression"):
        train(settings(tmp_path / "r", objective="regression", init_from=str(card_path), steps=1), dataset=SyntheticStems(1))
    with pytest.raises(ValueError, match="models stems"):
        train(settings(tmp_path / "s", stems=("bass", "piano", "drums"), init_from=str(card_path), steps=1),
              dataset=SyntheticStems(1, stems=("bass", "piano", "drums")))


def test_remix_is_refused_for_a_joint_prior(tmp_path):
    with pytest.raises(ValueError, match="--remix"):
        train(settings(tmp_path, remix=0.5, steps=1), dataset=SyntheticStems(1))


def test_an_isdm_stem_continues_from_a_merged_isdm_file_with_its_own_ledger(tmp_path):
    from stemweave.engine.models import combine_isdm

    parts = []
    for stem, steps in (("bass", 4), ("drums", 2)):
        s = settings(tmp_path / stem, stem=stem, steps=steps)
        train(s, dataset=SyntheticStems(0, stems=(stem,)))
        parts.append(export_model(s.run_dir, f"isdm-{stem}", tmp_path / "models")[1])
    weights, merged = combine_isdm(parts, tmp_path / "models", "isdm-both")
    s = settings(tmp_path / "more", stem="drums", steps=3, init_from=str(merged), lr=0.0, ema_decay=0.0)
    train(s, dataset=SyntheticStems(0, stems=("drums",)))
    continued, card = export_model(s.run_dir, "isdm-drums-2", tmp_path / "models")
    drums, again = load_file(str(weights)), load_file(str(continued))
    assert set(again) == {k for k in drums if k.startswith("drums.")}  # the drums net, not the bass one
    assert all(torch.equal(drums[k], v) for k, v in again.items())
    assert [(e["steps"], e["total_steps"]) for e in read_card(card)["training"]["ledger"]] == [(2, 2), (3, 5)]
    # merged again with the continued drums: the ledger goes on, the new entry counts the drums' 3 new steps
    _, again_merged = combine_isdm([parts[0], card], tmp_path / "models", "isdm-both-2", previous=merged)
    ledger = read_card(again_merged)["training"]["ledger"]
    assert [(e["steps"], e["total_steps"]) for e in ledger] == [(6, 6), (3, 9)]
    assert ledger[1]["per_stem_steps"] == {"bass": 4, "drums": 5}
    drums_hours = sum(e["cpu_hours"] for e in read_card(card)["training"]["ledger"])
    assert ledger[1]["cpu_hours"] == pytest.approx(drums_hours - read_card(parts[1])["training"]["ledger"][0]["cpu_hours"], abs=2e-3)
    with pytest.raises(ValueError, match="fewer than the 9 of"):
        combine_isdm(parts, tmp_path / "models", "isdm-both-3", previous=again_merged)
    with pytest.raises(ValueError, match="no 'guitar' prior"):
        train(settings(tmp_path / "g", stem="guitar", init_from=str(merged), steps=1),
              dataset=SyntheticStems(0, stems=("guitar",)))
