"""SIGKILL the process running a step, mid-step: the run completes, each output once."""

from __future__ import annotations

import os
import signal

import pytest

from stepflows.models import RunStatus, Step
from tests.faults.conftest import record_figures, wait_for_marks
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def assert_outputs_once(run, expected_steps):
    steps = list(Step.objects.filter(run=run))
    ids = [s.step_id for s in steps]
    assert sorted(ids) == sorted(expected_steps), ids
    assert len(set(ids)) == len(ids)
    assert all(s.status == "completed" for s in steps)
    assert all(s.attempt_count == 1 and len(s.attempts) == 1 for s in steps)


def test_kill_pool_child_running_a_parallel_step(faults, key):
    worker = faults.worker("kill-child", concurrency=2)
    run_id = faults.send("test/fault-parallel", {"key": key, "seconds": 3})
    [[pid, *_]] = wait_for_marks(f"{key}-slow-start")
    assert int(pid) in worker.child_pids()
    os.kill(int(pid), signal.SIGKILL)
    [run] = faults.wait([run_id])
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["slow done", "quick done", "after"]
    assert_outputs_once(run, ["slow", "quick", "after"])
    # Started again after the kill (a step's code runs at least once); its output
    # was recorded by the first attempt that finished, and by no other.
    assert count(f"{key}-slow-start") >= 2
    assert count(f"{key}-slow") >= 1
    record_figures(
        "kill pool child mid-step",
        runs=1,
        steps=3,
        faults=1,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )


@pytest.mark.parametrize("where", ["parallel", "inline"])
def test_kill_whole_worker_mid_step_then_start_another(faults, key, where):
    worker = faults.worker(f"kill-all-{where}", concurrency=2)
    run_id = faults.send(f"test/fault-{where}", {"key": key, "seconds": 3})
    wait_for_marks(f"{key}-slow-start")
    worker.kill()
    faults.worker(f"kill-all-{where}-new", concurrency=2)
    [run] = faults.wait([run_id])
    assert run.status == RunStatus.COMPLETED, run.error
    expected = ["slow", "quick", "after"] if where == "parallel" else ["first", "slow"]
    assert_outputs_once(run, expected)
    assert count(f"{key}-slow") >= 1
    if where == "inline":
        assert count(f"{key}-first") == 1  # the step before the kill was not run again
    record_figures(
        f"kill whole worker mid-step ({where} step)",
        runs=1,
        steps=len(expected),
        faults=1,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )
