"""Protocol overhead and job throughput of the bridge (not a test).

1. raw ZeroMQ: a DEALER sends a 10 s stereo 48 kHz float32 buffer (2 frames,
   3.84 MB) to a ROUTER that echoes it back; the median round trip.
2. protocol: the same buffer as a Submit, decoded at the far end (validation,
   np.frombuffer views, the finite-sample check, the planar copy) and answered
   with a Result carrying it as two stems, decoded again; the median round
   trip and its overhead over (1).
3. job: a full Submit -> Accepted ... Result through `Server` and `Client`
   with a trivial model (no sampling), so what is left is the bridge and
   run_region's own bookkeeping; every job has another seed (no cache hits).
4. throughput: N clients on N threads each submit jobs of 1 s of stereo
   48 kHz audio to one server (one worker) with the same trivial model.

    python benchmarks/bridge.py [--repeats 30] [--clients 1,2,4] [--jobs 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import numpy as np
import torch
import zmq

from stemweave.bridge import protocol as P
from stemweave.bridge.client import Client
from stemweave.bridge.server import Server

RATE, SECONDS = 48000, 10.0


class NullSeparator:
    """A 'separator' that splits the mixture into two equal halves: no sampling, so only overhead is timed."""

    stems, rate, window = ("left", "right"), RATE, RATE

    def __call__(self, mixture: torch.Tensor) -> torch.Tensor:  # (B, 1, T) -> (B, 2, T)
        return mixture.repeat(1, 2, 1) / 2


def echo_server(router: zmq.Socket, decode: bool, stop: threading.Event) -> None:
    """Echo every message (raw), or decode it and answer with a Result (protocol); owns `router` from now on."""
    while not stop.is_set():
        if not router.poll(50):
            continue
        frames = router.recv_multipart(copy=False)
        if decode:
            message = P.decode(frames[1:])
            reply = P.Result(job="bench", rate=message.rate, stems_audio={"a": message.audio})  # the same bytes back as raw
            router.send_multipart([frames[0], *reply.to_frames()], copy=False)
        else:
            router.send_multipart(frames, copy=False)
    router.close(0)


def round_trips(decode: bool, audio: np.ndarray, repeats: int) -> list[float]:
    context = zmq.Context()
    stop = threading.Event()
    router = context.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt(zmq.LAST_ENDPOINT).decode()
    thread = threading.Thread(target=echo_server, args=(router, decode, stop), daemon=True)
    thread.start()
    dealer = context.socket(zmq.DEALER)
    dealer.connect(endpoint)
    times = []
    for i in range(repeats + 3):
        started = time.perf_counter()
        if decode:
            dealer.send_multipart(P.Submit(task="separate", rate=RATE, audio=audio, seed=i).to_frames(), copy=False)
            reply = P.decode(dealer.recv_multipart(copy=False))
            assert reply.stems_audio["a"].shape == audio.shape
        else:
            dealer.send_multipart([memoryview(audio[0]), memoryview(audio[1])], copy=False)
            reply = dealer.recv_multipart(copy=False)
            assert len(reply) == 2
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - started)
    stop.set()
    thread.join()
    dealer.close(0)
    context.term()
    return times


def job_round_trips(server: Server, audio: np.ndarray, repeats: int) -> list[float]:
    times = []
    with Client(server.endpoint) as client:
        for i in range(repeats + 2):
            started = time.perf_counter()
            client.separate(audio, RATE, model="null", seed=1000 + i)
            if i >= 2:
                times.append(time.perf_counter() - started)
    return times


def direct_runs(audio: np.ndarray, repeats: int) -> list[float]:
    """run_region alone with the same trivial model: what a job costs without the bridge."""
    from stemweave.engine.presets import load_preset
    from stemweave.engine.regions import run_region

    preset, times = load_preset("separate-fast"), []
    for i in range(repeats + 2):
        started = time.perf_counter()
        run_region("separate", NullSeparator(), audio, RATE, preset, seed=i)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return times


def throughput(server: Server, clients: int, jobs: int, seconds: float = 1.0) -> dict:
    audio = (0.1 * np.random.default_rng(1).standard_normal((2, int(seconds * RATE)))).astype(np.float32)
    latencies: list[float] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        with Client(server.endpoint) as client:
            for j in range(jobs):
                started = time.perf_counter()
                client.separate(audio, RATE, model="null", seed=clients * 100_000 + c * 1000 + j,
                                priority="batch")
                with lock:
                    latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "jobs": clients * jobs, "wall_s": wall, "jobs_per_s": clients * jobs / wall,
            "audio_s_per_s": clients * jobs * seconds / wall, "median_latency_ms": 1000 * statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument("--jobs", type=int, default=10, help="jobs per client")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    audio = (0.1 * np.random.default_rng(0).standard_normal((2, int(SECONDS * RATE)))).astype(np.float32)
    raw = round_trips(False, audio, args.repeats)
    proto = round_trips(True, audio, args.repeats)
    direct = direct_runs(audio, max(5, args.repeats // 3))
    server = Server("tcp://127.0.0.1:*", model_loader=lambda name, device: NullSeparator(), model_names=["null"],
                    preload=True, cache_bytes=64 << 20).start()
    try:
        job = job_round_trips(server, audio, max(5, args.repeats // 3))
        scaling = [throughput(server, int(n), args.jobs) for n in args.clients.split(",")]
    finally:
        server.stop()
    ms = lambda xs: 1000 * statistics.median(xs)  # noqa: E731
    results = {
        "buffer": {"seconds": SECONDS, "rate": RATE, "channels": 2, "bytes": audio.nbytes},
        "raw_zmq_round_trip_ms": ms(raw),
        "protocol_round_trip_ms": ms(proto),
        "protocol_overhead_ms": ms(proto) - ms(raw),
        "job_round_trip_ms": ms(job),
        "direct_run_region_ms": ms(direct),
        "job_overhead_ms": ms(job) - ms(direct),
        "throughput": scaling,
    }
    print(f"10 s stereo 48 kHz float32 buffer ({audio.nbytes / 1e6:.2f} MB), median of {args.repeats} round trips")
    print(f"{'path':<44}{'ms':>10}")
    print(f"{'raw ZeroMQ (DEALER/ROUTER echo, tcp loopback)':<44}{ms(raw):>10.2f}")
    print(f"{'protocol (Submit -> decode -> Result -> decode)':<44}{ms(proto):>10.2f}")
    print(f"{'  overhead over raw':<44}{ms(proto) - ms(raw):>10.2f}")
    print(f"{'job through Server + Client (trivial model)':<44}{ms(job):>10.2f}")
    print(f"{'run_region alone (same trivial model)':<44}{ms(direct):>10.2f}")
    print(f"{'  job overhead (bridge, hash, partials)':<44}{ms(job) - ms(direct):>10.2f}")
    print()
    print(f"{'clients':>8}{'jobs':>6}{'wall s':>9}{'jobs/s':>9}{'audio s/s':>11}{'median latency ms':>19}")
    for row in scaling:
        print(f"{row['clients']:>8}{row['jobs']:>6}{row['wall_s']:>9.2f}{row['jobs_per_s']:>9.1f}"
              f"{row['audio_s_per_s']:>11.1f}{row['median_latency_ms']:>19.1f}")
    print(json.dumps(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
