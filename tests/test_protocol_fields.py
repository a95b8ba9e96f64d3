"""Every header field of every message, checked against docs/protocol.md's tables: each message round-trips with
every field set; each bounded field takes its bounds and refuses one past them with the documented code; each
field refuses the wrong JSON type; a required field's absence is named; names are names. The tables below restate
the documented limits (not the code's constants), so a changed limit fails here until the document changes too.
"""

import json

import numpy as np
import pytest

from stemweave.bridge import protocol as P

BIG = 1 << 31  # frames any header may claim


def decode(head: dict, *frames: bytes):
    return P.decode([json.dumps({"v": 1, **head}).encode(), *frames])


def refused(head: dict, *frames: bytes) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as caught:
        decode(head, *frames)
    assert caught.value.code in P.ERROR_CODES and caught.value.message
    return caught.value


# One valid header per message shape, frames included where audio follows.
BASE = {
    "hello": {"type": "hello", "req": 1, "version": 1, "client": "daw"},
    "list": {"type": "list", "models": [], "presets": [], "tasks": []},
    "submit": {"type": "submit", "task": "generate", "rate": 44100, "seed": 1, "priority": "batch"},
    "accepted": {"type": "accepted", "job": "j1", "queued": 2, "cached": False},
    "progress": {"type": "progress", "job": "j1", "fraction": 0.5, "stage": "separate", "eta_s": 2.0},
    "partial": {"type": "partial", "job": "j1", "rate": 44100, "channels": 0, "frames": 0, "stems": [],
                "start": 0, "end": 0},
    "result": {"type": "result", "job": "j1", "rate": 44100, "channels": 0, "frames": 0, "stems": [],
               "elapsed_s": 1.0, "cached": False},
    "error": {"type": "error", "job": "j1", "code": "failed", "message": "boom"},
    "cancel": {"type": "cancel", "job": "j1"},
    "status": {"type": "status", "job": "j1", "info": {}},
    "fetch": {"type": "fetch", "job": "j1"},
    "heartbeat": {"type": "heartbeat", "time": 1.0, "jobs": []},
    "unload": {"type": "unload", "model": "m"},
    "loop-request": {"type": "loop", "since": 0},
    "loop": {"type": "loop", "serial": 1, "version": 1, "tempo": 120.0, "bars": 1, "beats_per_bar": 4,
             "rate": 8000, "bar_frames": 4, "channels": 1, "frames": 4, "audio": False},
}

# (shape, field, lowest, highest, the code one past either bound)
INTEGERS = [
    ("hello", "version", 0, 1 << 30, "bad-message"),
    ("submit", "channels", 0, 2, "too-large"),
    ("submit", "frames", 0, BIG, "too-large"),
    ("submit", "rate", 1000, 768_000, "bad-message"),
    ("submit", "seed", 0, (1 << 63) - 1, "bad-message"),
    ("submit", "position", -(1 << 62), 1 << 62, "bad-message"),
    ("accepted", "queued", 0, 1 << 30, "bad-message"),
    *[("progress", k, 0, 1 << 40, "bad-message") for k in ("window", "windows", "step", "steps")],
    ("partial", "rate", 1000, 768_000, "bad-message"),
    ("partial", "channels", 0, 2, "too-large"),
    ("partial", "frames", 0, BIG, "too-large"),
    ("partial", "position", -(1 << 62), 1 << 62, "bad-message"),
    *[("partial", k, 0, BIG, "bad-message") for k in ("start", "end", "window", "windows")],
    ("result", "rate", 1000, 768_000, "bad-message"),
    ("result", "channels", 0, 2, "too-large"),
    ("result", "frames", 0, BIG, "too-large"),
    ("loop-request", "since", 0, 1 << 62, "bad-message"),
    ("loop", "serial", 0, 1 << 62, "bad-message"),  # 0: the reply before any loop exists
    ("loop", "version", 0, 1 << 62, "bad-message"),
    ("loop", "bars", 1, 64, "bad-message"),
    ("loop", "beats_per_bar", 1, 64, "bad-message"),
    ("loop", "rate", 1000, 768_000, "bad-message"),
    ("loop", "bar_frames", 1, BIG // 64, "bad-message"),
    ("loop", "channels", 1, 2, "too-large"),
    ("loop", "frames", 1, BIG, "too-large"),
]

# (shape, field, lowest, highest): numbers (ints or floats), refused one past with bad-message
NUMBERS = [
    ("progress", "fraction", 0.0, 1.0),
    ("progress", "eta_s", 0.0, 1e9),
    ("result", "elapsed_s", 0.0, 1e12),
    ("heartbeat", "time", -1e12, 1e12),
    ("loop", "tempo", 20.0, 300.0),
]

# (shape, field, longest) free-text strings
STRINGS = [("hello", "client", 256), ("submit", "task", 32), ("progress", "stage", 64), ("error", "code", 64),
           ("error", "message", 4096)]

# (shape, field): names (letters, digits, _ . + -; at most 64; no leading dot or separator)
NAMES = [("accepted", "job"), ("progress", "job"), ("partial", "job"), ("result", "job"), ("cancel", "job"),
         ("fetch", "job"), ("error", "job"), ("status", "job"), ("submit", "model"), ("submit", "preset"),
         ("unload", "model")]

REQUIRED = [("submit", "task"), ("accepted", "job"), ("progress", "job"), ("progress", "fraction"),
            ("partial", "job"), ("partial", "rate"), ("partial", "channels"), ("partial", "frames"),
            ("result", "job"), ("result", "rate"), ("error", "code"), ("cancel", "job"), ("fetch", "job"),
            ("loop", "tempo"), ("loop", "bars"), ("loop", "beats_per_bar"), ("loop", "rate"), ("loop", "bar_frames"),
            ("loop", "channels"), ("loop", "frames")]

# (shape, field, the decoded attribute holding it, or None where audio frames would have to follow)
BOOLS = [("submit", "audio", None), ("accepted", "cached", "cached"), ("result", "cached", "cached"),
         ("loop", "audio", None), ("loop", "playing", "playing")]
OBJECTS = [("hello", "server"), ("submit", "params"), ("status", "info"), ("result", "info")]
ARRAYS = [("list", "models"), ("list", "presets"), ("list", "tasks"), ("submit", "given"), ("partial", "stems"),
          ("result", "stems"), ("result", "files"), ("heartbeat", "jobs"), ("unload", "unloaded"), ("loop", "stems")]


def with_field(shape: str, key: str, value) -> dict:
    """BASE[shape] with one field changed, and the fields it must agree with made to agree when it is valid."""
    head = {**BASE[shape], key: value}
    count = value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None
    if shape == "partial" and key in ("start", "end") and count is not None and count <= BIG:
        head["start"] = head["end"] = value  # no stems: a partial of 0 frames
    if shape == "loop" and count is not None:  # frames = bars * bar_frames, bar_frames <= 2^31 / 64
        if key == "bars":
            head.update(bar_frames=1, frames=count)
        elif key == "bar_frames":
            head.update(bars=1, frames=count)
        elif key == "frames" and count <= BIG:
            bars = 64 if count % 64 == 0 else 1
            head.update(bars=bars, bar_frames=count // bars)
    return head


def field_value(message, key):
    """What the decoded message says for a header field (Submit keeps channels/frames 0 as None)."""
    value = getattr(message, key)
    return 0 if value is None and key in ("channels", "frames") else value


# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(BASE))
def test_every_base_header_decodes_and_encodes_to_itself(shape):
    message = decode(BASE[shape])
    head = message.header()
    for key, value in BASE[shape].items():
        assert head[key] == value, (shape, key)
    assert P.decode(message.to_frames()).header() == head


def full_messages():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 5)).astype(np.float32)
    b = rng.standard_normal((2, 5)).astype(np.float32)
    return [
        P.Hello(req="r1", version=1, client="Ardour 8", server={"name": "stemweave", "max_seconds": 600}),
        P.Listing(req=2, models=[{"name": "m"}], presets=[{"name": "p"}], tasks=["separate", "generate"]),
        P.Submit(req=3, task="accompany", model="msdm-cpu-small", preset="accompany-fast", params={"steps": 9},
                 seed=11, rate=48000, priority="batch", position=-77, given={"drums": a, "piano": b}, channels=2,
                 frames=5),
        P.Submit(req=4, task="separate", rate=22050, audio=a, position=5, channels=2, frames=5),
        P.Submit(req=5, task="generate", rate=None, channels=2, frames=4410, seed=3),
        P.Accepted(job="j2", req=6, queued=7, cached=True),
        P.Progress(job="j2", req=7, fraction=0.25, stage="refine", eta_s=3.5, window=1, windows=3, step=4, steps=24),
        P.Partial(job="j2", req=8, rate=32000, kind="estimate", stems_audio={"bass": a, "drums": b}, start=10, end=15,
                  window=2, windows=6, position=99),
        P.Result(job="j2", req=9, rate=16000, stems_audio={"guitar": b, "bass": a}, position=12, cached=True,
                 elapsed_s=2.5, info={"model": "m", "warnings": ["w"]}, files={"midi": b"MThd\x00\x01"}),
        P.Error(job="j2", req=10, code="too-long", message="the region is 700 s"),
        P.Cancel(job="j2", req=11), P.Status(job="j2", req=12, info={"state": "queued"}), P.Fetch(job="j2", req=13),
        P.Heartbeat(req=14, time=-5.5, jobs=["j2", "j3"]), P.Unload(req=15, model="m", unloaded=["m@cpu"]),
        P.Loop(req=16, since=41),
        P.Loop(req=17, serial=0, version=3, playing=False),
        P.Loop(req=18, serial=2, version=5, tempo=97.5, bars=1, beats_per_bar=3, bar_frames=5, rate=8000,
               channels=2, frames=5, playing=True, stems=["bass", "drums"], mix=a),
        P.Loop(req=19, serial=2, version=6, tempo=140.0, bars=2, beats_per_bar=7, bar_frames=5, rate=9000,
               channels=1, frames=10, playing=None, stems=None),
    ]


def assert_same_fields(back, sent):
    assert type(back) is type(sent)
    for name in sent.__dataclass_fields__:
        want, got = getattr(sent, name), getattr(back, name)
        if isinstance(want, np.ndarray):
            np.testing.assert_array_equal(got, want)
        elif isinstance(want, dict) and want and isinstance(next(iter(want.values())), np.ndarray):
            assert list(got) == list(want), name
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
        else:
            assert got == want, (type(sent).__name__, name, got, want)


@pytest.mark.parametrize("message", full_messages(), ids=lambda m: f"{m.TYPE}-{m.req}")
def test_every_field_of_every_message_round_trips(message):
    assert_same_fields(P.decode(message.to_frames()), message)
    # what a client sees is what the header says, in JSON: not a Python repr, no NaN
    head = json.loads(bytes(message.to_frames()[0]))
    assert head["v"] == 1 and head["type"] == message.TYPE


# --- integers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,key,lo,hi,code", INTEGERS)
def test_an_integer_field_takes_both_bounds(shape, key, lo, hi, code):
    for value in (lo, hi):
        message = decode(with_field(shape, key, value))
        if shape in ("partial", "result") and key in ("channels", "frames"):
            continue  # taken; with no stems there is no shape to keep
        assert field_value(message, key) == value


@pytest.mark.parametrize("shape,key,lo,hi,code", INTEGERS)
def test_an_integer_field_refuses_one_past_each_bound_with_its_code(shape, key, lo, hi, code):
    for value in (lo - 1, hi + 1):
        error = refused(with_field(shape, key, value))
        assert error.code == code, (key, value, error.message)
        assert key in error.message


@pytest.mark.parametrize("shape,key,lo,hi,code", INTEGERS)
def test_an_integer_field_refuses_other_json_types(shape, key, lo, hi, code):
    for value in ("1", True, 1.5, [1]):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message, (key, value, error.message)


# --- numbers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,key,lo,hi", NUMBERS)
def test_a_number_field_takes_its_range_and_refuses_beyond_it(shape, key, lo, hi):
    for value in (lo, hi, (lo + hi) / 2, int(hi)):
        got = getattr(decode(with_field(shape, key, value)), key)
        assert got == value and type(got) is float
    step = max(1e-6, 1e-9 * abs(hi))
    for value in (lo - step, hi + step, "1", True, [0.5]):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message, (key, value, error.message)


# --- strings, names, required fields -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,key,longest", STRINGS)
def test_a_string_field_takes_its_longest_and_refuses_longer_or_not_a_string(shape, key, longest):
    assert getattr(decode(with_field(shape, key, "x" * longest)), key) == "x" * longest
    for value in ("x" * (longest + 1), 5, ["x"]):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message and str(longest) in error.message


@pytest.mark.parametrize("shape,key", NAMES)
def test_a_name_field_takes_names_only(shape, key):
    for good in ("a", "A.b_c+d-9", "x" * 64):
        assert getattr(decode(with_field(shape, key, good)), key) == good
    for bad in ("", ".hidden", "../up", "a/b", "a b", "x" * 65, 5):
        error = refused(with_field(shape, key, bad))
        assert error.code == "bad-message" and key in error.message, (bad, error.message)


@pytest.mark.parametrize("shape,key", REQUIRED)
def test_a_required_field_missing_is_named(shape, key):
    head = {k: v for k, v in BASE[shape].items() if k != key}
    error = refused(head)
    assert error.code == "bad-message" and f"lacks {key!r}" in error.message


@pytest.mark.parametrize("shape,key,attribute", BOOLS)
def test_a_bool_field_takes_true_and_false_only(shape, key, attribute):
    for value in (True, False):
        if attribute:
            assert getattr(decode(with_field(shape, key, value)), attribute) is value
    for value in (1, 0, "true"):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message and "true or false" in error.message


@pytest.mark.parametrize("shape,key", OBJECTS)
def test_an_object_field_takes_objects_only(shape, key):
    assert getattr(decode(with_field(shape, key, {"k": [1]})), key) == {"k": [1]}
    for value in ([1], "x", 3):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message and "object" in error.message


@pytest.mark.parametrize("shape,key", ARRAYS)
def test_an_array_field_takes_arrays_only(shape, key):
    for value in ({"a": 1}, "bass", 3):
        error = refused(with_field(shape, key, value))
        assert error.code == "bad-message" and key in error.message and "array" in error.message


# --- the rules between fields ---------------------------------------------------------------------------------------


def test_submit_rules():
    audio = np.zeros(4, np.float32).tobytes()
    sep = {"type": "submit", "task": "separate", "rate": 44100, "channels": 1, "frames": 4, "audio": True}
    assert decode(sep, audio).audio.shape == (1, 4)
    assert decode({**sep, "audio": False}).audio is None
    error = refused({**sep, "rate": None}, audio)
    assert error.code == "bad-message" and "'rate'" in error.message
    error = refused({**sep, "channels": 0}, audio)
    assert error.code == "bad-message" and "channels or frames is 0" in error.message
    error = refused({**sep, "frames": 0}, audio)
    assert error.code == "bad-message" and "channels or frames is 0" in error.message
    # a generate may leave rate, channels and frames out
    gen = decode({"type": "submit", "task": "generate"})
    assert gen.rate is None and gen.channels is None and gen.frames is None and gen.priority == "interactive"
    assert gen.seed == 0 and gen.params == {} and gen.given == {} and gen.model is None
    error = refused({**sep, "priority": "urgent"}, audio)
    assert error.code == "bad-message" and "interactive, batch" in error.message and "'urgent'" in error.message
    # given stems: at most 16 (too-large), names, each once
    acc = {"type": "submit", "task": "accompany", "rate": 8000, "channels": 1, "frames": 4}
    names = [f"s{i}" for i in range(16)]
    assert list(decode({**acc, "given": names}, *[audio] * 16).given) == names
    error = refused({**acc, "given": names + ["s16"]}, *[audio] * 17)
    assert error.code == "too-large" and "16" in error.message
    error = refused({**acc, "given": ["a", "a"]}, audio, audio)
    assert error.code == "bad-message" and "twice" in error.message
    error = refused({**acc, "given": ["../a"]}, audio)
    assert error.code == "bad-message" and "given stem" in error.message
    # the frames after the header: the region's channels, then one per given stem
    both = decode({**acc, "given": ["drums"], "audio": True, "channels": 2, "frames": 2},
                  np.array([1, 2], np.float32).tobytes(), np.array([3, 4], np.float32).tobytes(),
                  np.array([5, 6, 7, 8], np.float32).tobytes())
    np.testing.assert_array_equal(both.audio, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(both.given["drums"], [[5, 6], [7, 8]])
    assert both.shape == (2, 2)
    error = refused({**acc, "given": ["drums"]}, audio, audio)
    assert error.code == "bad-message" and "carries 1 audio frame(s)" in error.message and "got 2" in error.message


def test_partial_and_result_rules():
    frame = np.arange(6, dtype=np.float32).tobytes()
    part = {"type": "partial", "job": "j", "rate": 8000, "channels": 2, "frames": 3, "stems": ["bass"],
            "start": 7, "end": 10}
    message = decode(part, frame)
    np.testing.assert_array_equal(message.stems_audio["bass"], [[0, 1, 2], [3, 4, 5]])
    assert message.kind == "window"
    error = refused({**part, "end": 11}, frame)
    assert error.code == "bad-message" and "7:11" in error.message and "3 frames" in error.message
    error = refused({**part, "kind": "guess"}, frame)
    assert error.code == "bad-message" and "'guess'" in error.message
    error = refused({**part, "stems": ["x" + str(i) for i in range(17)]}, *[frame] * 17)
    assert error.code == "too-large" and "17" in error.message
    error = refused({**part, "stems": ["../x"]}, frame)
    assert error.code == "bad-message" and "stem" in error.message
    error = refused({**part, "dtype": "float64"}, frame)
    assert error.code == "bad-dtype" and "float32le" in error.message
    result = {"type": "result", "job": "j", "rate": 8000, "channels": 2, "frames": 3, "stems": ["bass"],
              "files": ["midi"]}
    message = decode(result, frame, b"MThd")
    assert message.files == {"midi": b"MThd"} and list(message.stems_audio) == ["bass"]
    for files, frames in ((["midi", "midi"], (frame, b"a", b"b")), (["a", "b", "c"], (frame, b"x")),
                          ([f"f{i}" for i in range(17)], (frame, *[b"x"] * 17))):
        error = refused({**result, "files": files}, *frames)
        assert error.code == "bad-message" and "byte frames" in error.message
    error = refused({**result, "files": ["../midi"]}, frame, b"x")
    assert error.code == "bad-message" and "file" in error.message


def test_loop_rules():
    mix = np.arange(8, dtype=np.float32).tobytes()
    reply = {**BASE["loop"], "channels": 2, "audio": True, "stems": ["bass"], "playing": True}
    message = decode(reply, mix)
    np.testing.assert_array_equal(message.mix, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert message.is_reply() and message.playing is True and message.stems == ["bass"]
    assert decode({k: v for k, v in BASE["loop"].items() if k != "version"}).version == 1  # defaults to the serial
    error = refused({**BASE["loop"], "frames": 5})
    assert error.code == "bad-message" and "1 bars of 4 frames has 4 frames" in error.message and "5" in error.message
    error = refused({**reply, "stems": ["a b"]}, mix)
    assert error.code == "bad-message" and "stem" in error.message
    error = refused({**reply, "dtype": "int16"}, mix)
    assert error.code == "bad-dtype"
    error = refused(reply)  # audio true, no frame
    assert error.code == "bad-message" and "carries 1" in error.message
    error = refused({**reply, "audio": False}, mix)
    assert error.code == "bad-message" and "carries 0" in error.message
    # serial 0: no loop yet, never audio
    none_yet = decode({"type": "loop", "serial": 0, "playing": False})
    assert none_yet.serial == 0 and none_yet.version == 0 and none_yet.playing is False and none_yet.tempo is None
    error = refused({"type": "loop", "serial": 0, "audio": True}, mix)
    assert error.code == "bad-message" and "serial 0" in error.message
    error = refused({"type": "loop", "serial": 0}, mix)
    assert error.code == "bad-message" and "carries 0" in error.message
    error = refused({"type": "loop", "serial": -1})
    assert error.code == "bad-message" and "serial" in error.message
    # a request: no audio, since defaults to 0
    assert decode({"type": "loop"}).since == 0 and not decode({"type": "loop"}).is_reply()
    error = refused({"type": "loop"}, mix)
    assert error.code == "bad-message" and "carries 0" in error.message


def test_loop_reply_header_says_what_follows():
    mix = np.zeros((2, 6), np.float32)
    head = json.loads(bytes(P.Loop(serial=1, version=2, tempo=90.0, bars=2, beats_per_bar=4, bar_frames=3, rate=8000,
                                   channels=1, frames=1, mix=mix).to_frames()[0]))
    assert head["channels"] == 2 and head["frames"] == 6 and head["audio"] is True and head["dtype"] == "float32le"
    assert "mix" not in head
    empty = json.loads(bytes(P.Loop(serial=0, version=0).to_frames()[0]))
    assert empty["audio"] is False and "dtype" not in empty
    request = json.loads(bytes(P.Loop(since=3).to_frames()[0]))
    assert request == {"v": 1, "type": "loop", "since": 3}


def test_result_header_lists_files_only_when_there_are_some():
    stems = {"bass": np.zeros((1, 2), np.float32)}
    head = json.loads(bytes(P.Result(job="j", rate=8000, stems_audio=stems).to_frames()[0]))
    assert "files" not in head and head["stems"] == ["bass"] and head["channels"] == 1 and head["frames"] == 2
    frames = P.Result(job="j", rate=8000, stems_audio=stems, files={"midi": b"abc"}).to_frames()
    assert json.loads(bytes(frames[0]))["files"] == ["midi"] and bytes(frames[-1]) == b"abc" and len(frames) == 3


def test_submit_header_says_what_follows():
    a = np.zeros((2, 3), np.float32)
    head = json.loads(bytes(P.Submit(task="separate", rate=8000, audio=a, given={"d": a}).to_frames()[0]))
    assert (head["channels"], head["frames"], head["audio"], head["given"], head["dtype"]) == (2, 3, True, ["d"],
                                                                                             "float32le")
    head = json.loads(bytes(P.Submit(task="generate", rate=None, channels=2, frames=9).to_frames()[0]))
    assert (head["channels"], head["frames"], head["audio"], head["given"]) == (2, 9, False, [])
    assert "rate" not in head
    with pytest.raises(ValueError, match="same"):
        P.Submit(task="accompany", rate=8000, audio=a, given={"d": np.zeros((2, 4), np.float32)}).header()


def test_mono_arrays_travel_as_one_channel():
    mono = np.arange(4, dtype=np.float64)  # any float dtype, one dimension
    frames = P.Submit(task="separate", rate=8000, audio=mono).to_frames()
    head = json.loads(bytes(frames[0]))
    assert head["channels"] == 1 and head["frames"] == 4 and len(frames) == 2
    np.testing.assert_array_equal(P.decode(frames).audio, [[0, 1, 2, 3]])


# --- the envelope -------------------------------------------------------------------------------------------------


def test_req_tokens():
    for req in (None, 0, -(1 << 53) + 1, (1 << 53) - 1, "", "r" * 64):
        assert decode({"type": "status", "req": req}).req == req
    for req in (1 << 53, -(1 << 53), "r" * 65, True, 1.5, [1], {"a": 1}):
        error = refused({"type": "status", "req": req})
        assert error.code == "bad-message" and "req" in error.message


def test_version_and_type():
    for v in (0, 2, True, "1", 1.0, None):
        with pytest.raises(P.ProtocolError) as caught:
            P.decode([json.dumps({"v": v, "type": "status"}).encode()])
        assert caught.value.code == "version" and '"v": 1' in caught.value.message
    for kind in ("explode", None, 3, "Status"):
        error = refused({"type": kind})
        assert error.code == "unknown-type" and "hello" in error.message and "loop" in error.message


def test_the_server_refuses_what_only_a_server_sends():
    for shape in ("accepted", "progress", "partial", "result", "error", "loop"):
        head = json.dumps({"v": 1, **BASE[shape]}).encode()
        with pytest.raises(P.ProtocolError) as caught:
            P.decode([head], from_client=True)
        assert caught.value.code == "unknown-type" and "server-to-client" in caught.value.message
        assert ("reply" in caught.value.message) == (shape == "loop")
        assert "submit" in caught.value.message and "accepted" not in caught.value.message.split(":")[-1]
    for shape in ("hello", "list", "submit", "cancel", "status", "fetch", "heartbeat", "unload", "loop-request"):
        assert P.decode([json.dumps({"v": 1, **BASE[shape]}).encode()], from_client=True).TYPE == BASE[shape]["type"]


def test_header_size_limit_is_exact():
    head = json.dumps({"v": 1, "type": "status", "info": {"pad": ""}})
    pad = P.MAX_HEADER_BYTES - len(head)
    exact = json.dumps({"v": 1, "type": "status", "info": {"pad": "x" * pad}}).encode()
    assert len(exact) == P.MAX_HEADER_BYTES and P.decode([exact]).info["pad"] == "x" * pad
    with pytest.raises(P.ProtocolError) as caught:
        P.decode([exact[:-1] + b" }"])
    assert caught.value.code == "too-large" and str(P.MAX_HEADER_BYTES + 1) in caught.value.message


def test_frames_of_any_buffer_kind_decode():
    class ZmqLikeFrame:  # zmq.Frame exposes its bytes as .buffer
        def __init__(self, data):
            self.buffer = memoryview(data)

    samples = np.array([0.5, -0.25], np.float32)
    head = json.dumps({"v": 1, "type": "submit", "task": "separate", "rate": 8000, "channels": 1, "frames": 2,
                       "audio": True}).encode()
    for frame in (samples.tobytes(), bytearray(samples.tobytes()), memoryview(samples), ZmqLikeFrame(samples.tobytes()),
                  memoryview(samples.view(np.uint8).reshape(2, 4))):
        for header in (head, ZmqLikeFrame(head)):
            np.testing.assert_array_equal(P.decode([header, frame]).audio, [samples])


def test_errors_carry_the_readable_req_and_job():
    error = refused({"type": "progress", "req": "r9", "job": "j9"})  # fraction missing
    assert error.req == "r9" and error.job == "j9"
    error = refused({"type": "progress", "req": "r9", "job": "../x", "fraction": 0.1})
    assert error.req == "r9" and error.job is None
    error = refused({"v": 1, "type": "nope", "req": 4, "job": "j"})
    assert error.req == 4 and error.job == "j" and error.code == "unknown-type"
    reply = P.error_reply(error)
    assert (reply.code, reply.message, reply.req, reply.job) == (error.code, error.message, 4, "j")


def test_header_shapes_no_check_foresaw_are_bad_messages():
    # a header whose fields are of a shape the checks let through but the constructor cannot use
    error = refused({"type": "result", "job": "j", "rate": 8000, "channels": 1, "frames": 1, "files": [{"a": 1}]},
                    b"x")
    assert error.code == "bad-message" and "malformed result header" in error.message
    with pytest.raises(P.ProtocolError) as caught:
        P.decode([b'{"v": 1, "type": "status", "x": Infinity}'])
    assert caught.value.code == "bad-message" and "Infinity" in caught.value.message
    with pytest.raises(P.ProtocolError) as caught:
        P.decode([b"[" * 60_000])  # deeper than the JSON parser recurses
    assert caught.value.code == "bad-message" and "not JSON" in caught.value.message


def test_protocol_error_codes_are_the_documented_ones():
    with pytest.raises(AssertionError):
        P.ProtocolError("no-such-code", "x")
    error = P.ProtocolError("busy", "later", req=3, job="j")
    assert (error.code, error.message, error.req, error.job, str(error)) == ("busy", "later", 3, "j", "later")


# --- the helpers every message uses ---------------------------------------------------------------------------------


def test_region_shape_counts_one_dimensional_audio_as_one_channel():
    assert P._region_shape(None, {}) == (0, 0)
    assert P._region_shape(np.zeros(7), {}) == (1, 7)
    assert P._region_shape(None, {"a": np.zeros(7), "b": np.zeros((1, 7))}) == (1, 7)
    assert P._region_shape(np.zeros((2, 5)), {"a": np.zeros((2, 5))}) == (2, 5)
    assert all(type(n) is int for n in P._region_shape(np.zeros((np.int64(2), 5)), {}))
    with pytest.raises(ValueError, match=r"the same \(channels, frames\), got \[\(1, 5\), \(1, 7\), \(2, 5\)\]"):
        P._region_shape(np.zeros((2, 5)), {"a": np.zeros(7), "b": np.zeros((1, 5))})


def test_planar_makes_contiguous_little_endian_float32_rows():
    out = P._planar(np.arange(4, dtype=np.float64))
    assert out.shape == (1, 4) and out.dtype == np.dtype("<f4") and out.flags.c_contiguous
    strided = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    out = P._planar(strided)
    assert out.dtype == np.dtype("<f4") and out.flags.c_contiguous and np.array_equal(out, [[0, 2], [4, 6], [8, 10]])
    ready = np.zeros((2, 3), "<f4")
    assert P._planar(ready) is ready  # nothing copied when it is already what travels


def test_samples_checks_size_values_and_peak_with_numbers_in_the_message():
    with pytest.raises(P.ProtocolError) as caught:
        P._samples(memoryview(b"\x00" * 12), 4, "channel 0")
    assert caught.value.code == "bad-message"
    assert caught.value.message == ("channel 0: the frame has 12 bytes, the header says 4 float32 samples (16 bytes)")
    assert P._samples(memoryview(b""), 0, "empty").size == 0  # an empty frame has no peak: nothing to refuse
    quiet = np.full(3, -0.5, np.float32)
    assert np.array_equal(P._samples(memoryview(quiet.tobytes()), 3, "x", peak_limit=0.5), quiet)  # at the limit
    with pytest.raises(P.ProtocolError) as caught:
        P._samples(memoryview(np.array([0.0, -2.5], np.float32).tobytes()), 2, "stem 'bass'", peak_limit=2.0)
    assert caught.value.code == "too-large"
    assert caught.value.message.startswith("stem 'bass' has samples of magnitude 2.5: at most 2 (+80 dBFS) is accepted")
    loud = np.array([1e30], np.float32)  # results are not bounded: stems may be louder than their mixture
    assert P._samples(memoryview(loud.tobytes()), 1, "result")[0] == np.float32(1e30)


def test_headers_are_compact_strict_json():
    frames = P.Status(job="j", info={"a": [1, 2]}).to_frames()
    assert bytes(frames[0]) == b'{"v":1,"type":"status","job":"j","info":{"a":[1,2]}}'
    with pytest.raises(ValueError):
        P.Heartbeat(time=float("nan")).to_frames()  # a NaN never reaches the wire


def test_what_an_absent_optional_field_decodes_to():
    assert decode({"type": "hello"}).version == 1 and decode({"type": "hello"}).client is None
    accepted = decode({"type": "accepted", "job": "j"})
    assert accepted.queued == 0 and accepted.cached is False
    progress = decode({"type": "progress", "job": "j", "fraction": 0.5})
    assert (progress.stage, progress.eta_s, progress.window, progress.windows, progress.step, progress.steps) == (
        "", None, 0, 0, 0, 0)
    error = decode({"type": "error", "code": "failed"})
    assert error.message == "" and error.job is None
    partial = decode({"type": "partial", "job": "j", "rate": 8000, "channels": 1, "frames": 0})
    assert (partial.kind, partial.start, partial.end, partial.window, partial.windows) == ("window", 0, 0, 0, 0)
    result = decode({"type": "result", "job": "j", "rate": 8000, "channels": 1, "frames": 0})
    assert result.cached is False and result.elapsed_s is None and result.files == {} and result.info is None
    loop = decode({**BASE["loop"]})
    assert loop.playing is None and loop.stems is None and loop.mix is None


def test_number_bounds_are_exact():
    for shape, key, lo, hi in NUMBERS:
        for value in (np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf)):
            error = refused(with_field(shape, key, float(value)))
            assert error.code == "bad-message" and error.message.startswith(f"{key} must be a number in [{lo}, {hi}]")


def test_messages_name_what_they_refuse():
    frame = np.zeros(2, np.float32).tobytes()
    assert refused({**BASE["loop"], "stems": ["a b"]}).message.startswith("stem 'a b' is not a name")
    assert refused({**BASE["result"], "files": ["a b"]}, b"x").message.startswith("file 'a b' is not a name")
    assert refused({**BASE["partial"], "stems": ["a b"]}, frame).message.startswith("stem 'a b' is not a name")
    submit = {"type": "submit", "task": "accompany", "rate": 8000, "channels": 1, "frames": 2}
    assert refused({**submit, "given": ["a b"]}, frame).message.startswith("given stem 'a b' is not a name")
    assert refused({**submit, "given": ["d", "d"]}, frame, frame).message == "a given stem is named twice"
    assert refused({**submit, "given": ["d"], "frames": 0}, frame).message == (
        "audio frames follow but channels or frames is 0")
    assert refused({**submit, "given": ["d"], "rate": None}, frame).message == (
        "the header lacks 'rate' (the audio's sample rate)")
    assert refused({**submit, "given": ["d"]}, b"\x00").message.startswith("given stem 'd': the frame has 1 bytes")
    assert refused({**submit, "audio": True}, b"\x00").message.startswith("channel 0: the frame has 1 bytes")
    loop = {**BASE["loop"], "audio": True}
    assert refused(loop, b"\x00").message.startswith("the loop's mix: the frame has 1 bytes")
    stems = {**BASE["partial"], "channels": 1, "frames": 2, "end": 2, "stems": ["bass"]}
    assert refused(stems, b"\x00").message.startswith("stem 'bass': the frame has 1 bytes")
    assert refused(stems).message == "a partial message with this header carries 1 audio frame(s) after the header, got 0"
    assert refused({"type": "loop", "serial": 0, "audio": True}, frame).message == (
        "a loop reply with serial 0 (no loop) carries no audio")
    assert refused({**BASE["partial"], "kind": "k" * 17}).message == "kind must be a string of at most 16 characters"
    assert refused({**BASE["submit"], "priority": "p" * 17}).message == (
        "priority must be a string of at most 16 characters")


def test_the_edges_of_audio_and_files():
    one = decode({"type": "submit", "task": "separate", "rate": 8000, "channels": 1, "frames": 1, "audio": True},
                 np.ones(1, np.float32).tobytes())
    assert one.audio.shape == (1, 1)  # a region of one frame
    names = [f"f{i}" for i in range(16)]
    frame = np.zeros(1, np.float32).tobytes()
    result = decode({"type": "result", "job": "j", "rate": 8000, "channels": 1, "frames": 1, "stems": ["bass"],
                     "files": names}, frame, *[n.encode() for n in names])
    assert result.files == {n: n.encode() for n in names}  # 16 files, each its own frame, in order
    head = P.Submit(task="generate", rate=None).header()
    assert head["channels"] == 0 and head["frames"] == 0 and head["audio"] is False
