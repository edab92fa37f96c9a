"""Every change of a run's state, each one conditional statement (or one transaction).

A worker executing a run holds its lease: ``lease_owner`` is the worker's
token and ``lease_expires_at`` the time another worker may take the run over.
The heartbeat (:mod:`stepflows.engine.heartbeat`) renews it while the run's
code runs. Every write made on behalf of an invocation names the token, so a
worker that lost the run (paused past its lease, cut off, or the run
cancelled) writes nothing and learns so from the result.

Messages (the next invocation, a parallel group's step tasks) are published
only after the transaction that made them necessary commits.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.functions import Coalesce

from .. import clock, dispatch
from ..conf import get_settings
from ..models import (
    ACTIVE_RUN_STATUSES,
    RETRYABLE_RUN_STATUSES,
    Run,
    RunStatus,
    Step,
    StepStatus,
    Waiter,
)
from . import admission, statements, waits
from .events import start_failure_handler
from .fence import after_commit
from .records import FINISHED, PlannedStep

logger = logging.getLogger("stepflows.store")

# The fields that release a run's lease: written wherever a run stops being executed.
RELEASED: dict[str, Any] = {"lease_owner": "", "lease_expires_at": None}


def lease_delta() -> timedelta:
    return timedelta(seconds=get_settings().LEASE_SECONDS)


def _held(run_id: Any, token: str) -> Any:
    """The run, only while this token holds it and it is running."""
    return Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING)


def claim_run(run_id: Any, token: str, wake: int | None = None) -> Run | None:
    """Take the run's lease, or None when it is finished or another worker holds it.

    ``wake`` is the value the message was sent for (see ``Run.wake``): a
    message for an older wake-up is stale and claims nothing. A message
    without one (the first invocation, a manual retry) claims only a run that
    is queued, or running under an expired lease. A run whose lease this very
    token holds is claimed again: that is the task retrying after the database
    connection failed mid-invocation, and it need not wait for its own lease.
    """
    now = clock.now()
    runs = Run.objects.filter(id=run_id, status__in=ACTIVE_RUN_STATUSES).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(lease_owner=token)
    )
    if wake is None:
        runs = runs.exclude(status=RunStatus.WAITING)
    else:
        runs = runs.filter(wake=wake)
    claimed = runs.update(
        status=RunStatus.RUNNING,
        waiting_for="",
        wait_until=None,
        lease_owner=token,
        lease_expires_at=now + lease_delta(),
        started_at=Coalesce("started_at", Value(now)),
        progress_at=now,
    )
    if not claimed:
        return None
    return Run.objects.select_related("event").get(id=run_id)


def renew_run_leases(leases: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
    """Heartbeat: extend each (run id, token) lease; returns those no longer held."""
    expires = clock.now() + lease_delta()
    lost = []
    for run_id, token in leases:
        if not _held(run_id, token).update(lease_expires_at=expires):
            lost.append((run_id, token))
    return lost


def run_status(run_id: Any) -> str | None:
    return Run.objects.filter(id=run_id).values_list("status", flat=True).first()


Handler = tuple[str, dict[str, Any], int]
"""An on_failure handler to start: its workflow id, its event's data, the failure's number."""


def _after_end(
    run_id: Any,
    status: str,
    *,
    output: Any = None,
    output_bytes: int = 0,
    error: dict[str, Any] | None = None,
    caller: tuple[Any, str] | None = None,
    handler: Handler | None = None,
) -> None:
    """What a run's end sets off, in the transaction that ended it.

    A run started by ``step.invoke`` ends its caller's step (and wakes it);
    a failed run with an ``on_failure`` handler starts the handler's run.
    """
    if caller is not None:
        waits.end_invoke(
            caller[0],
            caller[1],
            status,
            output=output,
            output_bytes=output_bytes,
            error=error,
            child_id=run_id,
        )
    if handler is not None and status == RunStatus.FAILED:
        workflow_id, data, attempt = handler
        start_failure_handler(run_id, workflow_id, data, attempt=attempt)


def finish_run(
    run_id: Any,
    token: str,
    status: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    output_bytes: int = 0,
    caller: tuple[Any, str] | None = None,
    handler: Handler | None = None,
    listening: bool = False,
    slots: bool = False,
) -> bool:
    """Complete or fail the run this worker holds. False when it lost the lease.

    ``caller``: (parent run, step) when the run was started by ``step.invoke``;
    ``handler``: the on_failure run to start if it failed; ``listening``: the
    run has cancel_on waiters to drop. All happen in the same transaction as
    the end. ``slots``: its workflow has a concurrency limit: its slots are
    handed to the runs in line.
    """
    fields = {"status": status, "output": output, "error": error, "ended_at": clock.now()}
    plain = caller is None and not listening and not slots
    if plain and (handler is None or status != RunStatus.FAILED):
        done = _held(run_id, token).update(**fields, **RELEASED)
    else:
        with transaction.atomic():
            done = _held(run_id, token).update(**fields, **RELEASED)
            if done and listening:
                Waiter.objects.filter(run_id=run_id).delete()
            if done and slots:
                admission.release_slots(run_id)
            if done:
                _after_end(
                    run_id,
                    status,
                    output=output,
                    output_bytes=output_bytes,
                    error=error,
                    caller=caller,
                    handler=handler,
                )
    if not done:
        logger.warning("run %s: lost its lease before it could be marked %s", run_id, status)
    return bool(done)


def block_run(
    run_id: Any,
    token: str,
    error: dict[str, Any],
    *,
    listening: bool = False,
    slots: bool = False,
) -> bool:
    """Stop the run this worker holds as blocked: its code no longer matches its steps.

    Like a failure, it releases the lease and hands its concurrency slots on
    (``slots``); unlike one, it starts no ``on_failure`` handler and does not
    end the step of a run that invoked it, which waits for the retry. Its
    ``cancel_on`` waiters are dropped and registered again when a retry
    resumes it (``listening``). False when it lost the lease.
    """
    fields = {
        "status": RunStatus.BLOCKED,
        "error": error,
        "ended_at": clock.now(),
        "join_group": None,
        "join_pending": 0,
        **RELEASED,
    }
    if listening:
        fields["listening"] = False
    with transaction.atomic():
        done = _held(run_id, token).update(**fields)
        if done and listening:
            Waiter.objects.filter(run_id=run_id).delete()
        if done and slots:
            admission.release_slots(run_id)
    if not done:
        logger.warning("run %s: lost its lease before it could be marked blocked", run_id)
    return bool(done)


def fail_unclaimed_run(run_id: Any, error: dict[str, Any]) -> None:
    """Fail a run that could not even be started (its workflow is gone, say)."""
    with transaction.atomic():
        done = Run.objects.filter(id=run_id, status__in=ACTIVE_RUN_STATUSES).update(
            status=RunStatus.FAILED, error=error, ended_at=clock.now(), **RELEASED
        )
        if done:
            admission.release_slots(run_id)
            _after_end(run_id, RunStatus.FAILED, error=error, caller=waits.caller_of(run_id))


def suspend_run(
    run_id: Any,
    token: str,
    *,
    planned: list[PlannedStep],
    countdown: float | None,
    attempts: int | None = None,
) -> bool:
    """Release the run as waiting; after commit, send what it waits for.

    With ``planned`` steps (a parallel group), the new steps' rows are
    created and the join counter is set to the number of the group's steps
    that have not finished, counted in this transaction after the run's row
    is locked: a step that finished since the invocation loaded its memo is
    not waited for again, and one finishing concurrently counts the new join
    down after this commit (its decrement waits on the row lock). When none
    is left, the run is resumed at once. ``state_bytes`` is summed anew here,
    so the group's steps can check the output limit against it. Without
    ``planned``, the run is re-invoked after ``countdown`` seconds (a retry).
    False when the worker no longer held the run (nothing is written).
    """
    now = clock.now()
    with transaction.atomic():
        wake = _held(run_id, token).select_for_update().values_list("wake", flat=True).first()
        if wake is None:
            return False
        wake += 1
        fields: dict[str, Any] = {
            "status": RunStatus.WAITING,
            "wake": wake,
            "progress_at": now + timedelta(seconds=countdown or 0),
            "join_group": None,
            "join_pending": 0,
            **RELEASED,
        }
        if attempts is not None:
            fields["attempts"] = attempts
        messages: list[dispatch.Message]
        if planned:
            group = planned[0].group
            new_rows = [
                Step(
                    run_id=run_id,
                    step_id=p.step_id,
                    position=p.position,
                    group=p.group,
                    status=StepStatus.SCHEDULED,
                )
                for p in planned
                if p.is_new
            ]
            if new_rows:
                Step.objects.bulk_create(new_rows, batch_size=500, ignore_conflicts=True)
            sums = Step.objects.filter(run_id=run_id).aggregate(
                pending=Count("id", filter=Q(group=group) & ~Q(status__in=FINISHED)),
                state=Coalesce(Sum("output_bytes"), Value(0)),
            )
            fields.update(join_group=group, join_pending=sums["pending"], state_bytes=sums["state"])
            if sums["pending"]:
                messages = [
                    dispatch.run_step(run_id, p.step_id, p.position, p.group) for p in planned
                ]
            else:
                messages = [dispatch.resume_run(run_id, wake=wake)]
        else:
            messages = [dispatch.execute_run(run_id, wake=wake, countdown=countdown)]
        Run.objects.filter(id=run_id).update(**fields)
        after_commit(messages)
    return True


def count_down_join(run_id: Any, group: int, size: int, max_state: int) -> bool | None:
    """One step of the group finished with ``size`` bytes of output: count the join down.

    Returns True when the output fits under ``max_state`` (and, at zero, the
    run is resumed after commit), False when it would bring the run's stored
    outputs over it (nothing is changed; the caller records a failure
    instead). Runs inside the transaction that finished the step, and only
    when the step really went from unfinished to finished, so a redelivered
    step task never counts twice; the run row's lock orders concurrent steps,
    so exactly one of them sees zero.
    """
    db = statements.db()
    qn = db.ops.quote_name
    table = qn(Run._meta.db_table)
    pk = Run._meta.pk
    assert pk is not None
    run_key = pk.get_db_prep_value(run_id, db)
    with statements.cursor(db) as cursor:
        cursor.execute(
            f"UPDATE {table} SET join_pending = join_pending - 1, "
            "state_bytes = state_bytes + %s "
            "WHERE id = %s AND join_group = %s AND join_pending > 0 AND state_bytes + %s <= %s "
            "RETURNING join_pending, wake",
            [size, run_key, group, size, max_state],
        )
        row = cursor.fetchone()
        if row is None:
            # Not this group's join (a stale one), or over the limit: tell them apart.
            cursor.execute(
                f"UPDATE {table} SET state_bytes = state_bytes + %s "
                "WHERE id = %s AND state_bytes + %s <= %s",
                [size, run_key, size, max_state],
            )
            return cursor.rowcount == 1
    if row[0] == 0:
        # The callback names the wake-up the run suspended with (see Run.wake).
        after_commit([dispatch.resume_run(run_id, wake=row[1])])
    return True


# -- verbs of staff and code (stepflows.api) ------------------------------------------


def cancel_run(run_id: Any, *, reason: str, children: bool = True) -> bool:
    """Cancel an active or blocked run; False when it had already finished.

    Clearing the lease is what stops a worker executing it: its next write
    (or heartbeat) finds the lease gone. Its pending waits go with it; a run
    it invoked is cancelled too unless ``children`` is False; a run that was
    itself invoked fails its caller's step.
    """
    error = {"type": "Cancelled", "message": reason, "traceback": ""}
    with transaction.atomic():
        cancellable = (*ACTIVE_RUN_STATUSES, RunStatus.BLOCKED)
        done = Run.objects.filter(pk=run_id, status__in=cancellable).update(
            status=RunStatus.CANCELLED,
            ended_at=clock.now(),
            error=error,
            waiting_for="",
            wait_until=None,
            **RELEASED,
        )
        if not done:
            return False
        Waiter.objects.filter(run_id=run_id).delete()
        admission.release_slots(run_id)
        _after_end(run_id, RunStatus.CANCELLED, error=error, caller=waits.caller_of(run_id))
        if children:
            for child in waits.invoked_children(run_id):
                cancel_run(child, reason=f"its parent run {run_id} was cancelled: {reason}")
    return True


def retry_failed_run(run_id: Any) -> Run | None:
    """Queue a failed or blocked run again, its failed steps with a fresh retry budget.

    Of a blocked run, only the steps that failed because their task replayed
    code that did not match (a ``NonDeterminismError``) run again; a failure
    the workflow handled stays as recorded, so the retry replays the same path.
    Returns the run's row as it was (locked), or None when it did not exist;
    the caller checks that it had failed or was blocked (nothing is written
    otherwise).
    """
    with transaction.atomic():
        locked = Run.objects.select_for_update().filter(pk=run_id).first()
        if locked is None or locked.status not in RETRYABLE_RUN_STATUSES:
            return locked
        failed = Step.objects.filter(run_id=run_id, status=StepStatus.FAILED)
        if locked.status == RunStatus.BLOCKED:
            failed = failed.filter(error__type="NonDeterminismError")
        failed.update(
            status=StepStatus.SCHEDULED,
            error=None,
            retry_at=None,
            ended_at=None,
            attempts_base=F("attempt_count"),
            lease_owner="",
            heartbeat_at=None,
        )
        Run.objects.filter(pk=run_id).update(
            status=RunStatus.QUEUED,
            error=None,
            output=None,
            ended_at=None,
            attempts=0,
            resumes=F("resumes") + 1,
            recoveries=0,
            recovered_at=None,
            progress_at=clock.now(),
            **RELEASED,
        )
        after_commit([dispatch.execute_run(run_id)])
    return locked


# -- recovery -------------------------------------------------------------------------


def recover_run(
    run_id: Any,
    *,
    status: str,
    wake: int,
    recoveries: int,
    limit: int,
    error: dict[str, Any],
    handler: Handler | None = None,
) -> tuple[str, int]:
    """Resume a stuck run (or fail it past ``limit`` recoveries), if it has not moved.

    ``status``, ``wake`` and ``recoveries`` are what the recovery saw: the
    update is conditional on them (and on no live lease), so two recoveries
    at once act once. Recoveries are counted since the run last made
    progress: when a step ended after the last recovery, the count starts
    again. Returns ``(outcome, count)``: ``"resumed"``, ``"failed"`` or
    ``"skipped"`` (it moved meanwhile), and the run's recovery count.
    """
    now = clock.now()
    same = Run.objects.filter(id=run_id, status=status, wake=wake, recoveries=recoveries).filter(
        Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now)
    )
    with transaction.atomic():
        recovered_at = same.values_list("recovered_at", flat=True).first()
        progressed = recovered_at is not None and (
            Step.objects.filter(run_id=run_id, ended_at__gt=recovered_at).exists()
        )
        count = 1 if progressed else recoveries + 1
        if count > limit:
            done = same.update(
                status=RunStatus.FAILED,
                error=error,
                ended_at=now,
                wake=F("wake") + 1,
                **RELEASED,
            )
            if done:
                admission.release_slots(run_id)
                caller = waits.caller_of(run_id)
                _after_end(run_id, RunStatus.FAILED, error=error, caller=caller, handler=handler)
            return ("failed" if done else "skipped"), count
        # The wake-up number stays: a message merely delayed (not lost) stays valid,
        # and whichever of it and ours comes first resumes the run; the other finds
        # the run moved on. A run found running is no longer: it waits for our message.
        done = same.update(
            status=RunStatus.QUEUED if status == RunStatus.QUEUED else RunStatus.WAITING,
            recoveries=count,
            recovered_at=now,
            progress_at=now,
            **RELEASED,
        )
        if not done:
            return "skipped", count
        after_commit([dispatch.execute_run(run_id, wake=wake)])
    return "resumed", count


def stale_before(now: datetime) -> datetime:
    """Heartbeats older than this belong to a worker that stopped."""
    return now - lease_delta()
