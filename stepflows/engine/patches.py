"""``step.patched`` and ``step.deprecate_patch``: changing a workflow with runs in flight.

``step.patched("id")`` is True for a run that reaches the call on new code
with nothing recorded from that point on, False for a run that recorded steps
past it under old code. The first answer is stored on the run as a patch
marker (a step row of kind ``patch``, its output the bool), so every later
replay gets the same one. A marker takes no position: the steps the
determinism check compares are the same with or without it, so the
``if step.patched(...)`` can later become ``step.deprecate_patch(...)``, then
go, without a replay noticing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import clock
from ..exceptions import NestedStepError, StepUsageError
from ..models import StepKind, StepStatus
from ..store.records import StepRecord
from .calls import current_step
from .memo import marker_id

if TYPE_CHECKING:
    from .host import Host as Invocation


def _check(inv: Invocation, patch: Any, verb: str) -> None:
    inside = current_step.get()
    if inside is not None:
        raise NestedStepError(
            f"{inv.where(inside)}: step.{verb}({patch!r}) was called inside step {inside!r}; "
            "call it from the workflow function"
        )
    if inv.plan is not None or inv.ids.forced is not None:
        raise StepUsageError(
            f"{inv.where()}: step.{verb}({patch!r}) cannot be called inside step.parallel; "
            "call it before the parallel group and choose the callables with its answer"
        )
    inv.ids.check(patch)


def patched(inv: Invocation, patch: Any) -> bool:
    """Whether this run takes the new code path of change ``patch`` (see the module doc)."""
    _check(inv, patch, "patched")
    answer = inv.memo.patches.get(patch)
    if answer is not None:
        return answer
    if inv.target is not None:
        # A step task replays what its run recorded before its group: a marker
        # written then would be here, so the run met this call on old code.
        return False
    position = inv.ids.position
    answer = not inv.memo.recorded_from(position)
    now = clock.now()
    marker = StepRecord(
        marker_id(patch),
        position,
        None,
        StepStatus.COMPLETED,
        output=answer,
        kind=StepKind.PATCH,
        started_at=now,
    )
    stored = inv.store_attempt(marker, exists=False)
    inv.memo.put(stored)
    return bool(stored.output)


def deprecate_patch(inv: Invocation, patch: Any) -> None:
    """Change ``patch`` is in every run now: the new path is the only one; nothing is stored."""
    _check(inv, patch, "deprecate_patch")
