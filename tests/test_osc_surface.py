"""The OSC surface over real UDP on loopback: messages change the loop state as documented (docs/osc.md), /status
replies to the sender, bad messages get error replies and never crash; with `stemweave serve`'s hook the loops go
through the server's job queue at interactive priority."""

import socket
import time

import numpy as np
import pytest

from stemweave.bridge import osc
from stemweave.bridge.loop import LoopEngine, LoopSettings, Presets

STEMS = ("bass", "drums", "guitar", "piano")
RATE = 8000


class InstantBackend:
    """Loops at once: every stem a seamless sine; records what it was asked."""

    def __init__(self):
        self.presets, self.calls = Presets(), []

    def stems(self):
        return STEMS

    def run(self, task, rate, *, preset, seed, params, given=None, cancel=None):
        self.calls.append({"task": task, "preset": preset, "seed": seed, "params": params})
        frames = params.get("loop_frames") or next(iter(given.values())).shape[-1]
        t = np.arange(frames) / frames
        names = params.get("stems") or [s for s in STEMS if not given or s not in given]
        return {n: np.repeat(0.1 * np.sin(2 * np.pi * (k + 2) * t)[None], params.get("channels", 1), 0).astype(np.float32)
                for k, n in enumerate(names)}


@pytest.fixture
def surface():
    backend = InstantBackend()
    engine = LoopEngine(backend, rate=RATE, channels=2, output="virtual", log=lambda text: None,
                        input_loop=np.zeros((1, RATE), np.float32), settings=LoopSettings(method="prior"))
    control = osc.OscControl(engine, "127.0.0.1", 0, log=lambda text: None).start()
    yield control, engine, backend
    control.close()
    engine.close()


def ask(control, address, *args, timeout=1.0):
    return osc.send(address, *args, port=control.address[1], reply_timeout=timeout)


def accepted(control, address, *args):
    """The replies to one message, definitely all of them: the message, then /stemweave/status from the same
    socket. The surface handles datagrams one at a time, in order (a blocking UDP server), so the status reply
    marks the end of the message's replies; an accepted message has none (an error reply would come first)."""
    from pythonosc.osc_message import OscMessage
    from pythonosc.osc_message_builder import OscMessageBuilder

    def datagram(path, values):
        builder = OscMessageBuilder(path)
        for value in values:
            builder.add_arg(value)
        return builder.build().dgram

    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)  # a definite reply is waited for: a missing one fails the test (socket.timeout)
        sock.sendto(datagram(address, args), ("127.0.0.1", control.address[1]))
        sock.sendto(datagram("/stemweave/status", []), ("127.0.0.1", control.address[1]))
        while True:
            message = OscMessage(sock.recvfrom(65536)[0])
            if message.address == "/stemweave/status":
                return replies
            replies.append((message.address, list(message.params)))


def test_the_accepted_helper_sees_an_error_reply(surface):
    control, _, _ = surface
    replies = accepted(control, "/stemweave/loop/tempo", "fast")
    assert [address for address, _ in replies] == ["/stemweave/error"]
    assert replies[0][1][0] == "/stemweave/loop/tempo"


def status(control, *args):
    replies = ask(control, "/stemweave/status", *args)
    assert replies and replies[0][0] == "/stemweave/status", replies
    flat = replies[0][1]
    return dict(zip(flat[::2], flat[1::2])), replies


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_messages_change_the_loop_state_and_status_replies(surface):
    control, engine, backend = surface
    for message in [("/stemweave/loop/tempo", 100.0), ("/stemweave/loop/bars", 2), ("/stemweave/loop/stems", "bass drums"),
                    ("/stemweave/loop/gain/bass", 0.5), ("/stemweave/preset", "accompany"),
                    ("/stemweave/loop/source", "generate")]:
        assert accepted(control, *message) == []  # no error reply before the status reply
    state, replies = status(control)
    assert state["tempo"] == 100.0 and state["bars"] == 2 and state["stems"] == "bass,drums"
    assert state["preset"] == "accompany" and state["source"] == "generate" and state["playing"] == 0
    assert state["gains/bass"] == 0.5 and state["gains/drums"] == 1.0
    per_key = {address: args for address, args in replies[1:]}
    assert per_key["/stemweave/status/tempo"] == [100.0] and per_key["/stemweave/status/bars"] == [2]

    assert accepted(control, "/stemweave/loop/start") == []
    assert wait_for(lambda: engine.loops_made == 1 and engine.player.playing)
    state, _ = status(control)
    assert state["playing"] == 1 and state["loop"] == 1 and state["loop_tempo"] == 100.0 and state["loop_bars"] == 2
    call = backend.calls[-1]
    assert call["task"] == "generate" and call["params"]["stems"] == ["bass", "drums"]
    assert call["params"]["loop_frames"] == 2 * round(RATE * 60 * 4 / 100)

    ask(control, "/stemweave/loop/next", 1, timeout=0.1)  # a button press
    assert wait_for(lambda: engine.player.swap_count >= 2)
    swap = engine.player.swap_log()[-1]
    bar = round(RATE * 60 * 4 / 100)
    assert swap["serial"] == 2 and (swap["frame"] - engine.player.started_at) % bar == 0  # on a bar

    ask(control, "/stemweave/loop/tempo", 120, timeout=0.1)  # a new tempo makes a new loop at that tempo
    assert wait_for(lambda: engine.player.current is not None and engine.player.current.tempo == 120.0)
    assert engine.player.current.bar_frames == RATE * 2

    ask(control, "/stemweave/loop/source", "input", timeout=0.1)  # accompany the input loop
    assert wait_for(lambda: status(control)[0]["source"] == "input" and engine.player.current.info["source"] == "input")
    assert backend.calls[-1]["task"] == "accompany" and backend.calls[-1]["params"]["regenerate"]
    assert "drums" in engine.player.current.stems

    ask(control, "/stemweave/loop/stop", timeout=0.1)
    assert wait_for(lambda: not engine.player.playing)
    assert status(control)[0]["playing"] == 0


def test_status_replies_to_a_named_port(surface):
    control, _, _ = surface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(2)
        osc.send("/stemweave/status", listener.getsockname()[1], port=control.address[1])
        data, _ = listener.recvfrom(65536)
    from pythonosc.osc_message import OscMessage

    message = OscMessage(data)
    assert message.address == "/stemweave/status" and "tempo" in message.params


@pytest.mark.parametrize("message", [
    ("/stemweave/loop/tempo", "fast"), ("/stemweave/loop/tempo", 1000.0), ("/stemweave/loop/tempo",),
    ("/stemweave/loop/tempo", 120.0, 130.0), ("/stemweave/loop/tempo", float("nan")), ("/stemweave/loop/bars", 2.5),
    ("/stemweave/loop/bars", 0), ("/stemweave/loop/stems", "kazoo"), ("/stemweave/loop/stems", 3),
    ("/stemweave/loop/gain/bass", -1.0), ("/stemweave/loop/gain/bass", "loud"), ("/stemweave/loop/gain/../x", 1.0),
    ("/stemweave/loop/gain/kazoo", 1.0), ("/stemweave/loop/source", "radio"), ("/stemweave/preset", "../../etc/passwd"),
    ("/stemweave/preset", "separate-dirac"), ("/stemweave/preset", 3), ("/stemweave/loop/start", 1, 2),
    ("/stemweave/status", "x"), ("/stemweave/nonsense",), ("/other",),
])
def test_bad_messages_get_an_error_reply_and_change_nothing(surface, message):
    control, engine, _ = surface
    before = status(control)[0]
    replies = ask(control, *message, timeout=0.5)
    assert replies and replies[0][0] == "/stemweave/error", replies
    assert replies[0][1][0] == message[0] and replies[0][1][1]  # the address and a message saying why
    assert status(control)[0] == before


def test_garbage_datagrams_get_an_error_and_the_surface_keeps_serving(surface):
    control, _, _ = surface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        for junk in (b"/stemweave/loop/tempo\x00\x00\x00,f\x00", b"#bundle\x00garbage", b"\x00" * 7):
            sock.sendto(junk, control.address)
            data, _ = sock.recvfrom(65536)
            assert b"/stemweave/error" in data
    assert status(control)[0]["tempo"] == 120.0


def test_handlers_return_nothing_to_python_osc(surface):
    control, _, _ = surface
    from pythonosc.osc_message_builder import OscMessageBuilder

    dgram = OscMessageBuilder("/stemweave/status").build().dgram
    assert control.server.dispatcher.call_handlers_for_packet(dgram, ("127.0.0.1", 9)) == []


def test_serve_hook_makes_loops_through_the_job_queue_at_interactive_priority(tmp_path):
    from test_loop_generate import TEST_PRESET, tiny_prior
    from stemweave.bridge.server import Server

    (tmp_path / "loop-test.toml").write_text(TEST_PRESET)
    server = Server("tcp://127.0.0.1:*", model_loader=tiny_prior, model_names=["tiny"], default_model="tiny",
                    preset_dir=tmp_path, preload=False, check_device=False, osc_port=0, log=lambda text: None)
    server.loop_options = {"audio_device": "virtual", "audio_rate": 16000, "render_dir": str(tmp_path / "loops")}
    server.start()
    try:
        control = server.osc_control
        engine = control.engine
        for message in [("/stemweave/loop/method", "prior"), ("/stemweave/preset", "loop-test"),
                        ("/stemweave/loop/tempo", 240.0), ("/stemweave/loop/bars", 1),
                        ("/stemweave/loop/stems", "bass", "piano"), ("/stemweave/loop/start",)]:
            assert accepted(control, *message) == []
        assert wait_for(lambda: engine.loops_made >= 1 and engine.player.current is not None, timeout=120), \
            engine.last_error  # made, and taken by the (virtual) audio stream
        jobs = list(server.jobs.values())
        assert jobs and all(j.priority == "interactive" and j.spec["task"] == "generate" for j in jobs)
        assert jobs[0].spec["region"]["loop_frames"] == 16000 and jobs[0].spec["region"]["stems"] == ["bass", "piano"]
        state, _ = status(control)
        assert state["loop"] == 1 and state["stems"] == "bass,piano" and state["output"].startswith("virtual")
        assert (tmp_path / "loops" / "loop-0001-240bpm-1bars.wav").is_file()
    finally:
        server.stop()
