"""The Python client DAW scripts use to talk to `stemweave serve`: blocking calls, or callbacks per job.

    from stemweave.bridge.client import Client

    with Client("tcp://127.0.0.1:5557") as client:
        stems = client.separate(audio, 48000, preset="separate-fast", seed=0,
                                on_progress=lambda p: print(p["fraction"]))

Blocking style: `separate` / `accompany` / `generate` submit and wait, and
return {stem: float32 (channels, frames)}. Callback style: `submit(...,
on_progress=, on_partial=, on_result=, on_error=)` returns the job id at once;
`poll()` (or `wait(job)`) delivers the callbacks. A Client is one DEALER
socket and is not thread-safe: use one per thread; to cancel a blocking call
from another thread, pass `cancel=threading.Event()` and set it.

Stems are read-only views of the received buffers (no copy); `.copy()` one to
edit it in place.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict, deque
from pathlib import Path

import numpy as np
import zmq
import zmq.auth

from stemweave.bridge import protocol as P

DEFAULT_ADDRESS = "tcp://127.0.0.1:5557"


class ServerError(Exception):
    """The server answered with an error: `code` (protocol.ERROR_CODES), `message`, and the job it concerns."""

    def __init__(self, code: str, message: str, job: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.job = code, message, job


class JobCancelled(ServerError):
    """The job was cancelled (by this client, another one, or a server shutdown: code "shutdown")."""


class ServerGone(ServerError):
    """Nothing (not even a heartbeat) came from the server within the client's timeout."""


class Client:
    """A connection to a stemweave server. timeout: seconds of server silence before ServerGone."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = 30.0, server_key: str | bytes | None = None,
                 client_cert: str | Path | None = None, context: zmq.Context | None = None):
        self.address, self.timeout = address, timeout
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT
        if server_key is not None:
            self._use_curve(server_key, client_cert)
        self.socket.connect(address)
        self._reqs = itertools.count(1)
        self._inbox: dict[str, deque] = defaultdict(deque)  # job id -> messages not yet delivered
        self._replies: dict = {}  # req -> reply not yet claimed
        self._callbacks: dict[str, dict] = {}  # job id -> callbacks (callback style)
        self._done: set[str] = set()
        self.last_result: P.Result | None = None  # the last Result received (info, position, elapsed_s, cached)
        self._max_frame_bytes: int | None = None  # the server's, asked once before the first large submit

    def _use_curve(self, server_key, client_cert) -> None:
        if isinstance(server_key, (str, Path)) and Path(server_key).is_file():
            server_key = zmq.auth.load_certificate(str(server_key))[0]
        self.socket.curve_serverkey = server_key.encode() if isinstance(server_key, str) else server_key
        if client_cert is not None:
            public, secret = zmq.auth.load_certificate(str(client_cert))
        else:
            public, secret = zmq.curve_keypair()
        self.socket.curve_publickey, self.socket.curve_secretkey = public, secret

    # Connection ------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.socket.close(0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # Requests and replies ------------------------------------------------------------------------------------
    def send(self, message: P.Message) -> object:
        """Send any message; returns its req token."""
        if message.req is None:
            message.req = next(self._reqs)
        self.socket.send_multipart(message.to_frames(), copy=False)
        return message.req

    def receive(self, timeout: float | None) -> P.Message | None:
        """The next message from the server, or None after `timeout` seconds."""
        if not self.socket.poll(None if timeout is None else max(0, int(timeout * 1000))):
            return None
        return P.decode(self.socket.recv_multipart(copy=False))

    def request(self, message: P.Message, expect: tuple[str, ...], timeout: float | None = None) -> P.Message:
        """Send `message` and return the reply of a type in `expect` (ServerError for an error reply)."""
        req = self.send(message)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while req not in self._replies:
            left = deadline - time.monotonic()
            reply = self.receive(left) if left > 0 else None
            if reply is None:
                raise ServerGone("timeout", f"no reply from {self.address} in {self.timeout:g} s: is `stemweave serve` "
                                            "running there?")
            self._file(reply, req, expect)
        reply = self._replies.pop(req)
        if isinstance(reply, P.Error):
            raise _error(reply)
        return reply

    def _file(self, message: P.Message, req=None, expect=()) -> None:
        """Put an incoming message where it belongs: a reply being waited for, or its job's inbox."""
        if req is not None and message.req == req and (message.TYPE in expect or message.TYPE == "error"):
            if not (message.TYPE == "error" and message.job in self._callbacks):
                self._replies[req] = message
                return
        if message.job is not None and message.TYPE in ("progress", "partial", "result", "error"):
            self._inbox[message.job].append(message)

    # Simple requests ------------------------------------------------------------------------------------------
    def hello(self) -> dict:
        """The server's description (version, protocol, devices, max_seconds, warm models)."""
        return self.request(P.Hello(client="stemweave.bridge.client"), ("hello",)).server or {}

    def list(self) -> dict:
        """{"models": [...], "presets": [...], "tasks": [...]}."""
        reply = self.request(P.Listing(), ("list",))
        return {"models": reply.models, "presets": reply.presets, "tasks": reply.tasks}

    def status(self, job: str | None = None) -> dict:
        """A job's state (queued/running/done/failed/cancelled, fraction, eta) or the server's (job None)."""
        return self.request(P.Status(job=job), ("status",)).info or {}

    def heartbeat(self) -> dict:
        reply = self.request(P.Heartbeat(time=time.time()), ("heartbeat",))
        return {"time": reply.time, "jobs": reply.jobs}

    def cancel(self, job: str) -> dict:
        """Ask the server to cancel `job`; the job then ends with JobCancelled."""
        return self.request(P.Cancel(job=job), ("status",)).info or {}

    def unload(self, model: str | None = None) -> list[str]:
        """Drop a warm model (or all of them) on the server; returns what was dropped."""
        return self.request(P.Unload(model=model), ("unload",)).unloaded or []

    def fetch(self, job: str, **wait_kw) -> dict[str, np.ndarray]:
        """A finished job's stems by id (a reconnecting client); waits for it if it is still running."""
        reply = self.request(P.Fetch(job=job), ("result", "status"))
        if isinstance(reply, P.Result):
            self.last_result = reply
            return reply.stems_audio
        return self.wait(job, **wait_kw)

    # Jobs ----------------------------------------------------------------------------------------------------
    def submit(self, task: str, audio: np.ndarray | None = None, rate: int = 44100, *, given=None, model=None,
               preset=None, seed: int = 0, priority: str = "interactive", position: int | None = None,
               params: dict | None = None, on_progress=None, on_partial=None, on_result=None, on_error=None,
               **more_params) -> str:
        """Queue a job; returns its id at once. Callbacks (if any) are delivered by poll() or wait()."""
        params = _jsonable({**(params or {}), **{k: v for k, v in more_params.items() if v is not None}})
        message = P.Submit(task=task, model=model, preset=preset, params=params, seed=int(seed), rate=int(rate),
                           priority=priority, position=position, audio=None if audio is None else _planar(audio),
                           given={k: _planar(v) for k, v in (given or {}).items()})
        self._check_frame_sizes(message)
        reply = self.request(message, ("accepted",))
        callbacks = {"progress": on_progress, "partial": on_partial, "result": on_result, "error": on_error}
        if any(callbacks.values()):
            self._callbacks[reply.job] = callbacks
        return reply.job

    def _check_frame_sizes(self, message: P.Submit, ask_above: int = 16 << 20) -> None:
        """A frame over the server's limit would be dropped by ZeroMQ with no reply: refuse it here instead."""
        largest = max((view.nbytes for view in message.audio_frames()), default=0)
        if largest <= ask_above:
            return
        if self._max_frame_bytes is None:
            self._max_frame_bytes = int(self.hello().get("max_frame_bytes") or 0)
        if self._max_frame_bytes and largest > self._max_frame_bytes:
            raise ServerError("too-large", f"an audio frame of {largest / (1 << 20):.0f} MiB is over the server's "
                                           f"{self._max_frame_bytes / (1 << 20):.0f} MiB frame limit "
                                           "(`stemweave serve --max-job-mb`): send shorter regions")

    def poll(self, timeout: float = 0.0) -> int:
        """Deliver callbacks for messages that arrived (waiting up to `timeout` s for the first); returns how many."""
        delivered = 0
        message = self.receive(timeout)
        while message is not None:
            self._file(message)
            message = self.receive(0)
        for job in [j for j in self._callbacks if self._inbox.get(j)]:
            while self._inbox[job] and job in self._callbacks:
                self._deliver(self._inbox[job].popleft(), self._callbacks[job])
                delivered += 1
        return delivered

    def _deliver(self, message: P.Message, callbacks: dict):
        """Run the callback for one job message; returns the stems for a result (ServerError for an error)."""
        if isinstance(message, P.Progress):
            if callbacks.get("progress"):
                callbacks["progress"]({"job": message.job, "fraction": message.fraction, "stage": message.stage,
                                       "eta_s": message.eta_s, "window": message.window, "windows": message.windows,
                                       "step": message.step, "steps": message.steps})
        elif isinstance(message, P.Partial):
            if callbacks.get("partial"):
                callbacks["partial"]({"job": message.job, "kind": message.kind, "start": message.start,
                                      "end": message.end, "rate": message.rate, "window": message.window,
                                      "windows": message.windows, "stems": message.stems_audio})
        elif isinstance(message, P.Result):
            self._finish(message.job)
            self.last_result = message
            if callbacks.get("result"):
                callbacks["result"](message.stems_audio)
            return message.stems_audio
        elif isinstance(message, P.Error):
            self._finish(message.job)
            error = _error(message)
            if callbacks.get("error"):
                callbacks["error"](error)
            else:
                raise error
        return None

    def _finish(self, job: str) -> None:
        self._callbacks.pop(job, None)
        self._inbox.pop(job, None)

    def wait(self, job: str, *, on_progress=None, on_partial=None, cancel: threading.Event | None = None,
             timeout: float | None = None) -> dict[str, np.ndarray]:
        """Block until `job` ends: its stems, or ServerError / JobCancelled. `cancel` (an Event) cancels it;
        timeout bounds the whole wait (None: wait while the server heartbeats)."""
        callbacks = dict(self._callbacks.get(job) or {})
        callbacks.update({k: v for k, v in (("progress", on_progress), ("partial", on_partial)) if v})
        callbacks["error"] = None  # raise
        deadline = None if timeout is None else time.monotonic() + timeout
        heard, cancelled = time.monotonic(), False
        while True:
            inbox = self._inbox.get(job)
            while inbox:
                stems = self._deliver(inbox.popleft(), callbacks)
                if stems is not None:
                    return stems
            if cancel is not None and cancel.is_set() and not cancelled:
                cancelled = True
                self.send(P.Cancel(job=job))
            now = time.monotonic()
            if deadline is not None and now > deadline:
                raise TimeoutError(f"job {job} did not finish in {timeout:g} s (it keeps running: cancel or fetch it)")
            if now - heard > self.timeout:
                raise ServerGone("timeout", f"the server at {self.address} has been silent for {self.timeout:g} s "
                                            f"(no heartbeat) while job {job} was pending")
            message = self.receive(0.05 if cancel is not None else 0.5)
            if message is not None:
                heard = time.monotonic()
                self._file(message)

    def run(self, task: str, audio=None, rate: int = 44100, *, on_progress=None, on_partial=None, cancel=None,
            timeout=None, **submit_kw) -> dict[str, np.ndarray]:
        """Submit a job and wait for its stems."""
        job = self.submit(task, audio, rate, **submit_kw)
        self.last_job = job
        return self.wait(job, on_progress=on_progress, on_partial=on_partial, cancel=cancel, timeout=timeout)

    def separate(self, audio: np.ndarray, rate: int, **kw) -> dict[str, np.ndarray]:
        """Separate a region (channels, frames) into stems (run_region's "separate" through the server)."""
        return self.run("separate", audio, rate, **kw)

    def accompany(self, given: dict[str, np.ndarray], rate: int, **kw) -> dict[str, np.ndarray]:
        """New stems under the given ones ({stem: (channels, frames)})."""
        return self.run("accompany", None, rate, given=given, **kw)

    def generate(self, rate: int, *, seconds: float | None = None, frames: int | None = None, **kw) -> dict[str, np.ndarray]:
        """Generate stems of `seconds` (or `frames`) length."""
        return self.run("generate", None, rate, seconds=seconds, frames=frames, **kw)


def _planar(audio) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    return audio[None] if audio.ndim == 1 else audio


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _error(message: P.Error) -> ServerError:
    kind = JobCancelled if message.code in ("cancelled", "shutdown") else ServerError
    return kind(message.code, message.message, message.job)


__all__ = ["Client", "DEFAULT_ADDRESS", "JobCancelled", "ServerError", "ServerGone"]
