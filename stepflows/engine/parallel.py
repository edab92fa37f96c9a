"""``step.parallel``: plan a group of steps, or return what its callables return.

Each callable starts exactly one step. While the group is being planned,
``step.run`` returns a finished step's stored output (so the callable goes on
and computes its value from it, e.g. ``lambda: step.run(...)["total"]``),
raises a failed step's ``StepError`` (a callable may catch it and return a
fallback), and stops the callable with :class:`~.control.Pending` when the
step has not finished. When any step is pending, the run suspends and the new
steps are sent as one task each; the invocation after the last one finishes
calls every callable again, and ``parallel`` returns their values in order.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..exceptions import (
    LimitExceededError,
    NestedStepError,
    NonDeterminismError,
    StepError,
    StepUsageError,
)
from ..models import StepStatus
from ..serialization import restore
from .calls import StepCall, current_step
from .control import Pending, PlannedStep
from .ids import FIX

if TYPE_CHECKING:
    from .host import Host as Invocation


@dataclass
class Plan:
    """Steps met inside one ``parallel`` call."""

    group: int
    errors: list[StepError] = field(default_factory=list)
    pending: list[StepCall] = field(default_factory=list)


def settle(plan: Plan, call: StepCall) -> Any:
    """``step.run`` inside a group being planned: the stored output, its error, or Pending."""
    record = call.record
    if record is not None and record.status == StepStatus.COMPLETED:
        return restore(record.output, call.annotation)
    if record is not None and record.status == StepStatus.FAILED:
        raise record.step_error()
    plan.pending.append(call)
    raise Pending()


def check_entry(inv: Invocation, callables: tuple[Any, ...]) -> None:
    if current_step.get() is not None:
        raise NestedStepError(
            f"{inv.where(current_step.get())}: step.parallel was called inside a step"
        )
    if inv.plan is not None:
        raise StepUsageError(f"{inv.where()}: step.parallel cannot be nested in step.parallel")
    for i, fn in enumerate(callables):
        if not callable(fn):
            raise StepUsageError(
                f"{inv.where()}: step.parallel takes callables that each start one step "
                f"(e.g. lambda: step.run('id', fn)); argument {i} is {fn!r}"
            )


def check_size(inv: Invocation, group: int, planned: int) -> None:
    """A group recorded with another number of steps than the code now plans: blocked.

    A group's rows are stored together, when it is first planned: the rows at
    ``group`` and after it that belong to it are the group as recorded. It
    has shrunk when more of them follow one another than the code plans; it
    has grown when fewer do and the run went on past them (the next row is
    another step). A missing row (a failed step a fork did not copy) is
    planned again, as before.
    """
    recorded: list[str] = []
    while (record := inv.memo.get(group + len(recorded))) is not None and record.group == group:
        recorded.append(record.step_id)
    if not recorded or len(recorded) == planned:
        return
    after = inv.memo.get(group + len(recorded))
    if len(recorded) < planned and after is None:
        return
    shown = ", ".join(repr(r) for r in recorded[:5]) + (", ..." if len(recorded) > 5 else "")
    raise inv.diverge(
        NonDeterminismError(
            f"{inv.where()}: recorded parallel group at position {group} has {len(recorded)} "
            f"steps ({shown}), code now plans {planned}. " + FIX
        )
    )


def _check_one_step(inv: Invocation, index: int, before: int) -> None:
    started = inv.ids.position - before
    if started != 1:
        raise StepUsageError(
            f"{inv.where()}: each callable given to step.parallel must start exactly one "
            f"step; callable {index} started {started}"
        )


def _outcome(inv: Invocation, plan: Plan, values: list[Any]) -> tuple[Any, ...]:
    if plan.pending:
        raise inv.group_pending(plan)
    if plan.errors:
        raise plan.errors[0]
    return tuple(values)


def planned_steps(inv: Invocation, plan: Plan) -> list[PlannedStep]:
    new = [c for c in plan.pending if c.record is None]
    if inv.memo.count + len(new) > inv.max_steps:
        raise LimitExceededError(
            f"{inv.where()}: this parallel group would bring the run to "
            f"{inv.memo.count + len(new)} steps, over STEPFLOWS['MAX_STEPS_PER_RUN'] = "
            f"{inv.max_steps}. Split the work into several runs (step.send_event) or raise "
            "the limit."
        )
    return [
        PlannedStep(c.step_id, c.position, plan.group, is_new=c.record is None)
        for c in plan.pending
    ]


def run_sync(inv: Invocation, callables: tuple[Callable[[], Any], ...]) -> tuple[Any, ...]:
    check_entry(inv, callables)
    if not callables:
        return ()
    own = inv.own_callable(len(callables))
    if own is not None:
        callables[own]()
        raise inv.missed_target()
    check_size(inv, inv.ids.position, len(callables))
    plan = inv.plan = Plan(inv.ids.position)
    values: list[Any] = []
    try:
        for i, fn in enumerate(callables):
            before = inv.ids.position
            try:
                values.append(fn())
            except Pending:
                values.append(None)
            except StepError as exc:
                plan.errors.append(exc)
                values.append(None)
            _check_one_step(inv, i, before)
    finally:
        inv.plan = None
    return _outcome(inv, plan, values)


async def run_async(
    inv: Invocation, callables: tuple[Callable[[], Awaitable[Any]], ...]
) -> tuple[Any, ...]:
    check_entry(inv, callables)
    if not callables:
        return ()
    own = inv.own_callable(len(callables))
    if own is not None:
        await callables[own]()
        raise inv.missed_target()
    check_size(inv, inv.ids.position, len(callables))
    plan = inv.plan = Plan(inv.ids.position)
    values: list[Any] = []
    try:
        for i, fn in enumerate(callables):
            before = inv.ids.position
            try:
                result = fn()
                values.append(await result if inspect.isawaitable(result) else result)
            except Pending:
                values.append(None)
            except StepError as exc:
                plan.errors.append(exc)
                values.append(None)
            _check_one_step(inv, i, before)
    finally:
        inv.plan = None
    return _outcome(inv, plan, values)
