"""The protocol's audio checks over every message that carries audio (issue 23): NaN and +-inf refused in every
audio frame, channel and stem counts accepted at the limit and refused one past it."""

import json

import numpy as np
import pytest

from stemweave.bridge import protocol as P


def planar(channels=2, frames=6, seed=0):
    return np.random.default_rng(seed).standard_normal((channels, frames)).astype(np.float32)


def audio_messages(channels=2):
    """One well-formed message of each audio-carrying kind, and how many audio frames it sends."""
    audio = planar(channels)
    return {
        "submit-audio": P.Submit(req=1, task="separate", rate=44100, audio=audio),
        "submit-given": P.Submit(req=2, task="accompany", rate=44100, given={"drums": audio, "bass": audio + 1}),
        "submit-both": P.Submit(req=3, task="separate", rate=44100, audio=audio, given={"drums": audio}),
        "partial": P.Partial(job="j", rate=48000, stems_audio={"bass": audio, "drums": audio}, start=4, end=10),
        "estimate": P.Partial(job="j", rate=48000, kind="estimate", stems_audio={"bass": audio}, start=0, end=6),
        "result": P.Result(job="j", rate=48000, stems_audio={"bass": audio, "drums": audio}),
        "loop": P.Loop(serial=3, version=4, tempo=120.0, bars=2, beats_per_bar=4, bar_frames=3, rate=8000,
                       channels=channels, frames=6, playing=True, stems=["bass"], mix=audio),
    }


def with_sample(frames, index, position, value):
    """The frames with audio frame `index` (1-based: frame 0 is the header) holding `value` at `position`."""
    frames = [bytes(f) for f in frames]
    samples = np.frombuffer(frames[index], np.float32).copy()
    samples[position] = value
    frames[index] = samples.tobytes()
    return frames


@pytest.mark.parametrize("kind", list(audio_messages()))
def test_every_audio_message_round_trips_at_two_channels(kind):
    message = audio_messages(2)[kind]
    back = P.decode(message.to_frames())
    assert type(back) is type(message)
    arrays = {"audio": "audio", "given": "given", "stems_audio": "stems_audio", "mix": "mix"}
    for name in arrays:
        sent = getattr(message, name, None)
        if sent is None:
            continue
        got = getattr(back, name)
        if isinstance(sent, dict):
            assert list(got) == list(sent)
            for stem in sent:
                np.testing.assert_array_equal(got[stem], sent[stem])
                assert got[stem].shape == (2, 6)
        else:
            np.testing.assert_array_equal(got, sent)
            assert got.shape == (2, 6)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", list(audio_messages()))
def test_non_finite_samples_are_refused_in_every_audio_frame(kind, value):
    frames = audio_messages()[kind].to_frames()
    assert len(frames) > 1
    for index in range(1, len(frames)):
        for position in (0, len(np.frombuffer(bytes(frames[index]), np.float32)) - 1):
            with pytest.raises(P.ProtocolError) as caught:
                P.decode(with_sample(frames, index, position, value))
            assert caught.value.code == "bad-message" and "NaN or infinite" in caught.value.message
    # a loud finite sample, at the submit peak limit (+80 dBFS), is audio like any other
    P.decode(with_sample(frames, len(frames) - 1, 0, P.MAX_PEAK))


@pytest.mark.parametrize("channels,code", [(1, None), (2, None), (3, "too-large"), (16, "too-large"),
                                           (64, "too-large")])
def test_submit_channels_at_the_limit(channels, code):
    audio = planar(channels, 4)
    frames = [json.dumps({"v": 1, "type": "submit", "task": "separate", "rate": 44100, "channels": channels,
                          "frames": 4, "audio": True, "dtype": "float32le"}).encode(), *[row.tobytes() for row in audio]]
    given = [json.dumps({"v": 1, "type": "submit", "task": "accompany", "rate": 44100, "channels": channels,
                         "frames": 4, "given": ["drums"], "dtype": "float32le"}).encode(), audio.tobytes()]
    for message in (frames, given):
        if code is None:
            back = P.decode(message)
            got = back.audio if back.audio is not None else back.given["drums"]
            np.testing.assert_array_equal(got, audio)
        else:
            with pytest.raises(P.ProtocolError) as caught:
                P.decode(message)
            assert caught.value.code == code and str(P.MAX_CHANNELS) in caught.value.message


@pytest.mark.parametrize("kind", ["partial", "result", "loop"])
@pytest.mark.parametrize("channels,code", [(2, None), (3, "too-large")])
def test_stem_and_loop_channels_at_the_limit(kind, channels, code):
    frames_per = 6
    audio = planar(channels, frames_per)
    head = {"v": 1, "type": kind, "job": "j", "rate": 8000, "channels": channels, "frames": frames_per,
            "dtype": "float32le"}
    if kind == "partial":
        head.update(stems=["bass"], start=0, end=frames_per)
    elif kind == "result":
        head.update(stems=["bass"])
    else:
        head.update(serial=1, version=1, tempo=120.0, bars=2, beats_per_bar=4, bar_frames=3, audio=True,
                    stems=["bass"])
    frames = [json.dumps(head).encode(), audio.tobytes()]
    if code is None:
        back = P.decode(frames)
        got = back.mix if kind == "loop" else back.stems_audio["bass"]
        np.testing.assert_array_equal(got, audio)
    else:
        with pytest.raises(P.ProtocolError) as caught:
            P.decode(frames)
        assert caught.value.code == code


@pytest.mark.parametrize("kind", ["submit", "partial", "result"])
def test_stem_counts_at_the_limit(kind):
    def message(count):
        names = [f"s{i}" for i in range(count)]
        head = {"v": 1, "type": kind, "job": "j", "rate": 8000, "channels": 1, "frames": 2, "dtype": "float32le"}
        if kind == "submit":
            head.update(task="accompany", given=names)
        else:
            head.update(stems=names)
        if kind == "partial":
            head.update(start=0, end=2)
        return [json.dumps(head).encode(), *[np.full(2, i, np.float32).tobytes() for i in range(count)]]

    back = P.decode(message(P.MAX_STEMS))
    stems = back.given if kind == "submit" else back.stems_audio
    assert list(stems) == [f"s{i}" for i in range(16)] and stems["s15"].tolist() == [[15.0, 15.0]]
    with pytest.raises(P.ProtocolError) as caught:
        P.decode(message(P.MAX_STEMS + 1))
    assert caught.value.code == "too-large" and "at most 16" in caught.value.message


def test_limits_are_the_documented_ones():
    assert (P.MAX_CHANNELS, P.MAX_STEMS, P.MAX_NAME, P.MIN_RATE, P.MAX_RATE) == (2, 16, 64, 1000, 768000)
    assert P.MAX_HEADER_BYTES == 65536 and P.MAX_CLAIMED_FRAMES == 2**31


@pytest.mark.parametrize("kind", ["submit-audio", "submit-given"])
def test_submitted_samples_beyond_the_peak_limit_are_too_large(kind):
    frames = audio_messages()[kind].to_frames()
    with pytest.raises(P.ProtocolError) as caught:
        P.decode(with_sample(frames, 1, 3, -2 * P.MAX_PEAK))
    assert caught.value.code == "too-large" and "at most 10000" in caught.value.message
