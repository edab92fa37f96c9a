"""Work in progress, against real workers: a long inline step is seen running.

A sequential step whose code runs past a moment is shown ``running`` by the
worker's heartbeat (worker, attempt, since when); a fast step costs no extra
write (a trigger logs every write of a step row, so an interim write that is
overwritten later is still seen); a step still running when its run is
cancelled is recorded when it ends, marked as after the cancel, and the run
stays cancelled.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from django.db import connection
from django.utils import timezone

import stepflows
from stepflows import api
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from stepflows.store import steps as step_store
from stepflows.store.fence import worker_of
from stepflows.store.records import StepRecord
from stepflows.testing import runs_for, wait_for_run
from tests.faults.conftest import wait_for_marks
from tests.testapp.marks import count, mark

pytestmark = pytest.mark.django_db(transaction=True)

T = TypeVar("T")

LOG = "live_step_writes"


def wait_until(what: str, fn: Callable[[], T | None], timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not seen in {timeout} s"
        time.sleep(0.05)


@pytest.fixture
def step_writes() -> Iterator[Callable[[Any], dict[str, list[tuple[str, str, int]]]]]:
    """Every INSERT and UPDATE of a step row, logged by a trigger: (op, status, attempt count)."""
    table = Step._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"CREATE TABLE {LOG} (id serial PRIMARY KEY, run text, step_id text, "
                "op text, status text, attempt_count integer)"
            )
            cursor.execute(
                f"CREATE FUNCTION {LOG}_fn() RETURNS trigger AS $$ BEGIN "
                f"INSERT INTO {LOG} (run, step_id, op, status, attempt_count) VALUES "
                "(replace(NEW.run_id::text, '-', ''), NEW.step_id, lower(TG_OP), NEW.status, "
                "NEW.attempt_count); RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                f"CREATE TRIGGER {LOG}_trg AFTER INSERT OR UPDATE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {LOG}_fn()"
            )
        else:
            cursor.execute(
                f"CREATE TABLE {LOG} (id integer PRIMARY KEY AUTOINCREMENT, run text, "
                "step_id text, op text, status text, attempt_count integer)"
            )
            for op in ("insert", "update"):
                cursor.execute(
                    f"CREATE TRIGGER {LOG}_{op} AFTER {op.upper()} ON {table} BEGIN "
                    f"INSERT INTO {LOG} (run, step_id, op, status, attempt_count) VALUES "
                    f"(replace(NEW.run_id, '-', ''), NEW.step_id, '{op}', NEW.status, "
                    "NEW.attempt_count); END"
                )

    def writes(run: Any) -> dict[str, list[tuple[str, str, int]]]:
        found: dict[str, list[tuple[str, str, int]]] = {}
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT step_id, op, status, attempt_count FROM {LOG} WHERE run = %s ORDER BY id",
                [uuid.UUID(str(run.pk)).hex],
            )
            for step_id, op, status, attempts in cursor.fetchall():
                found.setdefault(step_id, []).append((op, status, attempts))
        return found

    try:
        yield writes
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {LOG}_trg ON {table}")
                cursor.execute(f"DROP FUNCTION IF EXISTS {LOG}_fn()")
            else:
                for op in ("insert", "update"):
                    cursor.execute(f"DROP TRIGGER IF EXISTS {LOG}_{op}")
            cursor.execute(f"DROP TABLE IF EXISTS {LOG}")


def start(name: str, data: dict[str, Any]) -> Run:
    [event_id] = stepflows.send(name, data=data)
    [run] = runs_for([event_id])
    return run


def running_row(run: Run, step_id: str, attempt_count: int = 1) -> Step:
    return wait_until(
        f"step {step_id!r} shown running (attempt {attempt_count})",
        lambda: Step.objects.filter(
            run=run, step_id=step_id, status=StepStatus.RUNNING, attempt_count=attempt_count
        ).first(),
    )


def test_a_long_inline_step_is_seen_running_then_completed(
    celery_worker, key, step_writes, admin_client
):
    run = start("test/live-steps", {"key": key})
    [[pid, *_]] = wait_for_marks(f"{key}-long-start")
    step = running_row(run, "long")
    # Who runs it, which attempt, since when; its heartbeat; the attempt has not ended.
    assert worker_of(step.lease_owner).endswith(f":{pid}")
    assert step.heartbeat_at is not None and step.started_at is not None
    assert step.ended_at is None and step.output is None
    [attempt] = step.attempts
    assert attempt["number"] == 0 and attempt["worker"].endswith(f":{pid}")
    assert "started_at" in attempt and "ended_at" not in attempt
    assert Run.objects.get(id=run.id).status == RunStatus.RUNNING
    page = admin_client.get(f"/admin/stepflows/run/{run.pk}/change/").content.decode()
    assert 'id="sf-live"' in page, "an active run's page refreshes itself"
    listing = admin_client.get("/admin/stepflows/run/").content.decode()
    assert 'id="sf-live"' in listing

    mark(f"{key}-release")
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    step = Step.objects.get(run=run, step_id="long")
    assert step.status == StepStatus.COMPLETED and step.attempt_count == 1
    assert step.lease_owner == "" and step.heartbeat_at is None
    [attempt] = step.attempts
    assert attempt["ended_at"] and attempt["started_at"] and attempt["error"] is None
    writes = step_writes(run)
    assert writes["long"] == [("insert", "running", 1), ("update", "completed", 1)]
    # The quick steps around it, run by the same worker: one write each, no interim state.
    for quick in ("fast-1", "fast-2", "fast-3"):
        assert writes[quick] == [("insert", "completed", 1)], quick
    page = admin_client.get(f"/admin/stepflows/run/{run.pk}/change/").content.decode()
    assert 'id="sf-live"' not in page, "a finished run's page does not refresh"


def test_fast_steps_get_no_running_write(celery_worker, key, step_writes):
    run = start("test/live-steps", {"key": key, "seconds": 0})
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    writes = step_writes(run)
    assert sorted(writes) == ["fast-1", "fast-2", "fast-3", "long"]
    assert all(w == [("insert", "completed", 1)] for w in writes.values()), writes


@pytest.mark.parametrize("outcome", ["return", "raise"])
def test_a_step_running_at_a_cancel_is_recorded_after_it(celery_worker, key, outcome):
    run = start("test/live-steps", {"key": key, "outcome": outcome})
    running_row(run, "long")
    assert api.cancel_run(run.id, reason="enough")
    mark(f"{key}-release")
    step = wait_until(
        "the long step recorded after the cancel",
        lambda: Step.objects.filter(
            run=run, step_id="long", status__in=[StepStatus.COMPLETED, StepStatus.FAILED]
        ).first(),
    )
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.lease_owner == ""
    assert run.error["type"] == "Cancelled"
    assert step.ended_at is not None and step.ended_at > run.ended_at
    assert step.lease_owner == "" and step.attempt_count == 1
    [attempt] = step.attempts
    assert attempt["after_cancel"] is True and attempt["ended_at"]
    if outcome == "return":
        assert step.status == StepStatus.COMPLETED and "pid" in step.output
    else:
        assert step.status == StepStatus.FAILED and step.error["type"] == "NonRetriableError"
        assert attempt["error"]["type"] == "NonRetriableError"
    # The engine stopped there: the next step never ran (what a worker that missed
    # the cancel would do meanwhile: run it within milliseconds).
    time.sleep(0.5)
    assert count(f"{key}-fast-3") == 0
    assert not Step.objects.filter(run=run, step_id="fast-3").exists()
    assert Run.objects.get(id=run.id).status == RunStatus.CANCELLED


def test_a_retried_inline_step_shows_its_second_attempt_running(celery_worker, key):
    run = start("test/live-retry", {"key": key})
    wait_for_marks(f"{key}-long-start")
    step = running_row(run, "flaky", attempt_count=2)
    first, second = step.attempts
    assert first["number"] == 0 and first["error"]["type"] == "RuntimeError"
    assert first["ended_at"]
    assert second["number"] == 1 and "started_at" in second and "ended_at" not in second
    assert step.retry_at is None
    mark(f"{key}-release")
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    step = Step.objects.get(run=run, step_id="flaky")
    assert step.status == StepStatus.COMPLETED and step.attempt_count == 2
    assert [a["number"] for a in step.attempts] == [0, 1]
    assert step.attempts[1]["ended_at"] and step.output == "second attempt"


# -- the store's fences, statement by statement (no worker) ---------------------------

TOKEN = "host:1:aaaa"


def make_run(status: str = RunStatus.RUNNING, token: str = TOKEN) -> Run:
    event = Event.objects.create(id=uuid.uuid4().hex, name="test/live", data={})
    return Run.objects.create(
        workflow_id="live-steps",
        event=event,
        status=status,
        lease_owner=token if status == RunStatus.RUNNING else "",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )


def shown(step_id: str = "s", attempt_count: int = 1) -> StepRecord:
    attempts: list[dict[str, Any]] = [
        {"number": n, "started_at": "x", "ended_at": "y", "error": {"type": "E"}}
        for n in range(attempt_count - 1)
    ]
    attempts.append({"number": attempt_count - 1, "started_at": "z", "worker": "host:1"})
    return StepRecord(
        step_id,
        0,
        None,
        StepStatus.RUNNING,
        attempts=attempts,
        attempt_count=attempt_count,
        started_at=timezone.now(),
    )


def ended(rec: StepRecord, status: str = StepStatus.COMPLETED) -> StepRecord:
    attempts = [*rec.attempts[:-1], {**rec.attempts[-1], "ended_at": "w", "error": None}]
    return StepRecord(
        rec.step_id,
        rec.position,
        None,
        status,
        output=1 if status == StepStatus.COMPLETED else None,
        attempts=attempts,
        attempt_count=rec.attempt_count,
        started_at=rec.started_at,
    )


def test_showing_a_running_step_is_fenced_by_the_run_lease():
    run = make_run()
    assert not step_store.show_running(run.id, "other", shown(), exists=False)
    assert step_store.show_running(run.id, TOKEN, shown(), exists=False)
    row = Step.objects.get(run=run, step_id="s")
    assert (row.status, row.lease_owner, row.attempt_count) == ("running", TOKEN, 1)
    assert step_store.beat_running(run.id, "s", TOKEN)
    assert not step_store.beat_running(run.id, "s", "other")
    # Recording the attempt replaces the running row, in one statement.
    step_store.record_inline(run.id, TOKEN, ended(shown()), exists=True)
    row = Step.objects.get(run=run, step_id="s")
    assert (row.status, row.lease_owner, row.heartbeat_at) == ("completed", "", None)
    # A finished step is never shown running again.
    assert not step_store.show_running(run.id, TOKEN, shown(attempt_count=2), exists=True)
    # An INSERT that meets its own running row (shown, but the heartbeat missed the
    # answer) records the attempt over it.
    assert step_store.show_running(run.id, TOKEN, shown("t"), exists=False)
    stored = step_store.record_inline(run.id, TOKEN, ended(shown("t")), exists=False)
    assert stored.status == "completed"
    assert Step.objects.get(run=run, step_id="t").status == "completed"


def test_after_a_cancel_the_attempt_is_recorded_only_on_the_cancelled_run():
    run = make_run()
    assert step_store.show_running(run.id, TOKEN, shown(), exists=False)
    # Not cancelled (still running, or taken over): nothing is written.
    assert not step_store.record_after_cancel(run.id, TOKEN, ended(shown()), exists=True)
    Run.objects.filter(id=run.id).update(lease_owner="other")
    assert not step_store.record_after_cancel(run.id, TOKEN, ended(shown()), exists=True)
    Run.objects.filter(id=run.id).update(status=RunStatus.CANCELLED, lease_owner="")
    # Another worker's running row of the same attempt is not ours to end.
    Step.objects.filter(run=run).update(lease_owner="other")
    assert not step_store.record_after_cancel(run.id, TOKEN, ended(shown()), exists=True)
    Step.objects.filter(run=run).update(lease_owner=TOKEN)
    assert step_store.record_after_cancel(run.id, TOKEN, ended(shown()), exists=True)
    row = Step.objects.get(run=run, step_id="s")
    assert row.status == "completed" and row.attempts[-1]["after_cancel"] is True
    # Recorded once: a second write of the same attempt changes nothing.
    assert not step_store.record_after_cancel(run.id, TOKEN, ended(shown()), exists=True)
    # A new step (never shown), and an attempt that would have been retried: failed for good.
    failed = ended(shown("u"), StepStatus.SCHEDULED)
    failed.attempts[-1]["error"] = {"type": "E", "message": "m", "traceback": ""}
    assert step_store.record_after_cancel(run.id, TOKEN, failed, exists=False)
    row = Step.objects.get(run=run, step_id="u")
    assert row.status == "failed" and row.error["type"] == "E" and row.retry_at is None
    assert Run.objects.get(id=run.id).status == RunStatus.CANCELLED


def test_a_running_row_left_by_a_stopped_worker_is_not_counted():
    rec = shown(attempt_count=2)
    before = rec.before_unended_attempt()
    assert before.attempt_count == 1 and len(before.attempts) == 1
    assert before.status == StepStatus.SCHEDULED
    assert ended(rec).before_unended_attempt() == ended(rec)
