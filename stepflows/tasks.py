"""Thin Celery tasks: each calls the engine.

Registered with ``shared_task`` so they bind to the project's Celery app.
A task whose database connection fails retries itself with the same lease
token, so it takes its run (or step) back at once.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .celery_config import RECOVERY_TASK
from .engine.retry import backoff
from .engine.runner import TRANSIENT_DB_ERRORS, execute_step_task
from .engine.runner import execute_run as run_invocation
from .store.fence import new_token

ONCE: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}


def _retry_later(task: Any, exc: Exception, token: str) -> Exception:
    """Retry the task after a backoff when the database connection failed.

    Such a failure says nothing about the workflow or its steps, so it uses
    none of their retries; the task is retried until the database is back,
    with the lease token of this try.
    """
    kwargs = {**task.request.kwargs, "token": token}
    return task.retry(
        exc=exc,
        kwargs=kwargs,
        countdown=backoff(min(task.request.retries, 10)),
        max_retries=None,
    )


def _invoke(task: Any, run_id: str, wake: int | None, token: str | None, trace: str | None) -> None:
    token = token or new_token()
    try:
        run_invocation(run_id, wake=wake, token=token, trace=trace)
    except TRANSIENT_DB_ERRORS as exc:
        raise _retry_later(task, exc, token) from exc


@shared_task(name="stepflows.execute_run", bind=True, ignore_result=True, **ONCE)
def execute_run(
    self: Any,
    run_id: str,
    wake: int | None = None,
    token: str | None = None,
    trace: str | None = None,
) -> None:
    """Invoke a run's workflow function (its first invocation, or after a retry delay).

    ``trace``: the W3C traceparent of the code that sent the message (see stepflows.tracing).
    """
    _invoke(self, run_id, wake, token, trace)


@shared_task(name="stepflows.resume_run", bind=True, ignore_result=True, **ONCE)
def resume_run(
    self: Any,
    run_id: str,
    wake: int | None = None,
    token: str | None = None,
    trace: str | None = None,
) -> None:
    """Chord callback of a parallel group: re-invoke the run with every step's output."""
    _invoke(self, run_id, wake, token, trace)


@shared_task(name="stepflows.run_step", bind=True, ignore_result=True, max_retries=None, **ONCE)
def run_step(
    self: Any,
    run_id: str,
    step_id: str,
    position: int,
    group: int,
    wake: int | None = None,
    token: str | None = None,
    trace: str | None = None,
) -> None:
    """Run one step of a parallel group; retried on its own until it finishes."""
    token = token or new_token()
    try:
        outcome = execute_step_task(
            run_id, step_id, position, group, wake=wake, token=token, trace=trace
        )
    except TRANSIENT_DB_ERRORS as exc:
        raise _retry_later(self, exc, token) from exc
    if outcome.retry_in is not None:
        kwargs = {k: v for k, v in self.request.kwargs.items() if k != "token"}
        raise self.retry(kwargs=kwargs, countdown=outcome.retry_in, max_retries=None)


@shared_task(name=RECOVERY_TASK, ignore_result=True)
def recover() -> dict[str, int]:
    """Wake runs whose wait is due, then find stuck runs and resume them.

    Run it periodically, e.g. with celery beat (``stepflows.celery_config.beat_schedule``).
    """
    from .engine.recovery import recover_stuck_runs
    from .engine.sweep import sweep

    return {**sweep(), **recover_stuck_runs().counts()}
