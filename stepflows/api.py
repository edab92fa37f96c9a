"""The verbs of stepflows: send events, retry, rerun, cancel, replay.

Admin actions, management commands and user code all call these; none of
them writes rows directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction

from .events import Event
from .exceptions import RunStateError
from .models import Event as EventRow
from .models import Run, RunStatus
from .registry import registry
from .sending import EventLike, as_events, check_schemas, send_events
from .store import runs as run_store
from .store.events import create_runs


def send(
    event: str | EventLike | Iterable[EventLike],
    data: Any = None,
    *,
    id: str | None = None,
    ts: datetime | None = None,
) -> list[str]:
    """Send events; every workflow they trigger starts a run. Returns the event ids.

    ``send("shop/order.created", data={...})`` or ``send([Event(...), ...])``.
    Events are stored, and runs started, when the current transaction commits:
    an event sent in a transaction that rolls back starts nothing. An event
    whose ``id`` was already received starts nothing new. Invalid input raises
    :class:`InvalidEventError` (or :class:`EventValidationError` for a
    workflow's schema) and stores nothing.
    """
    return send_events(as_events(event, data, id, ts))


async def asend(
    event: str | EventLike | Iterable[EventLike],
    data: Any = None,
    *,
    id: str | None = None,
    ts: datetime | None = None,
) -> list[str]:
    """Async :func:`send`."""
    return await sync_to_async(send)(event, data, id=id, ts=ts)


# -- managing runs -------------------------------------------------------------------


def _run(run: Run | Any) -> Run:
    return run if isinstance(run, Run) else Run.objects.get(pk=run)


def retry_run(run: Run | Any) -> Run:
    """Resume a failed run where it failed.

    Steps that succeeded keep their outputs; steps that failed for good get a
    fresh retry budget and run again. Raises :class:`RunStateError` when the
    run has not failed.
    """
    run_id = _run(run).pk
    locked = run_store.retry_failed_run(run_id)
    if locked is None:
        raise Run.DoesNotExist(f"no run with id {run_id}")
    if locked.status != RunStatus.FAILED:
        raise RunStateError(
            f"run {run_id} of workflow {locked.workflow_id!r} is {locked.status}; "
            "only failed runs can be retried (rerun it to start again from the top)"
        )
    return Run.objects.get(pk=run_id)


def rerun(run: Run | Any) -> Run:
    """Start a new run of the same workflow for the same event, from the top."""
    original = _run(run)
    registry.get(original.workflow_id)
    with transaction.atomic():
        new = Run(
            workflow_id=original.workflow_id,
            event_id=original.event_id,
            parent_id=original.parent_id,
        )
        create_runs([new])
    return new


def cancel_run(run: Run | Any, *, reason: str = "cancelled", children: bool = True) -> bool:
    """Cancel a queued, running or waiting run; False when it had already finished.

    A running run stops before its next step: the worker executing it finds its
    lease gone at its next write or heartbeat. A step already running finishes,
    and its outcome is not recorded. A sleeping or waiting run is cancelled at
    once, its waits dropped. Runs it started with ``step.invoke`` are cancelled
    too, unless ``children`` is False.
    """
    return run_store.cancel_run(_run(run).pk, reason=reason, children=children)


def replay_event(event: EventRow | str) -> list[Run]:
    """Start fresh runs of an event for the workflows it triggers now.

    The new runs belong to the same event; earlier runs are left untouched.
    """
    return replay_events([event])


def replay_events(events: Iterable[EventRow | str]) -> list[Run]:
    """:func:`replay_event` for many events, in one transaction."""
    items = list(events)
    wanted = [e for e in items if not isinstance(e, EventRow)]
    found = EventRow.objects.in_bulk([str(e) for e in wanted]) if wanted else {}
    missing = [str(e) for e in wanted if str(e) not in found]
    if missing:
        raise EventRow.DoesNotExist(f"no event with id {', '.join(map(repr, missing[:10]))}")
    rows = [e if isinstance(e, EventRow) else found[str(e)] for e in items]
    runs: list[Run] = []
    for row in rows:
        probe = Event(name=row.name, data=row.data, id=row.id, ts=row.ts)
        workflows = registry.matching(probe)
        check_schemas(
            workflows,
            row.data,
            f"event {row.id} ({row.name!r}) no longer matches",
            "Nothing was started.",
        )
        for wf in workflows:
            runs.append(Run(workflow_id=wf.id, event_id=row.id, parent_id=row.source_run_id))
    with transaction.atomic():
        create_runs(runs)
    return runs
