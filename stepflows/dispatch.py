"""Sending stepflows' Celery messages: run invocations and parallel groups."""

from __future__ import annotations

from typing import Any

from celery import group

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
    """One task per planned step; the last one to finish resumes the run.

    Semantically this is the Celery chord of the design (header: the step
    tasks; callback: ``resume_run``), with the join kept on the run row
    (``Run.join_pending``, counted down in the transaction that records each
    step, see ``recording.save_step``) instead of in the result backend: the
    callback needs no header results, since outputs live in Step rows. So the
    step tasks store no results. A callback lost between that commit and its
    publish leaves a waiting run whose group has finished; recovery finds and
    resumes it, as it would a chord whose callback was lost.
    """
    from .tasks import run_step

    options = {**_options(), "ignore_result": True}
    group(
        run_step.si(str(run_id), p.step_id, p.position, p.group).set(**options) for p in planned
    ).apply_async()


def resume_run(run_id: Any) -> None:
    """Queue the re-invocation of a run whose parallel group finished (the chord callback)."""
    from .tasks import resume_run as task

    task.apply_async(args=(str(run_id),), **_options())
