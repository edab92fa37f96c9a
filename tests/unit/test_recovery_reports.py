"""Runs ended by the periodic pass, not by a worker, are logged and signalled like the others.

The recovery fails a run found stuck too many times (``RecoveryLimitError``);
the sweep cancels runs past their ``Timeouts``, with the runs they invoked.
Each end gets the ``stepflows.runs`` ERROR record (ids in ``extra``) and the
``run_finished`` signal, once, after the store wrote it. Driven in process.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

import stepflows
from stepflows import Timeouts, clock, signals
from stepflows.engine.recovery import recover_stuck_runs
from stepflows.engine.sweep import sweep
from stepflows.models import Event, Run, RunStatus
from stepflows.registry import registry
from stepflows.testing import InProcess, runs_for
from tests.testapp.flows import waits_in_process as flows

pytestmark = pytest.mark.django_db


class Finished:
    """What ``run_finished`` receivers got."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def __call__(self, sender: Any, signal: Any, **kwargs: Any) -> None:
        self.calls.append((sender, kwargs))

    def of(self, run: Run) -> list[dict[str, Any]]:
        return [kwargs for _, kwargs in self.calls if kwargs["run_id"] == str(run.id)]


@pytest.fixture
def finished() -> Iterator[Finished]:
    got = Finished()
    signals.run_finished.connect(got)
    try:
        yield got
    finally:
        signals.run_finished.disconnect(got)


def errors_of(caplog: Any, run: Run) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "stepflows.runs"
        and r.levelno == logging.ERROR
        and getattr(r, "run_id", None) == str(run.id)
    ]


# -- the recovery ---------------------------------------------------------------------------


def stuck_run(key: str, recoveries: int) -> Run:
    """A run whose worker died (running under an expired lease), recovered before."""
    now = timezone.now()
    event = Event.objects.create(id=f"ops-{key}", name="test/wip-sleep", data={"key": key})
    return Run.objects.create(
        workflow_id="wip-sleep",
        event=event,
        status=RunStatus.RUNNING,
        created_at=now - timedelta(hours=3),
        started_at=now - timedelta(hours=2),
        progress_at=now - timedelta(hours=1),
        lease_owner="gone",
        lease_expires_at=now - timedelta(minutes=9),
        recoveries=recoveries,
    )


def test_a_run_failed_by_the_recovery_is_logged_and_signalled(
    settings: Any,
    caplog: Any,
    finished: Finished,
    key: str,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_RECOVERIES": 2}
    run = stuck_run(key, recoveries=2)
    with (
        caplog.at_level(logging.INFO, logger="stepflows"),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        report = recover_stuck_runs()
        # The signal waits for the commit of the failure.
        assert finished.of(run) == []
    assert callbacks
    assert [str(r) for r in report.failed] == [str(run.id)]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED

    [record] = errors_of(caplog, run)
    assert record.workflow_id == "wip-sleep" and record.status == "failed"
    assert record.attempt == run.attempts
    assert record.duration == pytest.approx((run.ended_at - run.started_at).total_seconds())
    message = record.getMessage()
    assert message.startswith(f"workflow 'wip-sleep', run {run.id}: failed after ")
    assert "RecoveryLimitError" in message and "MAX_RECOVERIES" in message

    [sent] = finished.of(run)
    assert sent["workflow_id"] == "wip-sleep" and sent["status"] == "failed"
    assert sent["error"] == run.error and sent["error"]["type"] == "RecoveryLimitError"
    assert sent["duration"] == record.duration
    assert [sender for sender, _ in finished.calls] == [flows.sleeper]


def test_a_resumed_run_is_a_warning_with_the_ids_and_sends_no_signal(
    caplog: Any, finished: Finished, key: str, django_capture_on_commit_callbacks: Any
) -> None:
    run = stuck_run(key, recoveries=0)
    with (
        caplog.at_level(logging.INFO, logger="stepflows"),
        django_capture_on_commit_callbacks(execute=False),  # its wake-up message: not sent
    ):
        report = recover_stuck_runs()
    assert [str(r) for r in report.resumed] == [str(run.id)]
    [warning] = [r for r in caplog.records if r.name == "stepflows.recovery"]
    assert warning.levelno == logging.WARNING
    assert (warning.run_id, warning.workflow_id) == (str(run.id), "wip-sleep")
    assert warning.reason == "lease-expired" and warning.recoveries == 1
    assert not errors_of(caplog, run) and finished.calls == []


# -- run timeouts -----------------------------------------------------------------------------


def test_a_run_cancelled_by_its_finish_timeout_is_logged_and_signalled(
    caplog: Any, finished: Finished, key: str
) -> None:
    with InProcess() as driver, caplog.at_level(logging.INFO, logger="stepflows"):
        [event_id] = stepflows.send("test/wip-timeout", data={"key": key})
        driver.run_until_idle()
        [run] = runs_for([event_id])
        assert run.status == RunStatus.WAITING
        driver.advance(61)
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED

    [record] = errors_of(caplog, run)
    assert (record.workflow_id, record.status) == ("wip-timeout", "cancelled")
    assert record.duration == pytest.approx((run.ended_at - run.started_at).total_seconds())
    assert "cancelled after" in record.getMessage()
    assert "timed out: not finished within 60 s" in record.getMessage()

    [sent] = finished.of(run)
    assert sent["status"] == "cancelled" and sent["duration"] == record.duration
    assert sent["error"]["message"].startswith("timed out: not finished within 60 s")
    assert [sender for sender, _ in finished.calls] == [flows.too_slow]


@pytest.fixture
def timed_parent() -> Iterator[Any]:
    """A workflow whose run times out while a run it invoked sleeps, and one never started."""

    @stepflows.workflow(
        id="ops-timed-parent", trigger="test/ops-timed-parent", timeouts=Timeouts(finish=60)
    )
    def parent(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
        child = {"order": ctx.event.data["key"], "total": 1, "sleep": 3600}
        return step.invoke("charge", workflow=flows.child, data=child)

    @stepflows.workflow(
        id="ops-never-started", trigger="test/ops-never-started", timeouts=Timeouts(start=30)
    )
    def never(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
        return None

    yield parent
    registry.unregister("ops-timed-parent")
    registry.unregister("ops-never-started")


def test_the_runs_a_timed_out_run_invoked_are_reported_with_it(
    caplog: Any, finished: Finished, key: str, timed_parent: Any
) -> None:
    with InProcess() as driver, caplog.at_level(logging.INFO, logger="stepflows"):
        [event_id] = stepflows.send("test/ops-timed-parent", data={"key": key})
        driver.run_until_idle()
        [parent] = runs_for([event_id])
        [child] = Run.objects.filter(parent=parent, workflow_id="wip-child")
        assert (parent.status, child.status) == (RunStatus.WAITING, RunStatus.WAITING)
        driver.advance(61)
    parent.refresh_from_db()
    child.refresh_from_db()
    assert (parent.status, child.status) == (RunStatus.CANCELLED, RunStatus.CANCELLED)

    assert [r.run_id for r in caplog.records if r.name == "stepflows.runs" and r.levelno >= 40] == [
        str(parent.id),
        str(child.id),
    ]
    [child_record] = errors_of(caplog, child)
    assert child_record.workflow_id == "wip-child"
    assert f"its parent run {parent.id} was cancelled: timed out" in child_record.getMessage()
    assert [(k["run_id"], k["status"]) for _, k in finished.calls] == [
        (str(parent.id), "cancelled"),
        (str(child.id), "cancelled"),
    ]


def test_a_run_never_started_within_its_start_timeout_is_reported(
    caplog: Any, finished: Finished, key: str, timed_parent: Any
) -> None:
    with InProcess() as driver, caplog.at_level(logging.INFO, logger="stepflows"):
        [event_id] = stepflows.send("test/ops-never-started", data={"key": key})
        [run] = runs_for([event_id])
        clock.advance(31)
        assert sweep()["timed_out"] == 1
        assert sweep()["timed_out"] == 0  # a second pass, or a second beat: reported once
        driver.run_until_idle()
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.started_at is None

    [record] = errors_of(caplog, run)
    assert record.duration is None
    assert "cancelled before it started: Cancelled: timed out: not started within 30 s" in (
        record.getMessage()
    )
    [sent] = finished.of(run)
    assert sent["status"] == "cancelled" and sent["duration"] is None
