"""Top-level flows the Celery tasks call: execute a run, run one parallel step."""

from __future__ import annotations

import logging
from typing import Any

from django.db import InterfaceError, OperationalError
from django.utils import timezone

from ..events import Event
from ..exceptions import (
    NonDeterminismError,
    NonRetriableError,
    OutputSerializationError,
    StepError,
    StepflowsError,
    WorkflowNotFoundError,
)
from ..models import ACTIVE_RUN_STATUSES, Run, RunStatus
from ..models import Step as StepRow
from ..registry import Workflow, registry
from . import recording
from .control import Cancelled, StepOutcome, Suspend, TargetReached
from .invocation import FINAL_ERRORS, Invocation, StepCall, Target, error_dict
from .memo import load_memo, memo_for_step_task, record_of
from .retry import delay_for
from .serialization import to_json
from .tools import Step, StepSync

logger = logging.getLogger("stepflows.engine")

# Errors of the database connection itself, not of the data: retried by the task.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


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


def _tools(inv: Invocation) -> Step | StepSync:
    return Step(inv) if inv.workflow.is_async else StepSync(inv)


def execute_run(run_id: Any, wake: int | None = None) -> None:
    """Invoke the run's workflow function once, from the top, under the run's lease.

    ``wake``: the wake-up the message was sent for; a stale one does nothing.
    """
    token = recording.new_token()
    run = recording.claim_run(run_id, token, wake)
    if run is None:
        logger.debug("run %s: finished, cancelled or held by another worker; skipped", run_id)
        return
    try:
        workflow = registry.get(run.workflow_id)
    except WorkflowNotFoundError as exc:
        recording.finish_run(run.id, token, RunStatus.FAILED, error=error_dict(exc))
        return
    try:
        event = _event_for(run, workflow)
    except NonRetriableError as exc:
        recording.finish_run(run.id, token, RunStatus.FAILED, error=error_dict(exc))
        return
    inv = Invocation(run=run, workflow=workflow, memo=load_memo(run.id), event=event, token=token)
    try:
        value = inv.call_workflow(_tools(inv))
    except Suspend as signal:
        _suspend(inv, signal)
        return
    except Cancelled:
        logger.info("%s: cancelled; stopped before its next step", inv.where())
        return
    except StepError as exc:
        recording.finish_run(run.id, token, RunStatus.FAILED, error=exc.as_dict() | _tb(exc))
        return
    except FINAL_ERRORS as exc:
        recording.finish_run(run.id, token, RunStatus.FAILED, error=error_dict(exc))
        return
    except TRANSIENT_DB_ERRORS:
        # The database went away (a restart, a failover): not the workflow's
        # fault. The task retries the invocation; nothing was counted.
        raise
    except Exception as exc:
        _retry_or_fail(inv, exc)
        return
    if inv.suspended is not None:
        # The workflow caught our signal (a bare `except BaseException`); honour it anyway.
        _suspend(inv, inv.suspended)
        return
    try:
        output, _ = to_json(value, where=f"workflow {workflow.id!r} (run {run.id})")
    except OutputSerializationError as exc:
        recording.finish_run(run.id, token, RunStatus.FAILED, error=error_dict(exc))
        return
    recording.finish_run(run.id, token, RunStatus.COMPLETED, output=output)


def _tb(exc: StepError) -> dict[str, Any]:
    return {"traceback": exc.traceback or error_dict(exc)["traceback"]}


def _suspend(inv: Invocation, signal: Suspend) -> None:
    assert inv.token is not None
    recording.suspend_run(inv.run.id, inv.token, planned=signal.planned, countdown=signal.countdown)


def _retry_or_fail(inv: Invocation, exc: Exception) -> None:
    """Workflow code outside steps raised: retry the run, or fail it for good."""
    assert inv.token is not None
    attempts = inv.run.attempts
    if attempts >= inv.retries:
        recording.finish_run(inv.run.id, inv.token, RunStatus.FAILED, error=error_dict(exc))
        return
    logger.warning(
        "%s: workflow code raised %s (attempt %d of %d); retrying",
        inv.where(),
        type(exc).__name__,
        attempts + 1,
        inv.retries + 1,
    )
    recording.suspend_run(
        inv.run.id, inv.token, planned=[], countdown=delay_for(exc, attempts), attempts=attempts + 1
    )


def execute_step_task(run_id: Any, step_id: str, position: int, group: int) -> StepOutcome:
    """Run one step of a parallel group: replay up to the group, run only this step.

    A step that already finished (a redelivered message) is left alone; the
    returned outcome says whether the task should retry later.
    """
    done = StepOutcome(completed=True)
    # One query for the step, its run and the run's event; the steps before
    # the group come from this process's cache (see memo_for_step_task).
    row = (
        StepRow.objects.select_related("run__event").filter(run_id=run_id, step_id=step_id).first()
    )
    if row is None or row.position != position:
        logger.error("run %s: step task for unknown step %r at %d", run_id, step_id, position)
        return done
    run = row.run
    if run.status not in ACTIVE_RUN_STATUSES:
        return done
    record = record_of(row)
    memo = memo_for_step_task(run.id, group, run.resumes, record)
    if record.is_finished:
        return done
    if record.retry_at is not None:
        wait = (record.retry_at - timezone.now()).total_seconds()
        if wait > 0.05:
            return StepOutcome(retry_in=wait)
    try:
        workflow = registry.get(run.workflow_id)
        event = _event_for(run, workflow)
    except StepflowsError as exc:
        _fail_target(run, step_id, position, group, exc)
        return done
    inv = Invocation(
        run=run, workflow=workflow, memo=memo, event=event, target=Target(step_id, position, group)
    )
    try:
        inv.call_workflow(_tools(inv))
    except TargetReached as reached:
        return reached.outcome
    except Suspend:
        pass
    except TRANSIENT_DB_ERRORS:
        raise  # the task retries; a lost database connection must not fail the step
    except Exception as exc:
        if inv.reached is None:
            _fail_target(run, step_id, position, group, exc)
            return done
    if inv.reached is not None:
        # The step ran; the workflow went on past it (asyncio.wait) and ended.
        return inv.reached
    _fail_target(
        run,
        step_id,
        position,
        group,
        NonDeterminismError(
            f"workflow {run.workflow_id!r}, run {run.id}: replaying the workflow did not reach "
            f"parallel step {step_id!r}"
        ),
    )
    return done


def _fail_target(run: Run, step_id: str, position: int, group: int, exc: BaseException) -> None:
    """The step task could not replay up to its step: fail the step so the group joins."""
    memo = load_memo(run.id, before_group=0, plus_step=step_id)
    record = memo.get(position)
    inv = Invocation(
        run=run,
        workflow=registry.get(run.workflow_id) if run.workflow_id in _ids() else _missing(run),
        memo=memo,
        event=Event(name=run.event.name, data=run.event.data, id=run.event.id),
    )
    call = StepCall(step_id, position, record, lambda: None, (), {}, group)
    inv.retries = 0
    error = exc if isinstance(exc, Exception) else NonRetriableError(repr(exc))
    inv.record_failure(call, timezone.now(), error)


def _ids() -> set[str]:
    return {wf.id for wf in registry.all()}


def _missing(run: Run) -> Workflow:
    return Workflow(id=run.workflow_id, fn=lambda ctx, step: None, triggers=[])
