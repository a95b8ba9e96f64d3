"""docs/protocol.md against the server (issue 20): the documented tables are the code's, and what the page says a
server does, a real server on loopback does (raw pyzmq, as an independent client written from the page would)."""

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import zmq

from stemweave.bridge import protocol as P
from stemweave.bridge import server as S
from stemweave.engine import models as registry

PAGE = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
STEMS = ["bass", "drums", "guitar", "piano"]


def table(heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after `heading`."""
    text = PAGE[PAGE.index(heading):]
    rows = []
    for line in text.splitlines()[1:]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header row


def names(cell: str) -> set[str]:
    """The `names` in a cell, leaving out parenthesised explanations (which quote values, not fields)."""
    return set(re.findall(r"`([a-z_-]+)`", re.sub(r"\([^)]*\)", "", cell)))


def test_the_message_table_is_the_protocols():
    rows = table("## Messages")
    documented = {names(row[0]).pop(): row for row in rows}
    assert set(documented) == set(P.MESSAGES)
    for kind, row in documented.items():
        direction = row[1]
        assert (kind in P.SERVER_ONLY) == (direction == "S→C"), kind
        cls = P.MESSAGES[kind]
        known = {f.name for f in fields(cls)} | {"channels", "frames", "dtype", "audio", "given", "stems", "rate"}
        assert names(row[2]) <= known | {"v", "type"}, (kind, names(row[2]) - known)


def test_the_params_and_error_tables_are_the_servers():
    params = set().union(*(names(row[0]) for row in table("`params` (anything else")))
    assert params == set(S.SAMPLER_PARAMS) | set(S.OPTION_PARAMS) | set(S.REGION_PARAMS) | set(S.REFINE_PARAMS)
    assert {names(row[0]).pop() for row in table("## Error codes")} == set(P.ERROR_CODES)
    for number in ("512 MiB", "256 MiB", "10000", "2 x `--max-job-mb`"):
        assert number in PAGE, number


def tiny_models(folder, below_bar=True):
    from stemweave.engine.checkpoints import save_model
    from stemweave.engine.unet import UNet1d

    base = dict(channels=8, patch_factor=4, multipliers=[2, 2], factors=[2], num_blocks=1, attentions=[False],
                attention_heads=2, attention_features=8)
    for name, unet, kind in (("tsep", {**base, "conditioning": False, "in_channels": 1, "out_channels": 4}, "regression"),
                             ("tpri", {**base, "in_channels": 4, "out_channels": 4}, "msdm")):
        save_model(folder, UNet1d(unet).eval(), name=name, kind=kind, stems=STEMS,
                   config={"name": name, "rate": 8000, "window": 256, "unet": unet})
    card = json.loads((folder / "tpri.json").read_text())
    card["quality"] = {"below_bar": below_bar, "note": "a test card below the bar"}
    (folder / "tpri.json").write_text(json.dumps(card))


@pytest.fixture
def raw(tmp_path, monkeypatch):
    """A server with the default loader (the analytic prior and two tiny model files in a temporary model folder),
    and a function that sends one raw message and returns the replies until a final one."""
    tiny_models(tmp_path)
    monkeypatch.setattr(registry, "MODEL_DIR", tmp_path)
    served = S.Server("tcp://127.0.0.1:*", model_names=["analytic", "tsep", "tpri"], preload=False,
                      heartbeat_s=5.0, progress_interval_s=0.0, max_seconds=60).start()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(served.endpoint)

    def exchange(head, *audio, until=("result", "error", "list", "status", "hello")):
        socket.send_multipart([json.dumps({"v": 1, **head}).encode(), *[np.ascontiguousarray(a, "<f4") for a in audio]])
        replies = []
        while socket.poll(60_000):
            frames = socket.recv_multipart()
            message = json.loads(frames[0])
            replies.append((message, frames[1:]))
            if message["type"] in until:
                return replies
        raise AssertionError(f"no final reply to {head}: {replies}")

    yield exchange
    socket.close()
    served.stop()


def final(replies):
    return replies[-1][0]


def test_server_only_types_are_unknown_type_however_little_they_carry(raw):
    for kind in P.SERVER_ONLY:
        assert final(raw({"type": kind, "req": kind}))["code"] == "unknown-type", kind
    assert final(raw({"type": "loop", "serial": 3}))["code"] == "unknown-type"
    assert final(raw({"type": "result", "job": "x", "rate": 1}, np.zeros(4)))["code"] == "unknown-type"


def test_generate_needs_no_header_shape_or_rate_and_lengths_never_conflict_silently(raw):
    fast = {"steps": 2, "resamples": 0}
    reply = final(raw({"type": "submit", "task": "generate", "model": "analytic", "params": {"seconds": 0.05, **fast}}))
    assert (reply["type"], reply["rate"], reply["channels"], reply["frames"]) == ("result", 22050, 1, 1102)
    from stemweave.bridge import accompanist_jobs

    if accompanist_jobs.available():  # the smallest request the page shows: the accompanist at a DAW's rate
        reply = final(raw({"type": "submit", "task": "generate", "params": {"seconds": 2}}))
        assert (reply["type"], reply["rate"], reply["channels"]) == ("result", 44100, 1), reply
    reply = final(raw({"type": "submit", "task": "generate", "model": "analytic", "rate": 8000, "channels": 2,
                       "frames": 400, "params": fast}))
    assert (reply["rate"], reply["channels"], reply["frames"]) == (8000, 2, 400)  # the header's shape is used
    for head, words in [({"channels": 2, "params": {"channels": 1, "frames": 400}}, "channels"),
                        ({"frames": 300, "params": {"frames": 400}}, "frames"),
                        ({"params": {"frames": 400, "seconds": 1.0}}, "one length")]:
        reply = final(raw({"type": "submit", "task": "generate", "model": "analytic", "rate": 8000, **head}))
        assert reply["code"] == "bad-request" and words in reply["message"], reply
    audio = np.zeros(800)
    reply = final(raw({"type": "submit", "task": "accompany", "model": "analytic", "rate": 8000, "channels": 1,
                       "frames": 800, "audio": True, "given": ["drums"]}, audio, audio))
    assert reply["code"] == "bad-request" and "audio: false" in reply["message"]
    reply = final(raw({"type": "submit", "task": "separate", "model": "analytic", "channels": 1, "frames": 800,
                       "audio": True}, audio))
    assert reply["code"] == "bad-message" and "rate" in reply["message"]


def test_progress_counts_the_windows_partials_do_and_ends_on_the_last(raw):
    audio = 0.1 * np.random.default_rng(0).standard_normal((2, 16000))
    replies = raw({"type": "submit", "task": "separate", "model": "analytic", "rate": 22050, "channels": 2,
                   "frames": 16000, "audio": True, "params": {"steps": 3, "resamples": 0}}, *audio)
    progress = [m for m, _ in replies if m["type"] == "progress" and m["windows"] > 1]
    partials = [m for m, _ in replies if m["type"] == "partial"]
    assert partials and {p["windows"] for p in partials} == {m["windows"] for m in progress}
    last = progress[-1]
    assert last["fraction"] == 1.0 and last["window"] == last["windows"] and last["step"] == last["steps"]
    for p in partials:
        assert p["frames"] == p["end"] - p["start"]
    assert final(replies)["type"] == "result"


def test_list_describes_unloaded_models_and_warns_of_quality(raw):
    models = {m["name"]: m for m in final(raw({"type": "list"}))["models"]}
    assert models["analytic"]["loaded"] is False and models["analytic"]["rate"] == 22050
    assert models["tpri"]["stems"] == STEMS and models["tpri"]["rate"] == 8000 and models["tpri"]["kind"] == "msdm"
    assert "quality bar" in models["tpri"]["warning"] and "warning" not in models["tsep"]


def test_results_name_the_refine_preset_the_prior_and_the_quality_warning(raw):
    audio = 0.1 * np.random.default_rng(1).standard_normal(1000)
    replies = raw({"type": "submit", "task": "separate", "model": "tsep", "rate": 8000, "channels": 1, "frames": 1000,
                   "audio": True, "params": {"refine": "refine-fast", "prior": "tpri", "steps": 2}}, audio)
    info = final(replies)["info"]
    assert final(replies)["type"] == "result", final(replies)
    assert info["model"] == "tsep" and info["refine"] == {"preset": "refine-fast", "prior": "tpri"}
    assert len(info["warnings"]) == 1 and "tpri" in info["warnings"][0]
    reply = final(raw({"type": "submit", "task": "generate", "model": "tpri", "params": {"frames": 400, "steps": 2}}))
    assert reply["rate"] == 8000 and "quality bar" in reply["info"]["warnings"][0]
