"""The step loop every trainer shares: schedule, clean stop on SIGTERM, a checkpoint whatever ends the run."""
import json
import os
import signal

import pytest

from stemweave.engine.steps import RunState, Schedule, run_steps


def _schedule(steps=10):
    return Schedule(steps=steps, log_every=5, valid_every=3, checkpoint_every=4, checkpoint_minutes=60, progress=False)


def test_logs_validates_and_checkpoints_on_schedule(tmp_path):
    state, saved, logged = RunState(), [], []
    losses = iter([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    run_steps(state, _schedule(), lambda step: ({"loss": next(losses)}, {"grad_norm": float(step)}),
              lambda: saved.append(state.step), metrics_path=tmp_path / "metrics.jsonl", log=logged.append,
              validate=lambda: {"loss": state.step / 100})
    assert saved == [4, 8, 10]  # every 4 steps, and at the end
    assert (state.step, state.first_loss, state.last_loss) == (10, 1.0, 0.1)
    assert state.last_validation == {"loss": 0.1}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    reports = [r for r in records if "valid" not in r]
    assert [r["step"] for r in reports] == [5, 10]
    assert reports[0]["loss"] == pytest.approx(0.8) and reports[0]["grad_norm"] == 4.0  # mean of 5 steps; the last norm
    assert [r["step"] for r in records if "valid" in r] == [3, 6, 9, 10]


def test_sigterm_stops_at_the_next_step_with_a_checkpoint_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    state, saved = RunState(step=2), []

    def train_step(step):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"loss": 1.0}, {}

    run_steps(state, _schedule(100), train_step, lambda: saved.append(state.step), metrics_path=None, log=lambda _: None)
    assert state.step == 5 and saved == [4, 5]  # resumed at 2; the step in flight finished; saved at exit
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_error_in_a_step_still_leaves_a_checkpoint(tmp_path):
    state, saved = RunState(), []

    def train_step(step):
        if step == 6:
            raise RuntimeError("out of memory")
        return {"loss": 1.0}, {}

    with pytest.raises(RuntimeError, match="out of memory"):
        run_steps(state, _schedule(), train_step, lambda: saved.append(state.step), metrics_path=None, log=lambda _: None)
    assert saved == [4, 6]
