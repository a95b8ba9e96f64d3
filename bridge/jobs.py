"""The server's job book-keeping: jobs, a priority queue (interactive overtakes batch), and a result cache.

Nothing here touches sockets or models: the server (bridge/server.py) owns
those. A `Job` is created by the socket thread from a validated Submit; a
worker thread takes it from the `JobQueue`; finished results go to the
`ResultCache`, an LRU bounded in bytes and age, indexed both by job id (a
reconnecting client fetches by id) and by content key (an identical request
is answered at once).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

PRIORITY_RANK = {"interactive": 0, "batch": 1}
STATES = ("queued", "running", "done", "failed", "cancelled")


def new_job_id() -> str:
    """A random, unguessable job id (a client can fetch or cancel only jobs whose id it was told)."""
    return uuid.uuid4().hex


def content_key(spec: dict, audio: np.ndarray | None, given: dict[str, np.ndarray]) -> str:
    """A hash of everything that determines a result: the request spec (task, model, preset, params, seed, rate)
    and the audio itself."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str).encode())
    for name, block in ([("", audio)] if audio is not None else []) + sorted(given.items()):
        digest.update(name.encode() + b"\0" + repr(block.shape).encode())
        digest.update(memoryview(np.ascontiguousarray(block, dtype="<f4")).cast("B"))
    return digest.hexdigest()


@dataclass(eq=False)
class Job:
    id: str
    key: str  # content key
    spec: dict  # what run_region is called with, minus the audio (task, model, preset object, params, seed...)
    audio: np.ndarray | None
    given: dict[str, np.ndarray]
    rate: int
    priority: str = "interactive"
    watchers: dict = field(default_factory=dict)  # client identity (bytes) -> (req, position) to answer
    state: str = "queued"
    cancel: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    progress: dict = field(default_factory=dict)  # the last progress dict
    error: tuple[str, str] | None = None  # (code, message) when failed or cancelled
    device: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, identity: bytes, req, position) -> None:
        with self.lock:
            self.watchers[identity] = (req, position)

    def watching(self) -> list[tuple[bytes, object, object]]:
        with self.lock:
            return [(identity, req, position) for identity, (req, position) in self.watchers.items()]

    @property
    def unfinished(self) -> bool:
        return self.state in ("queued", "running")

    def info(self, position: int | None = None) -> dict:
        now = time.monotonic()
        info = {"job": self.id, "state": self.state, "task": self.spec.get("task"), "model": self.spec.get("model"),
                "priority": self.priority, "age_s": round(now - self.created, 3)}
        if position is not None:
            info["queued"] = position
        if self.started is not None:
            info["elapsed_s"] = round((self.finished or now) - self.started, 3)
        if self.progress:
            info.update({k: self.progress.get(k) for k in ("fraction", "stage", "eta_s")})
        if self.device:
            info["device"] = self.device
        if self.error:
            info["code"], info["message"] = self.error
        return info

    def release(self) -> None:
        """Drop the job's audio (its memory) once it has run or been cancelled."""
        self.audio, self.given = None, {}


class JobQueue:
    """Jobs waiting for a worker: interactive before batch, first come first served within a priority."""

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._heap: list[tuple[int, int, Job]] = []
        self._order = itertools.count()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._ready:
            return len(self._heap)

    def put(self, job: Job) -> int:
        """Queue `job`; returns how many jobs are ahead of it. Raises OverflowError when the queue is full."""
        with self._ready:
            if len(self._heap) >= self.limit:
                raise OverflowError(f"the queue holds {self.limit} jobs already")
            heapq.heappush(self._heap, (PRIORITY_RANK[job.priority], next(self._order), job))
            self._ready.notify()
            return self._ahead(job)

    def get(self, timeout: float | None = None) -> Job | None:
        """The next job, or None after `timeout` seconds or once the queue is closed."""
        with self._ready:
            if not self._heap and not self._closed:
                self._ready.wait(timeout)
            if not self._heap or self._closed:
                return None
            return heapq.heappop(self._heap)[2]

    def remove(self, job: Job) -> bool:
        with self._ready:
            for i, entry in enumerate(self._heap):
                if entry[2] is job:
                    self._heap.pop(i)
                    heapq.heapify(self._heap)
                    return True
            return False

    def position(self, job: Job) -> int | None:
        with self._ready:
            return self._ahead(job) if any(entry[2] is job for entry in self._heap) else None

    def _ahead(self, job: Job) -> int:
        mine = next(entry for entry in self._heap if entry[2] is job)
        return sum(1 for entry in self._heap if entry[:2] < mine[:2])

    def drain(self) -> list[Job]:
        """Remove and return every queued job."""
        with self._ready:
            jobs = [entry[2] for entry in sorted(self._heap, key=lambda e: e[:2])]
            self._heap.clear()
            return jobs

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


@dataclass
class CachedResult:
    job: str
    key: str
    stems: dict[str, np.ndarray]
    rate: int
    info: dict
    elapsed_s: float
    stored: float = field(default_factory=time.monotonic)
    files: dict[str, bytes] = field(default_factory=dict)  # named byte frames sent after the stems ("midi")

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.stems.values()) + sum(len(f) for f in self.files.values())


class ResultCache:
    """Finished results, least recently used dropped first once over `max_bytes`, and any older than `max_age_s`."""

    def __init__(self, max_bytes: int = 512 << 20, max_age_s: float = 3600.0):
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self._by_job: OrderedDict[str, CachedResult] = OrderedDict()
        self._by_key: dict[str, str] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, result: CachedResult) -> None:
        if result.nbytes > self.max_bytes:
            return  # larger than the whole cache: not kept (the client that asked has it)
        with self._lock:
            self._drop(self._by_job.get(result.job))
            self._by_job[result.job] = result
            self._by_key[result.key] = result.job
            self._bytes += result.nbytes
            self._evict()

    def by_job(self, job: str) -> CachedResult | None:
        with self._lock:
            self._evict()
            result = self._by_job.get(job)
            if result is not None:
                self._by_job.move_to_end(job)
            return result

    def by_key(self, key: str) -> CachedResult | None:
        with self._lock:
            job = self._by_key.get(key)
        return None if job is None else self.by_job(job)

    def stats(self) -> dict:
        with self._lock:
            return {"results": len(self._by_job), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "max_age_s": self.max_age_s}

    def _evict(self) -> None:
        now = time.monotonic()
        while self._by_job:
            oldest = next(iter(self._by_job.values()))
            if self._bytes <= self.max_bytes and now - oldest.stored <= self.max_age_s:
                break
            self._drop(oldest)
        for result in [r for r in self._by_job.values() if now - r.stored > self.max_age_s]:
            self._drop(result)

    def _drop(self, result: CachedResult | None) -> None:
        if result is None:
            return
        self._by_job.pop(result.job, None)
        if self._by_key.get(result.key) == result.job:
            del self._by_key[result.key]
        self._bytes -= result.nbytes
