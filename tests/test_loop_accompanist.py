"""The live loop engine on the accompanist (issue 21, item 5), over real UDP sockets on loopback: loops of N bars at
the engine's tempo, key and chords, seamless at the wrap; OSC sets style, density, intensity, key, chords and
method and saves the loop's MIDI; through `stemweave serve`'s hook the loops are accompanist jobs of the server's
queue and their MIDI travels in the result's "midi" frame."""

from __future__ import annotations

import io
import time

import mido
import numpy as np
import pytest

from stemweave.bridge import accompanist_jobs, osc
from stemweave.bridge.loop import LocalBackend, LoopEngine, LoopSettings, bar_frames

RATE = 16000
STEMS = ("bass", "drums", "guitar", "piano")


class NoModel:
    """LocalBackend's model: only its stem names matter to the accompanist."""

    stems = STEMS


@pytest.fixture
def accompanist():
    return accompanist_jobs.engine()  # stemweave.engine.accompanist


def ask(control, address, *args, timeout=1.0):
    return osc.send(address, *args, port=control.address[1], reply_timeout=timeout)


def status(control) -> dict:
    replies = ask(control, "/stemweave/status")
    assert replies and replies[0][0] == "/stemweave/status", replies
    flat = replies[0][1]
    return dict(zip(flat[::2], flat[1::2]))


def wait_for(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.fixture
def surface(accompanist, tmp_path):
    drums = np.zeros((1, RATE), np.float32)
    drums[0, :: RATE // 4] = 1.0  # clicks: a crude input loop
    engine = LoopEngine(LocalBackend(NoModel()), rate=RATE, channels=2, output="virtual", log=lambda text: None,
                        render_dir=tmp_path / "loops", input_loop=drums,
                        settings=LoopSettings(tempo=120.0, bars=2, stems=("bass",)))
    control = osc.OscControl(engine, "127.0.0.1", 0, log=lambda text: None).start()
    yield control, engine
    control.close()
    engine.close()


def test_accompanist_loops_follow_the_osc_controls_and_their_midi_can_be_saved(surface, tmp_path):
    control, engine = surface
    assert engine.settings.method == "accompanist"  # the default
    for message in [("/stemweave/loop/style", "default"), ("/stemweave/loop/density", 0.8),
                    ("/stemweave/loop/intensity", 0.3), ("/stemweave/loop/key", "D minor"),
                    ("/stemweave/loop/chords", "Dm Bb"), ("/stemweave/loop/start",)]:
        assert ask(control, *message, timeout=0.2) == [], message
    state = status(control)
    assert state["method"] == "accompanist" and state["key"] == "D minor" and state["chords"] == "Dm,Bb"
    assert state["density"] == pytest.approx(0.8) and state["intensity"] == pytest.approx(0.3)
    assert wait_for(lambda: engine.player.current is not None and engine.player.current.info.get("midi")), \
        engine.last_error
    loop = engine.player.current
    bar = bar_frames(120.0, RATE)
    assert loop.bars == 2 and loop.bar_frames == bar and loop.frames == 2 * bar and loop.stems == ("bass",)
    assert loop.info["method"] == "accompanist" and np.abs(loop.data).max() > 0.01
    # Seamless at the wrap: the step from the last sample to the first is no larger than the largest step inside.
    bass = loop.data[0, :, 0]
    assert abs(bass[0] - bass[-1]) <= np.abs(np.diff(bass)).max() + 1e-6
    assert wait_for(lambda: (tmp_path / "loops" / f"loop-{loop.serial:04d}-120bpm-2bars.mid").is_file(), 10)  # beside
    # the loop's audio (written just after the loop is handed to the player)

    replies = ask(control, "/stemweave/loop/midi", "my-bass")
    assert replies == [("/stemweave/loop/midi", [str(tmp_path / "loops" / "my-bass.mid")])], replies
    midi = mido.MidiFile(tmp_path / "loops" / "my-bass.mid")
    assert any(m.type == "note_on" for m in midi)
    state = status(control)
    assert state["loop_method"] == "accompanist" and state["loop_midi"] == 1 and state["loop_key"]


def test_a_new_key_makes_a_new_loop_and_the_input_source_is_accompanied(surface):
    control, engine = surface
    ask(control, "/stemweave/loop/start", timeout=0.1)
    assert wait_for(lambda: engine.loops_made >= 1), engine.last_error
    made = engine.loops_made
    ask(control, "/stemweave/loop/key", "E minor", timeout=0.1)
    assert wait_for(lambda: engine.loops_made > made), engine.last_error
    ask(control, "/stemweave/loop/source", "input", timeout=0.1)
    assert wait_for(lambda: engine.player.current is not None and engine.player.current.info["source"] == "input"
                    and engine.newest_loop()[0].info["source"] == "input"), engine.last_error
    loop = engine.newest_loop()[0]
    assert set(loop.stems) == {"drums", "bass"} and loop.info["method"] == "accompanist"


@pytest.mark.parametrize("message", [
    ("/stemweave/loop/key", "H dorian"), ("/stemweave/loop/key", 3), ("/stemweave/loop/density", 1.5),
    ("/stemweave/loop/density", "lots"), ("/stemweave/loop/intensity", -0.1), ("/stemweave/loop/chords", "Am Q7"),
    ("/stemweave/loop/chords", 4), ("/stemweave/loop/method", "kazoo"), ("/stemweave/loop/style", "../x"),
    ("/stemweave/loop/midi", "../../etc/x"), ("/stemweave/loop/midi", 3),
])
def test_bad_accompanist_messages_get_an_error_reply_and_change_nothing(surface, message):
    control, _ = surface
    before = status(control)
    replies = ask(control, *message, timeout=0.5)
    assert replies and replies[0][0] == "/stemweave/error" and replies[0][1][0] == message[0], replies
    assert status(control) == before


def test_saving_midi_needs_a_render_folder_and_a_loop(accompanist):
    engine = LoopEngine(LocalBackend(NoModel()), rate=RATE, output="virtual", log=lambda text: None)
    control = osc.OscControl(engine, "127.0.0.1", 0, log=lambda text: None).start()
    try:
        replies = ask(control, "/stemweave/loop/midi")
        assert replies[0][0] == "/stemweave/error" and "--render-dir" in replies[0][1][1]
    finally:
        control.close()
        engine.close()


def test_serve_hook_makes_accompanist_loops_through_the_queue_with_their_midi(accompanist, tmp_path):
    from stemweave.bridge.server import Server, analytic_model

    server = Server("tcp://127.0.0.1:*", model_loader=lambda name, device: analytic_model(rate=4000, window=256),
                    model_names=["analytic"], default_model="analytic", preload=False, check_device=False, osc_port=0,
                    log=lambda text: None)
    server.loop_options = {"audio_device": "virtual", "audio_rate": RATE, "render_dir": str(tmp_path / "loops")}
    server.start()
    try:
        control = server.osc_control
        engine = control.engine
        for message in [("/stemweave/loop/tempo", 240.0), ("/stemweave/loop/bars", 1),
                        ("/stemweave/loop/stems", "bass"), ("/stemweave/loop/chords", "Am"),
                        ("/stemweave/loop/start",)]:
            assert ask(control, *message, timeout=0.2) == []
        assert wait_for(lambda: engine.player.current is not None, timeout=120), engine.last_error
        jobs = list(server.jobs.values())
        assert jobs and all(j.priority == "interactive" and j.spec["accompanist"]["bars"] == 1 for j in jobs)
        assert jobs[-1].spec["accompanist"]["controls"]["chords"] == ["Am"]
        loop = engine.player.current
        assert loop.frames == RATE and loop.info["midi"]
        assert mido.MidiFile(file=io.BytesIO(loop.info["midi"])).tracks
        assert wait_for(lambda: (tmp_path / "loops" / f"loop-{loop.serial:04d}-240bpm-1bars.mid").is_file(), 10)
    finally:
        server.stop()
