"""Sending stepflows' Celery messages: run invocations and parallel groups."""

from __future__ import annotations

import os
from typing import Any

from celery import group

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
    """One task per planned step; the last one to finish resumes the run.

    Semantically this is the Celery chord of the design (header: the step
    tasks; callback: ``resume_run``), with the join kept on the run row
    (``Run.join_pending``, counted down in the transaction that records each
    step, see ``recording.save_step``) instead of in the result backend: the
    callback needs no header results, since outputs live in Step rows. So the
    step tasks store no results. A callback lost between that commit and its
    publish leaves a waiting run whose group has finished; recovery finds and
    resumes it, as it would a chord whose callback was lost. ``wake`` is the
    run's wake-up number when it suspended; the callback carries it.
    """
    from .tasks import run_step

    options = {**_options(), "ignore_result": True}
    group(
        run_step.si(str(run_id), p.step_id, p.position, p.group).set(**options) for p in planned
    ).apply_async()


def resume_run(run_id: Any, *, wake: int | None = None) -> None:
    """Queue the re-invocation of a run whose parallel group finished (the chord callback)."""
    from .tasks import resume_run as task

    if _drop_callbacks():
        # Test hook: the crash between the join's commit and the callback's publish.
        return
    kwargs = {"wake": wake} if wake is not None else {}
    task.apply_async(args=(str(run_id),), kwargs=kwargs, **_options())


def _drop_callbacks() -> bool:
    """True when the fault-injection suite asks to lose every group's callback."""
    return os.environ.get("STEPFLOWS_FAULT_DROP_CALLBACKS") == "1"
