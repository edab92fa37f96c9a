"""The step-task mode of an invocation: replay up to one parallel step, run only it.

A step task replays the workflow with the memo of the steps before its group;
when the replay reaches its group, only the callable of its own step is
called, with that step's id and position forced, so lambdas and closures
work. It writes under the step's own lease (see :mod:`stepflows.store.steps`)
and stops with :class:`~.control.TargetReached` once its step has run.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import NonDeterminismError
from ..store import steps as step_store
from ..store.records import StepRecord
from . import parallel
from .calls import StepCall
from .control import StepOutcome, TargetReached
from .heartbeat import heartbeat
from .ids import FIX, Target
from .invocation import RUN_NOW, Invocation


class StepTaskInvocation(Invocation):
    """An invocation that runs exactly one step of a parallel group."""

    def __init__(self, *, target: Target, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target: Target = target

    def _replaying(self) -> bool:
        return True

    def place(self, call: StepCall) -> None:
        if call.position == self.target.position:
            call.group = self.target.group

    def unfinished(self, call: StepCall) -> Any:
        if call.position == self.target.position:
            return RUN_NOW
        raise NonDeterminismError(
            f"{self.where(call.step_id)}: a step task for {self.target.step_id!r} reached "
            f"step {call.step_id!r}, which has not finished, before its parallel group"
        )

    def after_attempt(self, call: StepCall, outcome: StepOutcome) -> Any:
        self.reached = outcome
        raise TargetReached(outcome)

    def store_attempt(self, record: StepRecord, *, exists: bool) -> StepRecord:
        """Write one attempt's record under the step's own lease."""
        if self.lease is not None:
            # The attempt is over: no heartbeat may mark the step running from now on.
            heartbeat.release(self.lease)
        return step_store.record_parallel(self.run_id, self.token, record, max_state=self.max_state)

    def own_callable(self, count: int) -> int | None:
        if self.target.group != self.ids.position:
            return None
        index = self.target.position - self.target.group
        if not 0 <= index < count:
            raise NonDeterminismError(
                f"{self.where(self.target.step_id)}: recorded parallel group at position "
                f"{self.target.group} has this step as number {index + 1}, code now plans "
                f"{count}. {FIX}"
            )
        self.ids.force(self.target)
        return index

    def missed_target(self) -> BaseException:
        return NonDeterminismError(
            f"{self.where(self.target.step_id)}: the callable planned for this step did not "
            "start a step on replay"
        )

    def group_pending(self, plan: parallel.Plan) -> BaseException:
        return NonDeterminismError(
            f"{self.where(self.target.step_id)}: a parallel group before this step's own "
            "group has unfinished steps"
        )
