"""Thin Celery tasks: each calls the engine.

Registered with ``shared_task`` so they bind to the project's Celery app.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from . import engine
from .engine.runner import TRANSIENT_DB_ERRORS

TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": False,
}


def _retry_later(task: Any, exc: Exception) -> Exception:
    """Retry the task after a backoff when the database connection failed.

    Such a failure says nothing about the workflow or its steps, so it uses
    none of their retries; the task is retried until the database is back.
    """
    from .engine.retry import backoff

    return task.retry(exc=exc, countdown=backoff(min(task.request.retries, 10)), max_retries=None)


@shared_task(
    name="stepflows.execute_run",
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def execute_run(self: Any, run_id: str, wake: int | None = None) -> None:
    """Invoke a run's workflow function (its first invocation, or after a retry delay)."""
    try:
        engine.execute_run(run_id, wake=wake)
    except TRANSIENT_DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc


@shared_task(
    name="stepflows.resume_run",
    bind=True,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
)
def resume_run(self: Any, run_id: str, wake: int | None = None) -> None:
    """Chord callback of a parallel group: re-invoke the run with every step's output."""
    try:
        engine.execute_run(run_id, wake=wake)
    except TRANSIENT_DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc


@shared_task(name="stepflows.run_step", bind=True, max_retries=None, **TASK_OPTIONS)
def run_step(self: Any, run_id: str, step_id: str, position: int, group: int) -> None:
    """Run one step of a parallel group; retried on its own until it finishes."""
    try:
        outcome = engine.execute_step_task(run_id, step_id, position, group)
    except TRANSIENT_DB_ERRORS as exc:
        raise _retry_later(self, exc) from exc
    if outcome.retry_in is not None:
        raise self.retry(countdown=outcome.retry_in, max_retries=None)


@shared_task(name="stepflows.recover", ignore_result=True)
def recover() -> dict[str, int]:
    """Find stuck runs and resume them (run it periodically, e.g. with celery beat)."""
    from .engine.recovery import recover_stuck_runs

    return recover_stuck_runs().counts()
