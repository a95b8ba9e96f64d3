"""The job server over real loopback sockets: same stems as the direct call, progress, cancel, concurrency, cache,
fuzzing, limits and keys."""

import json
import threading
import time

import numpy as np
import pytest
import zmq
import zmq.auth

from stemweave.bridge import protocol as P
from stemweave.bridge.client import Client, JobCancelled, ServerError
from stemweave.bridge.server import Server, ServerError as ServerSetupError, analytic_model, is_loopback
from stemweave.engine.presets import load_preset
from stemweave.engine.regions import run_region

RATE = 8000  # the region's rate; the toy models run at 4 kHz with 256-sample windows


class SlowPrior:
    """The analytic prior, slowed to `delay` seconds per denoiser call, counting its calls."""

    def __init__(self, delay=0.02):
        self.inner = analytic_model(rate=4000, window=256)
        self.stems, self.rate, self.window = self.inner.stems, self.inner.rate, self.inner.window
        self.delay, self.calls = delay, 0

    def denoise(self, x, sigma):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.denoise(x, sigma)


def loader(models):
    def load(name, device):
        if name == "broken":
            raise RuntimeError("this model file is broken")
        if name == "slow":
            models["slow"] = SlowPrior()
            return models["slow"]
        if name == "hears":  # a prior trained to hear given stems clean (`train --given-share`)
            models["hears"] = SlowPrior(delay=0.0)
            models["hears"].given_sigma_data = 0.2
            return models["hears"]
        return analytic_model(rate=4000, window=256)

    return load


@pytest.fixture
def served():
    models = {}
    server = Server("tcp://127.0.0.1:*", model_loader=loader(models), model_names=["toy", "slow", "broken", "hears"],
                    heartbeat_s=0.2, max_seconds=5.0, preload=False).start()
    server.loaded = models
    yield server
    server.stop()


@pytest.fixture
def client(served):
    with Client(served.endpoint, timeout=10) as c:
        yield c


def region(seconds=0.25, channels=2, seed=0):
    rng = np.random.default_rng(seed)
    return (0.2 * rng.standard_normal((channels, int(seconds * RATE)))).astype(np.float32)


FAST = {"steps": 4, "resamples": 0}


def test_separate_through_the_server_equals_the_direct_call(client):
    audio = region()
    stems = client.separate(audio, RATE, model="toy", preset="separate-fast", seed=5, position=4410, **FAST)
    direct = run_region("separate", analytic_model(rate=4000, window=256), audio, RATE,
                        load_preset("separate-fast").with_overrides(**FAST), seed=5)
    assert list(stems) == list(direct)
    for name in direct:
        assert stems[name].dtype == np.float32 and stems[name].shape == audio.shape
        np.testing.assert_array_equal(stems[name], direct[name])
    assert client.last_result.position == 4410 and client.last_result.info["seed"] == 5
    assert client.hello()["protocol"] == P.PROTOCOL_VERSION and "toy@cpu" in client.hello()["models_loaded"]


def test_guidance_reaches_the_sampler_through_the_server(served, client):
    """Guided (the accompany presets' default, here given explicitly), a prior that hears given stems clean is
    evaluated twice per step (tasks.accompany); same seed, same stems as the direct call with the guided preset."""
    drums = region(channels=1)
    client.accompany({"drums": drums}, RATE, model="hears", stems=["bass"], seed=2, guidance=0.0, **FAST)
    plain_calls = served.loaded["hears"].calls
    bass = client.accompany({"drums": drums}, RATE, model="hears", stems=["bass"], seed=2, guidance=2.0, **FAST)
    assert served.loaded["hears"].calls - plain_calls == 2 * plain_calls > 0
    direct = SlowPrior(delay=0.0)
    direct.given_sigma_data = 0.2
    guided = load_preset("accompany-fast").with_overrides(guidance=2.0, **FAST)
    expected = run_region("accompany", direct, None, RATE, guided, given={"drums": drums}, stems=["bass"], seed=2)
    np.testing.assert_array_equal(bass["bass"], expected["bass"])
    with pytest.raises(ServerError) as caught:
        client.accompany({"drums": drums}, RATE, model="hears", stems=["bass"], guidance=-1.0, **FAST)
    assert caught.value.code == "bad-request" and "guidance" in caught.value.message


def test_progress_arrives_in_order_and_ends_with_a_result(client):
    audio = region(seconds=0.5, channels=1)
    events = []
    job = client.submit("separate", audio, RATE, model="toy", preset="separate-fast", seed=1, **FAST,
                        on_progress=lambda p: events.append(("progress", p)),
                        on_partial=lambda p: events.append(("partial", p)),
                        on_result=lambda stems: events.append(("result", stems)))
    deadline = time.monotonic() + 20
    while not events or events[-1][0] != "result":
        client.poll(0.1)
        assert time.monotonic() < deadline
    fractions = [p["fraction"] for kind, p in events if kind == "progress"]
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(p["job"] == job for kind, p in events if kind == "progress")
    partials = [p for kind, p in events if kind == "partial"]
    assert partials and partials[0]["start"] == 0 and partials[-1]["end"] == audio.shape[1]
    assert all(a["end"] == b["start"] for a, b in zip(partials, partials[1:]))  # contiguous, in order
    result = events[-1][1]
    for name, stem in result.items():  # the finished windows were the final samples
        np.testing.assert_array_equal(np.concatenate([p["stems"][name] for p in partials], axis=1), stem)


def test_cancel_stops_a_long_job_within_one_sampler_step(served, client):
    audio = region(seconds=0.1, channels=1)  # one window: one denoiser call per step
    started = threading.Event()
    job = client.submit("separate", audio, RATE, model="slow", preset="separate-fast", steps=5000, resamples=0,
                        on_progress=lambda p: p["stage"] == "separate" and p["step"] >= 2 and started.set())
    while not started.is_set():
        client.poll(0.05)
    calls = served.loaded["slow"].calls
    assert client.cancel(job)["job"] == job
    with pytest.raises(JobCancelled) as caught:
        client.wait(job, timeout=10)
    assert caught.value.code == "cancelled"
    # within one sampler step, counted in denoiser calls rather than seconds: the step under way, at most
    assert served.loaded["slow"].calls - calls <= 2
    assert client.status(job)["state"] == "cancelled"
    assert client.status()["running"] == []
    assert client.separate(audio, RATE, model="toy", preset="separate-fast", **FAST)  # the worker is free again


def test_two_clients_at_once_and_a_disconnect_stalls_nothing(served):
    # A submits a slow job and vanishes; B and C, on two threads at once, still get their results.
    with Client(served.endpoint, timeout=10) as a:
        gone_job = a.submit("separate", region(0.1, 1), RATE, model="slow", preset="separate-fast", steps=30,
                            resamples=0, priority="batch")
    results, errors = {}, []

    def run(name, seed):
        try:
            with Client(served.endpoint, timeout=10) as c:
                results[name] = c.separate(region(0.25, 2, seed), RATE, model="toy", preset="separate-fast",
                                           seed=seed, **FAST)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("b", 1), ("c", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)  # generous: a stalled server never answers, so a loaded machine cannot be mistaken for one
    assert not any(t.is_alive() for t in threads), "B or C got no result: the vanished client stalled the server"
    assert not errors and set(results) == {"b", "c"}
    direct = run_region("separate", analytic_model(rate=4000, window=256), region(0.25, 2, 2), RATE,
                        load_preset("separate-fast").with_overrides(**FAST), seed=2)
    np.testing.assert_array_equal(results["c"]["bass"], direct["bass"])
    # The vanished client's job was not lost: a new connection fetches it by id.
    with Client(served.endpoint, timeout=10) as again:
        stems = again.fetch(gone_job, timeout=20)
        assert set(stems) == {"bass", "drums", "guitar", "piano"}


def test_heartbeats_reach_a_client_with_a_running_job(served):
    context = zmq.Context.instance()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(served.endpoint)
    try:
        submit = P.Submit(req=1, task="separate", model="slow", preset="separate-fast", params={"steps": 40,
                          "resamples": 0}, rate=RATE, audio=region(0.1, 1))
        raw.send_multipart(submit.to_frames())
        kinds = []
        while "result" not in kinds:
            assert raw.poll(10_000)
            kinds.append(P.decode(raw.recv_multipart()).TYPE)
        assert kinds[0] == "accepted" and kinds.count("heartbeat") >= 2
    finally:
        raw.close()


def test_identical_request_returns_the_cached_result_at_once(served, client):
    audio = region(0.1, 1)
    kw = dict(model="slow", preset="separate-fast", seed=3, steps=15, resamples=0)
    first = client.separate(audio, RATE, **kw)
    assert not client.last_result.cached
    calls = served.loaded["slow"].calls
    assert calls >= 15  # the first request ran the sampler
    again = client.separate(audio.copy(), RATE, **kw)
    assert served.loaded["slow"].calls == calls  # at once: not one denoiser call (no wall-clock bound)
    assert client.last_result.cached
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    client.separate(audio, RATE, **{**kw, "seed": 4})  # another seed is another request
    assert not client.last_result.cached


def test_interactive_jobs_overtake_batch_jobs(client):
    order = []
    kw = dict(model="slow", preset="separate-fast", steps=8, resamples=0)
    jobs = [client.submit("separate", region(0.1, 1, seed), RATE, priority=priority, seed=seed, **kw,
                          on_result=lambda stems, name=name: order.append(name))
            for name, priority, seed in (("first", "batch", 0), ("batch", "batch", 1), ("interactive", "interactive", 2))]
    deadline = time.monotonic() + 30
    while len(order) < len(jobs):
        client.poll(0.1)
        assert time.monotonic() < deadline
    assert order.index("interactive") < order.index("batch")


def test_requests_the_server_cannot_run_get_clear_errors(client):
    audio = region(0.1, 1)
    cases = [
        (dict(model="nope"), "bad-request"),
        (dict(model="toy", preset="no-such-preset"), "bad-request"),
        (dict(model="toy", preset="accompany"), "bad-request"),  # a preset for another task
        (dict(model="toy", warp=3), "bad-request"),  # unknown parameter
        (dict(model="toy", steps="many"), "bad-request"),
        (dict(model="toy", method="rk4"), "bad-request"),  # not a sampler the engine has
        (dict(model="toy", guidance=1.0), "bad-request"),  # an accompaniment option, not separation's
        (dict(model="toy", stems=["kazoo"]), "bad-request"),  # run_region refuses it: the job fails cleanly
        (dict(model="broken"), "failed"),  # a job that raises
    ]
    for kw, code in cases:
        with pytest.raises(ServerError) as caught:
            client.separate(audio, RATE, preset=kw.pop("preset", "separate-fast"), **kw)
        assert caught.value.code == code, (kw, caught.value)
        assert caught.value.message
    with pytest.raises(ServerError) as caught:
        client.separate(region(6.0, 1), RATE, model="toy", preset="separate-fast")
    assert caught.value.code == "too-long" and "--max-seconds" in caught.value.message
    with pytest.raises(ServerError) as caught:
        client.fetch("0123456789abcdef")
    assert caught.value.code == "unknown-job"
    assert "toy@cpu" in client.unload() and client.hello()["models_loaded"] == []  # explicit unload
    assert client.separate(audio, RATE, model="toy", preset="separate-fast", **FAST)  # loads it again
    assert client.separate(audio, RATE, model="toy", preset="separate-fast", **{**FAST, "method": "heun"})
    assert client.hello()["models_loaded"] == ["toy@cpu"]


def fuzz_messages(rng, count):
    """Random and malformed messages; none is a runnable job (the model never exists)."""
    valid = P.Submit(task="separate", model="no-such-model", preset="separate-fast", params={"steps": 2}, rate=RATE,
                     audio=region(0.01, 2)).to_frames()
    valid = [bytes(f) for f in valid]
    head = json.loads(valid[0])
    junk_values = [None, -1, 0, 1 << 70, 1e308, "x" * 300, "", [], {}, [1, [2, [3]]], True, "../../x", "ümlaut", 3.5]
    for i in range(count):
        kind = i % 8
        if kind == 0:  # random bytes
            yield [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 4)))]
        elif kind == 1:  # a header field replaced by junk
            h = dict(head)
            h[rng.choice([k for k in h if k != "model"])] = junk_values[int(rng.integers(len(junk_values)))]
            yield [json.dumps(h).encode(), *valid[1:]]
        elif kind == 2:  # a header field removed
            h = dict(head)
            del h[rng.choice([k for k in h if k != "model"])]
            yield [json.dumps(h).encode(), *valid[1:]]
        elif kind == 3:  # wrong frame count
            yield [valid[0], *valid[1:][: int(rng.integers(0, 2))]] if rng.random() < 0.5 else [*valid, valid[-1]]
        elif kind == 4:  # sizes that lie
            cut = int(rng.integers(0, len(valid[1])))
            yield [valid[0], valid[1][:cut], valid[2]]
        elif kind == 5:  # NaN audio, or a NaN in the header
            bad = np.frombuffer(valid[1], np.float32).copy()
            bad[int(rng.integers(len(bad)))] = np.nan
            yield [valid[0], bad.tobytes(), valid[2]] if rng.random() < 0.5 else [valid[0].replace(b'"seed":0', b'"seed":NaN'), *valid[1:]]
        elif kind == 6:  # every message type with junk fields
            t = rng.choice(list(P.MESSAGES) + ["nope", ""])
            h = {"v": int(rng.choice([1, 1, 2])), "type": t, "job": junk_values[int(rng.integers(len(junk_values)))]}
            yield [json.dumps(h).encode()]
        else:  # truncated or deeply nested JSON
            yield [valid[0][: int(rng.integers(0, len(valid[0])))]] if rng.random() < 0.5 else [b"[" * 5000]


def test_fuzzed_messages_all_get_error_replies_and_the_server_keeps_serving(served, client):
    context = zmq.Context.instance()
    raw = context.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(served.endpoint)
    rng = np.random.default_rng(0)
    sent = replies = errors = 0
    try:
        for batch in range(6):
            messages = list(fuzz_messages(rng, 500))
            for frames in messages:
                raw.send_multipart(frames)
            sent += len(messages)
            while replies < sent:
                assert raw.poll(10_000), f"no reply after {replies} of {sent} messages"
                reply = P.decode(raw.recv_multipart())
                replies += 1
                errors += reply.TYPE == "error"
                if reply.TYPE == "error":
                    assert reply.code in P.ERROR_CODES and reply.message
                    assert not reply.message.startswith(("internal error", "malformed")), reply.message
        assert not raw.poll(200)  # exactly one reply each
    finally:
        raw.close()
    assert sent == 3000 and errors > 2500
    audio = region(0.1, 1)
    assert set(client.separate(audio, RATE, model="toy", preset="separate-fast", **FAST)) == {"bass", "drums", "guitar",
                                                                                                "piano"}


def test_binding_beyond_loopback_needs_curve_keys(tmp_path):
    assert is_loopback("tcp://127.0.0.1:5557") and is_loopback("tcp://[::1]:5557") and is_loopback("ipc:///tmp/x")
    assert not is_loopback("tcp://0.0.0.0:5557") and not is_loopback("tcp://*:5557")
    with pytest.raises(ServerSetupError, match="--curve-secret"):
        Server("tcp://0.0.0.0:*", model_loader=loader({}), model_names=["toy"])
    public, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    __import__("os").chmod(secret, 0o600)  # a readable secret key is refused (issue 20; tests/test_security.py)
    (tmp_path / "clients").mkdir()
    _, client_secret = zmq.auth.create_certificates(str(tmp_path / "clients"), "client")
    server = Server("tcp://0.0.0.0:*", model_loader=loader({}), model_names=["toy"], curve_secret=secret,
                    curve_clients=tmp_path / "clients", preload=False).start()
    try:
        port = server.endpoint.rsplit(":", 1)[1]
        with Client(f"tcp://127.0.0.1:{port}", timeout=10, server_key=public, client_cert=client_secret) as c:
            assert c.hello()["curve"] is True
        with Client(f"tcp://127.0.0.1:{port}", timeout=0.5) as plain:  # no key: no conversation
            with pytest.raises(ServerError):
                plain.hello()
    finally:
        server.stop()


def test_refine_sends_the_first_estimate_then_the_refined_result():
    """Issue 13 through the server: the separator's stems arrive as an "estimate" partial, then the refined result;
    cancelling during the refinement leaves the client holding the estimate."""
    from test_regions import FIRSeparator

    def load(name, device):
        return FIRSeparator() if name == "sep" else SlowPrior(delay=0.01 if name == "toy" else 0.05)

    server = Server("tcp://127.0.0.1:*", model_loader=load, model_names=["sep", "toy", "slow"], preload=False).start()
    try:
        with Client(server.endpoint, timeout=20) as client:
            audio = region(seconds=0.25, channels=1)
            estimates = []
            stems = client.separate(audio, RATE, model="sep", refine="refine-fast", prior="toy", steps=3,
                                    on_partial=lambda p: p.get("kind") == "estimate" and estimates.append(p))
            assert len(estimates) == 1
            estimate = estimates[0]["stems"]
            direct = run_region("separate", FIRSeparator(), audio, RATE, load_preset("separate-fast"))
            for name in direct:
                np.testing.assert_allclose(estimate[name], direct[name], atol=1e-6)
            assert np.abs(sum(stems.values()) - audio).max() < 1e-5

            estimates.clear()
            job = client.submit("separate", audio, RATE, model="sep", params={"refine": "refine-fast", "prior": "slow",
                                "steps": 5000}, on_partial=lambda p: p.get("kind") == "estimate" and estimates.append(p))
            while not estimates:
                client.poll(0.05)
            client.cancel(job)
            with pytest.raises(JobCancelled):
                client.wait(job, timeout=10)
            assert set(estimates[0]["stems"]) == set(direct)
            with pytest.raises(ServerError, match="refine"):
                client.separate(audio, RATE, model="sep", refine="separate-fast")
    finally:
        server.stop()
