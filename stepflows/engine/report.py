"""What the engine tells the world once a change is stored: log records and signals.

Loggers: ``stepflows.runs`` (a run started: INFO; ended: INFO, or ERROR when it
failed; a message for a run this worker's database does not have: WARNING)
and ``stepflows.steps`` (an attempt failed and will be retried: WARNING; a
step failed for good: ERROR). Every record carries ``run_id``,
``workflow_id``, ``attempt`` and, for a step, ``step_id`` in ``extra``, so JSON
formatters and Sentry's logging integration pick them up. Each is called
after the store wrote the change, never before; the signals
(:mod:`stepflows.signals`) go out after commit.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import clock, signals
from ..exceptions import StepflowsError
from ..registry import registry

runs_logger = logging.getLogger("stepflows.runs")
steps_logger = logging.getLogger("stepflows.steps")


def _workflow(workflow_id: str) -> Any:
    """The signals' sender: the workflow's function (what ``@stepflows.workflow`` returned).

    Users can name it in ``connect(..., sender=my_workflow)``; None when the workflow
    is no longer registered.
    """
    try:
        return registry.get(workflow_id).fn
    except StepflowsError:
        return None


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def run_started(run: Any) -> None:
    """A worker started the run for the first time (its claim is stored)."""
    run_id, workflow_id = str(run.id), run.workflow_id
    if runs_logger.isEnabledFor(logging.INFO):
        runs_logger.info(
            "workflow %r, run %s: started",
            workflow_id,
            run_id,
            extra={"run_id": run_id, "workflow_id": workflow_id, "attempt": run.attempts},
        )
    signals.send_after_commit(
        signals.run_started, _workflow(workflow_id), run_id=run_id, workflow_id=workflow_id
    )


def run_finished(run: Any, status: str, error: dict[str, Any] | None = None) -> None:
    """The run ended (its end is stored): completed, or failed for good."""
    started = run.started_at
    duration = (clock.now() - started).total_seconds() if started is not None else None
    failed = status == "failed"
    when = f"after {duration:.3f} s" if duration is not None else "after an unknown time"
    _run_ended(
        run,
        status,
        error,
        duration,
        logging.ERROR if failed else logging.INFO,
        f"{status} {when}" + (f": {_error_text(error)}" if failed else ""),
    )


def _run_ended(
    run: Any,
    status: str,
    error: dict[str, Any] | None,
    duration: float | None,
    level: int,
    text: str,
) -> None:
    """Log how the run ended (ids in ``extra``) and send ``run_finished`` after commit."""
    run_id, workflow_id = str(run.id), run.workflow_id
    if runs_logger.isEnabledFor(level):
        runs_logger.log(
            level,
            "workflow %r, run %s: %s",
            workflow_id,
            run_id,
            text,
            extra={
                "run_id": run_id,
                "workflow_id": workflow_id,
                "attempt": run.attempts,
                "status": status,
                "duration": duration,
            },
        )
    signals.send_after_commit(
        signals.run_finished,
        _workflow(workflow_id),
        run_id=run_id,
        workflow_id=workflow_id,
        status=status,
        error=error,
        duration=duration,
    )


def step_retrying(
    workflow_id: str,
    run_id: str,
    step_id: str,
    attempt: int,
    retries: int,
    error: dict[str, Any] | None,
    retry_in: float,
) -> None:
    """A step's attempt failed; its retry is stored as scheduled."""
    if steps_logger.isEnabledFor(logging.WARNING):
        steps_logger.warning(
            "workflow %r, run %s, step %r: attempt %d of %d failed (%s); next retry in %.1f s",
            workflow_id,
            run_id,
            step_id,
            attempt + 1,
            retries + 1,
            _error_text(error),
            retry_in,
            extra={
                "run_id": run_id,
                "workflow_id": workflow_id,
                "step_id": step_id,
                "attempt": attempt,
                "retry_in": retry_in,
            },
        )
    signals.send_after_commit(
        signals.step_retrying,
        _workflow(workflow_id),
        run_id=run_id,
        workflow_id=workflow_id,
        step_id=step_id,
        attempt=attempt,
        error=error,
        retry_in=retry_in,
    )


def step_failed(
    workflow_id: str, run_id: str, step_id: str, attempt: int, error: dict[str, Any] | None
) -> None:
    """A step failed for good (stored so)."""
    if steps_logger.isEnabledFor(logging.ERROR):
        steps_logger.error(
            "workflow %r, run %s, step %r: failed for good after attempt %d: %s",
            workflow_id,
            run_id,
            step_id,
            attempt + 1,
            _error_text(error),
            extra={
                "run_id": run_id,
                "workflow_id": workflow_id,
                "step_id": step_id,
                "attempt": attempt,
            },
        )
    signals.send_after_commit(
        signals.step_failed,
        _workflow(workflow_id),
        run_id=run_id,
        workflow_id=workflow_id,
        step_id=step_id,
        attempt=attempt,
        error=error,
    )


def unknown_run(run_id: Any, task: str) -> None:
    """A task message names a run this worker's database does not have."""
    runs_logger.warning(
        "%s for run %s: no such run in this worker's database. This usually means the "
        "worker uses another database than the sender, or another project's worker "
        "consumes this queue (see STEPFLOWS['QUEUE'])",
        task,
        run_id,
        extra={"run_id": str(run_id), "workflow_id": None, "attempt": None},
    )


RUN_FIELDS = ("id", "workflow_id", "started_at", "ended_at", "attempts")
"""The fields of a run's row that :func:`run_stopped` reads."""


def run_stopped(run: Any, status: str, error: dict[str, Any] | None) -> None:
    """The periodic pass ended a run that no worker was executing (its end is stored).

    The recovery failed it (``RecoveryLimitError``: found stuck too many times
    without progress), or a run timeout cancelled it and the runs it invoked.
    No worker reports these ends, so they are told here, once: an ERROR record
    like a run that failed for good (``status`` says which end), and
    ``run_finished`` with that status. ``run`` is the row as stored (its
    ``started_at`` and ``ended_at`` give the duration).
    """
    started, ended = run.started_at, run.ended_at
    duration = (ended - started).total_seconds() if started and ended else None
    if duration is not None:
        when = f"after {duration:.3f} s"
    else:
        when = "before it started" if started is None else "after an unknown time"
    text = f"{status} {when}: {_error_text(error)}"
    _run_ended(run, status, error, duration, logging.ERROR, text)


def run_blocked(run: Any, error: dict[str, Any]) -> None:
    """The run is stored blocked: its code no longer matches its recorded steps.

    Logged at ERROR, as someone must deploy a fix and retry it; ``run_finished``
    is sent with ``status="blocked"``, so receivers that page on failures see it
    (a retried run sends ``run_finished`` again when it ends, as a retried
    failed run does).
    """
    started = run.started_at
    duration = (clock.now() - started).total_seconds() if started is not None else None
    _run_ended(run, "blocked", error, duration, logging.ERROR, f"blocked: {_error_text(error)}")
