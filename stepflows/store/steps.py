"""Every change of a step's state: record an attempt, hold a parallel step, beat.

An inline step is written under its run's lease: the INSERT or UPDATE itself
checks that the run is still running under the writer's token. A parallel
step is written under its own lease: a step task that has been executing a
step for a moment marks it ``running`` with its token (the heartbeat does,
so a fast step costs no extra write), and its outcome is recorded only while
the step is unfinished and either not yet marked or marked with that token.
A finished step is never overwritten.

An inline step whose code runs longer than a moment is shown ``running`` the
same way, by the heartbeat and under the run's lease (:func:`show_running`),
so a fast step costs no extra write either. When the run was cancelled while
the step ran, its outcome is still recorded (:func:`record_after_cancel`):
the step did run, and the run page says what it did.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import lru_cache
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, Q, Value
from django.db.models.functions import Coalesce

from .. import clock
from ..models import Event, Run, RunStatus, Step, StepStatus
from . import statements
from .fence import LeaseLost
from .records import FIELDS, FINISHED, StepRecord
from .runs import count_down_join, run_status, stale_before


class StateLimitExceeded(Exception):
    """A parallel step's output would bring the run's stored outputs over the limit."""


def _values(rec: StepRecord) -> dict[str, Any]:
    return {
        "status": rec.status,
        "output": rec.output,
        "output_bytes": rec.output_bytes,
        "error": rec.error,
        "attempts": rec.attempts,
        "attempt_count": rec.attempt_count,
        "retry_at": rec.retry_at,
        "started_at": rec.started_at,
        "ended_at": clock.now() if rec.is_finished else None,
        "attempts_base": rec.attempts_base,
        "lease_owner": "",
        "heartbeat_at": None,
        "logs": rec.logs,
    }


def stored_step(run_id: Any, step_id: str) -> StepRecord:
    row = Step.objects.filter(run_id=run_id, step_id=step_id).values(*FIELDS).get()
    return StepRecord.from_row(row)


def step_for_task(run_id: Any, step_id: str) -> Step | None:
    """The step with its run and the run's event loaded, or None: what a step task starts from.

    The same rows as ``Step.objects.select_related("run__event")...first()``,
    but the statement is built once per process: compiling that query took
    about 1 ms of every parallel step, ten times its execution.
    """
    db = statements.db()
    select = _step_task_select(db.vendor)
    with statements.cursor(db) as cursor:
        cursor.execute(select.sql, [_run_key(run_id, db), step_id])
        row = cursor.fetchone()
    if row is None:
        return None
    step, run, event = select.instances(db.alias, row)
    assert isinstance(step, Step)
    run._state.fields_cache["event"] = event
    step._state.fields_cache["run"] = run
    return step


@lru_cache(maxsize=4)
def _step_task_select(vendor: str) -> statements.Joined:
    """step JOIN run JOIN event for one (run, step_id), with every concrete column of each.

    Values are converted as the ORM converts them (the backend's converters,
    then the field's ``from_db_value``).
    """
    db = statements.db()
    qn = db.ops.quote_name
    selected: list[str] = []
    parts: list[tuple[type[Model], list[str], list[Any]]] = []
    for alias, model in (("s", Step), ("r", Run), ("e", Event)):
        fields = model._meta.concrete_fields
        columns = []
        for f in fields:
            col = f.get_col(alias)
            columns.append((col, [*db.ops.get_db_converters(col), *col.get_db_converters(db)]))
            selected.append(f"{alias}.{qn(str(f.column))}")
        parts.append((model, [f.attname for f in fields], columns))
    run_fk = Step._meta.get_field("run")
    event_fk = Run._meta.get_field("event")
    assert isinstance(run_fk, Field) and isinstance(event_fk, Field)
    assert Run._meta.pk is not None and Event._meta.pk is not None
    sql = (
        f"SELECT {', '.join(selected)} FROM {qn(Step._meta.db_table)} s "
        f"INNER JOIN {qn(Run._meta.db_table)} r "
        f"ON r.{qn(str(Run._meta.pk.column))} = s.{qn(str(run_fk.column))} "
        f"INNER JOIN {qn(Event._meta.db_table)} e "
        f"ON e.{qn(str(Event._meta.pk.column))} = r.{qn(str(event_fk.column))} "
        f"WHERE s.{qn(str(run_fk.column))} = %s AND s.{qn('step_id')} = %s"
    )
    return statements.Joined(sql, parts)


def _lost(run_id: Any, what: str) -> LeaseLost:
    status = run_status(run_id)
    return LeaseLost(what, cancelled=status in (None, RunStatus.CANCELLED))


# -- inline steps: under the run's lease ----------------------------------------------


def record_inline(run_id: Any, token: str, rec: StepRecord, *, exists: bool) -> StepRecord:
    """Store one attempt of an inline step, fenced by the run's lease; returns what is stored.

    A new step costs one statement (``INSERT ... SELECT ... FROM run WHERE the
    lease is ours``). Raises :class:`LeaseLost` when the run was cancelled or
    taken over: nothing is written.
    """
    values = _values(rec)
    if not exists:
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                inserted = _insert_if_held(run_id, token, rec, values)
        except IntegrityError:
            if not _shown_by(run_id, rec.step_id, token):
                return stored_step(run_id, rec.step_id)  # recorded by a redelivered invocation
            inserted = False  # shown running by our heartbeat after all: update it below
        else:
            if not inserted:
                raise _lost(run_id, f"run {run_id}")
            return rec
    held = Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING)
    updated = (
        Step.objects.filter(run_id=run_id, step_id=rec.step_id, run__in=held)
        .exclude(status__in=FINISHED)
        .update(**values)
    )
    if updated:
        return rec
    stored = stored_step(run_id, rec.step_id)
    if stored.is_finished:
        return stored
    raise _lost(run_id, f"run {run_id}")


# The columns every attempt writes, in order (see _values), after the row's identity.
_IDENTITY = ("run", "step_id", "position", "group", "kind", "wake_at", "wait")
_WRITTEN = (
    "status",
    "output",
    "output_bytes",
    "error",
    "attempts",
    "attempt_count",
    "retry_at",
    "started_at",
    "ended_at",
    "attempts_base",
    "lease_owner",
    "heartbeat_at",
    "logs",
)


@lru_cache(maxsize=8)
def _fields(names: tuple[str, ...]) -> list[Field]:
    found = []
    for name in names:
        f = Step._meta.get_field(name)
        assert isinstance(f, Field)
        found.append(f)
    return found


@lru_cache(maxsize=8)
def _insert_sql(vendor: str, held: bool = True) -> str:
    """``INSERT ... SELECT ... FROM run WHERE the lease is held``, built once per backend.

    With ``held`` False: ``WHERE the run has this status`` (a cancelled run,
    see :func:`record_after_cancel`). On PostgreSQL each parameter is cast to
    its column's type, since a bare parameter in a SELECT list has no type to
    be inferred from.
    """
    qn = connection.ops.quote_name
    fields = _fields(_IDENTITY + _WRITTEN)
    columns = ", ".join(qn(str(f.column)) for f in fields)
    cast = vendor == "postgresql"
    slots = ", ".join(f"CAST(%s AS {f.db_type(connection)})" if cast else "%s" for f in fields)
    lease = f"{qn('lease_owner')} = %s AND " if held else ""
    return (
        f"INSERT INTO {qn(Step._meta.db_table)} ({columns}) "
        f"SELECT {slots} FROM {qn(Run._meta.db_table)} "
        f"WHERE {qn('id')} = %s AND {lease}{qn('status')} = %s"
    )


@lru_cache(maxsize=4)
def _update_parallel_sql(vendor: str) -> str:
    """``UPDATE step SET ... WHERE this task may write it`` (see _step_held_by), built once."""
    qn = connection.ops.quote_name
    sets = ", ".join(f"{qn(str(f.column))} = %s" for f in _fields(_WRITTEN))
    return (
        f"UPDATE {qn(Step._meta.db_table)} SET {sets} "
        f"WHERE {qn('run_id')} = %s AND {qn('step_id')} = %s AND {qn('attempt_count')} = %s "
        f"AND ({qn('status')} = %s OR ({qn('status')} = %s AND {qn('lease_owner')} = %s))"
    )


def _params(names: tuple[str, ...], row: dict[str, Any], db: BaseDatabaseWrapper) -> list[Any]:
    """The row's values as the database takes them, in the order of ``names``.

    ``None`` is NULL for every column written here, so it is not prepared.
    """
    return [
        None if (value := row[f.name]) is None else f.get_db_prep_save(value, db)
        for f in _fields(names)
    ]


def _run_key(run_id: Any, db: BaseDatabaseWrapper) -> Any:
    pk = Run._meta.pk
    assert pk is not None
    return pk.get_db_prep_value(run_id, db)


def _insert_if_held(
    run_id: Any, token: str | None, rec: StepRecord, values: dict[str, Any]
) -> bool:
    """INSERT the step row only while the run is running under ``token``, in one statement.

    ``token`` None: only while the run is cancelled (:func:`record_after_cancel`).
    """
    row = {
        "run": run_id,
        "step_id": rec.step_id,
        "position": rec.position,
        "group": rec.group,
        "kind": rec.kind,
        "wake_at": rec.wake_at,
        "wait": rec.wait,
    }
    row.update(values)
    db = statements.db()
    params = _params(_IDENTITY + _WRITTEN, row, db)
    if token is None:
        params += [_run_key(run_id, db), RunStatus.CANCELLED.value]
    else:
        params += [_run_key(run_id, db), token, RunStatus.RUNNING.value]
    with statements.cursor(db) as cursor:
        cursor.execute(_insert_sql(db.vendor, token is not None), params)
        return cursor.rowcount == 1


# -- an inline step while its code runs, and after its run was cancelled ------------------


def _shown_by(run_id: Any, step_id: str, token: str) -> bool:
    """The step is shown running by this token's heartbeat (see :func:`show_running`)."""
    return Step.objects.filter(
        run_id=run_id, step_id=step_id, status=StepStatus.RUNNING, lease_owner=token
    ).exists()


def show_running(run_id: Any, token: str, rec: StepRecord, *, exists: bool) -> bool:
    """Heartbeat: show an inline step whose code runs now, under the run's lease.

    ``rec`` is the step with the running attempt (no ``ended_at`` yet): status
    ``running``, ``lease_owner`` the run's token. One statement: an INSERT
    fenced like :func:`record_inline`'s, or (a step with earlier attempts) an
    UPDATE of the unfinished row. False when nothing was written: the run is
    no longer ours, or the step was recorded meanwhile. The heartbeat never
    shows a step after its attempt was recorded in this process (see
    :class:`stepflows.engine.heartbeat.RunningStep`).
    """
    now = clock.now()
    if not exists:
        values = _values(rec) | {"lease_owner": token, "heartbeat_at": now}
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                return _insert_if_held(run_id, token, rec, values)
        except IntegrityError:
            return False
    held = Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING)
    return bool(
        Step.objects.filter(run_id=run_id, step_id=rec.step_id, run__in=held)
        .exclude(status__in=FINISHED)
        .update(
            status=StepStatus.RUNNING,
            attempts=rec.attempts,
            attempt_count=rec.attempt_count,
            started_at=rec.started_at,
            retry_at=None,
            lease_owner=token,
            heartbeat_at=now,
        )
    )


def beat_running(run_id: Any, step_id: str, token: str) -> bool:
    """Heartbeat: a step shown by :func:`show_running` is still running; False when not ours."""
    held = Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING)
    return bool(
        Step.objects.filter(
            run_id=run_id,
            step_id=step_id,
            status=StepStatus.RUNNING,
            lease_owner=token,
            run__in=held,
        ).update(heartbeat_at=clock.now())
    )


def record_after_cancel(run_id: Any, token: str, rec: StepRecord, *, exists: bool) -> bool:
    """Record what an inline step did after its run was cancelled under it.

    The worker ran the step to its end and then found the run cancelled (its
    lease cleared): the attempt is stored anyway, marked ``"after_cancel":
    true`` (see :meth:`StepRecord.after_cancel`), so the run page says what the
    step did. Fenced so that it changes nothing else: only while the run is
    cancelled, and only a step that has no record of this attempt yet (new,
    shown running by this token, or with fewer attempts). The run stays
    cancelled. Returns whether it was written.
    """
    rec = rec.after_cancel()
    values = _values(rec)
    if not exists:
        try:
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                if _insert_if_held(run_id, None, rec, values):
                    return True
        except IntegrityError:
            pass  # shown running by our heartbeat, or recorded by another worker: see below
    cancelled = Run.objects.filter(id=run_id, status=RunStatus.CANCELLED)
    return bool(
        Step.objects.filter(run_id=run_id, step_id=rec.step_id, run__in=cancelled)
        .exclude(status__in=FINISHED)
        .filter(
            Q(attempt_count__lt=rec.attempt_count) | Q(status=StepStatus.RUNNING, lease_owner=token)
        )
        .update(**values)
    )


# -- parallel steps: under the step's own lease -------------------------------------------


def _step_held_by(run_id: Any, step_id: str, token: str, attempt_count: int) -> Any:
    """The step while this task may write it: held by ``token``, or not yet marked.

    ``attempt_count`` is the count the task started its attempt with: once an
    attempt is recorded (by this task or a duplicate), the row no longer
    matches, so a late heartbeat cannot mark a recorded step running again and
    a duplicate cannot record the same attempt twice.
    """
    return Step.objects.filter(run_id=run_id, step_id=step_id, attempt_count=attempt_count).filter(
        Q(status=StepStatus.SCHEDULED) | Q(status=StepStatus.RUNNING, lease_owner=token)
    )


def take_over_step(run_id: Any, step_id: str, token: str) -> bool:
    """Hold a step marked running by a task whose heartbeat stopped (or by this token).

    A step task that finds its step ``running`` calls this before executing
    it: True when the step is now ours, False when a live task holds it.
    """
    now = clock.now()
    return bool(
        Step.objects.filter(run_id=run_id, step_id=step_id, status=StepStatus.RUNNING)
        .filter(Q(heartbeat_at__lt=stale_before(now)) | Q(lease_owner=token))
        .update(lease_owner=token, heartbeat_at=now)
    )


def beat_steps(leases: list[tuple[Any, str, str, int]]) -> list[tuple[Any, str, str, int]]:
    """Heartbeat: mark each (run id, step id, token, attempt count) running and fresh.

    Returns the leases lost (another task holds the step, or its attempt was recorded).
    """
    now = clock.now()
    lost = []
    for run_id, step_id, token, attempt_count in leases:
        marked = _step_held_by(run_id, step_id, token, attempt_count).update(
            status=StepStatus.RUNNING,
            lease_owner=token,
            heartbeat_at=now,
            started_at=Coalesce("started_at", Value(now)),
        )
        if not marked:
            lost.append((run_id, step_id, token, attempt_count))
    return lost


def record_parallel(run_id: Any, token: str, rec: StepRecord, *, max_state: int) -> StepRecord:
    # ``rec`` is the record after this attempt: the attempt started with one fewer.
    """Store one attempt of a parallel step, fenced by the step's lease; returns what is stored.

    A step that finishes counts its group's join down in the same
    transaction (see :func:`stepflows.store.runs.count_down_join`). Raises
    :class:`StateLimitExceeded` (nothing written) when its output would bring
    the run over ``max_state`` bytes, and :class:`LeaseLost` when another task
    holds the step now.
    """
    assert rec.group is not None
    with transaction.atomic():
        # _step_held_by(...).update(...) as one prepared statement: the ORM would
        # compile the same query again for every step of every group.
        db = statements.db()
        params = _params(_WRITTEN, _values(rec), db)
        params += [
            _run_key(run_id, db),
            rec.step_id,
            rec.attempt_count - 1,
            StepStatus.SCHEDULED.value,
            StepStatus.RUNNING.value,
            token,
        ]
        with statements.cursor(db) as cursor:
            cursor.execute(_update_parallel_sql(db.vendor), params)
            written = cursor.rowcount
        if written:
            if rec.is_finished and not count_down_join(
                run_id, rec.group, rec.output_bytes, max_state
            ):
                raise StateLimitExceeded(rec.step_id)
            return rec
    stored = stored_step(run_id, rec.step_id)
    if stored.is_finished:
        return stored
    raise LeaseLost(f"step {rec.step_id!r} of run {run_id}")
