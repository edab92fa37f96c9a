"""Recovery: lost chord callbacks, idempotent resumes, the limit on recoveries."""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from stepflows.engine.recovery import find_stuck_runs, recover_stuck_runs, resume_stuck_run
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from tests.faults.conftest import record_figures, wait_for_marks

pytestmark = pytest.mark.django_db(transaction=True)

DROP = {"STEPFLOWS_FAULT_DROP_CALLBACKS": "1"}


def test_dropped_chord_callback_is_recovered_by_the_command(faults, key):
    faults.worker("drop", concurrency=2, env=DROP)
    run_id = faults.send("test/fault-parallel", {"key": key})
    wait_for_marks(f"{key}-slow")
    wait_for_marks(f"{key}-quick")
    time.sleep(3)
    run = Run.objects.get(id=run_id)
    assert run.status == RunStatus.WAITING  # every step finished; no callback will come
    out = io.StringIO()
    call_command("stepflows", "recover", stdout=out)
    assert f"run {run_id}: every step of its parallel group finished" in out.getvalue()
    assert "resumed" in out.getvalue()
    [run] = faults.wait([run_id], recover=False)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.recoveries == 1
    assert Step.objects.filter(run=run).count() == 3
    record_figures(
        "chord callback dropped", runs=1, steps=3, faults=1, lost=0, doubled=0, recoveries=1
    )


def test_dropped_chord_callback_is_recovered_by_the_periodic_task(faults, key):
    worker = faults.worker("beat", env={**DROP, "STEPFLOWS_TEST_RECOVERY_INTERVAL": "1"})
    worker.stop()
    worker.beat = True
    worker.start()
    run_ids = [faults.send("test/fault-parallel", {"key": f"{key}-{i}"}) for i in range(3)]
    runs = faults.wait(run_ids, recover=False, timeout=120)
    assert all(r.status == RunStatus.COMPLETED for r in runs), [r.error for r in runs]
    assert all(r.recoveries >= 1 for r in runs)


def test_a_step_that_kills_its_worker_every_time_fails_the_run_after_max_recoveries(
    faults, settings
):
    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_RECOVERIES": 1}
    faults.worker("poison", concurrency=1)
    run_id = faults.send("test/fault-poison", {})
    [run] = faults.wait([run_id], timeout=180)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "RecoveryLimitError"
    assert "MAX_RECOVERIES" in run.error["message"] and str(run_id) in run.error["message"]
    assert run.recoveries == 1


# -- without workers: detection and idempotence ------------------------------------------


def make_run(status, *, ago=60.0, steps=(), **fields):
    event = Event.objects.create(id=f"ev-{time.monotonic_ns()}", name="test/fault-parallel")
    then = timezone.now() - timedelta(seconds=ago)
    run = Run.objects.create(
        workflow_id="t-fault-parallel", event=event, status=status, progress_at=then, **fields
    )
    for i, (step_status, ended) in enumerate(steps):
        Step.objects.create(
            run=run,
            step_id=f"s{i}",
            position=i,
            group=0,
            status=step_status,
            ended_at=then if ended else None,
        )
    return run


def reasons():
    return {s.run_id: s.reason for s in find_stuck_runs()}


def test_finds_each_kind_of_stuck_run_and_leaves_the_others_alone(settings):
    done = (StepStatus.COMPLETED, True)
    pending = (StepStatus.SCHEDULED, False)
    now = timezone.now()
    stuck = {
        make_run(RunStatus.WAITING, steps=[done, done]).id: "no-callback",
        make_run(RunStatus.WAITING, steps=[done, pending]).id: "steps-stalled",
        make_run(RunStatus.QUEUED).id: "never-picked-up",
        make_run(
            RunStatus.RUNNING, lease_owner="dead", lease_expires_at=now - timedelta(seconds=1)
        ).id: "lease-expired",
        make_run(RunStatus.WAITING).id: "retry-overdue",
    }
    fine = [
        make_run(RunStatus.WAITING, ago=0.5, steps=[done, done]),  # callback may be on its way
        make_run(RunStatus.WAITING, ago=4, steps=[done, pending]),  # steps still may come
        make_run(RunStatus.QUEUED, ago=1),
        make_run(RunStatus.RUNNING, lease_owner="alive", lease_expires_at=now + timedelta(60)),
        make_run(RunStatus.COMPLETED, steps=[done]),
        make_run(RunStatus.WAITING, ago=-30),  # a retry due in 30 s
    ]
    found = reasons()
    assert {str(k): v for k, v in stuck.items()} == {
        k: v for k, v in found.items() if k in {str(s) for s in stuck}
    }
    assert not {str(r.id) for r in fine} & set(found)


def test_resuming_is_idempotent(faults):
    run = make_run(RunStatus.WAITING, steps=[(StepStatus.COMPLETED, True)])
    [stuck] = [s for s in find_stuck_runs() if s.run_id == str(run.id)]
    assert resume_stuck_run(stuck) == "resumed"
    assert resume_stuck_run(stuck) == "skipped"  # a second recovery at once does nothing
    run.refresh_from_db()
    assert (run.recoveries, run.wake, run.status) == (1, 0, RunStatus.WAITING)
    assert str(run.id) not in reasons()  # it just made progress: not stuck any more
    report = recover_stuck_runs()
    assert str(run.id) not in report.resumed


def test_past_max_recoveries_the_run_fails_with_a_clear_error(settings):
    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_RECOVERIES": 2}
    run = make_run(RunStatus.WAITING, steps=[(StepStatus.COMPLETED, True)], recoveries=2)
    report = recover_stuck_runs()
    assert str(run.id) in report.failed
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "RecoveryLimitError"
    assert "found stuck 3 times" in run.error["message"]
    assert "MAX_RECOVERIES'] = 2" in run.error["message"]


def test_dry_run_lists_without_resuming():
    run = make_run(RunStatus.QUEUED)
    out = io.StringIO()
    call_command("stepflows", "recover", "--dry-run", stdout=out)
    assert f"run {run.id}: queued, and no worker ever started it: would resume" in out.getvalue()
    run.refresh_from_db()
    assert run.recoveries == 0 and run.wake == 0
