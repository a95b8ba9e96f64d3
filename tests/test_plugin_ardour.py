"""The LV2 plugin in Ardour 7, headless (`ardour7-lua`, Ardour's dummy audio backend), against a real `stemweave serve`:

* record a stereo track through the plugin in real time while it captures a marked region and separates it, then
  play the session and find the separated stem in the track's output exactly where the region was;
* reopen the saved session in a new Ardour: the stems play again with no job sent, and the capture came back
  too (the plugin accompanies it without hearing it again); a damaged state file is refused whole;
* loop mode: the server's live loop (at 96 BPM) played in Ardour's 120 BPM timeline, bar for bar.

Ardour's output is heard by bouncing: a second track records the plugin's track's output while the session plays
in real time (`bounce` in LUA_COMMON), and the test reads the recorded files (the plugin's offline path, freewheel,
is tested with lv2file in tests/test_plugin_hosts.py). Not Ardour's export: Ardour 7.3 (Debian 12's) corrupts its
heap in its export graph's teardown (`ExportGraphBuilder::reset`, a double free, seen in gdb) with no plugin in the
session at all: a float WAV export crashed 2 of 30 runs of an export-only script, a W64 one 1 of 50, a 24-bit WAV
one 0 of 50 there but 2 of 6 runs of the recording test. Each script also ends its own process with SIGKILL after
its last report (`finish`): closing the session or `os.exit` runs Ardour's teardown, which crashed after an export
about one run in four. The plugin's own teardown is exercised by the other hosts.
Ardour runs with a private HOME and XDG folders under the test's tmp_path (its config there unhides the dummy
backend), so nothing leaks into the user's Ardour.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_plugin_hosts import (
    LV2_DIR,
    URI,
    Serve,
    bar_synced,
    build_bundle,
    fetch_loop,
    loop_serve,
    make_loop,
    server_stems,
)

sf = pytest.importorskip("soundfile")

RATE = 48000
A, B = RATE // 2, 3 * RATE // 2  # the marked region: [0.5 s, 1.5 s) of the timeline
RECORD_S = 2.0
EDGE = 4096  # Ardour fades a recorded region's first and last samples in and out when it plays them
MAX_LAG = 4096  # a bounce records sample 0 of the timeline this late at most (Ardour 7.3: 0 or 1040 here)
BOUNCE_FRAMES = int(RECORD_S * RATE) + MAX_LAG  # played and recorded: the take and the bounce lag

# The plugin's parameters as Ardour numbers them (its control ports in port order, from port 5).
CAPTURE, MARK_START, MARK_END, SEPARATE, ACCOMPANY = 0, 1, 2, 3, 4
CAPTURE_AS, TARGET, SOLO = 6, 7, 8
LOOP_MODE, STATUS, CAPTURED, LOOP_STATE = 20, 16, 19, 21

CONFIG = """<?xml version="1.0" encoding="UTF-8"?>
<Ardour>
  <Config>
    <Option name="hide-dummy-backend" value="0"/>
  </Config>
</Ardour>
"""

# Shared by every script: settings come from the environment; "SW ..." lines report to the test.
LUA_COMMON = f"""
local function env(name) local v = os.getenv(name); assert(v, name .. " is not set"); return v end
local function say(...)  -- unbuffered, so a report is never lost if Ardour falls over later
  local words = {{}}
  for _, v in ipairs({{...}}) do words[#words + 1] = tostring(v) end
  io.stderr:write("SW " .. table.concat(words, " ") .. "\\n")
end
local function sleep_s(s) ARDOUR.LuaAPI.usleep(math.floor(s * 1e6)) end
local function start_dummy(device)
  local backend = AudioEngine:set_backend("None (Dummy)", "", "")
  assert(backend, "no dummy backend (hide-dummy-backend must be 0 in Ardour's config)")
  if device then backend:set_device_name(device) end
  backend:set_buffer_size(1024)
end
local function param(proc, n)
  local value = ARDOUR.LuaAPI.get_processor_param(proc, n, true)  -- (value, its reference table)
  return value
end
local function set(proc, n, v) assert(ARDOUR.LuaAPI.set_processor_param(proc, n, v), "cannot set parameter " .. n) end
local function wait_for(what, cond, seconds)
  local t0 = ARDOUR.LuaAPI.monotonic_time()
  while not cond() do
    if ARDOUR.LuaAPI.monotonic_time() - t0 > seconds * 1e6 then say("TIMEOUT", what) return false end
    sleep_s(0.02)
  end
  return true
end
-- End the process once every report is out, with SIGKILL from a child shell (whose parent is this process):
-- closing the session or os.exit runs Ardour 7.3's teardown, which aborts or segfaults after an export about one
-- run in four. The test takes SIGKILL right after this EXIT report as the script's own end.
local function finish() say("EXIT") io.stderr:flush() os.execute("kill -KILL $PPID") end
-- Play [0, samples) in real time and record what `source` (a track) puts out on the track "Bounce" (made once per
-- session), whose input is that output alone; reports BOUNCED once the new take is a region, its files written.
-- With `live`, the source records its own input in the same pass and plays it (monitors it), not its disk.
local function bounce(s, source, samples, live)
  local route = s:route_by_name("Bounce")
  local bounce_track
  if route:isnil() then
    -- Ardour connects a new track's input to the physical inputs on a thread of its own, at a time of its own: after
    -- the disconnect_all below, now and then, which added the dummy's live noise to the bounce. New tracks from here
    -- on are connected by hand only.
    ARDOUR.config():set_input_auto_connect(ARDOUR.AutoConnectOption.ManualConnect)
    bounce_track = s:new_audio_track(2, 2, nil, 1, "Bounce", ARDOUR.PresentationInfo.max_order,
                                     ARDOUR.TrackMode.Normal, true):front()
  else
    bounce_track = route:to_track()
  end
  bounce_track:input():disconnect_all(nil)
  bounce_track:output():disconnect_all(nil)
  for c = 0, 1 do
    assert(bounce_track:input():connect(bounce_track:input():audio(c), source:output():audio(c):name(), nil) == 0,
           "cannot connect the bounce track")
  end
  local function takes() local n = 0 for _ in bounce_track:playlist():region_list():iter() do n = n + 1 end return n end
  local before = takes()
  local monitor = live and ARDOUR.MonitorChoice.MonitorInput or ARDOUR.MonitorChoice.MonitorDisk
  source:monitoring_control():set_value(monitor, PBD.GroupControlDisposition.NoGroup)
  local armed = live and {{bounce_track, source}} or {{bounce_track}}
  if live then wait_for("the source's input", function() return source:input():audio(0):connected() end, 10) end
  for _, t in ipairs(armed) do t:rec_enable_control():set_value(1, PBD.GroupControlDisposition.NoGroup) end
  s:request_locate(0, false, ARDOUR.LocateTransportDisposition.MustStop, ARDOUR.TransportRequestSource.TRS_UI)
  wait_for("the locate", function() return s:transport_sample() == 0 end, 10)
  s:maybe_enable_record(false)
  s:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
  wait_for("the bounce", function() return s:transport_sample() >= samples end, 60)
  s:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
  wait_for("the transport to stop", function() return not s:transport_rolling() end, 10)
  s:disable_record(false, false)
  for _, t in ipairs(armed) do t:rec_enable_control():set_value(0, PBD.GroupControlDisposition.NoGroup) end
  if wait_for("the bounced take", function() return takes() > before end, 10) then say("BOUNCED") end
end
"""

RECORD = LUA_COMMON + f"""
start_dummy("Uniform White Noise")  -- every dummy input port is its own noise generator: L and R differ
local s = create_session(env("SW_SESSION_DIR"), "take", {RATE})
assert(s, "cannot create the session")
ARDOUR.config():set_monitoring_model(ARDOUR.MonitorModel.SoftwareMonitoring)  -- the input plays through the track
local track = s:new_audio_track(2, 2, nil, 1, "Take", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal,
                                true):front()
local proc = ARDOUR.LuaAPI.new_plugin(s, "{URI}", ARDOUR.PluginType.LV2, "")
if proc:isnil() then say("NO-PLUGIN") os.exit(3) end
assert(track:add_processor_by_index(proc, 0, nil, true) == 0, "cannot insert the plugin")
-- the region [0.5 s, 1.5 s), captured while it is recorded, separated as soon as it is complete; bass plays
set(proc, {CAPTURE}, 1) set(proc, {MARK_START}, 0.5) set(proc, {MARK_END}, 1.5) set(proc, {SEPARATE}, 1)
set(proc, {SOLO}, 1)
track:rec_enable_control():set_value(1, PBD.GroupControlDisposition.NoGroup)
s:maybe_enable_record(false)
s:request_roll(ARDOUR.TransportRequestSource.TRS_UI)
wait_for("recording", function() return s:transport_sample() >= {int(RECORD_S * RATE)} end, 30)
s:request_stop(false, false, ARDOUR.TransportRequestSource.TRS_UI)
wait_for("the transport to stop", function() return not s:transport_rolling() end, 10)
s:disable_record(false, false)
track:rec_enable_control():set_value(0, PBD.GroupControlDisposition.NoGroup)
wait_for("the stems", function() return param(proc, {STATUS}) == 3 end, 60)
wait_for("the take", function() return not track:playlist():region_list():empty() end, 10)  -- made after the stop
say("STATUS", param(proc, {STATUS}), "CAPTURED", param(proc, {CAPTURED}))
for r in track:playlist():region_list():iter() do say("REGION", r:position():samples(), r:length():samples()) end
set(proc, {CAPTURE}, 0) set(proc, {SEPARATE}, 0)
bounce(s, track, {BOUNCE_FRAMES})
-- Ardour defers a save while it is busy (it answers non-zero): ask until it has saved
if wait_for("the save", function() return s:save_state("", false, false, false, false, false) == 0 end, 30) then
  say("SAVED")
end
say("DONE")
finish()
"""

REOPEN_HEAD = LUA_COMMON + f"""
start_dummy("Silence")
local s = load_session(env("SW_SESSION"), "take")
assert(s, "cannot load the session")
local track = s:route_by_name("Take")
local proc = track:nth_plugin(0)
if proc:isnil() then say("NO-PLUGIN") os.exit(3) end
sleep_s(0.3)
say("STATUS", param(proc, {STATUS}), "CAPTURED", param(proc, {CAPTURED}))
"""
REOPEN_TAIL = """
say("DONE")
finish()
"""
# The saved stems play in place, no job sent.
REOPEN = REOPEN_HEAD + f"""
bounce(s, track, {BOUNCE_FRAMES})
""" + REOPEN_TAIL
# The restored capture is the drums: the plugin generates bass for it without hearing it again.
ACCOMPANY_RESTORED = REOPEN_HEAD + f"""
set(proc, {CAPTURE_AS}, 1) set(proc, {TARGET}, 0) set(proc, {SOLO}, 0) set(proc, {ACCOMPANY}, 1)
wait_for("the job to start", function() return param(proc, {STATUS}) == 2 end, 10)
wait_for("the accompaniment", function() return param(proc, {STATUS}) == 3 end, 60)
say("READY", param(proc, {STATUS}))
set(proc, {ACCOMPANY}, 0)
bounce(s, track, {BOUNCE_FRAMES})
""" + REOPEN_TAIL

LOOP = LUA_COMMON + f"""
start_dummy("Uniform White Noise")  -- the track's input, recorded while it plays: where the bounce starts
local s = create_session(env("SW_SESSION_DIR"), "loop", {RATE})
assert(s, "cannot create the session")
local track = s:new_audio_track(2, 2, nil, 1, "Loop", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal,
                                true):front()
local proc = ARDOUR.LuaAPI.new_plugin(s, "{URI}", ARDOUR.PluginType.LV2, "")
if proc:isnil() then say("NO-PLUGIN") os.exit(3) end
assert(track:add_processor_by_index(proc, 0, nil, true) == 0, "cannot insert the plugin")
set(proc, {LOOP_MODE}, 1)
wait_for("the loop", function() return param(proc, {LOOP_STATE}) == 2 end, 30)  -- playing: fetched, in hand
say("LOOP-STATE", param(proc, {LOOP_STATE}))
ARDOUR.config():set_monitoring_model(ARDOUR.MonitorModel.SoftwareMonitoring)  -- the input plays through the track
bounce(s, track, tonumber(env("SW_FRAMES")) + {MAX_LAG}, true)
say("DONE")
finish()
"""


# ---------------------------------------------------------------------------------------------------------------
# Running Ardour


@pytest.fixture(scope="module")
def ardour_home(tmp_path_factory) -> Path:
    """A private HOME / XDG tree for Ardour, its config unhiding the dummy backend."""
    if shutil.which("ardour7-lua") is None:
        pytest.skip("ardour7-lua (Ardour 7 headless) is not installed: Debian package ardour "
                    "(scripts/install-system-packages --test installs it)")
    home = tmp_path_factory.mktemp("ardour-home")
    config = home / "config" / "ardour7"
    config.mkdir(parents=True)
    (config / "config").write_text(CONFIG)
    return home


def ardour(home: Path, script: str, tmp: Path, endpoint: str, done: str, **settings) -> tuple[str, dict]:
    """Run a luasession script in ardour7-lua once; returns its output and its "SW ..." reports.

    A crash is a counted failure, never re-run: an ardour7-lua killed by a signal (a segfault, a heap abort, or a
    SIGKILL that did not follow the script's own EXIT report), before or after it reported `done`, fails the test
    with the signal and the end of its output, since an intermittent crash in the plugin would look exactly like
    that (issue 23). Settings ending in `_dir` name folders under `tmp` (made fresh unless it is the session's)."""
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), XDG_CACHE_HOME=str(home / "cache"),
               XDG_DATA_HOME=str(home / "data"), LV2_PATH=str(LV2_DIR), STEMWEAVE_ENDPOINT=endpoint)
    env.pop("JACK_DEFAULT_SERVER", None)
    work = tmp / "run"
    work.mkdir(parents=True)
    for key, value in settings.items():
        if key.endswith("_dir"):
            value = work / value
            if key != "session_dir":
                value.mkdir()
        env[f"SW_{key.upper()}"] = str(value)
    path = work / "script.lua"
    path.write_text(script)
    try:
        run = subprocess.run(["ardour7-lua", str(path)], check=False, capture_output=True, text=True, env=env,
                             timeout=120)
        output, status = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as error:
        output, status = f"ardour7-lua timed out: {error.stdout or ''}{error.stderr or ''}", None
    said = [line for line in output.splitlines() if line.startswith("SW ")]
    if status == -signal.SIGKILL and said[-1:] == ["SW EXIT"]:
        status = 0  # the script's own end (finish)
    output += f"\n(ardour7-lua exit status {status})"
    if "SW NO-PLUGIN" in output:
        raise AssertionError(f"Ardour did not find the plugin in {LV2_DIR}:\n{output[-3000:]}")
    reports: dict[str, list[str]] = {"WORK": [str(work)]}
    for line in said:
        key, *rest = line[3:].split()
        reports.setdefault(key, []).append(" ".join(rest))
    if status is not None and status < 0:
        stage = "after" if done in reports else "before"
        pytest.fail(f"ardour7-lua crashed (signal {-status}, {signal.Signals(-status).name}) {stage} it reported "
                    f"{done}: a counted failure, not re-run (work folder {work}):\n{output[-3000:]}")
    return output, reports


def recorded_files(session: Path, track: str) -> set[Path]:
    return set(session.glob(f"interchange/*/audiofiles/*_{track}-*.wav"))


def read_take(files: set[Path], output: str) -> np.ndarray:
    """A stereo take from its two mono files (%L, %R)."""
    assert len(files) == 2, f"expected one stereo take, found {sorted(files)}:\n{output[-3000:]}"
    channels = []
    for path in sorted(files):
        audio, rate = sf.read(path, dtype="float32")
        assert rate == RATE and audio.ndim == 1, (path, rate, audio.shape)
        channels.append(audio)
    return np.stack(channels, 1)


def bounced(session: Path, before: set[Path], output: str, reports: dict) -> np.ndarray:
    """What the script's bounce recorded: the take that is new since `before`."""
    assert reports.get("BOUNCED") == [""], f"the bounce did not finish:\n{output[-3000:]}"
    return read_take(recorded_files(session, "Bounce") - before, output)


def from_timeline_start(bounce: np.ndarray, known: np.ndarray, start: int, stop: int, atol: float = 0.0):
    """The bounce from timeline sample 0. A bounce records its source this many samples late: 1040 in a session
    made in the same process, 0 in a reopened one (Ardour 7.3 decides); the one lag at which the bounce equals a
    known stretch of noise (`known[start:stop]`, within `atol`) is it."""
    want = known[start:stop]
    for lag in range(MAX_LAG + 1):
        got = bounce[lag + start: lag + stop]
        if len(got) == len(want) and np.abs(got - want).max() <= atol:
            return bounce[lag:]
    raise AssertionError(f"no lag up to {MAX_LAG} puts the known samples [{start}, {stop}) in the bounce")


@pytest.fixture(scope="module")
def bundle() -> Path:
    """The LV2 bundle (`make -C plugin_stub`)."""
    return build_bundle()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("stemweave.bridge.server", reason="the bridge (stemweave serve) is not in this checkout")
    serve = Serve(tmp_path_factory.mktemp("serve")).start()
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def take(ardour_home, bundle, server, tmp_path_factory):
    """One Ardour session: a stereo take recorded through the plugin, which captured and separated its marked
    region on the way; then played and bounced, then saved."""
    tmp = tmp_path_factory.mktemp("ardour-take")
    output, reports = ardour(ardour_home, RECORD, tmp, server.endpoint, "DONE", session_dir="session")
    assert "SAVED" in reports, f"Ardour did not save the session:\n{output[-3000:]}"
    session = Path(reports["WORK"][0]) / "session"
    recorded = read_take(recorded_files(session, "Take"), output)
    played = from_timeline_start(bounced(session, set(), output, reports), recorded, EDGE, A)
    return {"session": session, "output": output, "reports": reports, "recorded": recorded, "played": played}


def reopened(take: dict, script: str, home: Path, endpoint: str, tmp: Path, damage: bool = False):
    """Run `script` on a copy of the take's saved session (its plugin state overwritten with garbage if `damage`);
    returns its output, reports and bounce."""
    session = tmp / "session"
    shutil.copytree(take["session"], session)
    if damage:
        states = sorted(session.glob("plugins/*/state*/stemweave-region.swst"))
        assert states, "the saved session has no Stemweave state file"
        for state in states:
            state.write_bytes(b"SWSTATE2" + bytes(range(256)) * 8)
    before = recorded_files(session, "Bounce")
    output, reports = ardour(home, script, tmp, endpoint, "DONE", session=session)
    bounce = bounced(session, before, output, reports)
    return output, reports, from_timeline_start(bounce, take["recorded"], EDGE, A)


# ---------------------------------------------------------------------------------------------------------------
# The tests

def test_ardour_records_separates_and_plays_the_stem_in_place(take, server):
    """Recorded in real time through the plugin (software monitoring): the plugin captured [0.5 s, 1.5 s) of the
    take as it was recorded and separated it; played back, the track puts out the take untouched outside the region
    and, inside it, the server's bass stem of exactly the recorded samples there, aligned to the sample."""
    output, reports, recorded = take["output"], take["reports"], take["recorded"]
    assert reports.get("STATUS") == ["3.0 CAPTURED 1.0"], output[-3000:]  # ready; 1 s captured
    assert reports.get("REGION") == [f"0 {len(recorded)}"], output[-3000:]
    assert len(recorded) >= RECORD_S * RATE and np.abs(recorded[:, 0] - recorded[:, 1]).max() > 0.05  # stereo noise
    out = take["played"]
    assert len(out) >= len(recorded)
    # a wire outside the region ([EDGE, A) placed the bounce on the timeline: it matched there, exactly)
    np.testing.assert_array_equal(out[B:len(recorded) - EDGE], recorded[B:-EDGE])
    bass = server_stems(server.endpoint, recorded[A:B], RATE)["bass"].T  # what the plugin asked for (seed 0)
    np.testing.assert_allclose(out[A:B], bass, atol=1e-6)
    assert np.abs(bass).max() > 0.05 and np.abs(bass - recorded[A:B]).max() > 0.05  # a stem, not the take
    assert np.abs(out[A + 1: B] - bass[:-1]).max() > 1e-3  # a frame late would not match


def test_ardour_reopened_session_keeps_the_stems_and_the_capture(take, ardour_home, server, tmp_path):
    """A new Ardour opens the saved session: the stems play in place again from the plugin's state, and the capture
    came back with them (1 s captured), so Accompany works on it at once, without the region being played again:
    the played region is the take plus the bass the server generates for it as drums."""
    output, reports, again = reopened(take, REOPEN, ardour_home, server.endpoint, tmp_path / "reopen")
    recorded, first = take["recorded"], take["played"]
    assert reports.get("STATUS") == ["3.0 CAPTURED 1.0"], output[-3000:]  # ready: the stems, and the capture is back
    n = len(recorded)
    np.testing.assert_array_equal(again[:n], first[:n])  # the same stems, in the same place, from the saved state

    output, reports, accompanied = reopened(take, ACCOMPANY_RESTORED, ardour_home, server.endpoint,
                                            tmp_path / "accompany")
    assert reports.get("READY") == ["3.0"], output[-3000:]
    from stemweave.bridge.client import Client

    with Client(server.endpoint, timeout=60) as client:  # the plugin's request: seed 0, given drums, make bass
        made = client.accompany({"drums": np.ascontiguousarray(recorded[A:B].T)}, RATE, seed=0,
                                params={"stems": ["bass"]})
    generated = made["bass"].T
    np.testing.assert_allclose(accompanied[A:B], recorded[A:B] + generated, atol=1e-5)
    assert np.abs(generated).max() > 0.05
    np.testing.assert_array_equal(accompanied[EDGE:A], recorded[EDGE:A])


def test_ardour_opens_a_session_whose_saved_state_is_damaged(take, ardour_home, server, tmp_path):
    """The plugin's state file in the saved session overwritten with garbage: Ardour opens the session, the plugin
    refuses the file whole (no stems, no capture, an error in the log) and passes the take through untouched."""
    output, reports, out = reopened(take, REOPEN, ardour_home, server.endpoint, tmp_path, damage=True)
    assert reports.get("STATUS") == ["0.0 CAPTURED 0.0"], output[-3000:]  # idle: nothing restored
    assert "cannot read the saved stems and capture" in output, output[-3000:]
    recorded = take["recorded"]
    np.testing.assert_array_equal(out[EDGE:len(recorded) - EDGE], recorded[EDGE:-EDGE])


def test_ardour_loop_mode_plays_the_server_loop_bar_for_bar(ardour_home, bundle, tmp_path_factory, tmp_path):
    """Loop mode in Ardour's default 120 BPM 4/4 timeline (bars of 96000 frames) with a 2-bar loop made at 96 BPM
    (bars of 120000 frames): every host bar starts the loop bar it maps to (bar k -> k mod 2), played at the loop's
    own rate and cut at Ardour's bar line, exact to the frame over 9 s of real-time playback."""
    pytest.importorskip("pythonosc", reason="the live loop's OSC surface needs python-osc")
    serve = loop_serve(tmp_path_factory.mktemp("loop-serve"), RATE)
    try:
        loop = make_loop(serve, 96.0, 2)
        assert loop.bar_frames == 120000 and loop.frames == 240000
        frames = 9 * RATE
        output, reports = ardour(ardour_home, LOOP, tmp_path, serve.endpoint, "DONE", session_dir="session",
                                 frames=frames)
        assert fetch_loop(serve.endpoint, since=loop.version).serial == loop.serial  # no other loop meanwhile
    finally:
        serve.stop()
    assert reports.get("LOOP-STATE") == ["2.0"], output[-3000:]  # playing
    session = Path(reports["WORK"][0]) / "session"
    heard = read_take(recorded_files(session, "Loop"), output)  # the track's input, recorded as it played
    assert len(heard) >= frames and np.abs(heard[:, 0] - heard[:, 1]).max() > 0.05  # stereo noise
    host_bar = 4 * RATE * 60 // 120
    expected = heard[:frames] + bar_synced(loop, frames, host_bar)
    # the input plus the loop, bar for bar (bars 1 to 4 start inside), at the one lag where the input's noise
    # cancels; from EDGE on, since Ardour fades a monitored input in as the transport starts
    out = from_timeline_start(bounced(session, set(), output, reports), expected, EDGE, frames, atol=1e-6)
    own_tempo = heard[:frames] + bar_synced(loop, frames, loop.bar_frames)  # the loop at its own bars would differ
    assert np.abs(out[EDGE:frames] - own_tempo[EDGE:]).max() > 0.05
    assert np.abs(expected - heard[:frames]).max() > 0.05
