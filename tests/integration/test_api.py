"""stepflows.api verbs on real workers: retry, rerun, cancel, replay."""

from __future__ import annotations

import time

import pytest

import stepflows
from stepflows import api
from stepflows.exceptions import RunStateError
from stepflows.models import Run, RunStatus, Step
from stepflows.testing import runs_for, wait_for_run
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def test_retry_resumes_a_failed_run_keeping_finished_steps(run_event, key, tmp_path):
    gate = tmp_path / "gate"
    run = run_event("test/resumable", {"key": key, "gate": str(gate)})
    assert run.status == RunStatus.FAILED
    assert count(f"{key}-gated") == 2  # retries=1: two attempts
    gate.write_text("open")
    api.retry_run(run)
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [1, "through"]
    assert count(f"{key}-first") == 1
    gated = Step.objects.get(run=run, step_id="gated")
    assert gated.attempt_count == 3 and gated.attempts_base == 2
    assert run.resumes == 1


def test_retry_refuses_a_run_that_did_not_fail(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    with pytest.raises(RunStateError) as info:
        api.retry_run(run)
    assert "completed" in str(info.value) and "t-three-steps" in str(info.value)


def test_rerun_starts_a_new_run_of_the_same_event(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    new = wait_for_run(api.rerun(run).id)
    assert new.id != run.id and new.event_id == run.event_id
    assert new.status == RunStatus.COMPLETED
    assert count(f"{key}-a") == 2


def test_cancel_stops_a_running_run_before_its_next_step(celery_worker, key):
    [event_id] = stepflows.send("test/slow-steps", data={"key": key, "steps": 50})
    [run] = runs_for([event_id])
    deadline = time.monotonic() + 60
    while count(f"{key}-slow") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.cancel_run(run)
    at_cancel = count(f"{key}-slow")
    run = wait_for_run(run.id)
    time.sleep(1.0)  # give a step that was still running time to finish
    assert run.status == RunStatus.CANCELLED
    # At most the step in flight finished after the cancel.
    assert count(f"{key}-slow") <= at_cancel + 1
    assert count(f"{key}-slow") < 50
    assert not api.cancel_run(run)


def test_replay_event_starts_new_runs_and_leaves_old_ones(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    [new] = api.replay_event(run.event)
    new = wait_for_run(new.id)
    assert new.status == RunStatus.COMPLETED and new.event_id == run.event_id
    old = Run.objects.get(id=run.id)
    assert old.status == RunStatus.COMPLETED and old.output == run.output
    assert old.ended_at == run.ended_at
