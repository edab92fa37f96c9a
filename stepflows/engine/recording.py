"""Every database write of the engine: run leases, run outcomes, step outcomes.

Writes are single conditional statements where possible, so that a duplicate
delivery or a second worker can never overwrite a finished step or run.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Field, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ..conf import get_settings
from ..models import ACTIVE_RUN_STATUSES, Run, RunStatus, Step, StepStatus
from .control import Cancelled, PlannedStep
from .memo import FIELDS, StepRecord

logger = logging.getLogger("stepflows.engine")

FINISHED_STEP = (StepStatus.COMPLETED, StepStatus.FAILED)


def worker_name() -> str:
    """host:pid of this process, recorded on each attempt."""
    return f"{socket.gethostname()}:{os.getpid()}"


def new_token() -> str:
    return f"{worker_name()}:{os.urandom(4).hex()}"


# -- runs -------------------------------------------------------------------


def claim_run(run_id: Any, token: str, wake: int | None = None) -> Run | None:
    """Take the run's lease, or None when it is finished or another worker holds it.

    ``wake`` is the value the message was sent for (see ``Run.wake``): a
    message for an older wake-up is stale and claims nothing. A message
    without one (the first invocation, a manual retry) claims only a run that
    is queued, or running under an expired lease.
    """
    now = timezone.now()
    lease = timedelta(seconds=get_settings().LEASE_SECONDS)
    runs = Run.objects.filter(id=run_id, status__in=ACTIVE_RUN_STATUSES).lease_free(now)
    if wake is None:
        runs = runs.exclude(status=RunStatus.WAITING)
    else:
        runs = runs.filter(wake=wake)
    claimed = runs.update(
        status=RunStatus.RUNNING,
        lease_owner=token,
        lease_expires_at=now + lease,
        started_at=Coalesce("started_at", Value(now)),
        progress_at=now,
    )
    if not claimed:
        return None
    return Run.objects.select_related("event").get(id=run_id)


def renew_lease(run_id: Any, token: str) -> bool:
    lease = timedelta(seconds=get_settings().LEASE_SECONDS)
    return bool(
        Run.objects.filter(id=run_id, lease_owner=token).update(
            lease_expires_at=timezone.now() + lease
        )
    )


def is_cancelled(run_id: Any) -> bool:
    status = Run.objects.filter(id=run_id).values_list("status", flat=True).first()
    return status in (None, RunStatus.CANCELLED)


def finish_run(
    run_id: Any,
    token: str,
    status: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Complete or fail the run this worker holds. False when it lost the lease."""
    done = Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
        status=status,
        output=output,
        error=error,
        ended_at=timezone.now(),
        lease_owner="",
        lease_expires_at=None,
    )
    if not done:
        logger.warning("run %s: lost its lease before it could be marked %s", run_id, status)
    return bool(done)


def fail_unclaimed_run(run_id: Any, error: dict[str, Any]) -> None:
    """Fail a run that could not even be started (its workflow is gone, say)."""
    Run.objects.filter(id=run_id, status__in=ACTIVE_RUN_STATUSES).update(
        status=RunStatus.FAILED,
        error=error,
        ended_at=timezone.now(),
        lease_owner="",
        lease_expires_at=None,
    )


def suspend_run(
    run_id: Any,
    token: str,
    *,
    planned: list[PlannedStep],
    countdown: float | None,
    attempts: int | None = None,
) -> None:
    """Release the run as waiting, then (after commit) dispatch what it waits for."""
    from .. import dispatch

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
    now = timezone.now()
    fields: dict[str, Any] = {
        "status": RunStatus.WAITING,
        "lease_owner": "",
        "lease_expires_at": None,
        "wake": F("wake") + 1,
        "progress_at": now + timedelta(seconds=countdown or 0),
        # The group's join: its steps count down, the last one resumes the run.
        "join_group": planned[0].group if planned else None,
        "join_pending": len(planned),
    }
    if attempts is not None:
        fields["attempts"] = attempts
    with transaction.atomic():
        if new_rows:
            Step.objects.bulk_create(new_rows, batch_size=500, ignore_conflicts=True)
        released = Run.objects.filter(
            id=run_id, lease_owner=token, status=RunStatus.RUNNING
        ).update(**fields)
        if not released:
            # Cancelled meanwhile, or the lease was lost: dispatch nothing.
            return
        # The messages name this wake-up; older ones (duplicates) become no-ops.
        wake = Run.objects.filter(id=run_id).values_list("wake", flat=True).get()
        if planned:
            transaction.on_commit(
                lambda: dispatch.parallel_group(run_id, planned, wake=wake), robust=True
            )
        else:
            transaction.on_commit(
                lambda: dispatch.execute_run(run_id, countdown=countdown, wake=wake), robust=True
            )


# -- steps ------------------------------------------------------------------


def _values(rec: StepRecord, ended: Any) -> dict[str, Any]:
    return {
        "status": rec.status,
        "output": rec.output,
        "output_bytes": rec.output_bytes,
        "error": rec.error,
        "attempts": rec.attempts,
        "attempt_count": rec.attempt_count,
        "retry_at": rec.retry_at,
        "started_at": rec.started_at,
        "ended_at": ended,
        "attempts_base": rec.attempts_base,
    }


def save_step(
    run_id: Any, rec: StepRecord, *, exists: bool, unless_cancelled: bool = False
) -> StepRecord:
    """Store one attempt's outcome with one conditional statement; returns what is stored.

    A finished step is never overwritten: when another worker finished it
    first (a duplicate delivery), its record stands and is returned. A step of
    a parallel group that finishes counts the group's join down in the same
    transaction; the one that reaches zero resumes the run after commit.

    ``unless_cancelled`` (a new inline step): the INSERT itself checks that the
    run was not cancelled, and raises :class:`Cancelled` when it was, so an
    inline step costs one statement instead of a SELECT before it plus an INSERT.
    """
    ended = timezone.now() if rec.is_finished else None
    values = _values(rec, ended)
    joins = rec.group is not None and rec.is_finished
    if unless_cancelled and not exists and not joins:
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                inserted = _insert_unless_cancelled(run_id, rec, values)
        except IntegrityError:
            inserted = True  # Already recorded (by a redelivered invocation): read it below.
        else:
            if inserted:
                return rec
        if not inserted:
            raise Cancelled()
    try:
        with transaction.atomic() if (joins or connection.in_atomic_block) else nullcontext():
            if _write_step(run_id, rec, values, exists=exists):
                if joins:
                    _count_down(run_id, rec.group)
                return rec
    except IntegrityError:
        pass
    stored = Step.objects.filter(run_id=run_id, step_id=rec.step_id).values_list(*FIELDS).get()
    return StepRecord(*stored)


def _write_step(run_id: Any, rec: StepRecord, values: dict[str, Any], *, exists: bool) -> bool:
    """INSERT a new step or UPDATE an unfinished one; False when it had already finished."""
    if not exists:
        Step.objects.create(
            run_id=run_id, step_id=rec.step_id, position=rec.position, group=rec.group, **values
        )
        return True
    return bool(
        Step.objects.filter(run_id=run_id, step_id=rec.step_id)
        .exclude(status__in=FINISHED_STEP)
        .update(**values)
    )


def _insert_unless_cancelled(run_id: Any, rec: StepRecord, values: dict[str, Any]) -> bool:
    """INSERT the step row only while its run is not cancelled (or deleted), in one statement.

    ``INSERT ... SELECT ... FROM run WHERE id = %s AND status <> 'cancelled'``;
    on PostgreSQL each parameter is cast to its column's type, since a bare
    parameter in a SELECT list has no type to be inferred from.
    """
    qn = connection.ops.quote_name
    row = {
        "run": run_id,
        "step_id": rec.step_id,
        "position": rec.position,
        "group": rec.group,
        **values,
    }
    cast = connection.vendor == "postgresql"
    columns, slots, params = [], [], []
    for name, value in row.items():
        f = Step._meta.get_field(name)
        assert isinstance(f, Field)
        columns.append(qn(str(f.column)))
        params.append(f.get_db_prep_save(value, connection))
        slots.append(f"CAST(%s AS {f.db_type(connection)})" if cast else "%s")
    pk = Run._meta.pk
    assert pk is not None
    sql = (
        f"INSERT INTO {qn(str(Step._meta.db_table))} ({', '.join(columns)}) "
        f"SELECT {', '.join(slots)} FROM {qn(str(Run._meta.db_table))} "
        f"WHERE {qn(str(pk.column))} = %s AND {qn('status')} <> %s"
    )
    params += [pk.get_db_prep_value(run_id, connection), RunStatus.CANCELLED.value]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount == 1


def _count_down(run_id: Any, group: int | None) -> None:
    """One step of the group finished: decrement the join; at zero, resume the run.

    This replaces the chord's result-backend join: the callback needs no
    header results (outputs live in Step rows), only "all finished". The
    decrement runs in the transaction that finished the step, and only when
    that step really went from unfinished to finished, so a redelivered step
    task never counts twice; the run row's lock orders concurrent steps, so
    exactly one of them sees zero.
    """
    from .. import dispatch

    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {connection.ops.quote_name(table)} SET join_pending = join_pending - 1 "
            "WHERE id = %s AND join_group = %s AND join_pending > 0 "
            "RETURNING join_pending, wake",
            [Run._meta.pk.get_db_prep_value(run_id, connection), group],
        )
        row = cursor.fetchone()
    if row is not None and row[0] == 0:
        # The callback names the wake-up the run suspended with (see Run.wake).
        wake = row[1]
        transaction.on_commit(lambda: dispatch.resume_run(run_id, wake=wake), robust=True)
