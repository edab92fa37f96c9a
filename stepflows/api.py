"""The verbs of stepflows: send events, retry, rerun, cancel, replay, fork.

Admin actions, management commands and user code all call these; none of
them writes rows directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction

from . import clock
from .events import Event
from .exceptions import RunStateError
from .models import RETRYABLE_RUN_STATUSES, Intervention, Run
from .models import Event as EventRow
from .registry import registry
from .sending import EventLike, as_events, check_schemas, send_events
from .store import audit
from .store import fork as fork_store
from .store import runs as run_store
from .store.audit import Actor
from .store.events import create_runs
from .store.fork import UnknownStepError

__all__ = [
    "UnknownStepError",
    "asend",
    "cancel_run",
    "fork_run",
    "replay_event",
    "replay_events",
    "rerun",
    "retry_run",
    "send",
]


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
#
# Every verb takes who acts and why: ``by`` is the label the audit trail shows
# (an admin user's name, "command line", or "code", the default), ``user`` the
# Django user if there is one (``by`` then defaults to their username), and
# ``reason`` an optional note. Each records an Intervention in the transaction
# that makes its change.


def _run(run: Run | Any) -> Run:
    return run if isinstance(run, Run) else Run.objects.get(pk=run)


def retry_run(run: Run | Any, *, by: str = "code", user: Any = None, reason: str = "") -> Run:
    """Resume a failed or blocked run where it stopped, on the code deployed now.

    Steps that succeeded keep their outputs; steps that failed for good get a
    fresh retry budget and run again. A blocked run (its code no longer
    matched its recorded steps) replays them on the current code: with a fix
    deployed it goes on, without one it is blocked again. Raises
    :class:`RunStateError` when the run has neither failed nor been blocked.
    """
    actor = Actor.of(by, user, reason)
    run_id = _run(run).pk
    with transaction.atomic():
        locked = run_store.retry_failed_run(run_id)
        if locked is None:
            raise Run.DoesNotExist(f"no run with id {run_id}")
        if locked.status not in RETRYABLE_RUN_STATUSES:
            raise RunStateError(
                f"run {run_id} of workflow {locked.workflow_id!r} is {locked.status}; "
                "only failed runs can be retried, and blocked ones once a fix is deployed "
                "(rerun it to start again from the top)"
            )
        audit.record(Intervention.Action.RETRY, actor, [audit.Entry(run_id)])
    return Run.objects.get(pk=run_id)


def rerun(run: Run | Any, *, by: str = "code", user: Any = None, reason: str = "") -> Run:
    """Start a new run of the same workflow for the same event, from the top."""
    actor = Actor.of(by, user, reason)
    original = _run(run)
    registry.get(original.workflow_id)
    with transaction.atomic():
        new = Run(
            workflow_id=original.workflow_id,
            event_id=original.event_id,
            parent_id=original.parent_id,
        )
        create_runs([new])
        audit.record(Intervention.Action.RERUN, actor, [audit.Entry(original.pk, new.pk)])
    return new


def fork_run(
    run: Run | Any, *, from_step: str, by: str = "code", user: Any = None, reason: str = ""
) -> Run:
    """Start a new run of the same workflow and event that executes from ``from_step``.

    The new run keeps copies of the original's completed steps before
    ``from_step`` (their code does not run again: replay returns their
    outputs) and executes that step and everything after it. A step inside a
    ``parallel`` group forks from the start of its group: the whole group runs
    again. The new run's ``forked_from`` and ``fork_step`` link it to the
    original, which is left as it is. Raises :class:`RunStateError` while the
    original is queued, running or waiting (cancel it first), and
    :class:`~stepflows.store.fork.UnknownStepError` (a :class:`StepflowsError`)
    when it has no step ``from_step``, listing the steps it has.
    """
    actor = Actor.of(by, user, reason)
    original = _run(run)
    registry.get(original.workflow_id)
    with transaction.atomic():
        new = fork_store.fork_run(original.pk, from_step)
        audit.record(
            Intervention.Action.FORK,
            actor,
            [audit.Entry(original.pk, new.pk, {"from_step": from_step})],
        )
    return new


def cancel_run(
    run: Run | Any,
    *,
    reason: str = "",
    children: bool = True,
    by: str = "code",
    user: Any = None,
) -> bool:
    """Cancel a queued, running, waiting or blocked run; False when it had already finished.

    A running run stops before its next step: the worker executing it finds its
    lease gone at its next write or heartbeat. A step already running finishes,
    and its outcome is recorded on the step, marked ``after_cancel``. A sleeping
    or waiting run is cancelled at once, its waits dropped. Runs it started with
    ``step.invoke`` are cancelled too, unless ``children`` is False. The run's
    error says who cancelled it, when, and why:
    ``cancelled by alice at 2026-11-27 19:04:05 UTC: <reason>``.
    """
    actor = Actor.of(by, user, reason)
    run_id = _run(run).pk
    at = clock.now().astimezone(UTC)
    message = f"cancelled by {actor.by} at {at:%Y-%m-%d %H:%M:%S} UTC"
    if actor.reason:
        message += f": {actor.reason}"
    with transaction.atomic():
        done = run_store.cancel_run(run_id, reason=message, children=children)
        if done:
            audit.record(Intervention.Action.CANCEL, actor, [audit.Entry(run_id)])
    return done


def replay_event(
    event: EventRow | str, *, by: str = "code", user: Any = None, reason: str = ""
) -> list[Run]:
    """Start fresh runs of an event for the workflows it triggers now.

    The new runs belong to the same event; earlier runs are left untouched.
    Each new run's audit trail says who replayed the event.
    """
    return replay_events([event], by=by, user=user, reason=reason)


def replay_events(
    events: Iterable[EventRow | str], *, by: str = "code", user: Any = None, reason: str = ""
) -> list[Run]:
    """:func:`replay_event` for many events, in one transaction."""
    actor = Actor.of(by, user, reason)
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
        # The event is what was acted on: each new run carries the entry.
        audit.record(
            Intervention.Action.REPLAY,
            actor,
            [audit.Entry(r.pk, r.pk, {"event": r.event_id}) for r in runs],
        )
    return runs
