"""Sending events: check them, find the workflows they start, store them.

Both :func:`stepflows.send` and ``step.send_event`` come here, so that the
engine sends events without importing :mod:`stepflows.api`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import reprlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from pydantic import BaseModel, ValidationError

from .conf import get_settings
from .events import NAME_PATTERN, Event
from .exceptions import EventValidationError, InvalidEventError, OutputSerializationError
from .registry import Workflow, registry
from .serialization import to_json
from .store import runs as run_store
from .store import waits
from .store.events import insert_run, store_events

EventLike = Event | dict[str, Any]

logger = logging.getLogger("stepflows.sending")

# The width of the Event.id column.
MAX_EVENT_ID_LENGTH = 255

_ACCEPTS = "an event name, an Event, a dict with name and data, or a list of Events and dicts"


@dataclass
class Prepared:
    """An event checked and ready to store, with the workflows it starts."""

    id: str
    name: str
    data: Any
    ts: datetime
    workflows: list[Workflow]

    @property
    def workflow_ids(self) -> list[str]:
        return [wf.id for wf in self.workflows]


def as_events(
    event: Any, data: Any = None, id: str | None = None, ts: datetime | None = None
) -> list[Event]:
    """The events that ``send(event, data, id=id, ts=ts)`` means, as :class:`Event` objects.

    Raises :class:`InvalidEventError` for anything else than what ``send`` takes.
    """
    if isinstance(event, str):
        return [_build({"name": event, "data": {} if data is None else data, "id": id, "ts": ts})]
    if data is not None or id is not None:
        raise InvalidEventError(
            "send(name, data=..., id=...) takes data and id only with an event name; "
            "put them inside the Event objects instead"
        )
    if isinstance(event, Event | dict):
        items: list[Any] = [event]
    elif isinstance(event, Iterable) and not isinstance(event, bytes | bytearray | memoryview):
        items = list(event)
    else:
        raise InvalidEventError(
            f"send() takes {_ACCEPTS}; it got {type(event).__name__} {reprlib.repr(event)}"
        )
    return [e if isinstance(e, Event) else _build(e, i) for i, e in enumerate(items)]


def _build(fields: Any, index: int = 0) -> Event:
    if not isinstance(fields, dict):
        raise InvalidEventError(
            f"event #{index}: an event is an Event or a dict with name and data, not "
            f"{type(fields).__name__} {reprlib.repr(fields)}"
        )
    fields = {k: v for k, v in fields.items() if v is not None or k == "data"}
    try:
        return Event(**fields)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'event'}: {err['msg']}"
            for err in exc.errors(include_url=False)
        )
        raise InvalidEventError(
            f"event #{index} ({reprlib.repr(fields.get('name'))}): {problems}"
        ) from None


def prepare(event: Event, index: int) -> Prepared:
    """Check event number ``index`` of a send and find the workflows it starts.

    Raises :class:`InvalidEventError` (naming the event by index and name) for
    a bad name, id or data, and :class:`EventValidationError` when the data
    does not fit the schema of a workflow it would start.
    """
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
    if "\x00" in name:
        raise InvalidEventError(f"{where}: the event name contains the NUL character (U+0000)")
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidEventError(
            f"{where}: an event name starts with a letter or digit and uses only letters, "
            "digits and . _ - / : (like 'shop/order.created'), with no spaces or line breaks"
        )
    _check_id(event.id, where)
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
    probe = Event(name=name, data=data, id=event.id, ts=event.ts)
    workflows = registry.matching(probe)
    check_schemas(workflows, data, f"{where}: its data does not match", "Nothing was stored.")
    ts = event.ts if timezone.is_aware(event.ts) else timezone.make_aware(event.ts)
    return Prepared(event.id or str(uuid.uuid4()), name, data, ts, workflows)


def _check_id(event_id: Any, where: str) -> None:
    if event_id is None:
        return
    if not isinstance(event_id, str) or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise InvalidEventError(
            f"{where}: an event id is a string of 1 to {MAX_EVENT_ID_LENGTH} characters"
        )
    # Either would reach the database and fail there: PostgreSQL text cannot
    # hold NUL, and a lone surrogate is not encodable text on any backend.
    if "\x00" in event_id:
        raise InvalidEventError(
            f"{where}: the event id {event_id!r} contains the NUL character (U+0000); "
            "remove it, or derive the id from a hash of the value"
        )
    try:
        event_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            f"{where}: the event id {event_id!r} contains a lone surrogate "
            f"(U+{ord(event_id[exc.start]):04X}), which is not valid Unicode"
        ) from None


def check_schemas(workflows: list[Workflow], data: Any, what: str, outcome: str) -> None:
    """Validate event data against each workflow's schema; the first failure is raised.

    The :class:`EventValidationError` says ``what`` (where the data came from)
    and ``outcome`` (what was, or was not, done about it).
    """
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


def send_events(events: list[Event], source_run_id: Any = None) -> list[str]:
    """Check and store ``events``, starting the runs they trigger; returns the event ids.

    Every event is checked before anything is stored, so one bad event stores
    none of them. ``source_run_id`` is the run sending them, if any.
    """
    prepared = [prepare(e, i) for i, e in enumerate(events)]
    return store_events(prepared, source_run_id, on_stored=wake_waiters, admit=admit)


def _user(workflow: Workflow, what: str, fn: Any, *args: Any) -> Any:
    """Call a workflow's own function (a key, a priority) at send, with a clear error."""
    try:
        return fn(*args)
    except Exception as exc:
        raise InvalidEventError(
            f"workflow {workflow.id!r}: its {what} raised {type(exc).__name__}: {exc}. "
            "Nothing was stored."
        ) from exc


def admit(e: Prepared, run: Any) -> Any:
    """Flow control at send: the run as created (perhaps held or skipped), or None.

    In order: an idempotency key already seen starts nothing; over a rate
    limit the run is skipped; a singleton skips it (or cancels the active
    one); a debounce or a batch folds the event into its pending run; a
    throttle holds it until its turn. Runs in the transaction storing the event.
    """
    workflow = registry.get(run.workflow_id)
    flow = workflow.flow
    if not flow.at_send:
        return run
    decided = _decide(workflow, e, run)
    if decided is not None:
        # Stored now, not with the other runs of this send: a later event of the
        # same send must find it (a debounce or a batch collecting into it).
        insert_run(decided)
    return decided


def _decide(workflow: Workflow, e: Prepared, run: Any) -> Any:
    from .flow import key_of, seconds
    from .models import WaitKind
    from .store import admission

    flow = workflow.flow
    event = Event(name=e.name, data=e.data, id=e.id, ts=e.ts)

    def key(arg: Any, what: str) -> str:
        return str(_user(workflow, what, key_of, arg, event))[:255]

    now = waits.database_now()
    if flow.idempotency is not None:
        k = key(flow.idempotency, "idempotency key")
        if admission.idempotent(workflow.id, k, period=seconds(flow.idempotency_period), now=now):
            return None
    if flow.rate_limit is not None:
        r = flow.rate_limit
        k = key(r.key, "rate_limit key")
        if not admission.rate_allows(
            workflow.id, k, limit=r.limit, period=seconds(r.period), now=now
        ):
            admission.skip(
                run,
                f"rate limit: over {r.limit} runs per {seconds(r.period):g} s for key {k!r}",
                now,
            )
            return run
    if flow.singleton is not None:
        k = key(flow.singleton.key, "singleton key")
        active = admission.singleton_active(workflow.id, k)
        if active is not None and flow.singleton.mode == "skip":
            admission.skip(run, f"singleton: run {active} is still active for key {k!r}", now)
            return run
        if active is not None:
            run_store.cancel_run(
                active, reason=f"replaced by run {run.pk} for key {k!r} (Singleton mode 'cancel')"
            )
        admission.set_singleton(workflow.id, k, run.pk)
    if flow.priority is not None:
        ahead = float(_user(workflow, "priority function", flow.priority.run, event))
        run.priority_at = now - timedelta(seconds=ahead)
    if flow.debounce is not None:
        d = flow.debounce
        k = key(d.key, "debounce key")
        timeout = None if d.timeout is None else seconds(d.timeout)
        if admission.debounce(
            workflow.id, k, run, period=seconds(d.period), timeout=timeout, now=now
        ):
            return None
    elif flow.batch is not None:
        b = flow.batch
        k = key(b.key, "batch key")
        if admission.batch(
            workflow.id, k, run, max_size=b.max_size, timeout=seconds(b.timeout), now=now
        ):
            return None
    if flow.throttle is not None and not run.waiting_for:
        t = flow.throttle
        k = key(t.key, "throttle key")
        start = admission.throttle_start(
            workflow.id, k, limit=t.limit, period=seconds(t.period), burst=t.burst, now=now
        )
        if start > now:
            admission.hold_until(run, WaitKind.THROTTLE, k, start)
    return run


def _as_json(e: Prepared) -> tuple[dict[str, Any], int]:
    out = {"id": e.id, "name": e.name, "data": e.data, "ts": e.ts.isoformat()}
    return out, len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode())


def wake_waiters(fresh: Sequence[Prepared]) -> None:
    """End the waits (and cancel the runs) that these new events match.

    One indexed query finds every waiter for these events' names and match
    keys. A wait without ``if_`` is ended here with the first matching event;
    a wait with ``if_`` only wakes its run, whose code calls the predicate; a
    ``cancel_on`` match cancels the run (after its own ``if_``, if any).
    """
    keyed = [(e, waits.event_keys(e.data)) for e in fresh]
    all_keys: set[str] = set().union(*(keys for _, keys in keyed))
    hits = waits.matching_waiters(sorted({e.name for e in fresh}), all_keys)
    now = timezone.now()
    for waiter in hits:
        if waiter.expires_at is not None and waiter.expires_at < now:
            continue
        for event, keys in keyed:
            if event.name != waiter.event_name or waiter.match_key not in keys:
                continue
            if waiter.kind == waiter.CANCEL:
                _cancel_on(waiter, event)
            elif waiter.has_filter:
                waits.poke(waiter.run_id)
            else:
                output, size = _as_json(event)
                waits.end_wait(waiter.run_id, waiter.step_id, output=output, output_bytes=size)
            break  # one event per waiter; a later one finds it gone (or poked already)


def _cancel_on(waiter: Any, event: Prepared) -> None:
    from .models import Run

    run = Run.objects.select_related("event").filter(id=waiter.run_id).first()
    if run is None or run.is_finished:
        waits.drop_waiter(waiter.id)
        return
    try:
        spec = registry.get(run.workflow_id).cancel_on[waiter.cancel_index]
        if spec.if_ is not None:
            trigger = Event(
                name=run.event.name, data=run.event.data, id=run.event.id, ts=run.event.ts
            )
            candidate = Event(name=event.name, data=event.data, id=event.id, ts=event.ts)
            if not spec.if_(trigger, candidate):
                return
    except Exception:
        logger.exception(
            "workflow %r, run %s: its cancel_on[%s] filter failed for event %s; not cancelled",
            run.workflow_id,
            run.id,
            waiter.cancel_index,
            event.id,
        )
        return
    run_store.cancel_run(run.id, reason=f"cancelled by event {event.name} ({event.id})")


def derived_event_id(run_id: Any, step_id: str, index: int) -> str:
    """The id of the ``index``-th event sent without an id by step ``step_id`` of a run.

    Stable across attempts and replays of the step, so it works as the
    event's idempotency key. A step id too long for the 255-character event id
    is replaced by its hash.
    """
    event_id = f"{run_id}:{step_id}:{index}"
    if len(event_id) > MAX_EVENT_ID_LENGTH:
        digest = hashlib.sha256(step_id.encode()).hexdigest()[:32]
        event_id = f"{run_id}:{digest}:{index}"
    return event_id


def send_from_run(events: Any, *, run_id: Any, step_id: str) -> list[str]:
    """Send events from step ``step_id`` of a run (what ``step.send_event`` does).

    Events without an id get :func:`derived_event_id`; the events record the
    run as ``source_run`` and the runs they start record it as ``parent``.
    """
    items = as_events(events)
    numbered = [
        e if e.id is not None else e.model_copy(update={"id": derived_event_id(run_id, step_id, i)})
        for i, e in enumerate(items)
    ]
    return send_events(numbered, source_run_id=run_id)
