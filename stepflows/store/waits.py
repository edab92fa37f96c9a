"""Durable waits: every change of state of a sleep, a wait for an event, an invoke.

A run that waits is released (no worker holds it) with ``Run.waiting_for``
saying what for and ``Run.wait_until`` when the sweep must wake it. The
waiting step is a ``scheduled`` row of its kind. Whoever ends the wait (the
sweep at the due time, :func:`stepflows.send` with a matching event, a child
run that finished) completes the step in one conditional update, so of two at
once exactly one wins, and then publishes the run's wake-up after commit.
The worker that resumes the run finds the step finished and only replays it.

**No lost wake-ups.** Registering a wait for event ``N`` and sending an event
``N`` are serialized: on PostgreSQL registration takes a transaction-level
advisory lock on ``N`` exclusively and every send takes it shared, before
either reads the other's rows; on SQLite the database's write lock (the
project's transactions are immediate) does the same. So either the sender
sees the committed waiter, or the registration sees the committed event.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction

from .. import clock, dispatch
from ..models import (
    ACTIVE_RUN_STATUSES,
    Event,
    Run,
    RunStatus,
    Step,
    StepKind,
    StepStatus,
    Waiter,
)
from .fence import after_commit, hold_name
from .records import StepRecord

logger = logging.getLogger("stepflows.store")

WAIT_KINDS = (StepKind.SLEEP, StepKind.EVENT, StepKind.INVOKE)

# Advisory-lock namespace of stepflows' event names (the first of two int4 keys).
LOCK_NAMESPACE = 0x5F1F
# Leaves of an event's data considered for matching (depth-first, dicts only).
MAX_MATCH_LEAVES = 500
ANY = "*"


# -- match keys ---------------------------------------------------------------------


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def match_key(path: str | None, value: Any = None) -> str:
    """The key of a waiter: a hash of the matched path and value (``*`` for any event)."""
    if path is None:
        return ANY
    text = json.dumps([path, _norm(value)], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def value_at(data: Any, path: str) -> Any:
    """The value at ``"data.a.b"`` of an event's data; KeyError when it is not there."""
    value = data
    for part in path.split(".")[1:]:
        if not isinstance(value, dict) or part not in value:
            raise KeyError(path)
        value = value[part]
    return value


def is_matchable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def event_keys(data: Any) -> set[str]:
    """Every key a waiter for this event could have: ``*`` and each scalar leaf's."""
    keys = {ANY}
    stack: list[tuple[str, Any]] = [("data", data)]
    while stack and len(keys) <= MAX_MATCH_LEAVES:
        prefix, value = stack.pop()
        if isinstance(value, dict):
            stack.extend((f"{prefix}.{k}", v) for k, v in value.items() if isinstance(k, str))
        elif is_matchable(value):
            keys.add(match_key(prefix, value))
    return keys


def database_now() -> datetime:
    """The database server's clock (plus a test's offset, see :mod:`stepflows.clock`).

    Due times of sleeps and waits are computed and compared with it, so the
    clocks of the workers (which may differ between machines) do not matter.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT clock_timestamp()")
            value = cursor.fetchone()[0]
        elif connection.vendor == "sqlite":
            cursor.execute("SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now')")
            value = datetime.fromisoformat(cursor.fetchone()[0]).replace(tzinfo=UTC)
        else:
            return clock.now()
    return value + clock.offset()


# -- serializing registrations and sends -----------------------------------------------


def lock_event_name(name: str) -> None:
    """Registration: hold event name ``name`` exclusively until the transaction ends."""
    hold_name(LOCK_NAMESPACE, name)


def share_names_and_find(names: Iterable[str], event_ids: list[str]) -> set[str]:
    """A send: hold each event name shared until the transaction ends (see the module
    doc), and return which of ``event_ids`` are already stored.

    On PostgreSQL both are one statement. Its own snapshot predates the locks,
    which does not matter for the ids (a concurrent insert of the same id is
    caught by the primary key); the waiters are read by a later statement.
    """
    if connection.vendor != "postgresql":
        return set(Event.objects.filter(id__in=event_ids).values_list("id", flat=True))
    table = connection.ops.quote_name(Event._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM (SELECT pg_advisory_xact_lock_shared(%s, hashtext(n)) "
            "FROM unnest(%s::text[]) AS n ORDER BY n) AS locks), "
            f"ARRAY(SELECT id FROM {table} WHERE id = ANY(%s))",
            [LOCK_NAMESPACE, sorted(set(names)), event_ids],
        )
        row = cursor.fetchone()
    return set(row[1] if row else [])


@contextmanager
def registering(*names: str) -> Iterator[None]:
    """A transaction in which waits for these event names are checked against the events
    received so far, then registered (the names are held in order: no deadlock)."""
    with transaction.atomic():
        for name in sorted(set(names)):
            lock_event_name(name)
        yield


def events_since(
    name: str, path: str | None, value: Any, since: datetime, *, exclude: str | None = None
) -> list[Event]:
    """Events named ``name`` received at or after ``since`` whose ``path`` equals ``value``."""
    qs = Event.objects.filter(name=name, received_at__gte=since)
    if path is not None:
        lookup = "data__" + "__".join(path.split(".")[1:])
        qs = qs.filter(**{lookup: value})
    if exclude is not None:
        qs = qs.exclude(id=exclude)
    return list(qs.order_by("received_at", "id")[:1000])


def event_json(event: Event) -> dict[str, Any]:
    """How a received event is stored as the output of a wait."""
    return {"id": event.id, "name": event.name, "data": event.data, "ts": event.ts.isoformat()}


# -- suspending for a wait (under the run's lease) -----------------------------------


def _lock_held(run_id: Any, token: str) -> int | None:
    return (
        Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING)
        .select_for_update()
        .values_list("wake", flat=True)
        .first()
    )


def suspend_for_wait(
    run_id: Any,
    token: str,
    rec: StepRecord,
    *,
    exists: bool,
    waiter: dict[str, Any] | None = None,
    countdown: float | None = None,
    child: Run | None = None,
    child_event: dict[str, Any] | None = None,
    slots: bool = False,
) -> bool:
    """Store the waiting step and release the run as waiting for it, in one transaction.

    ``waiter``: the fields of a Waiter row (an event wait), kept if it exists.
    ``countdown``: also publish a wake-up after that many seconds (a short
    sleep). ``child``/``child_event``: the run to start (step.invoke) and its
    event, created here so that a replay never starts a second one.
    ``slots``: give back its concurrency slots while it waits. False when the
    worker no longer held the run (nothing is written).
    """
    now = clock.now()
    with transaction.atomic():
        wake = _lock_held(run_id, token)
        if wake is None:
            return False
        wake += 1
        if exists:
            Step.objects.filter(run_id=run_id, step_id=rec.step_id).update(
                wake_at=rec.wake_at, wait=rec.wait
            )
        else:
            Step.objects.create(
                run_id=run_id,
                step_id=rec.step_id,
                position=rec.position,
                kind=rec.kind,
                status=StepStatus.SCHEDULED,
                started_at=rec.started_at or now,
                wake_at=rec.wake_at,
                wait=rec.wait,
            )
        messages: list[dispatch.Message] = []
        if (
            waiter is not None
            and not Waiter.objects.filter(
                run_id=run_id, step_id=rec.step_id, kind=Waiter.WAIT
            ).exists()
        ):
            Waiter.objects.create(run_id=run_id, step_id=rec.step_id, **waiter)
        if child is not None and child_event is not None:
            if not Event.objects.filter(id=child_event["id"]).exists():
                Event.objects.create(source_run_id=run_id, **child_event)
                child.save(force_insert=True)
                messages.append(dispatch.execute_run(child.pk))
        Run.objects.filter(id=run_id).update(
            status=RunStatus.WAITING,
            wake=wake,
            waiting_for=rec.kind,
            wait_until=rec.wake_at,
            progress_at=now,
            join_group=None,
            join_pending=0,
            lease_owner="",
            lease_expires_at=None,
        )
        if countdown is not None:
            messages.append(dispatch.execute_run(run_id, wake=wake, countdown=countdown))
        after_commit(messages)
        if slots:
            from .admission import release_slots

            release_slots(run_id)
    return True


def register_cancel_waiters(run_id: Any, token: str, waiters: list[dict[str, Any]]) -> bool:
    """Store a run's cancel_on waiters (at its first invocation), under its lease."""
    with transaction.atomic():
        if _lock_held(run_id, token) is None:
            return False
        Waiter.objects.bulk_create([Waiter(run_id=run_id, **w) for w in waiters])
        Run.objects.filter(id=run_id).update(listening=True)
    return True


# -- ending a wait (the sweep, a send, a child run) ---------------------------------------


def _wake(run_id: Any, now: datetime) -> None:
    """The run's wait ended: clear it and publish the wake-up (after commit)."""
    row = (
        Run.objects.select_for_update()
        .filter(id=run_id, status=RunStatus.WAITING)
        .values_list("wake", flat=True)
        .first()
    )
    if row is None:
        return  # running (a duplicate message got there first) or finished: it will see the step
    Run.objects.filter(id=run_id).update(waiting_for="", wait_until=None, progress_at=now)
    after_commit([dispatch.execute_run(run_id, wake=row)])


def end_wait(
    run_id: Any,
    step_id: str,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    output_bytes: int = 0,
) -> bool:
    """Complete (or, with ``error``, fail) a waiting step and wake its run.

    Conditional on the step still waiting: of an event and a timeout (or two
    events) ending it at once, exactly one does. Returns whether this did.
    """
    now = clock.now()
    with transaction.atomic():
        # The run row first, as every writer of a run does, then the step.
        Run.objects.select_for_update().filter(id=run_id).values_list("id", flat=True).first()
        done = Step.objects.filter(
            run_id=run_id, step_id=step_id, status=StepStatus.SCHEDULED, kind__in=WAIT_KINDS
        ).update(
            status=StepStatus.FAILED if error else StepStatus.COMPLETED,
            output=output,
            output_bytes=output_bytes,
            error=error,
            ended_at=now,
        )
        if not done:
            return False
        Waiter.objects.filter(run_id=run_id, step_id=step_id).delete()
        _wake(run_id, now)
    return True


def poke(run_id: Any) -> bool:
    """Wake a run whose wait has an ``if_`` to call: the workflow checks the new events.

    The step is not ended here (the predicate is the workflow's code); the run
    is marked due so the sweep wakes it even if this message is lost.
    """
    now = clock.now()
    with transaction.atomic():
        wake = (
            Run.objects.select_for_update()
            .filter(id=run_id, status=RunStatus.WAITING, waiting_for=StepKind.EVENT)
            .values_list("wake", flat=True)
            .first()
        )
        if wake is None:
            return False
        Run.objects.filter(id=run_id).update(wait_until=now)
        after_commit([dispatch.execute_run(run_id, wake=wake)])
    return True


def due_runs(now: datetime, limit: int) -> list[tuple[Any, int]]:
    """Waiting runs whose wait is due: (id, wake-up number), earliest first."""
    rows = (
        Run.objects.filter(status=RunStatus.WAITING, wait_until__lte=now)
        .order_by("wait_until")
        .values_list("id", "wake")[:limit]
    )
    return list(rows)


def wake_due(run_id: Any, wake: int, now: datetime) -> bool:
    """End the run's due waits (a sleep is over, a wait timed out) and wake it.

    Conditional on the run still waiting with the wake-up number the sweep saw.
    """
    with transaction.atomic():
        found = (
            Run.objects.select_for_update()
            .filter(id=run_id, status=RunStatus.WAITING, wake=wake, wait_until__lte=now)
            .values_list("id", flat=True)
            .first()
        )
        if found is None:
            return False
        due = list(
            Step.objects.filter(
                run_id=run_id, status=StepStatus.SCHEDULED, kind__in=WAIT_KINDS, wake_at__lte=now
            ).values_list("step_id", "kind", "wait")
        )
        for step_id, kind, wait in due:
            error = None
            if kind == StepKind.INVOKE:
                child = (wait or {}).get("child")
                error = {
                    "type": "InvokeTimeoutError",
                    "message": f"the invoked run {child} did not finish in time; it goes on",
                    "traceback": "",
                }
            Step.objects.filter(run_id=run_id, step_id=step_id, status=StepStatus.SCHEDULED).update(
                status=StepStatus.FAILED if error else StepStatus.COMPLETED,
                output=None,
                error=error,
                ended_at=now,
            )
            Waiter.objects.filter(run_id=run_id, step_id=step_id).delete()
        Run.objects.filter(id=run_id).update(waiting_for="", wait_until=None, progress_at=now)
        after_commit([dispatch.execute_run(run_id, wake=wake)])
    return True


def matching_waiters(names: list[str], keys: set[str]) -> list[Waiter]:
    """Pending waiters for any of these event names and match keys: one indexed query."""
    if not names:
        return []
    return list(
        Waiter.objects.filter(event_name__in=names, match_key__in=sorted(keys)).order_by(
            "created_at", "id"
        )
    )


def drop_step_waiters(run_id: Any, step_id: str) -> None:
    Waiter.objects.filter(run_id=run_id, step_id=step_id).delete()


def drop_waiter(waiter_id: Any) -> None:
    Waiter.objects.filter(id=waiter_id).delete()


def drop_expired_waiters(now: datetime, limit: int = 1000) -> int:
    """Waiters past their expiry, or of runs that ended: delete them."""
    ids = list(Waiter.objects.filter(expires_at__lt=now).values_list("id", flat=True)[:limit])
    ids += list(
        Waiter.objects.exclude(run__status__in=ACTIVE_RUN_STATUSES).values_list("id", flat=True)[
            :limit
        ]
    )
    if not ids:
        return 0
    return Waiter.objects.filter(id__in=ids).delete()[0]


# -- invoked runs -------------------------------------------------------------------


def end_invoke(
    parent_id: Any,
    step_id: str,
    status: str,
    *,
    output: Any = None,
    output_bytes: int = 0,
    error: dict[str, Any] | None = None,
    child_id: Any = None,
) -> bool:
    """A run started by ``step.invoke`` ended: end the parent's step with its outcome."""
    if status == RunStatus.COMPLETED:
        return end_wait(parent_id, step_id, output=output, output_bytes=output_bytes)
    err = error or {}
    what = "was cancelled" if status == RunStatus.CANCELLED else "failed"
    return end_wait(
        parent_id,
        step_id,
        error={
            "type": "ChildRunFailed",
            "message": f"the invoked run {child_id} {what}: "
            f"{err.get('type', 'Error')}: {err.get('message', '')}",
            "traceback": str(err.get("traceback", "")),
        },
    )


def invoked_children(run_id: Any) -> list[Any]:
    """Active (or blocked) runs that this run started with step.invoke."""
    return list(
        Run.objects.filter(parent_id=run_id, status__in=(*ACTIVE_RUN_STATUSES, RunStatus.BLOCKED))
        .exclude(caller_step="")
        .values_list("id", flat=True)
    )


def caller_of(run_id: Any) -> tuple[Any, str] | None:
    row = Run.objects.filter(id=run_id).values_list("parent_id", "caller_step").first()
    if row is None or not row[1] or row[0] is None:
        return None
    return row[0], row[1]


def queued_longer_than(workflow_id: str, before: datetime, limit: int) -> list[Any]:
    return list(
        Run.objects.filter(workflow_id=workflow_id, status=RunStatus.QUEUED, created_at__lt=before)
        .filter(started_at__isnull=True)
        .values_list("id", flat=True)[:limit]
    )


def running_longer_than(workflow_id: str, before: datetime, limit: int) -> list[Any]:
    return list(
        Run.objects.filter(
            workflow_id=workflow_id, status__in=ACTIVE_RUN_STATUSES, started_at__lt=before
        ).values_list("id", flat=True)[:limit]
    )
