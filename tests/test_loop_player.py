"""The loop player's audio callback on a virtual stream: bar-synced swaps to the sample, gain ramps, start/stop,
wrap continuity in the output, and no allocation in the callback."""

import tracemalloc

import numpy as np
import pytest

from stemweave.bridge.audio_out import VirtualStream
from stemweave.bridge.loop import Loop, LoopPlayer

RATE = 8000
START_RAMP = int(0.02 * RATE)  # frames of the master gain's ramp from silence when playing starts


def make_loop(serial, bar, bars, offset, stems=1, channels=2, slots=None):
    """A loop whose every sample is distinct: stem k, channel c at frame i = offset + i / frames + k + 0.1 c."""
    frames = bar * bars
    ramp = offset + np.arange(frames, dtype=np.float64) / frames
    data = np.stack([np.stack([ramp + k + 0.1 * c for c in range(channels)], axis=-1) for k in range(stems)])
    return Loop(serial, tuple(f"s{k}" for k in range(stems)), np.ascontiguousarray(data, np.float32),
                tuple(slots or range(stems)), bar, bars, 120.0)


def tiled(loop, start, frames):
    """What the loop alone plays from position `start` for `frames` frames, (frames, channels)."""
    index = (start + np.arange(frames)) % loop.frames
    return loop.data.sum(0)[index]


def first_difference(a, b):
    different = np.flatnonzero(np.any(a != b, axis=1))
    return int(different[0]) if len(different) else None


@pytest.mark.parametrize("handover, blocksize", [(1280, 256), (300, 256), (300, 997), (4000, 64)])
def test_swap_lands_on_the_bar_boundary_to_the_sample(handover, blocksize):
    player = LoopPlayer(RATE, 2, swap_fade_s=0.0)
    stream = VirtualStream(player.callback, RATE, 2, blocksize=blocksize)
    a, b = make_loop(1, 1000, 2, 0.0), make_loop(2, 800, 3, 10.0)  # b: another tempo and bar count
    player.hand_over(a)
    player.play()
    blocks_before = -(-handover // blocksize)
    out = [stream.run_blocks(blocks_before)]
    player.hand_over(b)
    out.append(stream.run_blocks(6000 // blocksize + 2))
    out = np.concatenate(out)
    handed = blocks_before * blocksize  # the stream frame at which the callback could first see b
    boundary = -(-handed // a.bar_frames) * a.bar_frames  # the first bar boundary of a at or after it
    ramp = START_RAMP  # the start fades in over the gain ramp; compare after it
    swap = ramp + first_difference(out[ramp:], tiled(a, 0, len(out))[ramp:])
    assert swap == boundary and swap % a.bar_frames == 0
    bar = (boundary // a.bar_frames) % a.bars
    np.testing.assert_array_equal(out[ramp:swap], tiled(a, 0, swap)[ramp:])
    np.testing.assert_array_equal(out[swap:], tiled(b, (bar % b.bars) * b.bar_frames, len(out) - swap))
    assert player.swap_log()[-1] == {"frame": boundary, "serial": 2, "bar": bar, "position": (bar % 3) * 800}


def test_swap_fade_starts_exactly_on_the_bar():
    player = LoopPlayer(RATE, 2, swap_fade_s=0.004)
    fade = int(0.004 * RATE)
    stream = VirtualStream(player.callback, RATE, 2, blocksize=128)
    a, b = make_loop(1, 1000, 2, 0.0), make_loop(2, 1000, 2, 10.0)
    player.hand_over(a)
    player.play()
    out = [stream.run_blocks(4)]
    player.hand_over(b)
    out = np.concatenate(out + [stream.run_blocks(20)])
    np.testing.assert_array_equal(out[START_RAMP:1000], tiled(a, 0, 1000)[START_RAMP:])  # untouched up to the bar
    np.testing.assert_array_equal(out[1000 + fade :], tiled(b, 1000 + fade, len(out) - 1000 - fade))
    old, new = tiled(a, 1000, fade), tiled(b, 1000, fade)
    assert np.all(out[1000 : 1000 + fade] >= np.minimum(old, new) - 1e-6)
    assert np.all(out[1000 : 1000 + fade] <= np.maximum(old, new) + 1e-6)
    assert np.all(np.diff(out[1000 : 1000 + fade, 0]) > 0)  # moving from the old loop towards the new one


def test_gain_changes_ramp_without_steps():
    player = LoopPlayer(RATE, 1, gain_ramp_s=0.02)
    stream = VirtualStream(player.callback, RATE, 1, blocksize=100)
    data = np.full((2, 4000, 1), 0.5, np.float32)
    player.hand_over(Loop(1, ("bass", "drums"), data, (0, 1), 1000, 4, 120.0))
    player.play()
    stream.run_blocks(10)  # past the start ramp
    player.set_gain(0, 0.0)
    out = stream.run_blocks(10)[:, 0]
    step = 0.5 / (0.02 * RATE)  # the bass stem's largest change per sample
    assert np.max(np.abs(np.diff(out))) <= step + 1e-6
    assert out[0] < 1.0 and out[-1] == pytest.approx(0.5)  # ramped all the way down within 20 ms
    assert np.argmax(out <= 0.5 + 1e-6) == pytest.approx(0.02 * RATE, abs=2)


def test_start_and_stop_ramp_and_restart_from_bar_one():
    player = LoopPlayer(RATE, 1, gain_ramp_s=0.01)
    stream = VirtualStream(player.callback, RATE, 1, blocksize=64)
    assert not stream.run_blocks(4).any()  # nothing to play: silence, no error
    player.hand_over(Loop(1, ("bass",), np.ones((1, 2000, 1), np.float32), (0,), 500, 4, 120.0))
    assert not stream.run_blocks(4).any()  # not started
    player.play()
    out = stream.run_blocks(4)[:, 0]
    assert out[0] <= 1 / 80 + 1e-6 and np.all(np.diff(out) >= 0) and out[-1] == 1.0
    player.play(False)
    out = stream.run_blocks(4)[:, 0]
    assert out[0] < 1.0 and np.all(np.diff(out) <= 0) and out[-1] == 0.0
    assert not player.playing and player.position == 0


def test_loop_wraps_continuously_in_the_output():
    frames = 1600
    t = np.arange(frames) / frames
    seamless = (0.5 * np.sin(2 * np.pi * 7 * t) + 0.2 * np.sin(2 * np.pi * 23 * t)).astype(np.float32)
    player = LoopPlayer(RATE, 1)
    stream = VirtualStream(player.callback, RATE, 1, blocksize=333)
    player.hand_over(Loop(1, ("piano",), seamless[None, :, None].copy(), (0,), 400, 4, 120.0))
    player.play()
    out = stream.run_blocks(30)[:, 0]
    steps = np.abs(np.diff(out[200:]))  # after the start ramp
    inside = np.abs(np.diff(seamless)).max()
    assert steps.max() <= inside + 1e-6
    np.testing.assert_array_equal(out[frames : 2 * frames], seamless)  # a wrap plays the loop exactly again


def test_callback_splits_long_blocks_and_does_not_allocate():
    player = LoopPlayer(RATE, 2, max_block=4096, swap_fade_s=0.004)
    block = np.zeros((4096, 2), np.float32)  # the host's buffer
    player.hand_over(make_loop(1, 1000, 4, 0.0, stems=4))
    player.play()
    player.set_gain(1, 0.3)
    for _ in range(3):  # warm up
        player.callback(block, 4096, None, None)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for serial in range(2, 6):
            player.hand_over(make_loop(serial, 1000, 4, float(serial), stems=4))  # prepared outside the measurement
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            for _ in range(2):  # swaps, fades and ramps inside
                player.callback(block, 4096, None, None)
            player.set_gain(2, serial / 10)
            peak = tracemalloc.get_traced_memory()[1] - before
            assert peak < 8192, f"the callback allocated {peak} bytes (a (4096, 2) float32 temporary is 32 KiB)"
    finally:
        tracemalloc.stop()
    assert base >= 0 and player.swap_count >= 5
    # A long host block is split into max_block passes with the same result as short blocks.
    long_player, short_player = LoopPlayer(RATE, 2, max_block=64), LoopPlayer(RATE, 2, max_block=4096)
    for p in (long_player, short_player):
        p.hand_over(make_loop(1, 300, 3, 0.0))
        p.play()
    np.testing.assert_allclose(VirtualStream(long_player.callback, RATE, 2, blocksize=1000).run_blocks(3),
                               VirtualStream(short_player.callback, RATE, 2, blocksize=1000).run_blocks(3),
                               atol=1e-6)  # the start ramp is summed per pass: float rounding only


def test_hand_over_rejects_a_malformed_loop():
    player = LoopPlayer(RATE, 2)
    with pytest.raises(ValueError):
        player.hand_over(Loop(1, ("a",), np.zeros((1, 100, 1), np.float32), (0,), 50, 2, 120.0))  # 1 channel
    with pytest.raises(ValueError):
        player.hand_over(Loop(1, ("a",), np.zeros((1, 100, 2), np.float32), (0,), 200, 2, 120.0))  # bar > loop
