"""The LV2 plugin in Ardour 7, headless (`ardour7-lua`, Ardour's dummy audio backend), against a real `stemweave serve`:

* record a stereo track through the plugin in real time while it captures a marked region and separates it, then
  export the session (freewheel) and find the separated stem in the exported WAV exactly where the region was;
* reopen the saved session in a new Ardour: the stems play again with no job sent, and the capture came back
  too (the plugin accompanies it without hearing it again); a damaged state file is refused whole;
* loop mode: the server's live loop (at 96 BPM) played in Ardour's 120 BPM timeline, bar for bar.

Everything is judged on the exported WAVs and the saved session. Each script ends the process after its last
report instead of closing the session, because Ardour 7.3's own session teardown crashes after an export about
one run in three even with no plugin loaded (`finish` in LUA_COMMON); the plugin's teardown is exercised by the
other hosts (tests/test_plugin_hosts.py).
Ardour runs with a private HOME and XDG folders under the test's tmp_path (its config there unhides the dummy
backend and adds a 32-bit float WAV export preset), so nothing leaks into the user's Ardour.
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
PRESET_ID = "8d3c56c4-1f2a-4c1b-9a2e-6f7d3b0c5e21"
FORMAT_ID = "0b7e2f4a-93c1-4d7e-8a55-2c9d1e6f4a10"

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
FORMAT = f"""<?xml version="1.0" encoding="UTF-8"?>
<ExportFormatSpecification name="Stemweave test float" id="{FORMAT_ID}" with-cue="false" with-toc="false"
    with-mp4chaps="false" command="" analyse="false" soundcloud-upload="false">
  <Encoding id="F_WAV" type="T_Sndfile" extension="wav" name="WAV" has-sample-format="true" channel-limit="256"/>
  <SampleRate rate="1"/>
  <SRCQuality quality="SRC_SincBest"/>
  <EncodingOptions>
    <Option name="sample-format" value="SF_Float"/>
    <Option name="dithering" value="D_None"/>
    <Option name="tag-metadata" value="false"/>
    <Option name="tag-support" value="false"/>
    <Option name="broadcast-info" value="false"/>
  </EncodingOptions>
  <Processing>
    <Normalize enabled="false" loudness="no" dbfs="0" lufs="-23" dbtp="-1"/>
    <Silence>
      <Start>
        <Trim enabled="false"/>
        <Add enabled="false"><Duration format="Timecode" hours="0" minutes="0" seconds="0" frames="0"/></Add>
      </Start>
      <End>
        <Trim enabled="false"/>
        <Add enabled="false"><Duration format="Timecode" hours="0" minutes="0" seconds="0" frames="0"/></Add>
      </End>
    </Silence>
  </Processing>
</ExportFormatSpecification>
"""
PRESET = f"""<?xml version="1.0" encoding="UTF-8"?>
<ExportPreset id="{PRESET_ID}" name="Stemweave test float WAV">
  <ExportFormat id="{FORMAT_ID}"/>
  <ExportFilename>
    <Folder relative="1" path="export"/>
    <Field name="label" enabled="0"/>
    <Field name="session" enabled="0"/>
    <Field name="snapshot" enabled="0"/>
    <Field name="timespan" enabled="1"/>
    <Field name="revision" enabled="0"/>
    <Field name="time" enabled="0" value="T_None"/>
    <Field name="date" enabled="0" value="D_None"/>
  </ExportFilename>
</ExportPreset>
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
-- End the process once every report is out, without closing the session: Ardour 7.3 aborts or segfaults in its
-- own session teardown ("Butler drops pool trash", then a double free) about one run in three after an export,
-- with no plugin in the session at all (4 of 12 runs of such a script here; 6 of 18 runs of the loop test, and 0
-- of 17 ending like this). A script that saves reports DONE only after save_state returned 0.
local function finish() io.stderr:flush() os.exit(0) end
-- Export the session (or [0, range_end) samples) through the master bus as a float WAV named `name`. One export
-- per process, and its SimpleExport is never garbage-collected mid-script: Ardour 7.3 corrupts its heap when one
-- is freed after an export (a crash seen with no plugin in the session at all).
KEEP = {{}}
local function export(session, folder, name, range_end)
  local e = session:simple_export()
  KEEP[#KEEP + 1] = e
  assert(e:set_preset("{PRESET_ID}"), "the test's export preset is missing")
  e:set_folder(folder)
  e:set_name(name)
  if range_end then e:set_range(0, range_end) end
  local ok = e:run_export()
  say("EXPORTED", name, tostring(ok))
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
say("STATUS", param(proc, {STATUS}), "CAPTURED", param(proc, {CAPTURED}))
for r in track:playlist():region_list():iter() do say("REGION", r:position():samples(), r:length():samples()) end
set(proc, {CAPTURE}, 0) set(proc, {SEPARATE}, 0)
export(s, env("SW_EXPORT_DIR"), "separated")
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
REOPEN = REOPEN_HEAD + """
export(s, env("SW_EXPORT_DIR"), "reopened")
""" + REOPEN_TAIL
# The restored capture is the drums: the plugin generates bass for it without hearing it again.
ACCOMPANY_RESTORED = REOPEN_HEAD + f"""
set(proc, {CAPTURE_AS}, 1) set(proc, {TARGET}, 0) set(proc, {SOLO}, 0) set(proc, {ACCOMPANY}, 1)
wait_for("the job to start", function() return param(proc, {STATUS}) == 2 end, 10)
wait_for("the accompaniment", function() return param(proc, {STATUS}) == 3 end, 60)
say("READY", param(proc, {STATUS}))
set(proc, {ACCOMPANY}, 0)
export(s, env("SW_EXPORT_DIR"), "accompanied")
""" + REOPEN_TAIL

LOOP = LUA_COMMON + f"""
start_dummy("Silence")
local s = create_session(env("SW_SESSION_DIR"), "loop", {RATE})
assert(s, "cannot create the session")
local track = s:new_audio_track(2, 2, nil, 1, "Loop", ARDOUR.PresentationInfo.max_order, ARDOUR.TrackMode.Normal,
                                true):front()
local proc = ARDOUR.LuaAPI.new_plugin(s, "{URI}", ARDOUR.PluginType.LV2, "")
if proc:isnil() then say("NO-PLUGIN") os.exit(3) end
assert(track:add_processor_by_index(proc, 0, nil, true) == 0, "cannot insert the plugin")
set(proc, {LOOP_MODE}, 1)
export(s, env("SW_EXPORT_DIR"), "loop", tonumber(env("SW_FRAMES")))
say("LOOP-STATE", param(proc, {LOOP_STATE}))
say("DONE")
finish()
"""


# ---------------------------------------------------------------------------------------------------------------
# Running Ardour


@pytest.fixture(scope="module")
def ardour_home(tmp_path_factory) -> Path:
    """A private HOME / XDG tree for Ardour: the dummy backend unhidden, the float WAV export preset."""
    if shutil.which("ardour7-lua") is None:
        pytest.skip("ardour7-lua (Ardour 7 headless) is not installed: Debian package ardour "
                    "(scripts/install-system-packages --test installs it)")
    home = tmp_path_factory.mktemp("ardour-home")
    config = home / "config" / "ardour7"
    (config / "export").mkdir(parents=True)
    (config / "config").write_text(CONFIG)
    (config / "export" / "stemweave-test.format").write_text(FORMAT)
    (config / "export" / "stemweave-test.preset").write_text(PRESET)
    return home


def ardour(home: Path, script: str, tmp: Path, endpoint: str, done: str, **settings) -> tuple[str, dict]:
    """Run a luasession script in ardour7-lua once; returns its output and its "SW ..." reports.

    A crash is a counted failure, never re-run: an ardour7-lua killed by a signal (a segfault, a heap abort),
    before or after it reported `done`, fails the test with the signal and the end of its output, since an
    intermittent crash in the plugin would look exactly like that (issue 23). Settings ending in `_dir` name
    folders made fresh under `tmp`."""
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
    output += f"\n(ardour7-lua exit status {status})"
    if "SW NO-PLUGIN" in output:
        raise AssertionError(f"Ardour did not find the plugin in {LV2_DIR}:\n{output[-3000:]}")
    reports: dict[str, list[str]] = {"WORK": [str(work)]}
    for line in output.splitlines():
        if line.startswith("SW "):
            key, *rest = line[3:].split()
            reports.setdefault(key, []).append(" ".join(rest))
    if status is not None and status < 0:
        stage = "after" if done in reports else "before"
        pytest.fail(f"ardour7-lua crashed (signal {-status}, {signal.Signals(-status).name}) {stage} it reported "
                    f"{done}: a counted failure, not re-run (work folder {work}):\n{output[-3000:]}")
    return output, reports


def read_wav(path: Path, output: str) -> np.ndarray:
    assert path.is_file(), f"Ardour wrote no {path.name}:\n{output[-3000:]}"
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == RATE and audio.shape[1] == 2, (rate, audio.shape)
    return audio


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
    region on the way; exported, then saved."""
    tmp = tmp_path_factory.mktemp("ardour-take")
    output, reports = ardour(ardour_home, RECORD, tmp, server.endpoint, "DONE", session_dir="session",
                             export_dir="export")
    assert "SAVED" in reports, f"Ardour did not save the session:\n{output[-3000:]}"
    work = Path(reports["WORK"][0])
    session, export = work / "session", work / "export"
    files = sorted(session.glob("interchange/*/audiofiles/*.wav"))
    assert len(files) == 2, f"the take was not recorded: {files}\n{output[-3000:]}"
    recorded = np.stack([sf.read(f, dtype="float32")[0] for f in files], 1)  # %L, %R
    return {"session": session, "export": export, "output": output, "reports": reports, "recorded": recorded}


# ---------------------------------------------------------------------------------------------------------------
# The tests


def test_ardour_records_separates_and_exports_the_stem_in_place(take, server):
    """Recorded in real time through the plugin (software monitoring): the plugin captured [0.5 s, 1.5 s) of the
    take as it was recorded and separated it; the exported session has the take untouched outside the region and,
    inside it, the server's bass stem of exactly the recorded samples there, aligned to the sample."""
    output, reports, recorded = take["output"], take["reports"], take["recorded"]
    assert reports.get("STATUS") == ["3.0 CAPTURED 1.0"], output[-3000:]  # ready; 1 s captured
    assert reports.get("REGION") == [f"0 {len(recorded)}"], output[-3000:]
    assert len(recorded) >= RECORD_S * RATE and np.abs(recorded[:, 0] - recorded[:, 1]).max() > 0.05  # stereo noise
    out = read_wav(take["export"] / "separated.wav", output)
    assert len(out) == len(recorded)
    edge = 4096  # Ardour fades a recorded region's first and last samples in and out
    np.testing.assert_array_equal(out[edge:A], recorded[edge:A])  # a wire outside the region
    np.testing.assert_array_equal(out[B:-edge], recorded[B:-edge])
    bass = server_stems(server.endpoint, recorded[A:B], RATE)["bass"].T  # what the plugin asked for (seed 0)
    np.testing.assert_allclose(out[A:B], bass, atol=1e-6)
    assert np.abs(bass).max() > 0.05 and np.abs(bass - recorded[A:B]).max() > 0.05  # a stem, not the take
    assert np.abs(out[A + 1: B] - bass[:-1]).max() > 1e-3  # a frame late would not match


def test_ardour_reopened_session_keeps_the_stems_and_the_capture(take, ardour_home, server, tmp_path):
    """A new Ardour opens the saved session: the stems play in place again from the plugin's state, and the capture
    came back with them (1 s captured), so Accompany works on it at once, without the region being played again:
    the exported region is the take plus the bass the server generates for it as drums."""
    output, reports = ardour(ardour_home, REOPEN, tmp_path / "reopen", server.endpoint, "DONE",
                             session=take["session"], export_dir="export")
    recorded = take["recorded"]
    assert reports.get("STATUS") == ["3.0 CAPTURED 1.0"], output[-3000:]  # ready: the stems, and the capture is back
    again = read_wav(Path(reports["WORK"][0]) / "export" / "reopened.wav", output)
    first = read_wav(take["export"] / "separated.wav", take["output"])
    np.testing.assert_array_equal(again, first)  # the same stems, in the same place, from the saved state

    output, reports = ardour(ardour_home, ACCOMPANY_RESTORED, tmp_path / "accompany", server.endpoint, "DONE",
                             session=take["session"], export_dir="export")
    assert reports.get("READY") == ["3.0"], output[-3000:]
    accompanied = read_wav(Path(reports["WORK"][0]) / "export" / "accompanied.wav", output)
    from stemweave.bridge.client import Client

    with Client(server.endpoint, timeout=60) as client:  # the plugin's request: seed 0, given drums, make bass
        made = client.accompany({"drums": np.ascontiguousarray(recorded[A:B].T)}, RATE, seed=0,
                                params={"stems": ["bass"]})
    generated = made["bass"].T
    np.testing.assert_allclose(accompanied[A:B], recorded[A:B] + generated, atol=1e-5)
    assert np.abs(generated).max() > 0.05
    edge = 4096
    np.testing.assert_array_equal(accompanied[edge:A], recorded[edge:A])


def test_ardour_opens_a_session_whose_saved_state_is_damaged(take, ardour_home, server, tmp_path):
    """The plugin's state file in the saved session overwritten with garbage: Ardour opens the session, the plugin
    refuses the file whole (no stems, no capture, an error in the log) and passes the take through untouched."""
    session = tmp_path / "session"
    shutil.copytree(take["session"], session)
    states = sorted(session.glob("plugins/*/state*/stemweave-region.swst"))
    assert states, "the saved session has no Stemweave state file"
    for state in states:
        state.write_bytes(b"SWSTATE2" + bytes(range(256)) * 8)
    output, reports = ardour(ardour_home, REOPEN, tmp_path / "reopen", server.endpoint, "DONE", session=session,
                             export_dir="export")
    assert reports.get("STATUS") == ["0.0 CAPTURED 0.0"], output[-3000:]  # idle: nothing restored
    assert "cannot read the saved stems and capture" in output, output[-3000:]
    out = read_wav(Path(reports["WORK"][0]) / "export" / "reopened.wav", output)
    recorded, edge = take["recorded"], 4096
    np.testing.assert_array_equal(out[edge:-edge], recorded[edge:-edge])


def test_ardour_loop_mode_plays_the_server_loop_bar_for_bar(ardour_home, bundle, tmp_path_factory, tmp_path):
    """Loop mode in Ardour's default 120 BPM 4/4 timeline (bars of 96000 frames) with a 2-bar loop made at 96 BPM
    (bars of 120000 frames): every host bar starts the loop bar it maps to (bar k -> k mod 2), played at the loop's
    own rate and cut at Ardour's bar line, exact to the frame over 9 s of export."""
    pytest.importorskip("pythonosc", reason="the live loop's OSC surface needs python-osc")
    serve = loop_serve(tmp_path_factory.mktemp("loop-serve"), RATE)
    try:
        loop = make_loop(serve, 96.0, 2)
        assert loop.bar_frames == 120000 and loop.frames == 240000
        frames = 9 * RATE
        output, reports = ardour(ardour_home, LOOP, tmp_path, serve.endpoint, "DONE", session_dir="session",
                                 export_dir="export", frames=frames)
        export = Path(reports["WORK"][0]) / "export"
        assert fetch_loop(serve.endpoint, since=loop.version).serial == loop.serial  # no other loop meanwhile
    finally:
        serve.stop()
    assert reports.get("LOOP-STATE") == ["2.0"], output[-3000:]  # playing
    out = read_wav(export / "loop.wav", output)
    assert len(out) >= frames
    host_bar = 4 * RATE * 60 // 120
    expected = bar_synced(loop, frames, host_bar)
    np.testing.assert_allclose(out[:frames], expected, atol=1e-6)
    own_tempo = bar_synced(loop, frames, loop.bar_frames)  # the loop at its own bars would be something else
    assert np.abs(out[:frames] - own_tempo).max() > 0.05
    assert np.abs(expected).max() > 0.05
