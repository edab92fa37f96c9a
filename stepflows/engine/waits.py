"""Durable waits in a workflow: ``step.sleep``, ``step.wait_for_event``, ``step.invoke``,
``cancel_on``; and the sweep that wakes runs whose wait is due.

A wait is a step of its own kind. The first time the workflow reaches it, the
step is stored as ``scheduled`` with what it waits for, and the run is
released as waiting (:func:`stepflows.store.waits.suspend_for_wait`): no
worker holds it, nothing sits in the broker (except a countdown message for a
short sleep). Whoever ends the wait completes the step and wakes the run; the
workflow's next invocation finds the step finished and returns its outcome,
like any memoized step. So the due time, the matched event and the child run
are decided once and never recomputed on a replay.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from pydantic import BaseModel

from ..events import Event
from ..exceptions import (
    ConfigurationError,
    LimitExceededError,
    NestedStepError,
    StepUsageError,
    WorkflowNotFoundError,
)
from ..models import Event as EventRow
from ..models import Run, RunStatus, StepKind, StepStatus, Waiter
from ..registry import Workflow, check_match_path, registry, seconds_of
from ..serialization import restore, return_type, to_json
from ..store import runs as run_store
from ..store import waits as store
from ..store.fence import LeaseLost
from ..store.records import StepRecord
from .calls import current_step
from .control import Suspend
from .ids import mismatch

if TYPE_CHECKING:
    from .host import Host as Invocation

logger = logging.getLogger("stepflows.engine")

SHORT_SLEEP = 60.0
"""A sleep this short (seconds) also gets a countdown message, so it wakes on time;
a longer one is woken by the sweep (never parked in the broker)."""

MAX_WAIT = 10 * 365 * 24 * 3600.0
"""The longest sleep or wait timeout: ten years."""

# The event a step.invoke starts its child run with.
INVOKED_EVENT = "stepflows/invoked"


# -- helpers ----------------------------------------------------------------------------


def _seconds(inv: Invocation, step_id: Any, value: Any, what: str) -> float:
    try:
        seconds = seconds_of(value, what, allow_zero=True)
    except ConfigurationError as exc:
        raise StepUsageError(f"{inv.where(step_id)}: {exc}") from None
    if seconds > MAX_WAIT:
        raise StepUsageError(f"{inv.where(step_id)}: {what} is over ten years ({value!r})")
    return seconds


def _lost(inv: Invocation) -> LeaseLost:
    status = run_store.run_status(inv.run_id)
    return LeaseLost(inv.where(), cancelled=status in (None, RunStatus.CANCELLED))


def _wait_step(inv: Invocation, base_id: Any, kind: str) -> tuple[str, int, StepRecord | None]:
    """The id, position and record of a wait step; refuses it where a wait cannot be."""
    inside = current_step.get()
    if inside is not None:
        raise NestedStepError(
            f"{inv.where(inside)}: step {base_id!r} was called inside step {inside!r}. "
            "Call steps from the workflow function only."
        )
    if inv.plan is not None:
        raise StepUsageError(
            f"{inv.where(base_id)}: step.{_verb(kind)} cannot run inside step.parallel; "
            "call it before or after the parallel group"
        )
    inv.ids.check(base_id)
    step_id, position = inv.ids.next(base_id)
    record = inv.memo.get(position)
    if record is not None and (record.step_id != step_id or record.kind != kind):
        called = f"step.{_verb(kind)} {step_id!r}"
        raise inv.diverge(mismatch(inv.where(), record.named, position, called))
    if record is None and inv.memo.count + 1 > inv.max_steps:
        raise LimitExceededError(
            f"{inv.where(step_id)}: the run would have more than "
            f"STEPFLOWS['MAX_STEPS_PER_RUN'] = {inv.max_steps} steps"
        )
    return step_id, position, record


def _verb(kind: str) -> str:
    return {"sleep": "sleep", "event": "wait_for_event", "invoke": "invoke"}.get(kind, kind)


def _new(step_id: str, position: int, kind: str, **fields: Any) -> StepRecord:
    return StepRecord(step_id, position, None, StepStatus.SCHEDULED, kind=kind, **fields)


def _complete(inv: Invocation, rec: StepRecord, exists: bool, output: Any = None) -> StepRecord:
    """End a wait in this invocation (it was already due), under the run's lease."""
    size = len(json.dumps(output, separators=(",", ":"), ensure_ascii=False).encode())
    done = replace(
        rec, status=StepStatus.COMPLETED, output=output, output_bytes=0 if output is None else size
    )
    stored = inv.store_attempt(done, exists=exists)
    inv.memo.put(stored)
    return stored


def _suspend(inv: Invocation, rec: StepRecord, *, exists: bool, **kwargs: Any) -> BaseException:
    inv.still_ours()
    slots = bool(inv.workflow.flow.concurrency)
    if not store.suspend_for_wait(inv.run_id, inv.token, rec, exists=exists, slots=slots, **kwargs):
        return _lost(inv)
    return inv.suspend(Suspend(written=True))


# -- step.sleep -----------------------------------------------------------------------


def sleep(inv: Invocation, base_id: Any, duration: Any = None, until: Any = None) -> None:
    """``step.sleep`` (``duration``) or ``step.sleep_until`` (``until``)."""
    step_id, position, record = _wait_step(inv, base_id, StepKind.SLEEP)
    if record is not None and record.is_finished:
        return None
    now = store.database_now()
    if record is None:
        if until is not None:
            if not isinstance(until, datetime):
                raise StepUsageError(
                    f"{inv.where(step_id)}: sleep_until takes a datetime, not {until!r}"
                )
            if timezone.is_naive(until):
                raise StepUsageError(
                    f"{inv.where(step_id)}: sleep_until needs an aware datetime (with a time "
                    f"zone), got the naive {until!r}; use django.utils.timezone or "
                    "datetime(..., tzinfo=...)"
                )
            wake_at = until
        else:
            wake_at = now + timedelta(seconds=_seconds(inv, step_id, duration, "the duration"))
        record = _new(
            step_id,
            position,
            StepKind.SLEEP,
            started_at=now,
            wake_at=wake_at,
            wait={"until": wake_at.isoformat()},
        )
        exists = False
    else:
        exists = True
    assert record.wake_at is not None
    left = (record.wake_at - now).total_seconds()
    if left <= 0.01:
        _complete(inv, record, exists)
        return None
    raise _suspend(inv, record, exists=exists, countdown=left if left <= SHORT_SLEEP else None)


# -- step.wait_for_event ------------------------------------------------------------------


def _plain(data: Any) -> Any:
    return data.model_dump(mode="json") if isinstance(data, BaseModel) else data


def _event_from(output: Any) -> Event | None:
    if output is None:
        return None
    return Event(
        name=output["name"],
        data=output["data"],
        id=output["id"],
        ts=datetime.fromisoformat(output["ts"]),
    )


def _candidate(row: EventRow) -> Event:
    return Event(name=row.name, data=row.data, id=row.id, ts=row.ts)


def wait_for_event(
    inv: Invocation,
    base_id: Any,
    *,
    event: Any,
    match: Any = None,
    if_: Callable[[Event, Event], bool] | None = None,
    timeout: Any = None,
    lookback: Any = 0,
) -> Event | None:
    """``step.wait_for_event``: the matching event, or None when the timeout passed."""
    if not isinstance(event, str) or not event:
        raise StepUsageError(
            f"{inv.where(base_id)}: wait_for_event needs event='an event name', got {event!r}"
        )
    try:
        check_match_path(match, inv.where(base_id))
    except ConfigurationError as exc:
        raise StepUsageError(str(exc)) from None
    if if_ is not None and not callable(if_):
        raise StepUsageError(f"{inv.where(base_id)}: if_ must be a function (trigger, candidate)")
    wait_s = None if timeout is None else _seconds(inv, base_id, timeout, "the timeout")
    back = _seconds(inv, base_id, lookback, "lookback")
    step_id, position, record = _wait_step(inv, base_id, StepKind.EVENT)
    if record is not None and record.is_finished:
        return _event_from(record.output)
    trigger = inv.ctx.event
    value = None
    if match is not None:
        try:
            value = store.value_at(_plain(trigger.data), match)
        except KeyError:
            raise StepUsageError(
                f"{inv.where(step_id)}: the run's trigger event has no field {match!r} to match"
            ) from None
        if not store.is_matchable(value):
            raise StepUsageError(
                f"{inv.where(step_id)}: match compares a string, number or boolean; the "
                f"trigger event's {match!r} is {type(value).__name__}"
            )
    now = store.database_now()
    exists = record is not None
    if record is None:
        started = inv.run.progress_at or now
        since = min(started, now) - timedelta(seconds=back)
        wake_at = None if wait_s is None else now + timedelta(seconds=wait_s)
        record = _new(
            step_id,
            position,
            StepKind.EVENT,
            started_at=now,
            wake_at=wake_at,
            wait={
                "event": event,
                "match": match,
                "value": value,
                "since": since.isoformat(),
                "timeout": wait_s,
                "filter": if_ is not None,
            },
        )
    else:
        since = datetime.fromisoformat((record.wait or {})["since"])
    inv.still_ours()
    # One transaction: check the events received so far, then either take one or
    # register the waiter (a signal raised inside would roll it back: raised after).
    signal: BaseException | None = None
    with store.registering(event):
        chosen = None
        for row in store.events_since(event, match, value, since, exclude=trigger.id):
            if if_ is None or if_(trigger, _candidate(row)):
                chosen = row
                break
        if chosen is not None:
            stored = _complete(inv, record, exists, store.event_json(chosen))
            store.drop_step_waiters(inv.run_id, step_id)
        else:
            waiter = {
                "kind": Waiter.WAIT,
                "event_name": event,
                "match_key": store.match_key(match, value),
                "has_filter": if_ is not None,
                "expires_at": record.wake_at,
            }
            signal = _suspend(inv, record, exists=exists, waiter=waiter)
    if signal is not None:
        raise signal
    return _event_from(stored.output)


# -- step.invoke ----------------------------------------------------------------------


def _child_workflow(inv: Invocation, step_id: Any, workflow: Any) -> Workflow:
    try:
        if isinstance(workflow, str):
            return registry.get(workflow)
        found = getattr(workflow, "stepflows_workflow", None)
        if isinstance(found, Workflow):
            return registry.get(found.id)
    except WorkflowNotFoundError as exc:
        raise StepUsageError(f"{inv.where(step_id)}: step.invoke: {exc}") from None
    raise StepUsageError(
        f"{inv.where(step_id)}: step.invoke takes workflow=<a function decorated with "
        f"@stepflows.workflow> or a workflow id, not {workflow!r}"
    )


def invoke(
    inv: Invocation, base_id: Any, *, workflow: Any, data: Any = None, timeout: Any = None
) -> Any:
    """``step.invoke``: start a run of another workflow once, wait for it, return its output."""
    child_wf = _child_workflow(inv, base_id, workflow)
    wait_s = None if timeout is None else _seconds(inv, base_id, timeout, "the timeout")
    step_id, position, record = _wait_step(inv, base_id, StepKind.INVOKE)
    if record is not None:
        if record.status == StepStatus.COMPLETED:
            return restore(record.output, return_type(child_wf.fn))
        if record.status == StepStatus.FAILED:
            raise record.step_error()
        raise _suspend(inv, record, exists=True)  # woken early (a duplicate): wait on
    raw = {} if data is None else _plain(data)
    if not isinstance(raw, dict):
        raise StepUsageError(
            f"{inv.where(step_id)}: step.invoke data is a dict or a pydantic model, "
            f"not {type(raw).__name__}"
        )
    from ..sending import check_schemas, derived_event_id

    raw, _ = to_json(raw, where=f"{inv.where(step_id)}: the invoke data")
    try:
        check_schemas([child_wf], raw, f"{inv.where(step_id)}: the invoke data does not match", "")
    except Exception as exc:
        raise StepUsageError(str(exc)) from None
    now = store.database_now()
    event_id = derived_event_id(inv.run_id, step_id, 0)
    child = Run(
        workflow_id=child_wf.id,
        event_id=event_id,
        parent_id=inv.run_id,
        caller_step=step_id,
        version=child_wf.version or "",
    )
    record = _new(
        step_id,
        position,
        StepKind.INVOKE,
        started_at=now,
        wake_at=None if wait_s is None else now + timedelta(seconds=wait_s),
        wait={"workflow": child_wf.id, "child": str(child.pk), "timeout": wait_s},
    )
    child_event = {"id": event_id, "name": INVOKED_EVENT, "data": raw, "ts": now}
    raise _suspend(inv, record, exists=False, child=child, child_event=child_event)


# -- cancel_on: registered at a run's first invocation ------------------------------------


def listen(inv: Invocation) -> bool:
    """Register the run's ``cancel_on`` waiters; False when an event already cancelled it.

    Events received since the run was created count, so one sent before a
    worker picked the run up still cancels it.
    """
    run: Run = inv.run
    trigger_row = run.event
    trigger = _candidate(trigger_row)
    specs = list(enumerate(inv.workflow.cancel_on))
    waiters: list[dict[str, Any]] = []
    with store.registering(*(spec.event for _, spec in specs)):
        for index, spec in specs:
            value = None
            if spec.match is not None:
                try:
                    value = store.value_at(trigger_row.data, spec.match)
                except KeyError:
                    logger.warning(
                        "%s: cancel_on[%d] matches %r, which its trigger event lacks; ignored",
                        inv.where(),
                        index,
                        spec.match,
                    )
                    continue
            expires = None
            if spec.timeout is not None:
                expires = run.created_at + timedelta(seconds=seconds_of(spec.timeout, "timeout"))
            for row in store.events_since(
                spec.event, spec.match, value, run.created_at, exclude=trigger_row.id
            ):
                if expires is not None and row.received_at > expires:
                    break
                if spec.if_ is None or spec.if_(trigger, _candidate(row)):
                    run_store.cancel_run(run.id, reason=f"cancelled by event {row.name} ({row.id})")
                    return False
            waiters.append(
                {
                    "kind": Waiter.CANCEL,
                    "event_name": spec.event,
                    "match_key": store.match_key(spec.match, value),
                    "cancel_index": index,
                    "expires_at": expires,
                }
            )
        held = store.register_cancel_waiters(inv.run_id, inv.token, waiters)
    if not held:
        raise _lost(inv)
    return True


# -- the sweep ------------------------------------------------------------------------


def wake_due_runs(now: datetime | None = None, *, limit: int = 1000) -> dict[str, int]:
    """One pass: wake runs whose sleep is over or whose wait timed out.

    Runs in the periodic ``stepflows.recover`` task. ``now`` moves the sweep's
    clock (a test jumping over a long sleep).
    """
    now = now or store.database_now()
    woken = sum(store.wake_due(run_id, wake, now) for run_id, wake in store.due_runs(now, limit))
    dropped = store.drop_expired_waiters(now, limit)
    return {"woken": woken, "waiters_dropped": dropped}
