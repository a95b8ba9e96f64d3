"""The wire protocol: every message round-trips through frames, audio without copies, and malformed input is refused."""

import json

import numpy as np
import pytest

from stemweave.bridge import protocol as P


def frames_of(message):
    return [bytes(f) for f in message.to_frames()]


def test_every_message_round_trips():
    rng = np.random.default_rng(0)
    audio = rng.standard_normal((2, 1000)).astype(np.float32)
    stems = {s: rng.standard_normal((2, 1000)).astype(np.float32) for s in ("bass", "drums")}
    messages = [
        P.Hello(req=1, client="test"), P.Listing(req="a", models=[{"name": "m"}], presets=[], tasks=["separate"]),
        P.Submit(req=2, task="separate", model="m", preset="separate-fast", params={"steps": 3}, seed=7, rate=48000,
                 priority="batch", position=12345, audio=audio),
        P.Submit(req=3, task="accompany", rate=44100, given={"drums": audio}),
        P.Accepted(job="j1", req=2, queued=3), P.Progress(job="j1", fraction=0.5, stage="separate", eta_s=1.5,
                                                        window=2, windows=4, step=3, steps=10),
        P.Partial(job="j1", rate=48000, stems_audio={k: v[:, 10:30] for k, v in stems.items()}, start=10, end=30),
        P.Result(job="j1", rate=48000, stems_audio=stems, position=5, elapsed_s=1.0, info={"model": "m"}),
        P.Error(job="j1", code="cancelled", message="cancelled"), P.Cancel(job="j1"), P.Status(job=None),
        P.Status(job="j1", info={"state": "running"}), P.Fetch(job="j1"), P.Heartbeat(time=1.0, jobs=["j1"]),
        P.Unload(model="m"), P.Unload(unloaded=["m@cpu"]),
    ]
    for message in messages:
        back = P.decode(frames_of(message))
        assert type(back) is type(message)
        for name in ("job", "req"):
            assert getattr(back, name) == getattr(message, name)
        if isinstance(message, P.Submit):
            assert back.task == message.task and back.params == message.params and back.seed == message.seed
            assert back.position == message.position and back.priority == message.priority
            if message.audio is not None:
                np.testing.assert_array_equal(back.audio, message.audio)
            for name in message.given:
                np.testing.assert_array_equal(back.given[name], message.given[name])
        if isinstance(message, (P.Result, P.Partial)):
            assert list(back.stems_audio) == list(message.stems_audio)
            for name, block in message.stems_audio.items():
                np.testing.assert_array_equal(back.stems_audio[name], block)


def test_audio_is_sent_and_received_without_copies():
    stems = {"bass": np.ones((2, 500), np.float32), "drums": np.zeros((2, 500), np.float32)}
    frames = P.Result(job="j", rate=44100, stems_audio=stems).to_frames()
    assert all(isinstance(f, memoryview) for f in frames[1:])
    assert np.shares_memory(np.frombuffer(frames[1], np.float32), stems["bass"])  # sent: a view of the array
    received = [bytearray(f) for f in frames]
    back = P.decode(received)
    assert np.shares_memory(back.stems_audio["drums"], np.frombuffer(received[2], np.float32))  # received: a view
    head = json.loads(frames[0])
    assert head["dtype"] == "float32le" and head["stems"] == ["bass", "drums"] and head["channels"] == 2


def header(**fields):
    return json.dumps({"v": P.PROTOCOL_VERSION, **fields}).encode()


SUBMIT = dict(type="submit", task="separate", rate=44100, channels=1, frames=4, audio=True, dtype="float32le")
GOOD_FRAME = np.zeros(4, np.float32).tobytes()


@pytest.mark.parametrize("frames,code", [
    ([], "bad-message"),
    ([b"not json"], "bad-message"),
    ([b"[1, 2]"], "bad-message"),
    ([b"\xff\xfe"], "bad-message"),
    ([b"{\"v\": 1, \"type\": \"status\", \"x\": NaN}"], "bad-message"),
    ([json.dumps({"v": 99, "type": "hello"}).encode()], "version"),
    ([header(type="explode")], "unknown-type"),
    ([header(type="hello"), b"extra"], "bad-message"),
    ([b" " * (P.MAX_HEADER_BYTES + 1)], "too-large"),
    ([header(**SUBMIT)], "bad-message"),  # a frame missing
    ([header(**SUBMIT), GOOD_FRAME, GOOD_FRAME], "bad-message"),  # one too many
    ([header(**SUBMIT), GOOD_FRAME[:-1]], "bad-message"),  # sizes that lie
    ([header(**{**SUBMIT, "frames": 5}), GOOD_FRAME], "bad-message"),
    ([header(**{**SUBMIT, "frames": 1 << 40}), GOOD_FRAME], "too-large"),  # a huge claimed length
    ([header(**{**SUBMIT, "channels": 64}), GOOD_FRAME], "too-large"),
    ([header(**{**SUBMIT, "dtype": "float64"}), GOOD_FRAME], "bad-dtype"),
    ([header(**SUBMIT), np.array([0, np.nan, 0, 0], np.float32).tobytes()], "bad-message"),
    ([header(**{**SUBMIT, "rate": "fast"}), GOOD_FRAME], "bad-message"),
    ([header(**{**SUBMIT, "params": [1]}), GOOD_FRAME], "bad-message"),
    ([header(**{**SUBMIT, "model": "../../etc/passwd"}), GOOD_FRAME], "bad-message"),  # names, never paths
    ([header(**{**SUBMIT, "preset": "/tmp/evil.toml"}), GOOD_FRAME], "bad-message"),
    ([header(**{**SUBMIT, "given": ["a", "a"]}), GOOD_FRAME], "bad-message"),
    ([header(type="cancel")], "bad-message"),  # no job
    ([header(type="status", req={"a": 1})], "bad-message"),
])
def test_malformed_messages_raise_protocol_errors(frames, code):
    with pytest.raises(P.ProtocolError) as caught:
        P.decode(frames)
    assert caught.value.code == code
    assert caught.value.message


def test_protocol_errors_echo_the_request_token():
    with pytest.raises(P.ProtocolError) as caught:
        P.decode([header(type="submit", req=41, job="abc", task="separate", rate=44100, channels=1, frames=4,
                         audio=True)])
    reply = P.decode(frames_of(P.error_reply(caught.value)))
    assert reply.req == 41 and reply.code == "bad-message"
