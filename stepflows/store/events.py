"""Storing events and the runs they start; the runs are published after commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from django.db import IntegrityError, transaction

from .. import clock, dispatch, tracing
from ..models import Event, Run
from ..registry import registry
from .waits import share_names_and_find

# The event an on_failure handler run is started with.
FAILED_EVENT = "stepflows/run.failed"


class NewEvent(Protocol):
    """An event checked and ready to store, with the workflows it starts."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def data(self) -> Any: ...
    @property
    def ts(self) -> datetime: ...
    @property
    def workflow_ids(self) -> list[str]: ...


Stored = Callable[[Sequence[Any]], None]
Admit = Callable[[Any, Run], Run | None]


def store_events(
    events: Sequence[NewEvent],
    source_run_id: Any = None,
    on_stored: Stored | None = None,
    admit: Admit | None = None,
) -> list[str]:
    """Insert the events and one queued run per workflow each starts; returns the event ids.

    An event whose id is already stored (or repeated in ``events``) starts
    nothing new. ``source_run_id`` is the run that sent them: the events'
    ``source_run`` and the runs' ``parent``. The runs are published when the
    current transaction commits, so events sent in a transaction that rolls
    back start nothing. ``on_stored(fresh)`` runs in the same transaction
    with the events that were new (it wakes the runs waiting for them).
    ``admit(event, run)`` applies flow control to each new run, in the same
    transaction: it returns the run (perhaps held or skipped) or None.
    """
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _insert(events, source_run_id, on_stored, admit)
        except IntegrityError:
            # A concurrent sender stored the same event id first; the second
            # pass finds it and starts nothing new.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _insert(
    events: Sequence[NewEvent],
    source_run_id: Any,
    on_stored: Stored | None,
    admit: Admit | None = None,
) -> list[str]:
    # Serialized with waits being registered for these names (see store.waits),
    # before the waiters are read.
    existing = share_names_and_find([e.name for e in events], [e.id for e in events])
    fresh: list[NewEvent] = []
    for e in events:
        if e.id not in existing:
            fresh.append(e)
            existing.add(e.id)
    trace = tracing.traceparent()  # the sender's span: the runs' first invocations are its
    Event.objects.bulk_create(
        [
            Event(
                id=e.id, name=e.name, data=e.data, ts=e.ts, source_run_id=source_run_id, trace=trace
            )
            for e in fresh
        ]
    )
    runs = [
        (e, Run(workflow_id=workflow_id, event_id=e.id, parent_id=source_run_id))
        for e in fresh
        for workflow_id in e.workflow_ids
    ]
    if admit is None:
        create_runs([run for _, run in runs])
    else:
        create_runs([admitted for e, run in runs if (admitted := admit(e, run)) is not None])
    if on_stored is not None and fresh:
        on_stored(fresh)
    return [e.id for e in events]


def stamp_version(run: Run) -> Run:
    """Record on a new run the version its workflow's code declares (``Run.version``)."""
    if not run.version:
        workflow = registry.find(run.workflow_id)
        run.version = (workflow.version if workflow is not None else None) or ""
    return run


def insert_run(run: Run) -> None:
    """Store one run now (flow control decided on it); ``create_runs`` publishes it."""
    stamp_version(run).save(force_insert=True)


def create_runs(runs: Sequence[Run]) -> None:
    """Insert unsaved ``runs`` and publish an invocation of each after commit.

    Runs that flow control holds (``waiting_for`` set) or skipped are stored
    but not published: the sweep or a freed slot starts them.
    """
    if not runs:
        return
    # No savepoint of its own: a caller's transaction already makes rows and
    # publish all-or-nothing, and a savepoint would cost each send a round trip.
    with transaction.atomic(savepoint=False):
        # A run flow control decided on is stored already (see sending.admit).
        Run.objects.bulk_create([stamp_version(r) for r in runs if r._state.adding])
        messages = [
            dispatch.execute_run(r.pk) for r in runs if r.status == "queued" and not r.waiting_for
        ]
        messages += _throttled_soon(runs)
        if not messages:
            return
        transaction.on_commit(lambda: dispatch.publish(messages), robust=True)


# A throttled run due within this many seconds also gets a countdown message, so
# it starts on time rather than at the next sweep (which starts it otherwise).
THROTTLE_COUNTDOWN = 60.0


def _throttled_soon(runs: Sequence[Run]) -> list[dispatch.Message]:
    now = clock.now()
    messages = []
    for r in runs:
        if r.waiting_for == "throttle" and r.wait_until is not None:
            wait = (r.wait_until - now).total_seconds()
            if wait <= THROTTLE_COUNTDOWN:
                messages.append(dispatch.execute_run(r.pk, countdown=max(wait, 0.0)))
    return messages


def start_failure_handler(
    failed_run_id: Any, handler_id: str, data: dict[str, Any], *, attempt: int
) -> None:
    """Start the ``on_failure`` handler run of a failed run, in the caller's transaction.

    Its event, ``stepflows/run.failed``, has an id derived from the run and
    how many times staff resumed it, so each failure starts one handler run.
    """
    event_id = f"{failed_run_id}:failed:{attempt}"
    with transaction.atomic(savepoint=False):
        if Event.objects.filter(id=event_id).exists():
            return
        Event.objects.create(
            id=event_id,
            name=FAILED_EVENT,
            data=data,
            source_run_id=failed_run_id,
            trace=tracing.traceparent(),
        )
        create_runs([Run(workflow_id=handler_id, event_id=event_id, parent_id=failed_run_id)])
