"""The bridge's wire protocol: ZeroMQ multipart messages as data classes, with validation at the edge.

Every message is one JSON header frame followed by zero or more raw audio
frames (little-endian float32, planar). The header always has

    {"v": PROTOCOL_VERSION, "type": "<message type>", "req": <client token>, "job": "<job id>", ...}

`req` is echoed in every direct reply so a client can match replies to
requests; `job` names the job a message is about. Audio travels as

* submit: one frame per channel of the region (`audio: true`), then one frame
  per given stem (each channels x frames, channel-major);
* partial / result: one frame per stem (each channels x frames, channel-major),
  in the order of the header's `stems`.

`Message.to_frames()` returns `[header_bytes, *memoryviews]` (nothing copied
when the arrays are already contiguous little-endian float32), and
`decode(frames)` returns the message or raises `ProtocolError` with an error
code, so the server turns every malformed message into an `Error` reply.
Audio arrays decoded from frames are read-only views of the received
buffers (np.frombuffer), not copies. The message table and the error codes
are documented in docs/protocol.md.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from stemweave.engine.audio_io import MAX_PEAK  # the largest sample magnitude a task takes (+80 dBFS)

PROTOCOL_VERSION = 1
DTYPE = "float32le"
WIRE_DTYPE = np.dtype("<f4")

MAX_HEADER_BYTES = 64 * 1024  # a header larger than this is refused before parsing
MAX_CHANNELS = 2
MAX_STEMS = 16
MAX_NAME = 64  # characters in a stem, model, preset name or job id
MAX_RATE = 768_000
MIN_RATE = 1_000
MAX_CLAIMED_FRAMES = 1 << 31  # frames any header may claim; the server's --max-seconds is much stricter
PRIORITIES = ("interactive", "batch")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")  # names only: no path separators, no leading dot

# Error codes (docs/protocol.md, "Error codes").
ERROR_CODES = {
    "bad-message": "the message is malformed: bad JSON, missing or mistyped fields, wrong frame count or sizes, NaN",
    "version": "the message's protocol version is not the server's",
    "unknown-type": "the message type is not one of the protocol's",
    "bad-dtype": "audio must be float32le",
    "too-large": "a header, a claimed length, a channel or stem count, a sample's magnitude (over 1e4) or a job's bytes "
                 "(--max-job-mb) is beyond the limits",
    "too-long": "the region is longer than the server's --max-seconds",
    "bad-request": "a well-formed request the server cannot run: unknown model, preset, parameter or stem",
    "unknown-job": "no job with that id (never submitted, or its result has expired)",
    "busy": "the queue is full: try again later",
    "cancelled": "the job was cancelled",
    "failed": "the job raised an error while running",
    "shutdown": "the server is shutting down: the job was cancelled",
    "no-loop": "the server runs no live loop engine (start it with `stemweave serve --osc-port N`)",
}


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` is one of ERROR_CODES. req/job are echoed when they were readable."""

    def __init__(self, code: str, message: str, *, req=None, job=None):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code, self.message, self.req, self.job = code, message, req, job


# ---------------------------------------------------------------------------------------------------------------
# Messages


@dataclass(kw_only=True)
class Message:
    """Base of every message: the header fields all messages share."""

    TYPE: ClassVar[str] = ""
    AUDIO: ClassVar[bool] = False  # whether audio frames may follow the header
    job: str | None = None
    req: str | int | None = None

    def header(self) -> dict:
        """This message's JSON header (without audio)."""
        head = {"v": PROTOCOL_VERSION, "type": self.TYPE}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _NOT_IN_HEADER or value is None:
                continue
            head[f.name] = value
        return head

    def audio_frames(self) -> list[memoryview]:
        return []

    def to_frames(self) -> list:
        """[header bytes, *audio memoryviews]: ready for socket.send_multipart(frames, copy=False)."""
        head = json.dumps(self.header(), separators=(",", ":"), allow_nan=False).encode()
        return [head, *self.audio_frames()]

    # each message type reads itself: `from_header(head, audio) -> Message` (a classmethod), called by decode()


_NOT_IN_HEADER = {"audio", "given", "stems_audio"}


@dataclass(kw_only=True)
class Hello(Message):
    """Client -> server: who are you; server -> client: the protocol version and what the server offers."""

    TYPE: ClassVar[str] = "hello"
    version: int = PROTOCOL_VERSION
    client: str | None = None
    server: dict | None = None  # reply only: name, version, devices, max_seconds, models loaded

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(req=head.get("req"), version=_int(head, "version", 0, 1 << 30, default=PROTOCOL_VERSION),
                   client=_opt_str(head, "client", 256), server=_opt_dict(head, "server"))


@dataclass(kw_only=True)
class Listing(Message):
    """Client -> server (empty): list what can run; server -> client: models, presets and tasks."""

    TYPE: ClassVar[str] = "list"
    models: list | None = None
    presets: list | None = None
    tasks: list | None = None

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(req=head.get("req"), models=_opt_list(head, "models"), presets=_opt_list(head, "presets"),
                   tasks=_opt_list(head, "tasks"))


@dataclass(kw_only=True)
class Submit(Message):
    """Client -> server: run a task on a region. Audio: one frame per channel, then one frame per given stem."""

    TYPE: ClassVar[str] = "submit"
    AUDIO: ClassVar[bool] = True
    task: str = "separate"
    model: str | None = None  # a model name the server knows; None: the server's default
    preset: str | None = None  # a preset name; None: the task's default preset
    params: dict = field(default_factory=dict)  # preset overrides and region options (docs/protocol.md)
    seed: int = 0
    rate: int | None = 44100  # None (absent from the header): generate at the model's rate
    priority: str = "interactive"
    position: int | None = None  # the region's first frame on the host timeline, echoed in the result
    audio: np.ndarray | None = None  # (channels, frames) float32: the region (mixture)
    given: dict[str, np.ndarray] = field(default_factory=dict)  # accompany: {stem: (channels, frames)}
    channels: int | None = None  # generate only (no audio): the header's channels and frames, if any
    frames: int | None = None

    def header(self) -> dict:
        head = super().header()
        shape = _region_shape(self.audio, self.given)
        if shape == (0, 0):
            shape = (self.channels or 0, self.frames or 0)
        head.update(channels=shape[0], frames=shape[1], dtype=DTYPE, audio=self.audio is not None,
                    given=list(self.given))
        return head

    def audio_frames(self):
        out = []
        if self.audio is not None:
            audio = _planar(self.audio)
            out += [memoryview(row) for row in audio]  # rows of a C-contiguous array are contiguous: no copy
        out += [memoryview(_planar(a).reshape(-1)) for a in self.given.values()]
        return out

    @classmethod
    def from_header(cls, head, audio):
        channels = _int(head, "channels", 0, MAX_CHANNELS, default=0, code="too-large")
        frames = _int(head, "frames", 0, MAX_CLAIMED_FRAMES, default=0, code="too-large")
        _check_dtype(head)
        has_audio = _bool(head, "audio", False)
        given_names = _opt_list(head, "given") or []
        if len(given_names) > MAX_STEMS:
            raise ProtocolError("too-large", f"at most {MAX_STEMS} given stems, got {len(given_names)}")
        for name in given_names:
            _check_name(name, "given stem")
        if len(set(given_names)) != len(given_names):
            raise ProtocolError("bad-message", "a given stem is named twice")
        if (has_audio or given_names) and (channels < 1 or frames < 1):
            raise ProtocolError("bad-message", "audio frames follow but channels or frames is 0")
        rate = _opt_int(head, "rate", MIN_RATE, MAX_RATE)
        if rate is None and (has_audio or given_names):
            raise ProtocolError("bad-message", "the header lacks 'rate' (the audio's sample rate)")
        _expect_frames(head, audio, (channels if has_audio else 0) + len(given_names))
        region = None
        if has_audio:
            rows = [_samples(audio[c], frames, f"channel {c}", MAX_PEAK) for c in range(channels)]
            region = np.stack(rows)  # (channels, frames), the one copy: planar frames into one array
        given = {name: _samples(audio[(channels if has_audio else 0) + i], channels * frames, f"given stem {name!r}",
                                MAX_PEAK)
                 .reshape(channels, frames) for i, name in enumerate(given_names)}
        params = _opt_dict(head, "params") or {}
        task = _str(head, "task", 32)
        priority = _str(head, "priority", 16, default="interactive")
        if priority not in PRIORITIES:
            raise ProtocolError("bad-message", f"priority must be one of {', '.join(PRIORITIES)}, got {priority!r}")
        model, preset = _opt_name(head, "model"), _opt_name(head, "preset")
        return cls(req=head.get("req"), job=None, task=task, model=model, preset=preset, params=params,
                   seed=_int(head, "seed", 0, (1 << 63) - 1, default=0), rate=rate,
                   priority=priority, position=_opt_int(head, "position", -(1 << 62), 1 << 62),
                   audio=region, given=given, channels=channels or None, frames=frames or None)

    @property
    def shape(self) -> tuple[int, int]:
        return _region_shape(self.audio, self.given)


@dataclass(kw_only=True)
class Accepted(Message):
    """Server -> client: the job id, its place in the queue, and whether an identical request's result is cached."""

    TYPE: ClassVar[str] = "accepted"
    queued: int = 0  # jobs ahead of this one
    cached: bool = False

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_name(head, "job"), req=head.get("req"), queued=_int(head, "queued", 0, 1 << 30, default=0),
                   cached=_bool(head, "cached", False))


@dataclass(kw_only=True)
class Progress(Message):
    """Server -> client: how far a job is (fraction in [0, 1]), its stage and estimated seconds left."""

    TYPE: ClassVar[str] = "progress"
    fraction: float = 0.0
    stage: str = ""
    eta_s: float | None = None
    window: int = 0
    windows: int = 0
    step: int = 0
    steps: int = 0

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_name(head, "job"), req=head.get("req"), fraction=_num(head, "fraction", 0.0, 1.0),
                   stage=_str(head, "stage", 64, default=""), eta_s=_opt_num(head, "eta_s", 0.0, 1e9),
                   **{k: _int(head, k, 0, 1 << 40, default=0) for k in ("window", "windows", "step", "steps")})


@dataclass(kw_only=True)
class _StemsMessage(Message):
    """A message carrying stems: one frame per stem, each (channels, frames) float32le."""

    AUDIO: ClassVar[bool] = True
    rate: int = 44100
    stems_audio: dict[str, np.ndarray] = field(default_factory=dict)  # {stem: (channels, frames)}
    position: int | None = None

    def header(self) -> dict:
        head = super().header()
        shape = _region_shape(None, self.stems_audio)
        head.update(channels=shape[0], frames=shape[1], dtype=DTYPE, stems=list(self.stems_audio))
        return head

    def audio_frames(self):
        return [memoryview(_planar(a).reshape(-1)) for a in self.stems_audio.values()]

    @classmethod
    def _stems_from(cls, head, audio) -> dict:
        channels = _int(head, "channels", 0, MAX_CHANNELS, code="too-large")
        frames = _int(head, "frames", 0, MAX_CLAIMED_FRAMES, code="too-large")
        _check_dtype(head)
        names = _opt_list(head, "stems") or []
        if len(names) > MAX_STEMS:
            raise ProtocolError("too-large", f"at most {MAX_STEMS} stems, got {len(names)}")
        for name in names:
            _check_name(name, "stem")
        _expect_frames(head, audio, len(names))
        return {name: _samples(audio[i], channels * frames, f"stem {name!r}").reshape(channels, frames)
                for i, name in enumerate(names)}

    @classmethod
    def _common(cls, head, audio) -> dict:
        return dict(job=_name(head, "job"), req=head.get("req"), rate=_int(head, "rate", MIN_RATE, MAX_RATE),
                    stems_audio=cls._stems_from(head, audio),
                    position=_opt_int(head, "position", -(1 << 62), 1 << 62))


@dataclass(kw_only=True)
class Partial(_StemsMessage):
    """Server -> client: frames [start, end) of every stem that are final (a finished window), or a first
    estimate of the whole region (kind "estimate") that a later result replaces."""

    TYPE: ClassVar[str] = "partial"
    kind: str = "window"  # "window" | "estimate"
    start: int = 0
    end: int = 0
    window: int = 0
    windows: int = 0

    @classmethod
    def from_header(cls, head, audio):
        kind = _str(head, "kind", 16, default="window")
        if kind not in ("window", "estimate"):
            raise ProtocolError("bad-message", f"partial kind must be window or estimate, got {kind!r}")
        msg = cls(kind=kind, **cls._common(head, audio),
                  **{k: _int(head, k, 0, MAX_CLAIMED_FRAMES, default=0) for k in ("start", "end", "window", "windows")})
        frames = next(iter(msg.stems_audio.values())).shape[1] if msg.stems_audio else 0
        if msg.end - msg.start != frames:
            raise ProtocolError("bad-message", f"partial covers {msg.start}:{msg.end} but carries {frames} frames")
        return msg


@dataclass(kw_only=True)
class Result(_StemsMessage):
    """Server -> client: the finished job's stems, aligned sample-for-sample with the region."""

    TYPE: ClassVar[str] = "result"
    cached: bool = False
    elapsed_s: float | None = None
    info: dict | None = None  # provenance: model, preset, seed, device
    files: dict[str, bytes] = field(default_factory=dict)  # named byte frames after the stems (the accompanist's "midi")

    def header(self) -> dict:
        head = super().header()
        head.pop("files", None)
        if self.files:
            head["files"] = list(self.files)
        return head

    def audio_frames(self):
        return [*super().audio_frames(), *(memoryview(data) for data in self.files.values())]

    @classmethod
    def from_header(cls, head, audio):
        names = _opt_list(head, "files") or []
        if len(names) > MAX_STEMS or len(names) > len(audio) or len(set(names)) != len(names):
            raise ProtocolError("bad-message", f"files names {len(names)} byte frames; {len(audio)} frames follow")
        for name in names:
            _check_name(name, "file")
        split = len(audio) - len(names)
        files = {name: bytes(audio[split + i]) for i, name in enumerate(names)}
        return cls(cached=_bool(head, "cached", False), elapsed_s=_opt_num(head, "elapsed_s", 0.0, 1e12),
                   info=_opt_dict(head, "info"), files=files, **cls._common(head, audio[:split]))


@dataclass(kw_only=True)
class Error(Message):
    """Server -> client: a code from ERROR_CODES and a message a person can act on."""

    TYPE: ClassVar[str] = "error"
    code: str = "bad-message"
    message: str = ""

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_opt_name(head, "job"), req=head.get("req"), code=_str(head, "code", 64),
                   message=_str(head, "message", 4096, default=""))


@dataclass(kw_only=True)
class Cancel(Message):
    """Client -> server: cancel job `job` (queued or running). The reply is its Status; the job then ends with
    Error(code="cancelled")."""

    TYPE: ClassVar[str] = "cancel"

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_name(head, "job"), req=head.get("req"))


@dataclass(kw_only=True)
class Status(Message):
    """Client -> server: a job's state (job set) or the server's (job None); server -> client: `info`."""

    TYPE: ClassVar[str] = "status"
    info: dict | None = None

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_opt_name(head, "job"), req=head.get("req"), info=_opt_dict(head, "info"))


@dataclass(kw_only=True)
class Fetch(Message):
    """Client -> server: send again the result of a finished job (a reconnecting client); reply: Result."""

    TYPE: ClassVar[str] = "fetch"

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(job=_name(head, "job"), req=head.get("req"))


@dataclass(kw_only=True)
class Heartbeat(Message):
    """Either way: I am alive. The server sends one every --heartbeat seconds to clients with jobs, listing them;
    a client's heartbeat is answered with one."""

    TYPE: ClassVar[str] = "heartbeat"
    time: float | None = None
    jobs: list | None = None

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(req=head.get("req"), time=_opt_num(head, "time", -1e12, 1e12), jobs=_opt_list(head, "jobs"))


@dataclass(kw_only=True)
class Unload(Message):
    """Client -> server: drop a warm model (`model`), or every one (None); reply: Unload listing what was dropped."""

    TYPE: ClassVar[str] = "unload"
    model: str | None = None
    unloaded: list | None = None

    @classmethod
    def from_header(cls, head, audio):
        _expect_frames(head, audio, 0)
        return cls(req=head.get("req"), model=_opt_name(head, "model"), unloaded=_opt_list(head, "unloaded"))


LOOP_TEMPO_RANGE = (20.0, 300.0)  # BPM: the loop engine's range (bridge/loop.py)
LOOP_MAX_BARS = 64
LOOP_MAX_BEATS_PER_BAR = 64


@dataclass(kw_only=True)
class Loop(Message):
    """Client -> server: send the live loop (`stemweave serve --osc-port`) unless I already hold version `since`.
    Server -> client: the newest finished loop (`serial` 0: none yet) and, when `audio` is true, its mix as one
    frame of channels x frames float32le (channel-major). `version` changes whenever that mix does (a new loop, or
    new gains); a reply to a request whose `since` equals it carries no audio."""

    TYPE: ClassVar[str] = "loop"
    AUDIO: ClassVar[bool] = True
    since: int | None = None  # request only
    serial: int | None = None  # reply fields from here on
    version: int | None = None
    tempo: float | None = None
    bars: int | None = None
    beats_per_bar: int | None = None
    bar_frames: int | None = None
    rate: int | None = None
    channels: int | None = None  # of the loop, also when its mix is not sent (taken from mix when it is)
    frames: int | None = None
    playing: bool | None = None
    stems: list | None = None
    mix: np.ndarray | None = None  # (channels, frames) float32, sent as one frame

    def is_reply(self) -> bool:
        return self.serial is not None

    def header(self) -> dict:
        head = super().header()
        head.pop("mix", None)
        if self.is_reply():
            if self.mix is not None:
                head["channels"], head["frames"] = _region_shape(self.mix, {})
            if self.serial:
                head["dtype"] = DTYPE
            head["audio"] = self.mix is not None
        return head

    def audio_frames(self):
        return [] if self.mix is None else [memoryview(_planar(self.mix).reshape(-1))]

    @classmethod
    def from_header(cls, head, audio):
        req = head.get("req")
        if head.get("serial") is None:  # a request
            _expect_frames(head, audio, 0)
            return cls(req=req, since=_int(head, "since", 0, 1 << 62, default=0))
        serial = _int(head, "serial", 0, 1 << 62)
        version = _int(head, "version", 0, 1 << 62, default=serial)
        has_audio = _bool(head, "audio", False)
        if serial == 0:  # no loop yet
            if has_audio:
                raise ProtocolError("bad-message", "a loop reply with serial 0 (no loop) carries no audio")
            _expect_frames(head, audio, 0)
            return cls(req=req, serial=0, version=version, playing=_opt_bool(head, "playing"))
        tempo = _num(head, "tempo", *LOOP_TEMPO_RANGE)
        bars = _int(head, "bars", 1, LOOP_MAX_BARS)
        beats = _int(head, "beats_per_bar", 1, LOOP_MAX_BEATS_PER_BAR)
        rate = _int(head, "rate", MIN_RATE, MAX_RATE)
        bar_frames = _int(head, "bar_frames", 1, MAX_CLAIMED_FRAMES // LOOP_MAX_BARS)
        channels = _int(head, "channels", 1, MAX_CHANNELS, code="too-large")
        frames = _int(head, "frames", 1, MAX_CLAIMED_FRAMES, code="too-large")
        if frames != bars * bar_frames:
            raise ProtocolError("bad-message", f"a loop of {bars} bars of {bar_frames} frames has {bars * bar_frames} "
                                               f"frames, the header says {frames}")
        _check_dtype(head)
        stems = _opt_list(head, "stems")
        for name in stems or []:
            _check_name(name, "stem")
        mix = None
        if has_audio:
            _expect_frames(head, audio, 1)
            mix = _samples(audio[0], channels * frames, "the loop's mix").reshape(channels, frames)
        else:
            _expect_frames(head, audio, 0)
        return cls(req=req, serial=serial, version=version, tempo=tempo, bars=bars, beats_per_bar=beats,
                   bar_frames=bar_frames, rate=rate, channels=channels, frames=frames, playing=_opt_bool(head, "playing"),
                   stems=stems, mix=mix)


MESSAGES: dict[str, type[Message]] = {m.TYPE: m for m in (Hello, Listing, Submit, Accepted, Progress, Partial, Result,
                                                           Error, Cancel, Status, Fetch, Heartbeat, Unload, Loop)}
SERVER_ONLY = ("accepted", "progress", "partial", "result", "error")  # and a loop reply (a header with "serial")
CLIENT_TYPES = tuple(t for t in MESSAGES if t not in SERVER_ONLY)


def decode(frames, *, from_client: bool = False) -> Message:
    """The message in `frames` (bytes, memoryviews or zmq.Frame), or ProtocolError saying what is wrong.
    from_client (the server's side): a type only the server sends is `unknown-type` before its fields are read."""
    if not frames:
        raise ProtocolError("bad-message", "empty message: the first frame must be a JSON header")
    buffers = [_buffer(f) for f in frames]
    raw = buffers[0]
    if raw.nbytes > MAX_HEADER_BYTES:
        raise ProtocolError("too-large", f"header of {raw.nbytes} bytes: at most {MAX_HEADER_BYTES}")
    try:
        head = json.loads(bytes(raw).decode("utf-8"), parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise ProtocolError("bad-message", f"the header frame is not JSON: {error}") from None
    if not isinstance(head, dict):
        raise ProtocolError("bad-message", "the header must be a JSON object")
    req = head.get("req")
    if not (req is None or isinstance(req, int) and not isinstance(req, bool) and abs(req) < 1 << 53
            or isinstance(req, str) and len(req) <= MAX_NAME):
        raise ProtocolError("bad-message", "req must be a string (at most 64 characters) or an integer")
    job = head.get("job") if isinstance(head.get("job"), str) and NAME.match(head.get("job")) else None
    try:
        version = head.get("v")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise ProtocolError("version", f"protocol version {version!r} is not supported: this server speaks "
                                           f"version {PROTOCOL_VERSION} (send \"v\": {PROTOCOL_VERSION})")
        kind = head.get("type")
        if not isinstance(kind, str) or kind not in MESSAGES:
            raise ProtocolError("unknown-type", f"unknown message type {kind!r}: one of {', '.join(MESSAGES)}")
        if from_client and (kind in SERVER_ONLY or kind == "loop" and head.get("serial") is not None):
            raise ProtocolError("unknown-type", f"{kind}{' reply' if kind == 'loop' else ''} is a server-to-client "
                                                "message: a client sends " + ", ".join(CLIENT_TYPES))
        cls = MESSAGES[kind]
        if buffers[1:] and not cls.AUDIO:
            raise ProtocolError("bad-message", f"a {kind} message has no audio frames, got {len(buffers) - 1}")
        try:
            return cls.from_header(head, buffers[1:])
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as error:
            # a header shape no check above foresaw: still the sender's fault, still an error reply
            raise ProtocolError("bad-message", f"malformed {kind} header: {error}") from None
    except ProtocolError as error:
        error.req = req if error.req is None else error.req
        error.job = job if error.job is None else error.job
        raise


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _no_constants(name):
    raise ValueError(f"{name} is not allowed in a header")


def _buffer(frame) -> memoryview:
    buffer = getattr(frame, "buffer", None)  # zmq.Frame
    view = buffer if buffer is not None else memoryview(frame)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _planar(audio: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian float32 (copies only when `audio` is not already that)."""
    audio = np.asarray(audio)
    if audio.ndim == 1:
        audio = audio[None]
    return np.ascontiguousarray(audio, dtype=WIRE_DTYPE)


def _region_shape(audio, stems: dict) -> tuple[int, int]:
    shapes = {np.shape(a)[-2:] if np.ndim(a) == 2 else (1, np.shape(a)[-1]) for a in stems.values()}
    if audio is not None:
        shapes.add(np.shape(audio) if np.ndim(audio) == 2 else (1, np.shape(audio)[-1]))
    if len(shapes) > 1:
        raise ValueError(f"all audio in one message must have the same (channels, frames), got {sorted(shapes)}")
    return tuple(int(n) for n in shapes.pop()) if shapes else (0, 0)


def _samples(buffer: memoryview, count: int, what: str, peak_limit: float | None = None) -> np.ndarray:
    """A read-only float32 view of one audio frame, checked: exact size, finite samples, and (the audio a client
    sends) no magnitude over `peak_limit`. Stems may exceed their mixture's peak, so results are not bounded."""
    if buffer.nbytes != count * WIRE_DTYPE.itemsize:
        raise ProtocolError("bad-message", f"{what}: the frame has {buffer.nbytes} bytes, the header says "
                                           f"{count} float32 samples ({count * WIRE_DTYPE.itemsize} bytes)")
    samples = np.frombuffer(buffer, dtype=WIRE_DTYPE)
    peak = float(np.max(np.abs(samples), initial=0.0))  # NaN or inf when any sample is
    if not math.isfinite(peak):
        raise ProtocolError("bad-message", f"{what} contains NaN or infinite samples")
    if peak_limit is not None and peak > peak_limit:
        raise ProtocolError("too-large", f"{what} has samples of magnitude {peak:.3g}: at most {peak_limit:g} "
                                         "(+80 dBFS) is accepted; float audio is normally within [-1, 1]")
    return samples


def _expect_frames(head: dict, audio: list, count: int) -> None:
    if len(audio) != count:
        raise ProtocolError("bad-message", f"a {head.get('type')} message with this header carries {count} audio "
                                           f"frame(s) after the header, got {len(audio)}")


def _check_dtype(head: dict) -> None:
    dtype = head.get("dtype", DTYPE)
    if dtype != DTYPE:
        raise ProtocolError("bad-dtype", f"dtype {dtype!r} is not supported: send {DTYPE!r} (little-endian float32)")


def _check_name(value, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise ProtocolError("bad-message", f"{what} {value!r} is not a name (letters, digits, _ . + -; at most "
                                           f"{MAX_NAME} characters; no path separators)")
    return value


def _missing(key):
    raise ProtocolError("bad-message", f"the header lacks {key!r}")


def _name(head, key) -> str:
    return _check_name(head[key], key) if key in head else _missing(key)


def _opt_name(head, key) -> str | None:
    return None if head.get(key) is None else _check_name(head[key], key)


def _str(head, key, limit, default=...) -> str:
    value = head.get(key, default)
    if value is ...:
        _missing(key)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError("bad-message", f"{key} must be a string of at most {limit} characters")
    return value


def _opt_str(head, key, limit) -> str | None:
    return None if head.get(key) is None else _str(head, key, limit)


def _int(head, key, lo, hi, default=..., code="bad-message") -> int:
    value = head.get(key, default)
    if value is ...:
        _missing(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError("bad-message", f"{key} must be an integer, got {value!r:.40}")
    if not lo <= value <= hi:
        raise ProtocolError(code, f"{key}={value} is outside [{lo}, {hi}]")
    return value


def _opt_int(head, key, lo, hi) -> int | None:
    return None if head.get(key) is None else _int(head, key, lo, hi)


def _num(head, key, lo, hi, default=...) -> float:
    value = head.get(key, default)
    if value is ...:
        _missing(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not lo <= value <= hi:
        raise ProtocolError("bad-message", f"{key} must be a number in [{lo}, {hi}], got {value!r:.40}")
    return float(value)


def _opt_num(head, key, lo, hi) -> float | None:
    return None if head.get(key) is None else _num(head, key, lo, hi)


def _bool(head, key, default) -> bool:
    value = head.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError("bad-message", f"{key} must be true or false, got {value!r:.40}")
    return value


def _opt_bool(head, key) -> bool | None:
    return None if head.get(key) is None else _bool(head, key, False)


def _opt_dict(head, key) -> dict | None:
    value = head.get(key)
    if value is not None and not isinstance(value, dict):
        raise ProtocolError("bad-message", f"{key} must be a JSON object")
    return value


def _opt_list(head, key) -> list | None:
    value = head.get(key)
    if value is not None and not isinstance(value, list):
        raise ProtocolError("bad-message", f"{key} must be a JSON array")
    return value


def error_reply(error: ProtocolError) -> Error:
    """The Error message that answers a ProtocolError."""
    return Error(job=error.job, req=error.req, code=error.code, message=error.message)


__all__ = [
    "DTYPE", "ERROR_CODES", "MAX_PEAK", "MESSAGES", "PROTOCOL_VERSION", "PRIORITIES", "ProtocolError", "Message", "Hello",
    "Listing", "Submit", "Accepted", "Progress", "Partial", "Result", "Error", "Cancel", "Status", "Fetch",
    "Heartbeat", "Unload", "Loop", "decode", "error_reply",
]
