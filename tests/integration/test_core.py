"""The engine core against real workers: step timeouts, cancellation mid-run."""

from __future__ import annotations

import time

import pytest

import stepflows
from stepflows import api
from stepflows.models import RunStatus, Step, StepStatus
from stepflows.testing import runs_for, wait_for_run
from tests.faults.conftest import assert_nothing_recorded_after_cancel, wait_for_marks
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_step_over_its_timeout_is_interrupted_and_retried(run_event, key):
    run = run_event("test/core-timeout", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["inline"] == "StepTimeoutError"
    assert run.output["parallel"] == "StepTimeoutError"
    for step_id in ("slow", "p-slow"):
        step = Step.objects.get(run=run, step_id=step_id)
        # retries=1: two attempts, each interrupted (the code sleeps 30 s).
        assert step.status == StepStatus.FAILED and step.attempt_count == 2
        assert step.error["type"] == "StepTimeoutError"
        assert "longer than its timeout of 0.5 s" in step.error["message"]
        assert all(a["error"]["type"] == "StepTimeoutError" for a in step.attempts)
        assert step.duration is not None and step.duration < 25
    assert count(f"{key}-slow") == 2 and count(f"{key}-p-slow") == 2
    assert Step.objects.get(run=run, step_id="quick").status == StepStatus.COMPLETED


def test_an_async_step_over_its_timeout_fails(run_event, key):
    run = run_event("test/core-timeout-async", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "StepTimeoutError"


def test_cancel_stops_a_running_run_within_one_step(celery_worker, key):
    [event_id] = stepflows.send("test/core-cancel", data={"key": key})
    [run] = runs_for([event_id])
    wait_for_marks(f"{key}-tick", n=3)
    assert api.cancel_run(run.id, reason="enough")
    at_cancel = count(f"{key}-tick")
    run = wait_for_run(run.id)
    time.sleep(1.0)  # what a worker that missed the cancel would do meanwhile: ~10 more ticks
    assert run.status == RunStatus.CANCELLED
    assert count(f"{key}-tick") <= at_cancel + 1
    # Nothing was recorded after the cancel but the step that was running then,
    # marked as recorded after the cancel.
    assert_nothing_recorded_after_cancel(run)
    assert run.lease_owner == ""


def test_a_running_parallel_step_is_visible_with_its_heartbeat(celery_worker, key, admin_client):
    import io

    from django.core.management import call_command

    [event_id] = stepflows.send("test/core-live", data={"key": key, "seconds": 4})
    [run] = runs_for([event_id])
    wait_for_marks(f"{key}-long")
    deadline = time.monotonic() + 30
    while True:
        step = Step.objects.filter(run=run, step_id="long").first()
        if step is not None and step.status == StepStatus.RUNNING and step.heartbeat_at:
            break
        assert time.monotonic() < deadline, "the running step was never marked running"
        time.sleep(0.1)
    assert step.lease_owner
    out = io.StringIO()
    call_command("stepflows", "runs", "--workflow", "core-live", stdout=out)
    assert "running long on " in out.getvalue()
    page = admin_client.get(f"/admin/stepflows/run/{run.pk}/change/").content.decode()
    assert "heartbeat" in page
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    step = Step.objects.get(run=run, step_id="long")
    assert (
        step.status == StepStatus.COMPLETED and step.lease_owner == "" and step.attempt_count == 1
    )
    assert count(f"{key}-long") == 1
