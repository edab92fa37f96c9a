"""Experimental async execution: ``asyncio.gather`` / ``asyncio.wait`` of steps.

With ``@workflow(..., experimental_execution=True)`` an async workflow may
start steps concurrently with plain asyncio::

    a, b = await asyncio.gather(step.run("a", fa), step.run("b", fb))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

A new step does not run at once: it waits until the event loop has gone quiet
(every task that was going to start a step has started it). If one step is
waiting, it runs inline, like a sequential step. If several are, they form a
parallel group, dispatched as a chord like ``step.parallel``; the run resumes
when all of them have finished, so ``FIRST_COMPLETED`` and ``FIRST_EXCEPTION``
return at once on resume with every task done. Steps must be started in the
same order on every replay: start them from the tasks of one ``gather`` or
``wait`` call, not from tasks racing on timers or I/O.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..exceptions import LimitExceededError, NonDeterminismError
from ..models import StepStatus
from . import attempts
from .control import PlannedStep, Suspend, TargetReached

if TYPE_CHECKING:
    from .calls import StepCall
    from .host import Host as Invocation

# Loop iterations without a new step before the loop counts as quiet: a task
# may yield once or twice (asyncio.sleep(0)) before it reaches its step.
QUIET_TICKS = 3


class GatherScheduler:
    """Collects the steps that tasks start concurrently, then runs or plans them."""

    def __init__(self, invocation: Invocation) -> None:
        self.inv = invocation
        self.waiting: list[tuple[StepCall, asyncio.Future[Any]]] = []
        self.flush_scheduled = False
        self.quiet = 0
        # In a step task: the siblings of its step, parked until it has run.
        self.parked: list[asyncio.Future[Any]] = []
        self.inline_tasks: set[asyncio.Future[None]] = set()

    async def run(
        self,
        base_id: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        inv = self.inv
        # Once the invocation is over (a group planned, or a step task's own step
        # done), tasks that go on must not start anything new.
        if inv.suspended is not None:
            raise inv.suspended
        if inv.reached is not None:
            raise TargetReached(inv.reached)
        call = inv.new_call(base_id, fn, args, kwargs, timeout)
        record = call.record
        if record is not None and record.is_finished:
            return inv.replayed(call)
        if inv.target is not None:
            return await self._in_step_task(call)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((call, future))
        self.quiet = 0
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._tick)
        return await future

    async def _in_step_task(self, call: StepCall) -> Any:
        """A step task runs its own step and leaves its siblings waiting for ever."""
        inv = self.inv
        target = inv.target
        assert target is not None
        if call.position == target.position:
            outcome = await attempts.attempt_async(inv, call)
            inv.reached = outcome
            for parked in self.parked:
                if not parked.done():
                    parked.set_exception(TargetReached(outcome))
            raise TargetReached(outcome)
        if call.position >= target.group:
            if inv.reached is not None:
                raise TargetReached(inv.reached)
            parked = asyncio.get_running_loop().create_future()
            self.parked.append(parked)
            await parked
        raise NonDeterminismError(
            f"{inv.where(target.step_id)}: a step task reached unfinished step "
            f"{call.step_id!r} before its own group"
        )

    def _tick(self) -> None:
        if self.quiet < QUIET_TICKS:
            self.quiet += 1
            asyncio.get_running_loop().call_soon(self._tick)
            return
        self.flush_scheduled = False
        waiting, self.waiting = self.waiting, []
        if len(waiting) == 1:
            # Keep a reference: the loop holds tasks only weakly.
            self.inline_tasks.add(asyncio.ensure_future(self._run_inline(*waiting[0])))
        elif waiting:
            self._plan_group(waiting)

    async def _run_inline(self, call: StepCall, future: asyncio.Future[Any]) -> None:
        inv = self.inv
        try:
            # Checks the step limit, and suspends when a retry is not due yet.
            inv.unfinished(call)
            inv.still_ours()
            outcome = await attempts.attempt_async(inv, call)
            future.set_result(inv.after_attempt(call, outcome))
        except BaseException as exc:  # a StepError, or a signal for the whole invocation
            if not future.done():
                future.set_exception(exc)

    def _plan_group(self, waiting: list[tuple[StepCall, asyncio.Future[Any]]]) -> None:
        inv = self.inv
        group = min(call.position for call, _ in waiting)
        new = [call for call, _ in waiting if call.record is None]
        signal: BaseException
        if inv.memo.count + len(new) > inv.max_steps:
            signal = LimitExceededError(
                f"{inv.where()}: this group of {len(waiting)} concurrent steps would bring the "
                f"run to {inv.memo.count + len(new)} steps, over "
                f"STEPFLOWS['MAX_STEPS_PER_RUN'] = {inv.max_steps}"
            )
        else:
            planned = [
                PlannedStep(call.step_id, call.position, group, is_new=call.record is None)
                for call, _ in waiting
                if call.record is None or call.record.status != StepStatus.COMPLETED
            ]
            signal = inv.suspend(Suspend(planned=planned))
        for _, future in waiting:
            if not future.done():
                future.set_exception(signal)
