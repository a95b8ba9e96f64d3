"""The step loop's bookkeeping by hand on a fake clock: time spent, the log line, the metrics record, the progress
bar's settings, and the stop flag (mutation survivors of engine/steps.py, issue 23)."""

import json
import signal
import sys
import threading

import pytest

from stemweave.engine import steps
from stemweave.engine.steps import RunState, Schedule, StepLog, StopRequested, _progress_bar, run_steps


class Clock:
    def __init__(self, start=1000.0):
        self.now = start

    def __call__(self):
        return self.now


class Bar:
    def __init__(self):
        self.postfix, self.updates = None, 0

    def set_postfix(self, **kw):
        self.postfix = kw

    def update(self, n):
        self.updates += n

    def close(self):
        pass


def test_step_log_report_by_hand(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(steps.time, "time", clock)
    lines, bar = [], Bar()
    with open(tmp_path / "m.jsonl", "w") as metrics:
        log = StepLog(metrics, bar, lines.append, quiet=True)
        log.add(loss=1.0, mse=0.5)
        log.add(loss=0.5, mse=0.25)
        clock.now += 4.0  # two steps in 4 s: 0.5 steps/s, 1800/h
        record = log.report(12, grad_norm=3.0)
        postfix = bar.postfix
        assert log.report(13)["steps_per_s"] == 0.0 and log.steps == 0  # reset after each report
    assert record == {"step": 12, "loss": 0.75, "mse": 0.375, "grad_norm": 3.0, "steps_per_s": 0.5, "time": 1004.0}
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0]) == record
    assert postfix == {"loss": "0.7500", "mse": "0.3750", "steps_s": "0.50"}
    assert lines[0] == "step 12 loss 0.7500 mse 0.3750 0.50 steps/s (1800/h)"
    with open(tmp_path / "n.jsonl", "w") as metrics:  # with a progress bar: no log line, the bar shows it
        quiet = StepLog(metrics, Bar(), lines.append, quiet=False)
        quiet.add(loss=1.0)
        clock.now += 2.0
        assert quiet.report(1)["steps_per_s"] == 0.5
    assert len(lines) == 2  # 12 and 13 from the quiet log, none from the one with a bar


def test_run_steps_adds_up_the_time_spent_in_steps(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(steps.time, "time", clock)
    state = RunState(seconds=10.0)
    logged = []

    def train_step(step):
        clock.now += 2.0  # each step takes 2 s
        return {"loss": 1.0}, {}

    schedule = Schedule(steps=3, log_every=3, valid_every=100, checkpoint_every=100, checkpoint_minutes=60,
                        progress=False)
    run_steps(state, schedule, train_step, lambda: None, metrics_path=tmp_path / "m.jsonl", log=logged.append,
              show_progress=False)
    assert state.seconds == pytest.approx(16.0)  # 10 before, plus 3 steps of 2 s
    assert logged[0] == "step 3 loss 1.0000 0.50 steps/s (1800/h)"  # progress=False: the log line is the report


def test_the_progress_bar_follows_the_schedule(monkeypatch):
    schedule = Schedule(steps=50, log_every=5, valid_every=5, checkpoint_every=5, checkpoint_minutes=1.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = _progress_bar(schedule, 20, enabled=True)
    try:
        assert (bar.total, bar.n, bar.disable, bar.unit) == (50, 20, False, "step")
        assert callable(bar.dynamic_ncols)  # tqdm swaps True for the terminal-width function
        assert bar.mininterval == 60.0  # a log file, not a terminal: a line a minute
    finally:
        bar.close()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = _progress_bar(schedule, 0, enabled=True)
    assert bar.mininterval == 1.0
    bar.close()
    assert _progress_bar(schedule, 0, enabled=False).disable
    quiet = Schedule(steps=50, log_every=5, valid_every=5, checkpoint_every=5, checkpoint_minutes=1.0, progress=False)
    assert _progress_bar(quiet, 0, enabled=True).disable


def test_stop_requested_sets_the_flag_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT)
    stop = StopRequested()
    assert stop.requested is False
    with stop:
        assert signal.getsignal(signal.SIGINT) == stop._handle and signal.getsignal(signal.SIGTERM) == stop._handle
        stop._handle(signal.SIGINT, None)
        assert stop.requested is True
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            stop._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_stop_requested_off_the_main_thread_installs_nothing():
    seen = {}

    def run():
        with StopRequested() as stop:
            seen["handlers"] = dict(stop._previous)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen["handlers"] == {}


def test_one_step_in_half_a_second_by_hand(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(steps.time, "time", clock)
    lines = []
    with open(tmp_path / "m.jsonl", "w") as metrics:
        log = StepLog(metrics, Bar(), lines.append, quiet=True)
        log.add(loss=0.8)
        clock.now += 0.5
        record = log.report(1)
    assert record["loss"] == 0.8 and record["steps_per_s"] == 2.0
    assert lines == ["step 1 loss 0.8000 2.00 steps/s (7200/h)"]


def test_run_steps_drives_the_bar_from_the_step_it_resumes_at(monkeypatch, tmp_path):
    made = []

    def recording_bar(schedule, step, enabled):
        made.append((schedule.steps, step, enabled))
        return bar

    bar = Bar()
    monkeypatch.setattr(steps, "_progress_bar", recording_bar)
    schedule = Schedule(steps=8, log_every=100, valid_every=100, checkpoint_every=100, checkpoint_minutes=60)
    run_steps(RunState(step=5), schedule, lambda step: ({"loss": 1.0}, {}), lambda: None, metrics_path=None,
              log=lambda line: None)
    assert made == [(8, 5, True)] and bar.updates == 3  # shown by default, one update per step


@pytest.mark.parametrize("seconds_per_step,saves", [(120.0, [2, 4, 4]), (121.0, [1, 2, 3, 4, 4])])
def test_run_steps_checkpoints_when_more_than_checkpoint_minutes_have_passed(monkeypatch, seconds_per_step, saves):
    clock = Clock()
    monkeypatch.setattr(steps.time, "time", clock)
    state, saved, lines = RunState(), [], []

    def train_step(step):
        clock.now += seconds_per_step
        return {"loss": 1.0}, {}

    schedule = Schedule(steps=4, log_every=100, valid_every=2, checkpoint_every=100, checkpoint_minutes=2.0,
                        progress=False)
    run_steps(state, schedule, train_step, lambda: saved.append(state.step), metrics_path=None, log=lines.append,
              validate=lambda: {"loss": 0.5, "mse": 1.23456}, show_progress=False)
    assert saved == saves  # 120 s is not more than 2 minutes; 121 s is; and one more at the end, always
    assert lines[-1] == "checkpoint at step 4"
    assert "step 2 validation: loss 0.5, mse 1.235" in lines and "step 4 validation: loss 0.5, mse 1.235" in lines
