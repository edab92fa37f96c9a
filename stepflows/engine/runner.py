"""Top-level flows the Celery tasks call: execute a run, run one parallel step."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel

from .. import clock, tracing
from ..conf import get_settings
from ..events import Event
from ..exceptions import (
    ConfigurationError,
    LimitExceededError,
    NonDeterminismError,
    NonRetriableError,
    OutputSerializationError,
    StepError,
    StepflowsError,
)
from ..models import ACTIVE_RUN_STATUSES, Run, RunStatus, StepStatus
from ..models import Event as EventRow
from ..registry import Workflow, registry
from ..serialization import to_json
from ..store import runs as run_store
from ..store import steps as step_store
from ..store.fence import LeaseLost, new_token
from ..store.records import StepRecord
from . import report, waits
from .attempts import TRANSIENT_DB_ERRORS, error_dict, record_failure
from .calls import StepCall
from .control import StepOutcome, Suspend, TargetReached
from .heartbeat import heartbeat
from .ids import Target
from .invocation import Invocation
from .memo import load_memo, memo_for_step_task
from .retry import decide
from .step_task import StepTaskInvocation
from .tools import Step, StepSync

logger = logging.getLogger("stepflows.engine")

__all__ = ["TRANSIENT_DB_ERRORS", "execute_run", "execute_step_task"]


def _event_for(run: Run, workflow: Workflow) -> Event:
    stored = run.event
    data: Any = stored.data
    if workflow.schema is not None:
        try:
            data = workflow.schema.model_validate(stored.data)
        except Exception as exc:
            raise NonRetriableError(
                f"workflow {workflow.id!r}, run {run.id}: the stored event data no longer "
                f"matches the workflow's schema {workflow.schema.__name__}: {exc}"
            ) from None
    return Event(name=stored.name, data=data, id=stored.id, ts=stored.ts)


def _batch(inv: Invocation) -> None:
    """A batched run: ``ctx.events`` holds every event of its batch, in order."""
    ids = inv.run.batch
    if not ids or len(ids) < 2:
        return
    rows = EventRow.objects.in_bulk(ids)
    events = []
    for event_id in ids:
        row = rows.get(event_id)
        if row is None:
            continue
        data: Any = row.data
        if inv.workflow.schema is not None:
            data = inv.workflow.schema.model_validate(row.data)
        events.append(Event(name=row.name, data=data, id=row.id, ts=row.ts))
    inv.ctx.events = events


def _tools(inv: Invocation) -> Step | StepSync:
    return Step(inv) if inv.workflow.is_async else StepSync(inv)


def _stopped(where: str, lost: LeaseLost) -> None:
    if lost.cancelled:
        logger.info("%s: cancelled; stopped before its next step", where)
    else:
        logger.warning(
            "%s: lost its lease (another worker took it over after it expired); "
            "this worker stops and records nothing more",
            where,
        )


def execute_run(
    run_id: Any, wake: int | None = None, token: str | None = None, trace: str | None = None
) -> None:
    """Invoke the run's workflow function once, from the top, under the run's lease.

    ``wake``: the wake-up the message was sent for; a stale one does nothing.
    ``token``: the lease token of an earlier try of this same message (the
    task retries after a lost database connection), so it claims the run again
    at once instead of waiting for its own lease to expire. ``trace``: the
    traceparent of the invocation that sent the message (else the event's is used).
    """
    token = token or new_token()
    run = run_store.claim_run(run_id, token, wake)
    if run is None:
        if run_store.run_status(run_id) is None:
            report.unknown_run(run_id, "execute_run")
        else:
            logger.debug("run %s: finished, cancelled or held by another worker; skipped", run_id)
        return
    if run.started_at == run.progress_at:
        report.run_started(run)  # its first claim
    with tracing.run_span(run.workflow_id, str(run.id), trace or run.event.trace) as span:
        _execute(run, token, span)


def _execute(run: Run, token: str, span: tracing.SpanHandle) -> None:
    try:
        workflow = registry.get(run.workflow_id)
        event = _event_for(run, workflow)
    except StepflowsError as exc:
        caller = (run.parent_id, run.caller_step) if run.caller_step else None
        error = error_dict(exc)
        if run_store.finish_run(run.id, token, RunStatus.FAILED, error=error, caller=caller):
            span.set_status(RunStatus.FAILED, error["message"])
            report.run_finished(run, RunStatus.FAILED, error)
        return
    with heartbeat.holding(run.id, token) as lease:
        inv = Invocation(
            run=run,
            workflow=workflow,
            memo=load_memo(run.id),
            event=event,
            token=token,
            lease=lease,
        )
        inv.span = span
        _batch(inv)
        if workflow.flow.concurrency and not _slots(inv):
            return  # over its concurrency limit: it waits in line, in the database
        if workflow.cancel_on and not run.listening:
            try:
                if not waits.listen(inv):
                    return  # an event received before its first invocation cancelled it
            except LeaseLost as lost:
                _stopped(inv.where(), lost)
                return
        _invoke(inv)


def _slots(inv: Invocation) -> bool:
    """Take the run's concurrency slots (one per key), or put it in line; True to go on."""
    from ..flow import key_of
    from ..store import admission

    event = inv.ctx.event
    plain = (
        event
        if not isinstance(event.data, BaseModel)
        else event.model_copy(update={"data": event.data.model_dump(mode="json")})
    )
    run = inv.run
    try:
        keys = [
            (f"{i}:{key_of(c.key, plain)}"[:255], c.limit)
            for i, c in enumerate(inv.workflow.flow.concurrency)
        ]
    except Exception as exc:
        bad = ConfigurationError(
            f"{inv.where()}: the key function of its concurrency limit raised "
            f"{type(exc).__name__}: {exc}"
        )
        _end(inv, RunStatus.FAILED, error=error_dict(bad))
        return False
    return admission.take_slots(
        run.id,
        inv.token,
        inv.workflow.id,
        keys,
        run.priority_at or run.created_at,
        first_claim=run.started_at == run.progress_at,
    )


def _end(inv: Invocation, status: str, **fields: Any) -> None:
    """Finish the run; an invoked run ends its caller's step, a failed one starts its handler."""
    run = inv.run
    caller = (run.parent_id, run.caller_step) if run.caller_step else None
    handler = None
    if status == RunStatus.FAILED and inv.workflow.on_failure:
        event = run.event
        data = {
            "run_id": str(run.id),
            "workflow_id": run.workflow_id,
            "error": fields.get("error"),
            "event": {"id": event.id, "name": event.name, "data": event.data},
        }
        handler = (inv.workflow.on_failure, data, run.resumes)
    ended = run_store.finish_run(
        run.id,
        inv.token,
        status,
        caller=caller,
        handler=handler,
        listening=bool(inv.workflow.cancel_on),
        slots=bool(inv.workflow.flow.concurrency),
        **fields,
    )
    if ended:
        error = fields.get("error")
        inv.span.set_status(status, error.get("message", "") if error else None)
        report.run_finished(run, status, error)


def _invoke(inv: Invocation) -> None:
    try:
        value = inv.call_workflow(_tools(inv))
    except LeaseLost as lost:
        _stopped(inv.where(), lost)
        return
    except TRANSIENT_DB_ERRORS:
        # The database went away (a restart, a failover): not the workflow's
        # fault. The task retries the invocation with the same token; nothing counted.
        raise
    except BaseException as exc:
        if isinstance(exc, NonDeterminismError) and inv.diverged is None:
            inv.diverged = exc
        if inv.diverged is not None:
            # Whatever the workflow made of it: its code left the recorded steps.
            _block(inv, inv.diverged)
        elif isinstance(exc, Suspend):
            _suspend(inv, exc)
        elif isinstance(exc, StepError):
            tb = exc.traceback or error_dict(exc)["traceback"]
            _end(inv, RunStatus.FAILED, error=exc.as_dict() | {"traceback": tb})
        else:  # workflow code raised: retried, or final (see decide)
            _retry_or_fail(inv, exc)
        return
    if inv.diverged is not None:
        _block(inv, inv.diverged)  # the workflow caught the error and went on
        return
    if inv.suspended is not None:
        # The workflow caught our signal (a bare `except BaseException`); honour it anyway.
        _suspend(inv, inv.suspended)
        return
    _finish(inv, value)


def _finish(inv: Invocation, value: Any) -> None:
    where = inv.where()
    try:
        output, size = to_json(value, where=f"{where}: the workflow")
    except OutputSerializationError as exc:
        _end(inv, RunStatus.FAILED, error=error_dict(exc))
        return
    if size > inv.max_state:
        too_big = LimitExceededError(
            f"{where}: the workflow returned {size} bytes as JSON, over "
            f"STEPFLOWS['MAX_STATE_BYTES'] = {inv.max_state}. Store large data elsewhere and "
            "return a reference to it."
        )
        _end(inv, RunStatus.FAILED, error=error_dict(too_big))
        return
    _end(inv, RunStatus.COMPLETED, output=output, output_bytes=size)


def _suspend(inv: Invocation, signal: Suspend) -> None:
    if signal.written:
        inv.span.set_status(RunStatus.WAITING)
        return  # a durable wait released the run itself
    held = run_store.suspend_run(
        inv.run.id, inv.token, planned=signal.planned, countdown=signal.countdown
    )
    if held:
        inv.span.set_status(RunStatus.WAITING)
    else:
        _stopped(inv.where(), LeaseLost(inv.where(), cancelled=_cancelled(inv.run.id)))


def _block(inv: Invocation, error: NonDeterminismError) -> None:
    """The code no longer matches the run's recorded steps: block it until a fix is retried."""
    run = inv.run
    stored = error_dict(error)
    blocked = run_store.block_run(
        run.id,
        inv.token,
        stored,
        listening=bool(inv.workflow.cancel_on),
        slots=bool(inv.workflow.flow.concurrency),
    )
    if blocked:
        inv.span.set_status(RunStatus.BLOCKED, stored["message"])
        report.run_blocked(run, stored)
    else:
        _stopped(inv.where(), LeaseLost(inv.where(), cancelled=_cancelled(run.id)))


def _cancelled(run_id: Any) -> bool:
    return run_store.run_status(run_id) in (None, RunStatus.CANCELLED)


def _retry_or_fail(inv: Invocation, exc: BaseException) -> None:
    """Workflow code outside steps raised: retry the run, or fail it for good."""
    attempts = inv.run.attempts
    decision = decide(exc, attempts, inv.retries)
    if not decision.retry:
        _end(inv, RunStatus.FAILED, error=error_dict(decision.error))
        return
    held = run_store.suspend_run(
        inv.run.id, inv.token, planned=[], countdown=decision.delay, attempts=attempts + 1
    )
    if held:
        inv.span.set_status("retrying", type(exc).__name__)
        report.runs_logger.warning(
            "%s: workflow code raised %s (attempt %d of %d); retrying in %.1f s",
            inv.where(),
            type(exc).__name__,
            attempts + 1,
            inv.retries + 1,
            decision.delay,
            extra={"run_id": inv.run_id, "workflow_id": inv.workflow.id, "attempt": attempts},
        )
    else:
        _stopped(inv.where(), LeaseLost(inv.where(), cancelled=_cancelled(inv.run.id)))


# -- parallel steps ----------------------------------------------------------------------


def execute_step_task(
    run_id: Any,
    step_id: str,
    position: int,
    group: int,
    wake: int | None = None,
    token: str | None = None,
    trace: str | None = None,
) -> StepOutcome:
    """Run one step of a parallel group: replay up to the group, run only this step.

    A step that already finished (a redelivered message), or that a live task
    is executing (its heartbeat is fresh), is left alone; the returned outcome
    says whether the task should retry later. ``token`` and ``trace``: as for
    :func:`execute_run`. ``wake`` is accepted for messages sent by earlier
    versions and not used: the step's own lease decides who runs it.
    """
    token = token or new_token()
    done = StepOutcome(completed=True)
    # One query for the step, its run and the run's event; the steps before
    # the group come from this process's cache (see memo_for_step_task).
    row = step_store.step_for_task(run_id, step_id)
    if row is None and run_store.run_status(run_id) is None:
        report.unknown_run(run_id, "run_step")
        return done
    if row is None or row.position != position:
        logger.error("run %s: step task for unknown step %r at %d", run_id, step_id, position)
        return done
    run = row.run
    if run.status not in ACTIVE_RUN_STATUSES:
        return done
    record = StepRecord.from_row(row)
    if record.is_finished:
        return done
    if record.retry_at is not None:
        wait = (record.retry_at - clock.now()).total_seconds()
        if wait > 0.05:
            return StepOutcome(retry_in=wait)
    if row.status == StepStatus.RUNNING and not step_store.take_over_step(run_id, step_id, token):
        logger.debug("run %s: step %r is running in a live task; skipped", run_id, step_id)
        return done
    target = Target(step_id, position, group)
    try:
        workflow = registry.get(run.workflow_id)
        event = _event_for(run, workflow)
    except StepflowsError as exc:
        _fail_target(run, record, target, token, exc)
        return done
    memo = memo_for_step_task(run.id, group, run.resumes, record)
    with (
        tracing.step_task(trace or run.event.trace),
        heartbeat.holding(run.id, token, step_id, record.attempt_count) as lease,
    ):
        inv = StepTaskInvocation(
            run=run,
            workflow=workflow,
            memo=memo,
            event=event,
            token=token,
            lease=lease,
            target=target,
        )
        _batch(inv)
        return _invoke_step(inv, record, token)


def _invoke_step(inv: StepTaskInvocation, record: StepRecord, token: str) -> StepOutcome:
    done = StepOutcome(completed=True)
    run, target = inv.run, inv.target
    try:
        inv.call_workflow(_tools(inv))
    except TargetReached as reached:
        return reached.outcome
    except LeaseLost as lost:
        _stopped(inv.where(target.step_id), lost)
        return done
    except Suspend:
        pass
    except TRANSIENT_DB_ERRORS:
        raise  # the task retries; a lost database connection must not fail the step
    except BaseException as exc:
        if inv.reached is None:
            _fail_target(run, record, target, token, exc)
            return done
    if inv.reached is not None:
        # The step ran; the workflow went on past it (asyncio.wait) and ended.
        return inv.reached
    _fail_target(
        run,
        record,
        target,
        token,
        NonDeterminismError(
            f"workflow {run.workflow_id!r}, run {run.id}: replaying the workflow did not reach "
            f"parallel step {target.step_id!r}"
        ),
    )
    return done


def _fail_target(
    run: Run, record: StepRecord, target: Target, token: str, exc: BaseException
) -> None:
    """The step task could not replay up to its step: fail the step so the group joins."""
    inv = _Failing(run=run, record=record, target=target, token=token)
    call = StepCall(target.step_id, target.position, record, lambda: None, (), {}, target.group)
    error = exc if isinstance(exc, Exception) else NonRetriableError(repr(exc))
    try:
        record_failure(inv, call, clock.now(), error)  # type: ignore[arg-type]
    except LeaseLost as lost:
        _stopped(f"workflow {run.workflow_id!r}, run {run.id}", lost)


class _Failing:
    """Just enough of an invocation to record a step's final failure."""

    retries = 0

    def __init__(self, *, run: Run, record: StepRecord, target: Target, token: str) -> None:
        self.run_id = str(run.id)
        self.workflow_id = run.workflow_id
        self.token = token
        self.memo = load_memo(run.id, before_group=0, plus_step=target.step_id)
        self.max_state = get_settings().MAX_STATE_BYTES

    def where(self, step_id: str | None = None) -> str:
        text = f"workflow {self.workflow_id!r}, run {self.run_id}"
        return f"{text}, step {step_id!r}" if step_id else text

    def store_attempt(self, record: StepRecord, *, exists: bool) -> StepRecord:
        return step_store.record_parallel(self.run_id, self.token, record, max_state=self.max_state)
