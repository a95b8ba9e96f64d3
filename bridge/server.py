"""The local inference server: a ZeroMQ ROUTER that takes jobs, runs them on warm models, and never falls over.

Threads:

* the socket thread (`serve_forever`) owns the ROUTER socket: it decodes and
  validates every message at the edge (bridge/protocol.py), answers hello,
  list, status, heartbeat, cancel, fetch and unload at once, queues submits,
  forwards what the workers send, and heartbeats clients with unfinished jobs;
* one inference worker per device takes jobs from the priority queue and runs
  `engine.regions.run_region`; its progress, partial results and the result
  travel to the socket thread over an inproc PUSH/PULL pair (ZeroMQ sockets
  are never shared between threads), without copying the audio.

A send to a client that has gone away is dropped by the ROUTER, so a
disconnected client stalls nothing; its finished result stays in the cache
for a reconnecting client to fetch by job id. SIGTERM / Ctrl-C: stop
accepting, cancel every job, tell their clients (code "shutdown"), exit 0.

The server never opens a path a client names: models and presets are chosen
by name from the sets the server was configured with.
"""

from __future__ import annotations

import ipaddress
import math
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import numpy as np
import zmq
import zmq.auth

from stemweave import __version__
from stemweave.bridge import accompanist_jobs, gmsdi_jobs
from stemweave.bridge import protocol as P
from stemweave.bridge.jobs import CachedResult, Job, JobQueue, ResultCache, content_key, new_job_id

DEFAULT_BIND = "tcp://127.0.0.1:5557"
DEFAULT_PRESETS = {"separate": "separate-fast", "accompany": "accompany-fast", "generate": "generate"}  # = stemweave.api's
MSLDM_PRESETS = {"accompany": "msldm-accompany-fast", "generate": "msldm-generate"}  # = stemweave.api's, msldm models
ANALYTIC_MODEL = "analytic"  # the built-in closed-form example prior: runs with no trained weights

# Parameters a submit may carry (docs/protocol.md, "params"): name -> (type, low, high).
SAMPLER_PARAMS = {"steps": (int, 1, 20_000), "sigma_min": (float, 0.0, 1e3), "sigma_max": (float, 0.0, 1e4),
                  "rho": (float, 0.1, 100.0), "s_churn": (float, 0.0, 1e3), "resamples": (int, 0, 64),
                  "method": (str, None, None)}
OPTION_PARAMS = {"likelihood": (str, None, None), "constrained": (str, None, None), "gamma": (float, 0.0, 1e6),
                 "guidance": (float, 0.0, 100.0)}
REGION_PARAMS = {"stems": (list, None, None), "channel_mode": (str, None, None), "overlap": (float, 0.0, 0.95),
                 "frames": (int, 1, 1 << 31), "seconds": (float, 0.0, 1e7), "channels": (int, 1, 2),
                 "loop_frames": (int, 1, 1 << 31), "regenerate": (list, None, None), "window_shape": (str, None, None),
                 "batch_size": (int, 1, 4096)}
# Separation with a regression separator, refined by a prior (issue 13): an "estimate" partial, then the result.
REFINE_PARAMS = {"refine": (str, None, None), "prior": (str, None, None)}
# What only a GMSDI model reads (guidance is every prior's option)
GMSDI_ONLY_PARAMS = sorted(set(gmsdi_jobs.PARAMS) - set(OPTION_PARAMS))
# Memory per job: the region's audio, at its own rate or at the model's (whichever is larger), is at most this many
# bytes of float32 (--max-job-mb; 600 s of 48 kHz stereo fits). A job costs about ten times that while it runs.
DEFAULT_MAX_JOB_BYTES = 256 << 20
ACCOMPANIST_RATE = 44100  # an accompanist generate request without a rate: what a DAW session expects


class ServerError(Exception):
    """A server setting the user can fix (bad --bind, missing keys, absent device)."""


class NonFiniteOutput(Exception):
    """A model produced NaN or infinite audio: the job fails instead of sending it."""


class RequestError(Exception):
    """A well-formed request the server cannot run; becomes Error(code)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# ---------------------------------------------------------------------------------------------------------------
# Models


def analytic_model(rate: int = 22050, window: int = 4096):
    """The built-in example prior (closed-form Gaussian stems): lets the server run on a machine with no weights."""
    from stemweave.engine.analytic import GaussianStemPrior, example_spectra

    prior = GaussianStemPrior.independent(example_spectra(window, rate=float(rate)), ("bass", "drums", "guitar", "piano"))
    prior.rate, prior.window = rate, window
    return prior


def shipped_model_names() -> list[str]:
    """The models the default loader can load: the shipped ones, then the built-in analytic prior."""
    from stemweave.engine import models

    return [*models.list_models(), ANALYTIC_MODEL]


def default_model_loader(name: str, device: str, backend: str = "torch"):
    """Load a shipped model by name (a regression separator or a prior, by its card), or the analytic prior;
    a prior's network runs on `backend` (export/backends.py)."""
    if name == ANALYTIC_MODEL:
        return analytic_model()
    if model_kind(name) == "gmsdi":
        from stemweave.engine.models import resolve_model

        return gmsdi_jobs.load(resolve_model(name), device, backend)
    from stemweave import api

    task = "generate" if model_kind(name) == "msldm" else "separate"  # an msldm model cannot separate
    return api.load_task_model(name, task, device, backend)[0]


def model_card(name: str) -> dict:
    """A shipped model's card ({} for the analytic prior and for names the model registry does not know)."""
    if name == ANALYTIC_MODEL:
        return {"rate": 22050, "stems": ["bass", "drums", "guitar", "piano"]}  # = analytic_model()'s
    try:
        from stemweave.engine.checkpoints import read_card
        from stemweave.engine.models import resolve_model

        return dict(read_card(resolve_model(name)))
    except Exception:  # noqa: BLE001 - not a registry model: its loader decides
        return {}


def quality_warning(name: str, model=None) -> str | None:
    """The one-line warning for a model whose card says it measures below the project's bar (else None)."""
    from stemweave.engine.models import quality_warning as warning_of

    card = getattr(model, "card", None) or model_card(name)
    return warning_of({"name": name, **card}) if card else None


def model_kind(name: str) -> str | None:
    """The kind on a shipped model's card (msdm, isdm, msldm, regression), None for the analytic prior and for
    names the model registry does not know (a server with its own loader)."""
    if name == ANALYTIC_MODEL:
        return None
    try:
        from stemweave.engine.models import model_kind as kind_of

        return kind_of(name)
    except Exception:  # noqa: BLE001 - not a registry model: its loader decides
        return None


def default_model_for(task: str, names: list[str]) -> str:
    """The model a task uses when a request names none: the direct commands' default (stemweave.api) when this
    server has it, else the first model it knows, else the analytic prior."""
    try:
        from stemweave import api

        name = api.default_model(task)
        if name in names:
            return name
    except Exception:  # noqa: BLE001 - no shipped model (or a broken model folder): fall back
        pass
    return names[0] if names else ANALYTIC_MODEL


class WarmModels:
    """Models loaded once per (name, device) and kept until unloaded."""

    def __init__(self, loader: Callable[[str, str], object]):
        self.loader = loader
        self._models: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def get(self, name: str, device: str):
        key = (name, device)
        with self._lock:
            if key in self._models:
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key, others wait for it; loading never holds the shared lock
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = self.loader(name, device)
            with self._lock:
                self._models[key] = model
            return model

    def unload(self, name: str | None = None) -> list[str]:
        with self._lock:
            keys = [k for k in self._models if name is None or k[0] == name]
            for key in keys:
                del self._models[key]
        if keys:  # the last reference is gone (a running job keeps its own until it ends): freed now
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001
                pass
        return sorted({f"{n}@{d}" for n, d in keys})

    def peek(self, name: str):
        """A warm model of that name on any device, or None (never loads)."""
        with self._lock:
            return next((m for (n, _d), m in self._models.items() if n == name), None)

    def loaded(self) -> list[str]:
        with self._lock:
            return sorted(f"{n}@{d}" for n, d in self._models)


# ---------------------------------------------------------------------------------------------------------------
# Addresses and keys


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on a loopback address (127.0.0.0/8, ::1, localhost)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_devices(devices: list[str]) -> list[str]:
    """The devices asked for, or ServerError naming the one that is absent."""
    import torch

    out = []
    for device in devices:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            raise ServerError(f"--device {device!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
        if parsed.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (parsed.index or 0) >= count:
                raise ServerError(f"--device {device}: this machine has {count} CUDA device(s) "
                                  f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); use cpu")
        elif parsed.type == "mps" and not torch.backends.mps.is_available():
            raise ServerError(f"--device {device}: MPS is not available here; use cpu")
        elif parsed.type not in ("cpu", "cuda", "mps"):
            raise ServerError(f"--device {device}: only cpu, cuda[:N] and mps are supported")
        out.append(str(parsed))
    if len(set(out)) != len(out):
        raise ServerError(f"--device names a device twice: {', '.join(out)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The server


class Server:
    """The job server. `start()` serves in a background thread (tests, embedding); `serve_forever()` in this one."""

    def __init__(
        self,
        bind: str = DEFAULT_BIND,
        *,
        model_loader: Callable[[str, str], object] | None = None,
        model_names: Callable[[], list[str]] | list[str] | None = None,
        default_model: str | None = None,
        devices: list[str] | tuple[str, ...] = ("cpu",),
        max_seconds: float = 600.0,
        preset_dir: str | Path | None = None,
        curve_secret: str | Path | None = None,
        curve_clients: str | Path | None = None,
        curve_any_client: bool = False,
        max_job_bytes: int = DEFAULT_MAX_JOB_BYTES,
        heartbeat_s: float = 1.0,
        progress_interval_s: float = 0.05,
        cache_bytes: int = 512 << 20,
        result_ttl_s: float = 3600.0,
        max_queue: int = 64,
        preload: bool = True,
        osc_port: int | None = None,
        log: Callable[[str], None] | None = None,
        check_device: bool = True,
    ):
        self.bind = bind
        self.models = WarmModels(model_loader or default_model_loader)
        if model_names is None:
            model_names = shipped_model_names if model_loader is None else []
        self._model_names = model_names
        self.default_model = default_model
        self.devices = check_devices(list(devices)) if check_device else list(devices)
        self.max_seconds = float(max_seconds)
        self.preset_dir = Path(preset_dir).resolve() if preset_dir else None
        if self.preset_dir is not None and not self.preset_dir.is_dir():
            raise ServerError(f"--preset-dir {preset_dir}: not a folder")
        self.curve_secret, self.curve_clients, self.curve_any_client = curve_secret, curve_clients, curve_any_client
        self.max_job_bytes = int(max_job_bytes)
        if self.max_job_bytes < 1 << 20:
            raise ServerError(f"--max-job-mb must be at least 1 (MiB), got {self.max_job_bytes / (1 << 20):g}")
        self.max_frame_bytes = 2 * self.max_job_bytes  # larger frames: ZeroMQ drops the connection (no reply)
        self.heartbeat_s, self.progress_interval_s = heartbeat_s, progress_interval_s
        self.cache = ResultCache(cache_bytes, result_ttl_s)
        self.queue = JobQueue(max_queue)
        self.preload, self.osc_port = preload, osc_port
        self.log = log or (lambda text: print(f"stemweave serve: {text}", file=sys.stderr, flush=True))
        self.jobs: dict[str, Job] = {}  # unfinished and recently finished jobs
        self._finished_order: list[str] = []
        self._finished_lock = threading.Lock()
        self._running: dict[str, Job] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._ready = threading.Event()
        self._accepting = True
        self._workers: list[threading.Thread] = []
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._socket_thread: int | None = None
        self._started = time.monotonic()
        self._outbox_endpoint = f"inproc://stemweave-outbox-{id(self)}"
        self.endpoint: str | None = None
        self.public_key: bytes | None = None
        self.loop_engine = None  # a LoopEngine the `loop` request serves; else the OSC hook's (--osc-port)
        self._loop_mix: tuple | None = None  # (loop, gains, version, mix) of the last loop sent
        self._loop_version = 0
        self.context = zmq.Context()
        self._authenticator = None
        self._router = self._bind_router()
        self._pull = self.context.socket(zmq.PULL)
        self._pull.bind(self._outbox_endpoint)

    # Setup -------------------------------------------------------------------------------------------
    def _bind_router(self) -> zmq.Socket:
        curve = self._check_curve()  # every CURVE mistake stops the server here, before any socket exists
        router = self.context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 500)
        router.setsockopt(zmq.SNDHWM, 10_000)
        router.setsockopt(zmq.RCVHWM, 10_000)
        router.setsockopt(zmq.IPV6, 1)  # tcp://[::1]:PORT binds (IPv4 addresses still work)
        # A frame up to twice the job bound is received and answered (too-large / too-long); a larger one makes
        # ZeroMQ drop the peer before the server allocates it, with no reply (the Python client checks first).
        router.setsockopt(zmq.MAXMSGSIZE, self.max_frame_bytes + P.MAX_HEADER_BYTES)
        if curve is not None:
            public, secret = curve
            if self.curve_clients:
                from zmq.auth.thread import ThreadAuthenticator

                self._authenticator = ThreadAuthenticator(self.context)
                self._authenticator.start()
                self._authenticator.configure_curve(domain="*", location=str(self.curve_clients))
            router.curve_secretkey, router.curve_publickey, router.curve_server = secret, public, True
            self.public_key = public
        try:
            router.bind(self.bind)
        except zmq.ZMQError as error:
            router.close(0)
            raise ServerError(f"cannot bind {self.bind}: {error}") from None
        self.endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
        return router

    def _check_curve(self) -> tuple[bytes, bytes] | None:
        """(public, secret) of the server's CURVE key, None for plain text; ServerError for any inconsistent or
        unsafe setting (docs/protocol.md, Security)."""
        if not self.curve_secret:
            if self.curve_clients:
                raise ServerError(f"--curve-clients {self.curve_clients} needs --curve-secret (the server's key): "
                                  "without it the server would run in plain text")
            if self.curve_any_client:
                raise ServerError("--curve-any-client needs --curve-secret (the server's key)")
            if not is_loopback(self.bind):
                raise ServerError(f"refusing to bind {self.bind}: it is not a loopback address, and anyone who can "
                                  "reach it could send jobs. Give CURVE keys (--curve-secret FILE and --curve-clients "
                                  "DIR, made with `stemweave serve --make-keys DIR`), or bind tcp://127.0.0.1:PORT")
            return None
        if self.curve_clients and self.curve_any_client:
            raise ServerError("give either --curve-clients DIR (only those clients) or --curve-any-client, not both")
        if not self.curve_clients and not self.curve_any_client:
            raise ServerError("--curve-secret without --curve-clients DIR would let any client that knows the server's "
                              "public key in: give --curve-clients DIR (the allowed clients' public .key files, e.g. "
                              "the client.key that --make-keys writes), or --curve-any-client to accept any client")
        secret_path = Path(self.curve_secret)
        try:
            mode = secret_path.stat().st_mode
            public, secret = zmq.auth.load_certificate(str(secret_path))
        except (OSError, ValueError) as error:
            raise ServerError(f"--curve-secret {secret_path}: cannot read a ZeroMQ certificate: {error}") from None
        if not secret:
            raise ServerError(f"--curve-secret {secret_path} holds only a public key: give the .key_secret file")
        if os.name == "posix" and mode & 0o077:
            raise ServerError(f"--curve-secret {secret_path} is readable by others (mode {mode & 0o777:o}): "
                              f"`chmod 600 {secret_path}` (and consider a new key pair)")
        if self.curve_clients:
            folder = Path(self.curve_clients)
            if not folder.is_dir():
                raise ServerError(f"--curve-clients {folder}: not a folder of client public keys")
            try:
                allowed = zmq.auth.load_certificates(str(folder))
            except (OSError, ValueError) as error:
                raise ServerError(f"--curve-clients {folder}: cannot read its keys: {error}") from None
            if not allowed:
                raise ServerError(f"--curve-clients {folder} holds no client public key (*.key): no client could "
                                  "connect. Copy each client's .key file there")
        return public, secret

    def model_names(self) -> list[str]:
        names = self._model_names() if callable(self._model_names) else self._model_names
        return list(names)

    def preset_names(self) -> list[str]:
        from stemweave.engine.presets import list_presets

        names = set(list_presets())
        if self.preset_dir is not None:
            names |= {p.stem for p in self.preset_dir.glob("*.toml") if P.NAME.match(p.stem)}
        return sorted(names)

    # Running -------------------------------------------------------------------------------------------
    def start(self) -> "Server":
        """Serve in a background thread; returns once the socket answers."""
        self._thread = threading.Thread(target=self.serve_forever, name="stemweave-socket", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down (as SIGTERM does) and wait for it."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def request_stop(self, *_args) -> None:
        """Signal-safe: ask the socket thread to shut down."""
        self._stop.set()

    def serve_forever(self) -> None:
        """Answer clients until stop(); installs SIGTERM/SIGINT handlers when run in the main thread."""
        self._socket_thread = threading.get_ident()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
        for device in self.devices:
            worker = threading.Thread(target=self._work, args=(device,), name=f"stemweave-worker-{device}", daemon=True)
            worker.start()
            self._workers.append(worker)
        self._start_osc()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        self._ready.set()
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(0.1, next_beat - time.monotonic()))
                events = dict(poller.poll(timeout * 1000))
                if self._pull in events:
                    self._forward_outbox()
                if self._router in events:
                    self._serve_requests()
                if time.monotonic() >= next_beat:
                    self._heartbeat()
                    next_beat = time.monotonic() + self.heartbeat_s
        finally:
            self._shutdown()

    def _serve_requests(self, limit: int = 256) -> None:
        for _ in range(limit):
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity, body = frames[0].bytes, frames[1:]
            try:
                self._handle(identity, body)
            except P.ProtocolError as error:
                self._send(identity, P.error_reply(error))
            except RequestError as error:
                self._send(identity, P.Error(code=error.code, message=error.message))
            except Exception as error:  # noqa: BLE001 - never let one message take the server down
                self.log(f"internal error on a message: {error!r}\n{traceback.format_exc()}")
                self._send(identity, P.Error(code="failed", message=f"internal error: {error}"))

    def _forward_outbox(self, limit: int = 1024) -> None:
        for _ in range(limit):
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._route(frames)

    def _route(self, frames) -> None:
        try:
            self._router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass  # the client is not reading (HWM): drop rather than stall every other client
        except zmq.ZMQError as error:
            self.log(f"send failed: {error}")

    def _send(self, identity: bytes, message: P.Message) -> None:
        """Send from any thread: directly from the socket thread, through the inproc outbox from a worker."""
        frames = [identity, *message.to_frames()]
        if threading.get_ident() == self._socket_thread:
            self._route(frames)
            return
        push = getattr(self._local, "push", None)
        if push is None:
            push = self._local.push = self.context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 2000)
            push.connect(self._outbox_endpoint)
        push.send_multipart(frames, copy=False)

    # Requests ---------------------------------------------------------------------------------------------
    def _handle(self, identity: bytes, body) -> None:
        message = P.decode(body, from_client=True)
        handler = getattr(self, f"_on_{message.TYPE}", None)
        if handler is None:
            raise P.ProtocolError("unknown-type", f"{message.TYPE} is a server-to-client message", req=message.req)
        try:
            handler(identity, message)
        except RequestError as error:
            self._send(identity, P.Error(job=message.job, req=message.req, code=error.code, message=error.message))

    def _on_hello(self, identity, message: P.Hello) -> None:
        self._send(identity, P.Hello(req=message.req, server=self._about()))

    def _about(self) -> dict:
        return {"name": "stemweave", "version": __version__, "protocol": P.PROTOCOL_VERSION, "devices": self.devices,
                "max_seconds": self.max_seconds, "models_loaded": self.models.loaded(),
                "default_model": self._default_model(), "curve": self.public_key is not None,
                "curve_clients": None if self.public_key is None else ("any" if self.curve_any_client else "listed"),
                "heartbeat_s": self.heartbeat_s, "max_job_bytes": self.max_job_bytes,
                "max_frame_bytes": self.max_frame_bytes, "max_peak": P.MAX_PEAK, "cache_bytes": self.cache.max_bytes}

    def _on_list(self, identity, message: P.Listing) -> None:
        from stemweave.engine.presets import TASKS

        presets = []
        for name in self.preset_names():
            try:
                preset = self._load_preset(name)
                presets.append({"name": name, "task": preset.task, "description": preset.description})
            except ValueError as error:
                presets.append({"name": name, "error": str(error)})
        models = []
        for name in self.model_names():
            warm = self.models.peek(name)
            card = getattr(warm, "card", None) or model_card(name)
            entry = {"name": name, "loaded": warm is not None, "default": name == self._default_model(),
                     "kind": card.get("kind"), "stems": list(warm.stems) if warm is not None else card.get("stems"),
                     "rate": (getattr(warm, "rate", None) if warm is not None else None) or card.get("rate")}
            warning = quality_warning(name, warm)
            if warning:
                entry["warning"] = warning
            models.append(entry)
        self._send(identity, P.Listing(req=message.req, models=models, presets=presets, tasks=list(TASKS)))

    def _on_heartbeat(self, identity, message: P.Heartbeat) -> None:
        self._send(identity, P.Heartbeat(req=message.req, time=time.time(), jobs=self._jobs_of(identity)))

    def _on_status(self, identity, message: P.Status) -> None:
        if message.job is None:
            info = {**self._about(), "queued": len(self.queue), "running": [j.info() for j in self._running.values()],
                    "cache": self.cache.stats(), "uptime_s": round(time.monotonic() - self._started, 3),
                    "accepting": self._accepting}
        else:
            info = self._job(message.job).info(self.queue.position(self._job(message.job)))
        self._send(identity, P.Status(job=message.job, req=message.req, info=info))

    def _on_cancel(self, identity, message: P.Cancel) -> None:
        job = self._job(message.job)
        if job.unfinished:
            job.cancel.set()
            if self.queue.remove(job):  # never started: end it here; a running one ends at its next sampler step
                self._end(job, "cancelled", ("cancelled", "cancelled before it started"))
        self._send(identity, P.Status(job=job.id, req=message.req, info=job.info()))

    def _on_fetch(self, identity, message: P.Fetch) -> None:
        cached = self.cache.by_job(message.job)
        if cached is not None:
            self._send(identity, P.Result(job=cached.job, req=message.req, rate=cached.rate, stems_audio=cached.stems,
                                          cached=True, elapsed_s=cached.elapsed_s, info=cached.info,
                                          files=cached.files))
            return
        job = self._job(message.job)
        if job.unfinished:  # attach: the result comes when it is done
            job.watch(identity, message.req, None)
            self._send(identity, P.Status(job=job.id, req=message.req, info=job.info(self.queue.position(job))))
        elif job.error:
            self._send(identity, P.Error(job=job.id, req=message.req, code=job.error[0], message=job.error[1]))
        else:
            raise RequestError("unknown-job", f"job {job.id}'s result has expired from the cache: submit it again")

    def _on_loop(self, identity, message: P.Loop) -> None:
        if message.is_reply():
            raise P.ProtocolError("unknown-type", "a loop reply (with serial) is a server-to-client message",
                                  req=message.req)
        from stemweave.bridge.loop import BEATS_PER_BAR

        engine = self.loop_engine or getattr(getattr(self, "osc_control", None), "engine", None)
        if engine is None:
            raise RequestError("no-loop", "this server runs no live loop: start it with `stemweave serve --osc-port N` "
                                          "(docs/osc.md) and start a loop (/stemweave/loop/start)")
        newest = engine.newest_loop()
        if newest is None:
            self._send(identity, P.Loop(req=message.req, serial=0, version=0, playing=engine.player.started))
            return
        loop, gains = newest
        if self._loop_mix is None or self._loop_mix[0] is not loop or self._loop_mix[1] != gains:
            self._loop_version += 1  # a new loop, or new gains: a new mix
            self._loop_mix = (loop, gains, self._loop_version, engine.mix(loop, gains))
        _, _, version, mix = self._loop_mix
        self._send(identity, P.Loop(req=message.req, serial=loop.serial, version=version, tempo=float(loop.tempo),
                                    bars=int(loop.bars), beats_per_bar=BEATS_PER_BAR,
                                    bar_frames=int(loop.bar_frames), rate=int(engine.rate),
                                    channels=int(mix.shape[0]), frames=int(mix.shape[1]),
                                    playing=engine.player.started, stems=list(loop.stems),
                                    mix=None if message.since == version else mix))

    def _on_unload(self, identity, message: P.Unload) -> None:
        unloaded = self.models.unload(message.model)
        self._send(identity, P.Unload(req=message.req, model=message.model, unloaded=unloaded))

    def _on_submit(self, identity, message: P.Submit) -> None:
        if not self._accepting:
            raise RequestError("shutdown", "the server is shutting down: not taking new jobs")
        spec = self._validate(message)
        key = content_key({k: v for k, v in spec.items() if k != "preset_obj"}, message.audio, message.given)
        cached = self.cache.by_key(key)
        if cached is not None:
            job_id = new_job_id()  # a new id for the new request; the same stems
            self.cache.put(CachedResult(job_id, key, cached.stems, cached.rate, cached.info, cached.elapsed_s,
                                        files=cached.files))
            self._send(identity, P.Accepted(job=job_id, req=message.req, cached=True))
            self._send(identity, P.Result(job=job_id, req=message.req, rate=cached.rate, stems_audio=cached.stems,
                                          cached=True, elapsed_s=0.0, position=message.position, info=cached.info,
                                          files=cached.files))
            return
        for job in list(self.jobs.values()):  # the same request already queued or running: follow that job
            if job.key == key and job.unfinished and not job.cancel.is_set():
                job.watch(identity, message.req, message.position)
                self._send(identity, P.Accepted(job=job.id, req=message.req, queued=self.queue.position(job) or 0))
                return
        job = Job(new_job_id(), key, spec, message.audio, dict(message.given), spec["rate"], message.priority)
        job.watch(identity, message.req, message.position)
        try:
            ahead = self.queue.put(job)
        except OverflowError as error:
            raise RequestError("busy", f"{error}: try again when a job has finished") from None
        self.jobs[job.id] = job
        self._send(identity, P.Accepted(job=job.id, req=message.req, queued=ahead))

    def _validate(self, message: P.Submit) -> dict:
        """The job spec, or RequestError: everything a worker needs is checked here, at the edge."""
        from stemweave.engine.presets import TASKS

        task = message.task
        if task not in TASKS:
            raise RequestError("bad-request", f"unknown task {task!r}: one of {', '.join(TASKS)}")
        if task == "accompany" and message.audio is not None:
            raise RequestError("bad-request", "accompany takes the given stems only: send audio: false (a mixture "
                                              "would be ignored)")
        method = self._method(message)
        if method != "prior":
            return self._validate_accompanist(message, method)
        model = message.model or self._default_model(task)
        if model not in self.model_names():
            raise RequestError("bad-request", f"unknown model {model!r}: this server has "
                                              f"{', '.join(self.model_names()) or 'none'}")
        kind = model_kind(model)
        if kind == "gmsdi":
            return self._validate_gmsdi(message, model)
        if any(name in message.params for name in GMSDI_ONLY_PARAMS):
            raise RequestError("bad-request",
                               f"{' and '.join(GMSDI_ONLY_PARAMS)} go with a GMSDI model, not {model!r}")
        if kind == "msldm" and task == "separate":
            raise RequestError("bad-request", f"model {model!r} is an MSLDM latent prior: it generates and accompanies; "
                                              "separation with a latent prior is not built (docs/msldm.md)")
        preset_name = message.preset or (MSLDM_PRESETS[task] if kind == "msldm" else DEFAULT_PRESETS[task])
        if preset_name not in self.preset_names():
            raise RequestError("bad-request", f"unknown preset {preset_name!r}: one of {', '.join(self.preset_names())}")
        params = dict(message.params)
        rules = {**SAMPLER_PARAMS, **OPTION_PARAMS, **REGION_PARAMS, **REFINE_PARAMS}
        unknown = sorted(set(params) - set(rules))
        if unknown:
            raise RequestError("bad-request", f"unknown parameter(s) {', '.join(unknown)}: known are {', '.join(rules)}")
        for name, value in params.items():
            _check_param(name, value, rules[name])
        refine = self._validate_refine(task, params)
        preset = self._load_preset(preset_name)
        if task == "generate" and "loop_frames" in params and preset.task == "accompany":
            from dataclasses import replace

            preset = replace(preset, task="generate")  # a loop is inpainted across its wrap: accompany presets fit
        if preset.task != task:
            raise RequestError("bad-request", f"preset {preset_name!r} is for {preset.task}, not {task}")
        overrides = {k: v for k, v in params.items() if k in SAMPLER_PARAMS or k in OPTION_PARAMS}
        try:
            preset = preset.with_overrides(**overrides)
        except (ValueError, TypeError) as error:
            raise RequestError("bad-request", f"bad preset parameters: {error}") from None
        rate = self._rate(message, model)
        channels, _ = self._frames(message, params, model, rate)
        if task == "separate" and message.audio is None:
            raise RequestError("bad-request", "separate needs the region's audio (audio frames, one per channel)")
        if task == "accompany" and not message.given:
            raise RequestError("bad-request", "accompany needs at least one given stem (given: [names] + frames)")
        region = {k: v for k, v in params.items() if k in REGION_PARAMS}
        if "regenerate" in region:
            region["regenerate"] = tuple(region["regenerate"])
        return {"task": task, "model": model, "preset": preset_name, "preset_repr": repr(preset), "seed": message.seed,
                "rate": rate, "region": region, "preset_obj": preset, "channels": channels, "refine": refine}

    def _model_rate(self, model: str) -> int | None:
        warm = self.models.peek(model)
        rate = getattr(warm, "rate", None) if warm is not None else None
        return int(rate or model_card(model).get("rate") or 0) or None

    def _rate(self, message: P.Submit, model: str) -> int:
        """The request's rate: the header's, or for generate without one, the model's."""
        if message.rate is not None:
            return message.rate
        if message.task != "generate":
            raise RequestError("bad-request", f"{message.task} needs the audio's rate in the header")
        rate = self._model_rate(model)
        if rate is None:
            raise RequestError("bad-request", f"model {model!r} has no known rate: give the header's rate")
        return rate

    def _frames(self, message: P.Submit, params: dict, model: str, rate: int) -> tuple[int, int]:
        """(channels, frames) of the region, or of the length a generate request asks for (written into params);
        refuses a region longer than --max-seconds or larger than --max-job-mb."""
        channels, frames = message.shape
        if message.task == "generate":
            if message.audio is not None or message.given:
                raise RequestError("bad-request", "generate takes no audio: give params frames, seconds or loop_frames")
            lengths = [k for k in ("frames", "seconds", "loop_frames") if k in params]
            if len(lengths) > 1:
                raise RequestError("bad-request", f"give one length, not {' and '.join(lengths)}")
            asked = params.get("loop_frames") or params.get("frames") or round(params.get("seconds", 0) * rate)
            if lengths and not asked:
                raise RequestError("bad-request", "generate needs a length above 0")
            if asked and message.frames and asked != message.frames:
                raise RequestError("bad-request", f"the header's frames ({message.frames}) and params "
                                                  f"{lengths[0]} ({asked} frames) disagree")
            frames = asked or message.frames
            if not frames:
                raise RequestError("bad-request", "generate needs a length: params frames, seconds or loop_frames "
                                                  "(or the header's frames)")
            if "channels" in params and message.channels and params["channels"] != message.channels:
                raise RequestError("bad-request", f"the header's channels ({message.channels}) and params channels "
                                                  f"({params['channels']}) disagree")
            channels = params.get("channels") or message.channels or 1
            params["channels"] = channels
            if not lengths:
                params["frames"] = frames
        seconds = frames / rate
        if seconds > self.max_seconds:
            raise RequestError("too-long", f"the region is {seconds:.1f} s long; this server takes at most "
                                           f"{self.max_seconds:g} s (--max-seconds): send it in shorter regions")
        self._check_bytes(channels, frames, rate, self._model_rate(model) or rate)
        return channels, frames

    def _check_bytes(self, channels: int, frames: int, rate: int, model_rate: int) -> None:
        """The memory bound per job: the region's float32 bytes at its rate or the model's, whichever is larger."""
        job_bytes = channels * max(frames, math.ceil(frames * model_rate / rate)) * 4
        if job_bytes > self.max_job_bytes:
            raise RequestError("too-large", f"the job is {job_bytes / (1 << 20):.0f} MiB of audio ({channels} x "
                                            f"{frames} frames at {rate} Hz, model rate {model_rate} Hz); this server "
                                            f"takes at most {self.max_job_bytes / (1 << 20):g} MiB per job "
                                            "(--max-job-mb): send shorter regions")

    def _validate_gmsdi(self, message: P.Submit, model: str) -> dict:
        """The spec of a request to a GMSDI model: prompts name the stems (bridge/gmsdi_jobs.py)."""
        from stemweave.engine.checkpoints import read_card
        from stemweave.engine.gmsdi.inference import DEFAULT_PRESETS as GMSDI_PRESETS
        from stemweave.engine.models import resolve_model

        params = dict(message.params)
        rules = {**gmsdi_jobs.PARAMS, **SAMPLER_PARAMS, **REGION_PARAMS, "constrained": OPTION_PARAMS["constrained"]}
        for name, value in params.items():
            if name in rules:
                _check_param(name, value, rules[name])
        preset_name = message.preset or GMSDI_PRESETS[message.task]
        vocabulary = list(read_card(resolve_model(model)).get("stems", []))
        try:
            gmsdi = gmsdi_jobs.validate(message.task, preset_name, params, vocabulary, list(message.given),
                                        message.audio is not None)
        except ValueError as error:
            raise RequestError("bad-request", str(error)) from None
        rate = self._rate(message, model)
        channels, _frames = self._frames(message, params, model, rate)
        preset = gmsdi.pop("preset")
        region = {k: v for k, v in params.items() if k in gmsdi_jobs.REGION_KEYS}
        return {"task": message.task, "model": model, "preset": preset_name, "preset_repr": repr(preset),
                "seed": message.seed, "rate": rate, "region": region, "preset_obj": preset,
                "channels": channels, "refine": None, "gmsdi": {**gmsdi, "preset": preset}}

    # Accompanist jobs (issue 21, bridge/accompanist_jobs.py) -------------------------------------------------
    def _method(self, message: P.Submit) -> str:
        """Which engine makes the stems (params method; absent: the accompanist unless a prior is named)."""
        prior_params = set(SAMPLER_PARAMS) | set(OPTION_PARAMS) | set(REFINE_PARAMS) | set(gmsdi_jobs.PARAMS) | \
            {"overlap", "batch_size", "window_shape", "regenerate", "channel_mode"}
        try:
            method = accompanist_jobs.method_of(message.task, message.params, message.model, message.preset,
                                                prior_params)
        except ValueError as error:
            raise RequestError("bad-request", str(error)) from None
        if message.params.get("method") == "prior":
            message.params = {k: v for k, v in message.params.items() if k != "method"}  # not a sampler's method
        return method

    def _validate_accompanist(self, message: P.Submit, method: str) -> dict:
        """The spec of an accompany or generate job the accompanist makes: no model, no preset."""
        if message.model or message.preset:
            raise RequestError("bad-request", f"method {method} takes no model or preset (it writes and renders "
                                              "parts): use method prior to name them")
        rate = message.rate or ACCOMPANIST_RATE  # generate may leave the rate out (docs/protocol.md)
        try:
            job = accompanist_jobs.validate(message.task, method, message.params, message.given, rate,
                                            message.seed)
        except ValueError as error:
            raise RequestError("bad-request", str(error)) from None
        frames = job["frames"] or message.shape[1]
        if frames / rate > self.max_seconds:
            raise RequestError("too-long", f"the region is {frames / rate:.1f} s long; this server takes at "
                                           f"most {self.max_seconds:g} s (--max-seconds): send it in shorter regions")
        self._check_bytes(job["channels"], frames, rate, rate)
        return {"task": message.task, "model": None, "preset": None, "seed": message.seed, "rate": rate,
                "region": {}, "preset_obj": None, "channels": job["channels"], "refine": None, "accompanist": job}

    def _run_accompanist(self, job: Job, device: str, progress) -> None:
        """Run an accompanist job and send its result (stems, the MIDI as a "midi" frame when asked, the analysis)."""
        from stemweave.engine.sampler import Cancelled

        def progress_or_cancel(update: dict) -> None:
            if job.cancel.is_set():
                raise Cancelled("cancelled")
            progress(update)

        stems, files, more = accompanist_jobs.run(job.spec, job.given, job.rate, progress_or_cancel)
        if job.cancel.is_set():
            raise Cancelled("cancelled")
        _check_finite(stems, {"model": "the accompanist"})
        elapsed = time.monotonic() - job.started
        info = {"model": None, "preset": None, "seed": job.spec["seed"], "device": "cpu", "task": job.spec["task"],
                **more}
        self.cache.put(CachedResult(job.id, job.key, stems, job.rate, info, elapsed, files=files))
        job.state, job.finished = "done", time.monotonic()
        self._running.pop(job.id, None)
        for identity, req, position in job.watching():
            self._send(identity, P.Result(job=job.id, req=req, rate=job.rate, stems_audio=stems, position=position,
                                          elapsed_s=elapsed, info=info, files=files))
        self._forget_later(job)

    def _validate_refine(self, task: str, params: dict) -> dict | None:
        """{"preset": Preset, "prior": name} when the request asks to refine the first answer, else None."""
        if "refine" not in params:
            if "prior" in params:
                raise RequestError("bad-request", "parameter prior goes with refine (a warm-start preset)")
            return None
        if task != "separate":
            raise RequestError("bad-request", "refine refines a separation: it goes with task separate")
        name = params["refine"]
        if name not in self.preset_names():
            raise RequestError("bad-request", f"unknown refine preset {name!r}")
        preset = self._load_preset(name)
        if preset.task != "separate" or not preset.options.get("warm_start"):
            raise RequestError("bad-request", f"preset {name!r} does not refine a first estimate (try refine-fast)")
        prior = params.get("prior") or self._default_model("refine")
        if prior not in self.model_names():
            raise RequestError("bad-request", f"unknown prior {prior!r}: this server has {', '.join(self.model_names())}")
        if model_kind(prior) == "msldm":
            raise RequestError("bad-request", f"prior {prior!r} is an MSLDM latent prior: it cannot refine a separation")
        return {"preset": preset, "prior": prior}

    def _load_preset(self, name: str):
        from stemweave.engine.presets import load_preset

        if self.preset_dir is not None and (self.preset_dir / f"{name}.toml").is_file():
            return load_preset(self.preset_dir / f"{name}.toml")  # a configured folder, a plain name: no client path
        return load_preset(name)

    def _default_model(self, task: str = "separate") -> str:
        return self.default_model or default_model_for(task, self.model_names())

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError("unknown-job", f"no job {job_id}: never submitted here, or forgotten since")
        return job

    def _jobs_of(self, identity: bytes) -> list[str]:
        return [j.id for j in list(self.jobs.values()) if j.unfinished and identity in j.watchers]

    def _heartbeat(self) -> None:
        now = time.time()
        clients: dict[bytes, list[str]] = {}
        for job in list(self.jobs.values()):
            if job.unfinished:
                for identity, _req, _pos in job.watching():
                    clients.setdefault(identity, []).append(job.id)
        for identity, jobs in clients.items():
            self._send(identity, P.Heartbeat(time=now, jobs=jobs))

    # Workers ----------------------------------------------------------------------------------------------
    def _work(self, device: str) -> None:
        if self.preload:
            try:
                self.models.get(self._default_model(), device)
            except Exception as error:  # noqa: BLE001 - a job will report it; serving goes on
                self.log(f"could not preload {self._default_model()} on {device}: {error}")
        try:
            while not self._stop.is_set():
                job = self.queue.get(timeout=0.2)
                if job is None:
                    continue
                if job.cancel.is_set():
                    continue
                self._run(job, device)
        finally:
            push = getattr(self._local, "push", None)
            if push is not None:
                push.close()

    def _run(self, job: Job, device: str) -> None:
        from stemweave.engine.regions import run_region
        from stemweave.engine.sampler import Cancelled

        job.state, job.started, job.device = "running", time.monotonic(), device
        self._running[job.id] = job
        spec = job.spec
        last = [0.0, None]  # time and stage of the last progress message sent

        def progress(update: dict) -> None:
            job.progress = update
            now = time.monotonic()
            if update["stage"] == last[1] and update["fraction"] < 1.0 and now - last[0] < self.progress_interval_s:
                return
            last[0], last[1] = now, update["stage"]
            eta = update.get("eta_s")
            message = P.Progress(job=job.id, fraction=float(min(1.0, max(0.0, update["fraction"]))),
                                 stage=str(update["stage"]), eta_s=None if eta is None else float(max(0.0, eta)),
                                 **{k: int(update.get(k) or 0) for k in ("window", "windows", "step", "steps")})
            for identity, req, _pos in job.watching():
                message.req = req
                self._send(identity, message)

        def partial(update: dict) -> None:
            stems = update["stems"]
            _check_finite(stems, spec)
            for identity, req, _pos in job.watching():
                self._send(identity, P.Partial(job=job.id, req=req, rate=int(update["rate"]), stems_audio=stems,
                                               start=int(update["start"]), end=int(update["end"]),
                                               window=int(update.get("window", 0)),
                                               windows=int(update.get("windows", 0)), kind=update.get("kind", "window")))

        try:
            if spec.get("accompanist"):
                return self._run_accompanist(job, device, progress)
            progress({"stage": "load", "fraction": 0.0})
            model = self.models.get(spec["model"], device)
            if job.cancel.is_set():
                raise Cancelled("cancelled")
            refine = spec.get("refine")
            if spec.get("gmsdi"):
                def progress_or_cancel(update: dict) -> None:
                    if job.cancel.is_set():
                        raise Cancelled("cancelled")
                    progress(update)

                stems = gmsdi_jobs.run(spec, model, job.audio, job.given, job.rate, progress_or_cancel)
            else:
                stems = run_region(spec["task"], model, job.audio, job.rate, spec["preset_obj"],
                                   given=job.given or None, seed=spec["seed"], progress=progress, cancel=job.cancel,
                                   on_partial=None if refine else partial, **spec["region"])
            if refine:
                stems = self._refine(job, spec, device, model, stems, progress, partial)
            stems = {name: np.ascontiguousarray(s, dtype="<f4") for name, s in stems.items()}
            _check_finite(stems, spec)
            elapsed = time.monotonic() - job.started
            info = {"model": spec["model"], "preset": spec["preset"], "seed": spec["seed"], "device": device,
                    "task": spec["task"]}
            if refine:
                info["refine"] = {"preset": refine["preset"].name, "prior": refine["prior"]}
            warnings = [w for w in (quality_warning(spec["model"], model),
                                    refine and quality_warning(refine["prior"], self.models.peek(refine["prior"]))) if w]
            if warnings:
                info["warnings"] = warnings
            self.cache.put(CachedResult(job.id, job.key, stems, job.rate, info, elapsed))
            job.state, job.finished = "done", time.monotonic()
            self._running.pop(job.id, None)
            for identity, req, position in job.watching():
                self._send(identity, P.Result(job=job.id, req=req, rate=job.rate, stems_audio=stems, position=position,
                                              elapsed_s=elapsed, info=info))
            self._forget_later(job)
        except NonFiniteOutput as error:
            self._end(job, "failed", ("failed", str(error)))
        except Cancelled:
            if self._stop.is_set():
                self._end(job, "cancelled", ("shutdown", "the server is shutting down: the job was cancelled"))
            else:
                self._end(job, "cancelled", ("cancelled", "cancelled"))
        except ValueError as error:  # what run_region raises for a request it cannot run
            self._end(job, "failed", ("bad-request", str(error)))
        except Exception as error:  # noqa: BLE001 - a job that raises becomes an error reply
            self.log(f"job {job.id} failed: {error!r}\n{traceback.format_exc()}")
            self._end(job, "failed", ("failed", f"{type(error).__name__}: {error}"))
        finally:
            self._running.pop(job.id, None)
            job.release()

    def _refine(self, job: Job, spec: dict, device: str, separator, first: dict, progress, partial) -> dict:
        """Send the separator's stems as an "estimate" partial, then refine them with the prior (WarmStart)."""
        from stemweave.engine.refine import WarmStart
        from stemweave.engine.regions import run_region

        frames = next(iter(first.values())).shape[1]
        partial({"stems": first, "rate": job.rate, "start": 0, "end": frames, "kind": "estimate"})
        prior = self.models.get(spec["refine"]["prior"], device)
        try:
            warm = WarmStart(separator, prior)
        except (ValueError, AttributeError) as error:
            raise ValueError(f"cannot refine {spec['model']} with {spec['refine']['prior']}: {error}") from None
        return run_region("separate", warm, job.audio, job.rate, spec["refine"]["preset"], seed=spec["seed"],
                          progress=progress, cancel=job.cancel, on_partial=partial, **spec["region"])

    def _end(self, job: Job, state: str, error: tuple[str, str]) -> None:
        """Finish a job without a result and tell everyone watching it."""
        job.state, job.error, job.finished = state, error, time.monotonic()
        self._running.pop(job.id, None)
        job.release()
        for identity, req, _pos in job.watching():
            self._send(identity, P.Error(job=job.id, req=req, code=error[0], message=error[1]))
        self._forget_later(job)

    def _forget_later(self, job: Job, keep: int = 1000) -> None:
        """Keep the last `keep` finished jobs' states (their results live in the cache)."""
        with self._finished_lock:
            self._finished_order.append(job.id)
            while len(self._finished_order) > keep:
                self.jobs.pop(self._finished_order.pop(0), None)

    # OSC hook -----------------------------------------------------------------------------------------------
    def _start_osc(self) -> None:
        if self.osc_port is None:
            return
        try:
            from stemweave.bridge import osc  # added by the OSC issue: osc.start(server, port)
        except ImportError:
            self.log(f"--osc-port {self.osc_port}: the OSC control surface is not installed in this version; ignoring")
            return
        osc.start(self, self.osc_port)

    # Shutdown ----------------------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        self._accepting = False
        for job in self.queue.drain():
            job.cancel.set()
            self._end(job, "cancelled", ("shutdown", "the server is shutting down: the job was cancelled"))
        for job in list(self._running.values()):
            job.cancel.set()
        self.queue.close()
        deadline = time.monotonic() + 30
        for worker in self._workers:
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(0.05)
                self._forward_outbox()  # the workers' last messages (the "shutdown" errors) go out
        self._forward_outbox()
        self._pull.close(0)
        self._router.close(linger=1000)
        if self._authenticator is not None:
            self._authenticator.stop()
        self.context.term()
        self._stopped.set()


def _check_finite(stems: dict, spec: dict) -> None:
    """Never send NaN or infinite audio: the job fails with a clear message instead."""
    bad = [name for name, audio in stems.items() if not np.isfinite(audio).all()]
    if bad:
        raise NonFiniteOutput(f"model {spec['model']} produced NaN or infinite samples in {', '.join(bad)} "
                              "(nothing was sent): a broken model file, or input it cannot carry")


def _check_param(name, value, rule) -> None:
    kind, lo, hi = rule
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RequestError("bad-request", f"parameter {name} must be a {kind.__name__}, got {value!r:.40}")
    if lo is not None and not lo <= value <= hi:
        raise RequestError("bad-request", f"parameter {name}={value} is outside [{lo}, {hi}]")
    if kind is str and len(value) > 64:
        raise RequestError("bad-request", f"parameter {name} is too long")
    if name == "stems" and (not value or len(value) > P.MAX_STEMS or not all(isinstance(s, str) and P.NAME.match(s)
                                                                            for s in value)):
        raise RequestError("bad-request", "parameter stems must be a list of stem names")
    if name == "regenerate" and (len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                            for v in value)):
        raise RequestError("bad-request", "parameter regenerate must be [start, end] in frames")


__all__ = ["ANALYTIC_MODEL", "DEFAULT_BIND", "Server", "ServerError", "analytic_model", "default_model_loader",
           "is_loopback"]
