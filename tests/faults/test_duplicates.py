"""Every stepflows message delivered twice: each run completes once, each output once."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from stepflows.models import RunStatus, Step
from tests.faults.conftest import record_figures
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 4


def deliveries(logfile, task):
    """How many times the worker received each message of ``task``, by task id."""
    text = open(str(logfile) + ".stderr").read()
    return Counter(re.findall(rf"Task {re.escape(task)}\[([0-9a-f-]+)\] received", text))


@pytest.mark.parametrize(
    "task", ["stepflows.execute_run", "stepflows.run_step", "stepflows.resume_run"]
)
def test_each_message_delivered_twice(faults, key, task, monkeypatch):
    monkeypatch.setenv("STEPFLOWS_FAULT_DUPLICATE", task)
    worker = faults.worker("dup", concurrency=2, env={"STEPFLOWS_FAULT_DUPLICATE": task})
    keys = [f"{key}-{i}" for i in range(RUNS)]
    run_ids = [faults.send("test/fault-parallel", {"key": k, "seconds": 0.2}) for k in keys]
    runs = faults.wait(run_ids)
    twice = [tid for tid, n in deliveries(worker.logfile, task).items() if n >= 2]
    assert twice, f"no {task} message was delivered twice"
    for run, k in zip(runs, keys, strict=True):
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output == ["slow done", "quick done", "after"]
        steps = Step.objects.filter(run=run)
        assert sorted(s.step_id for s in steps) == ["after", "quick", "slow"]
        assert all(s.attempt_count == 1 for s in steps)
        # One executor per run: the inline step after the group ran exactly once.
        assert count(f"{k}-after") == 1
    record_figures(
        f"every {task} message delivered twice",
        runs=RUNS,
        steps=3 * RUNS,
        faults=len(twice),
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )
