"""The `loop` request over a real loopback socket: a client (the plugin's loop mode) fetches the server's live loop,
gets it again only when its mix changed, and every malformed loop message is refused with an error reply."""

import json
import time

import numpy as np
import pytest
import zmq
from stemweave.bridge import protocol as P
from stemweave.bridge.loop import LoopEngine, LoopSettings, Presets
from stemweave.bridge.server import Server, analytic_model

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 8000


class InstantBackend:
    """Loops at once: stem k is a seamless sine with k + 2 periods per loop, different on each channel."""

    def __init__(self):
        self.presets, self.calls = Presets(), 0

    def stems(self):
        return STEMS

    def run(self, task, rate, *, preset, seed, params, given=None, cancel=None):
        self.calls += 1
        frames = params["loop_frames"]
        t = np.arange(frames) / frames
        return {n: np.stack([0.1 * np.sin(2 * np.pi * (k + 2) * t + seed + c) for c in range(params["channels"])])
                .astype(np.float32) for k, n in enumerate(params.get("stems") or STEMS)}


@pytest.fixture
def server():
    served = Server("tcp://127.0.0.1:*", model_loader=lambda name, device: analytic_model(rate=4000, window=256),
                    model_names=["toy"], preload=False, check_device=False).start()
    yield served
    served.stop()


@pytest.fixture
def engine(server):
    loops = LoopEngine(InstantBackend(), rate=RATE, channels=2, output="virtual", log=lambda text: None,
                       settings=LoopSettings(method="prior"))  # the prior path: loop_frames jobs
    server.loop_engine = loops
    yield loops
    loops.close()


@pytest.fixture
def socket(server):
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.endpoint)
    yield dealer
    dealer.close(0)
    context.term()


def ask(socket, header: dict, *frames) -> tuple[dict, P.Message]:
    """Send one raw message, return the reply's header and its decoded message."""
    socket.send_multipart([json.dumps({"v": 1, **header}).encode(), *frames])
    assert socket.poll(5000), f"no reply to {header}"
    reply = socket.recv_multipart()
    return json.loads(reply[0]), P.decode(reply)


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_no_loop_engine_is_an_error_that_says_how_to_start_one(server, socket):
    head, _ = ask(socket, {"type": "loop", "req": 1})
    assert head["type"] == "error" and head["code"] == "no-loop" and head["req"] == 1
    assert "--osc-port" in head["message"]


def test_loop_reply_carries_the_mix_and_is_sent_again_only_when_it_changes(engine, socket):
    head, reply = ask(socket, {"type": "loop", "req": "a"})
    assert head["type"] == "loop" and head["serial"] == 0 and head["audio"] is False  # no loop yet
    assert isinstance(reply, P.Loop) and reply.mix is None and reply.req == "a"

    engine.set_bars(2)
    engine.set_tempo(96.0)
    engine.start()
    wait_for(lambda: engine.newest_loop() is not None)
    loop = engine.newest_loop()[0]
    head, reply = ask(socket, {"type": "loop", "req": 2})
    assert head["serial"] == loop.serial >= 1 and head["audio"] is True
    assert (head["tempo"], head["bars"], head["beats_per_bar"], head["rate"], head["channels"]) == (96.0, 2, 4, RATE, 2)
    assert head["bar_frames"] == round(RATE * 240 / 96.0) and head["frames"] == 2 * head["bar_frames"] == loop.frames
    assert head["stems"] == list(STEMS) and head["playing"] is True
    np.testing.assert_allclose(reply.mix, loop.data.sum(0).T, atol=1e-6)  # every stem at unit gain
    version = head["version"]

    head, reply = ask(socket, {"type": "loop", "req": 3, "since": version})  # already held: no audio
    assert head["audio"] is False and head["version"] == version and head["serial"] == loop.serial
    assert reply.mix is None

    engine.set_gain("drums", 0.25)  # the gains shape the mix: a new version
    head, reply = ask(socket, {"type": "loop", "req": 4, "since": version})
    assert head["audio"] is True and head["version"] > version and head["serial"] == loop.serial
    gains = np.array([1.0, 0.25, 1.0, 1.0], np.float32)
    np.testing.assert_allclose(reply.mix, np.tensordot(gains, loop.data, axes=1).T, atol=1e-6)

    version = head["version"]
    engine.next()  # a new loop: a new serial
    wait_for(lambda: engine.newest_loop()[0].serial > loop.serial)
    head, reply = ask(socket, {"type": "loop", "req": 5, "since": version})
    assert head["serial"] > loop.serial and head["version"] > version and reply.mix is not None


@pytest.mark.parametrize("header, frames, code", [
    ({"since": -1}, [], "bad-message"),
    ({"since": "3"}, [], "bad-message"),
    ({"since": 1.5}, [], "bad-message"),
    ({}, [b"\0\0\0\0"], "bad-message"),  # a request carries no audio
    ({"serial": 1, "version": 1, "tempo": 120.0, "bars": 1, "beats_per_bar": 4, "bar_frames": 1, "rate": 8000,
      "channels": 1, "frames": 1, "audio": True}, [np.zeros(1, "<f4").tobytes()], "unknown-type"),  # a reply
    ({"v": 2}, [], "version"),
])
def test_malformed_loop_requests_get_an_error_reply(engine, socket, header, frames, code):
    head, _ = ask(socket, {"type": "loop", "req": 9, **header}, *frames)
    assert head["type"] == "error" and head["code"] == code, head
    assert head["req"] == 9
    head, _ = ask(socket, {"type": "loop", "req": 10})  # the server still answers
    assert head["type"] == "loop"


def reply_frames(**changes) -> list:
    mix = np.arange(8, dtype="<f4").reshape(2, 4)
    head = {"v": 1, "type": "loop", "serial": 3, "version": 5, "tempo": 120.0, "bars": 2, "beats_per_bar": 4,
            "bar_frames": 2, "rate": 48000, "channels": 2, "frames": 4, "dtype": "float32le", "audio": True,
            "stems": ["bass"]}
    frames = changes.pop("frames_", [mix.tobytes()])
    head.update(changes)
    return [json.dumps({k: v for k, v in head.items() if v is not None}).encode(), *frames]


def test_loop_reply_decodes_and_round_trips():
    message = P.decode(reply_frames())
    assert (message.serial, message.version, message.bars, message.bar_frames, message.rate) == (3, 5, 2, 2, 48000)
    np.testing.assert_array_equal(message.mix, np.arange(8, dtype=np.float32).reshape(2, 4))
    again = P.decode([bytes(f) for f in message.to_frames()])
    assert again.header() == message.header()
    np.testing.assert_array_equal(again.mix, message.mix)


@pytest.mark.parametrize("changes, code", [
    ({"frames": 5}, "bad-message"),  # frames != bars * bar_frames
    ({"bars": 0}, "bad-message"),
    ({"bars": 65, "frames": 130}, "bad-message"),
    ({"tempo": 0.0}, "bad-message"),
    ({"tempo": float("nan")}, "bad-message"),
    ({"beats_per_bar": 0}, "bad-message"),
    ({"rate": 10}, "bad-message"),
    ({"channels": 3, "frames_": [np.zeros(12, "<f4").tobytes()]}, "too-large"),
    ({"dtype": "int16"}, "bad-dtype"),
    ({"frames_": []}, "bad-message"),  # audio: true without the frame
    ({"frames_": [np.zeros(7, "<f4").tobytes()]}, "bad-message"),  # the wrong size
    ({"frames_": [np.full(8, np.nan, "<f4").tobytes()]}, "bad-message"),
    ({"audio": False}, "bad-message"),  # a frame although audio is false
    ({"serial": 0, "audio": True}, "bad-message"),  # no loop, yet audio
    ({"serial": -1}, "bad-message"),
    ({"stems": ["../x"]}, "bad-message"),
])
def test_malformed_loop_replies_are_refused(changes, code):
    if changes.get("tempo") != changes.get("tempo"):  # NaN cannot be sent as JSON: the parser refuses it
        frames = reply_frames()
        frames[0] = frames[0].replace(b'"tempo": 120.0', b'"tempo": NaN')
    else:
        frames = reply_frames(**changes)
    with pytest.raises(P.ProtocolError) as error:
        P.decode(frames)
    assert error.value.code == code, error.value.message
