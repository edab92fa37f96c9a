"""Sending stepflows' Celery messages: run invocations and parallel groups."""

from __future__ import annotations

from typing import Any

from celery import chord

from .conf import get_settings
from .engine.control import PlannedStep


def _options() -> dict[str, Any]:
    queue = get_settings().QUEUE
    return {"queue": queue} if queue else {}


def execute_run(run_id: Any, *, countdown: float | None = None) -> None:
    """Queue an invocation of the run."""
    from .tasks import execute_run as task

    options = _options()
    if countdown:
        options["countdown"] = countdown
    task.apply_async(args=(str(run_id),), **options)


def parallel_group(run_id: Any, planned: list[PlannedStep]) -> None:
    """One task per planned step, joined by a chord whose callback resumes the run.

    The header tasks return nothing: step outputs live in Step rows, so the
    chord only carries the join.
    """
    from .tasks import resume_run, run_step

    options = _options()
    header = [
        run_step.si(str(run_id), p.step_id, p.position, p.group).set(**options) for p in planned
    ]
    chord(header)(resume_run.si(str(run_id)).set(**options))
