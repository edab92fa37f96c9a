"""Forking a run from a step: a new run that keeps the outputs of the steps before it.

The new run belongs to the same workflow and event (and parent) as the
original, records where it came from (``forked_from``, ``fork_step``), and
starts with copies of the original's completed steps that come before the
step it forks from, at the same positions. Replay finds them in the memo and
returns their outputs without running their code; everything from the fork
step on executes anew. A parallel group is kept or executed again as a
whole, so forking from a step inside a group forks from the group's start.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from ..exceptions import RunStateError, StepflowsError
from ..models import ACTIVE_RUN_STATUSES, Run, Step, StepStatus
from .events import create_runs

#: The columns of a step that a fork copies (not its lease, heartbeat or retry time).
COPIED = (
    "step_id",
    "position",
    "group",
    "status",
    "output",
    "output_bytes",
    "error",
    "started_at",
    "ended_at",
    "attempts",
    "attempt_count",
    "attempts_base",
    "kind",
    "wake_at",
    "wait",
)


class UnknownStepError(StepflowsError, LookupError):
    """The run has no step with this id: fork from one of the steps it recorded."""


def fork_run(run_id: Any, from_step: str) -> Run:
    """Store the forked run and its copied steps; it is published after commit.

    Raises ``Run.DoesNotExist``, :class:`RunStateError` when the original is
    still active (it would run twice), or :class:`UnknownStepError`.
    """
    with transaction.atomic():
        original = Run.objects.select_for_update().filter(pk=run_id).first()
        if original is None:
            raise Run.DoesNotExist(f"no run with id {run_id}")
        where = f"run {original.pk} of workflow {original.workflow_id!r}"
        if original.status in ACTIVE_RUN_STATUSES:
            raise RunStateError(
                f"{where} is {original.status}; cancel it first, then fork it "
                "(a fork of an active run would execute the same steps twice)"
            )
        steps = list(Step.objects.filter(run_id=original.pk).order_by("position"))
        target = next((s for s in steps if s.step_id == from_step), None)
        if target is None:
            ids = ", ".join(s.step_id for s in steps[:50]) or "none: it recorded no steps"
            more = f" (and {len(steps) - 50} more)" if len(steps) > 50 else ""
            raise UnknownStepError(
                f"{where} has no step {from_step!r}; fork from one of its steps: {ids}{more}"
            )
        cutoff = target.group if target.group is not None else target.position
        kept = [s for s in steps if s.position < cutoff and s.status == StepStatus.COMPLETED]
        new = Run(
            workflow_id=original.workflow_id,
            event_id=original.event_id,
            parent_id=original.parent_id,
            batch=original.batch,
            forked_from_id=original.pk,
            fork_step=from_step,
            state_bytes=sum(s.output_bytes for s in kept),
        )
        create_runs([new])
        Step.objects.bulk_create(
            [Step(run_id=new.pk, **{f: getattr(s, f) for f in COPIED}) for s in kept],
            batch_size=500,
        )
    return new
