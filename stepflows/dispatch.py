"""Sending stepflows' Celery messages: run invocations and parallel groups."""

from __future__ import annotations

from typing import Any

from celery import chord, group

from .conf import get_settings
from .engine.control import PlannedStep


def _options() -> dict[str, Any]:
    queue = get_settings().QUEUE
    return {"queue": queue} if queue else {}


def execute_run(run_id: Any, *, countdown: float | None = None, wake: int | None = None) -> None:
    """Queue an invocation of the run (for its wake-up number ``wake``, see ``Run.wake``)."""
    from .tasks import execute_run as task

    options = _options()
    if countdown:
        options["countdown"] = countdown
    kwargs = {"wake": wake} if wake is not None else {}
    task.apply_async(args=(str(run_id),), kwargs=kwargs, **options)


def parallel_group(run_id: Any, planned: list[PlannedStep], *, wake: int | None = None) -> None:
    """One task per planned step, joined by a chord whose callback resumes the run.

    The header tasks return nothing: step outputs live in Step rows, so the
    chord only carries the join.
    """
    from .tasks import resume_run, run_step

    options = _options()
    header = [
        run_step.si(str(run_id), p.step_id, p.position, p.group).set(**options) for p in planned
    ]
    kwargs = {"wake": wake} if wake is not None else {}
    callback = resume_run.si(str(run_id), **kwargs).set(**options)
    if _drop_callbacks():
        # Test hook: the crash between the chord's join and the callback's publish.
        group(header).apply_async()
        return
    chord(header)(callback)


def _drop_callbacks() -> bool:
    """True when the fault-injection suite asks to lose every chord callback."""
    import os

    return os.environ.get("STEPFLOWS_FAULT_DROP_CALLBACKS") == "1"
