"""The verbs of stepflows: send events, retry, rerun, cancel, replay.

Admin actions, management commands and user code all call these; none of
them writes rows directly.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from pydantic import BaseModel, ValidationError

from . import dispatch
from .conf import get_settings
from .engine.serialization import to_json
from .events import NAME_PATTERN, Event
from .exceptions import (
    EventValidationError,
    InvalidEventError,
    OutputSerializationError,
    RunStateError,
)
from .models import ACTIVE_RUN_STATUSES, Run, RunStatus, Step, StepStatus
from .models import Event as EventRow
from .registry import Workflow, registry

EventLike = Event | dict[str, Any]


@dataclass
class _Prepared:
    id: str
    name: str
    data: Any
    ts: datetime
    workflows: list[Workflow]


def _as_events(event: Any, data: Any, id: str | None, ts: datetime | None) -> list[Event]:
    if isinstance(event, str):
        return [_build({"name": event, "data": {} if data is None else data, "id": id, "ts": ts})]
    if data is not None or id is not None:
        raise InvalidEventError(
            "send(name, data=..., id=...) takes data and id only with an event name; "
            "put them inside the Event objects instead"
        )
    items = [event] if isinstance(event, Event | dict) else list(event)
    return [e if isinstance(e, Event) else _build(e) for e in items]


def _build(fields: Any) -> Event:
    if not isinstance(fields, dict):
        raise InvalidEventError(
            f"an event is an Event or a dict with name and data, not {fields!r}"
        )
    fields = {k: v for k, v in fields.items() if v is not None or k == "data"}
    try:
        return Event(**fields)
    except ValidationError as exc:
        raise InvalidEventError(f"invalid event {fields.get('name')!r}: {exc}") from None


def _prepare(event: Event, index: int) -> _Prepared:
    conf = get_settings()
    name = event.name
    where = f"event #{index} ({name!r})" if isinstance(name, str) else f"event #{index}"
    if not isinstance(name, str) or not name:
        raise InvalidEventError(f"{where}: the event name must be a non-empty string")
    if len(name) > conf.MAX_EVENT_NAME_LENGTH:
        raise InvalidEventError(
            f"event #{index}: the name is {len(name)} characters long; the limit is "
            f"STEPFLOWS['MAX_EVENT_NAME_LENGTH'] = {conf.MAX_EVENT_NAME_LENGTH}"
        )
    if not NAME_PATTERN.match(name):
        raise InvalidEventError(
            f"{where}: an event name starts with a letter or digit and uses only letters, "
            "digits and . _ - / : (like 'shop/order.created')"
        )
    raw = event.data.model_dump(mode="json") if isinstance(event.data, BaseModel) else event.data
    if not isinstance(raw, dict):
        raise InvalidEventError(
            f"{where}: event data must be a JSON object (a dict), not {type(raw).__name__}"
        )
    try:
        data, size = to_json(raw, where=f"{where}: its data")
    except OutputSerializationError as exc:
        raise InvalidEventError(str(exc).replace("returned a value", "holds a value")) from None
    if size > conf.MAX_EVENT_BYTES:
        raise InvalidEventError(
            f"{where}: its data is {size} bytes as JSON; the limit is "
            f"STEPFLOWS['MAX_EVENT_BYTES'] = {conf.MAX_EVENT_BYTES}. Send a reference "
            "(an id, a URL) instead of the content."
        )
    if event.id is not None and (not isinstance(event.id, str) or not 0 < len(event.id) <= 255):
        raise InvalidEventError(f"{where}: an event id is a string of 1 to 255 characters")
    probe = Event(name=name, data=data, id=event.id, ts=event.ts)
    workflows = registry.matching(probe)
    _check_schemas(workflows, data, f"{where}: its data does not match", "Nothing was stored.")
    ts = event.ts if timezone.is_aware(event.ts) else timezone.make_aware(event.ts)
    return _Prepared(event.id or str(uuid.uuid4()), name, data, ts, workflows)


def _check_schemas(workflows: list[Workflow], data: Any, what: str, outcome: str) -> None:
    """Validate event data against each workflow's schema; the first failure is raised."""
    for wf in workflows:
        if wf.schema is None:
            continue
        try:
            wf.schema.model_validate(data)
        except ValidationError as exc:
            raise EventValidationError(
                f"{what} the schema {wf.schema.__name__} of workflow {wf.id!r}: {exc}. {outcome}",
                workflow_id=wf.id,
                errors=[dict(e) for e in exc.errors(include_url=False)],
            ) from None


def _store(prepared: list[_Prepared], source_run_id: Any) -> list[str]:
    existing = set(
        EventRow.objects.filter(id__in=[p.id for p in prepared]).values_list("id", flat=True)
    )
    fresh: list[_Prepared] = []
    seen: set[str] = set()
    for p in prepared:
        if p.id not in existing and p.id not in seen:
            fresh.append(p)
            seen.add(p.id)
    EventRow.objects.bulk_create(
        [
            EventRow(id=p.id, name=p.name, data=p.data, ts=p.ts, source_run_id=source_run_id)
            for p in fresh
        ]
    )
    runs = [
        Run(workflow_id=wf.id, event_id=p.id, parent_id=source_run_id)
        for p in fresh
        for wf in p.workflows
    ]
    Run.objects.bulk_create(runs)
    run_ids = [r.id for r in runs]
    if run_ids:
        transaction.on_commit(lambda: _dispatch_all(run_ids), robust=True)
    return [p.id for p in prepared]


def _dispatch_all(run_ids: list[Any]) -> None:
    for run_id in run_ids:
        dispatch.execute_run(run_id)


def _send(events: list[Event], source_run_id: Any = None) -> list[str]:
    prepared = [_prepare(e, i) for i, e in enumerate(events)]
    for attempt in range(2):
        try:
            with transaction.atomic():
                return _store(prepared, source_run_id)
        except IntegrityError:
            # A concurrent sender stored the same event id first; the second
            # pass finds it and starts nothing new.
            if attempt:
                raise
    raise AssertionError("unreachable")


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
    return _send(_as_events(event, data, id, ts))


async def asend(
    event: str | EventLike | Iterable[EventLike],
    data: Any = None,
    *,
    id: str | None = None,
    ts: datetime | None = None,
) -> list[str]:
    """Async :func:`send`."""
    return await sync_to_async(send)(event, data, id=id, ts=ts)


def derived_event_id(run_id: Any, step_id: str, index: int) -> str:
    """The id of the ``index``-th event sent without an id by step ``step_id`` of a run.

    Stable across attempts and replays of the step, so it works as the
    event's idempotency key. A step id too long for the 255-character event id
    is replaced by its hash.
    """
    event_id = f"{run_id}:{step_id}:{index}"
    if len(event_id) > 255:
        digest = hashlib.sha256(step_id.encode()).hexdigest()[:32]
        event_id = f"{run_id}:{digest}:{index}"
    return event_id


def send_from_run(events: Any, *, run_id: Any, step_id: str) -> list[str]:
    """Send events from step ``step_id`` of a run (what ``step.send_event`` does).

    Events without an id get :func:`derived_event_id`; the events record the
    run as ``source_run`` and the runs they start record it as ``parent``.
    """
    items = _as_events(events, None, None, None)
    numbered = [
        e if e.id is not None else e.model_copy(update={"id": derived_event_id(run_id, step_id, i)})
        for i, e in enumerate(items)
    ]
    return _send(numbered, source_run_id=run_id)


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
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run_id)
        if locked.status != RunStatus.FAILED:
            raise RunStateError(
                f"run {run_id} of workflow {locked.workflow_id!r} is {locked.status}; "
                "only failed runs can be retried (rerun it to start again from the top)"
            )
        Step.objects.filter(run_id=run_id, status=StepStatus.FAILED).update(
            status=StepStatus.SCHEDULED,
            error=None,
            retry_at=None,
            ended_at=None,
            attempts_base=F("attempt_count"),
        )
        Run.objects.filter(pk=run_id).update(
            status=RunStatus.QUEUED,
            error=None,
            output=None,
            ended_at=None,
            attempts=0,
            lease_owner="",
            lease_expires_at=None,
            resumes=F("resumes") + 1,
            recoveries=0,
            progress_at=timezone.now(),
        )
        transaction.on_commit(lambda: dispatch.execute_run(run_id), robust=True)
    return Run.objects.get(pk=run_id)


def rerun(run: Run | Any) -> Run:
    """Start a new run of the same workflow for the same event, from the top."""
    original = _run(run)
    registry.get(original.workflow_id)
    with transaction.atomic():
        new = Run.objects.create(
            workflow_id=original.workflow_id,
            event_id=original.event_id,
            parent_id=original.parent_id,
        )
        transaction.on_commit(lambda: dispatch.execute_run(new.pk), robust=True)
    return new


def cancel_run(run: Run | Any, *, reason: str = "cancelled") -> bool:
    """Cancel a queued, running or waiting run; False when it had already finished.

    A running run stops before its next step; a step already running finishes.
    """
    run_id = _run(run).pk
    return bool(
        Run.objects.filter(pk=run_id, status__in=ACTIVE_RUN_STATUSES).update(
            status=RunStatus.CANCELLED,
            ended_at=timezone.now(),
            error={"type": "Cancelled", "message": reason, "traceback": ""},
            lease_owner="",
            lease_expires_at=None,
        )
    )


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
        _check_schemas(
            workflows,
            row.data,
            f"event {row.id} ({row.name!r}) no longer matches",
            "Nothing was started.",
        )
        for wf in workflows:
            runs.append(Run(workflow_id=wf.id, event_id=row.id, parent_id=row.source_run_id))
    with transaction.atomic():
        Run.objects.bulk_create(runs)
        run_ids = [r.pk for r in runs]
        transaction.on_commit(lambda: _dispatch_all(run_ids), robust=True)
    return runs
