"""One invocation of a workflow function: replay from the memo, then go on.

The function is called from the top every time. Each step call meets one
decision (:meth:`Invocation.decide_call`): a finished step returns its stored
output or raises its error; inside ``parallel`` the step is settled by the
group's plan; a new step runs inline (sequential) under the run's lease. A
step task is an invocation in another mode (:mod:`.step_task`): it replays
up to its own step and runs only that one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync

from .. import clock, tracing
from ..conf import get_settings
from ..context import Context
from ..events import Event
from ..exceptions import LimitExceededError, NestedStepError, NonDeterminismError, StepUsageError
from ..models import Run, StepKind, StepStatus
from ..registry import Workflow
from ..serialization import restore
from ..store import steps as step_store
from ..store.records import StepRecord
from . import attempts, parallel
from .calls import StepCall, current_step
from .control import LeaseLost, Pending, StepOutcome, Suspend, TargetReached
from .heartbeat import Lease, RunningStep, heartbeat
from .ids import StepIds, Target, mismatch
from .memo import Memo

# The longest step timeout (a year, in seconds); leave it out for none.
MAX_STEP_TIMEOUT = 365 * 24 * 3600.0

# Sentinel: the decision is to run the step's function now.
RUN_NOW = object()


class Invocation:
    """State of one call of a workflow function, executing the run inline."""

    # Signals that end the invocation; never recorded as a step's failure.
    SIGNALS: tuple[type[BaseException], ...] = (Suspend, Pending, TargetReached, LeaseLost)
    target: Target | None = None

    def __init__(
        self,
        *,
        run: Run,
        workflow: Workflow,
        memo: Memo,
        event: Event,
        token: str = "",
        lease: Lease | None = None,
    ) -> None:
        self.run = run
        self.run_id = str(run.id)
        self.workflow = workflow
        self.workflow_id = workflow.id
        # The span of this invocation (a no-op unless tracing is on, see stepflows.tracing).
        self.span = tracing.SpanHandle()
        self.memo = memo
        self.token = token
        self.lease = lease
        conf = get_settings()
        self.retries = workflow.retries if workflow.retries is not None else conf.RETRIES
        self.max_steps = conf.MAX_STEPS_PER_RUN
        self.max_state = conf.MAX_STATE_BYTES
        self.ids = StepIds(self.where, conf.MAX_STEP_ID_LENGTH)
        self.plan: parallel.Plan | None = None
        # The inline attempt running now, shown running by the heartbeat past a moment.
        self.attempt: _Attempt | None = None
        self.suspended: Suspend | None = None
        # The code left the recorded history: the run is blocked, even if the
        # workflow caught the error (see runner._invoke).
        self.diverged: NonDeterminismError | None = None
        # In a step task: the outcome of its step, once it ran.
        self.reached: StepOutcome | None = None
        # experimental_execution=True: asyncio.gather / asyncio.wait of step.run
        # calls become parallel groups.
        self.scheduler: Any = None
        if workflow.is_async and workflow.experimental_execution:
            from .experimental import GatherScheduler

            self.scheduler = GatherScheduler(self)
        self.ctx = Context(
            event=event,
            run_id=self.run_id,
            workflow_id=workflow.id,
            replaying=self._replaying,
        )

    # -- where ----------------------------------------------------------------

    def where(self, step_id: str | None = None) -> str:
        text = f"workflow {self.workflow.id!r}, run {self.run_id}"
        return f"{text}, step {step_id!r}" if step_id else text

    def _replaying(self) -> bool:
        return self.memo.is_replaying(self.ids.position)

    # -- calling the workflow -------------------------------------------------

    def call_workflow(self, step_tools: Any) -> Any:
        if self.workflow.is_async:
            # async_to_sync, not asyncio.run: the step functions and the store's
            # writes (sync_to_async) come back to this thread, so they use its
            # database connection (a test's transaction included) and a step's
            # timeout can interrupt it.
            return async_to_sync(self.workflow.fn)(self.ctx, step_tools)
        return self.workflow.fn(self.ctx, step_tools)

    def suspend(self, signal: Suspend) -> Suspend:
        self.suspended = signal
        return signal

    def diverge(self, error: NonDeterminismError) -> NonDeterminismError:
        """The code no longer matches the run's recorded steps: remember it, then raise it."""
        if self.diverged is None:
            self.diverged = error
        return error

    # -- one step call ----------------------------------------------------------------

    def new_call(
        self,
        base_id: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> StepCall:
        step = current_step.get()
        if step is not None:
            raise NestedStepError(
                f"{self.where(step)}: step {base_id!r} was called inside step {step!r}. Call "
                "steps from the workflow function only, not from inside another step's function."
            )
        self.ids.check(base_id)
        if not callable(fn):
            raise StepUsageError(
                f"{self.where(base_id)}: step.run needs a function to call, got {fn!r}"
            )
        if timeout is not None and not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and 0 < timeout <= MAX_STEP_TIMEOUT
        ):
            raise StepUsageError(
                f"{self.where(base_id)}: timeout must be a number of seconds above 0 and at "
                f"most a year ({MAX_STEP_TIMEOUT:g}), got {timeout!r}; leave it out for no limit"
            )
        step_id, position = self.ids.next(base_id)
        record = self.memo.get(position)
        if record is not None and (record.step_id != step_id or record.kind != StepKind.RUN):
            raise self.diverge(mismatch(self.where(), record.named, position, repr(step_id)))
        group = self.plan.group if self.plan is not None else None
        call = StepCall(step_id, position, record, fn, args, kwargs, group, timeout)
        self.place(call)
        return call

    def place(self, call: StepCall) -> None:
        """Hook for the step-task mode, which puts its own step in its group."""

    def replayed(self, call: StepCall) -> Any:
        """Outcome of a finished step, from the memo."""
        record = call.record
        assert record is not None
        if record.status == "completed":
            return restore(record.output, call.annotation)
        raise record.step_error()

    def decide_call(self, call: StepCall) -> Any:
        """Settle a step call without running it when possible; else return RUN_NOW."""
        record = call.record
        if record is not None and record.diverged:
            # A parallel step's task replayed code that did not match: the run is
            # blocked, not failed, and a retry runs that step again.
            message = str((record.error or {}).get("message", ""))
            raise self.diverge(NonDeterminismError(message))
        if self.plan is not None:
            return parallel.settle(self.plan, call)
        record = call.record
        if record is not None and record.is_finished:
            return self.replayed(call)
        return self.unfinished(call)

    def unfinished(self, call: StepCall) -> Any:
        """A step that has not finished, outside ``parallel``: run it inline now or later."""
        record = call.record
        if record is not None and record.status == StepStatus.RUNNING:
            # Shown running by an invocation that never ended the attempt (its worker stopped).
            call.record = record = record.before_unended_attempt()
        if record is None and self.memo.count + 1 > self.max_steps:
            raise LimitExceededError(
                f"{self.where(call.step_id)}: the run would have more than "
                f"STEPFLOWS['MAX_STEPS_PER_RUN'] = {self.max_steps} steps. Split the work into "
                "several runs (step.send_event) or raise the limit."
            )
        if record is not None and record.retry_at is not None:
            wait = (record.retry_at - clock.now()).total_seconds()
            if wait > 0.05:
                raise self.suspend(Suspend(countdown=wait))
        return RUN_NOW

    def still_ours(self) -> None:
        """Before running a step: stop when a heartbeat found the lease lost."""
        if self.lease is not None:
            self.lease.check()

    def after_attempt(self, call: StepCall, outcome: StepOutcome) -> Any:
        if outcome.completed:
            return outcome.value
        if outcome.error is not None:
            raise outcome.error
        raise self.suspend(Suspend(countdown=outcome.retry_in))

    def begin_attempt(self, call: StepCall) -> None:
        """An inline step's code starts: the heartbeat shows it if it runs past a moment."""
        step = None
        if self.lease is not None and self.target is None and call.group is None:
            step = heartbeat.show_running(
                self.lease,
                lambda started: attempts.running_record(call, started),
                exists=call.record is not None,
            )
        self.attempt = _Attempt(step)

    def end_attempt(self) -> bool:
        """Show the attempt no longer; True when its running row was written."""
        attempt = self.attempt
        if attempt is None:
            return False
        if attempt.step is not None:
            attempt.shown = heartbeat.stop_running(attempt.step)
            attempt.step = None
        return attempt.shown

    def store_attempt(self, record: StepRecord, *, exists: bool) -> StepRecord:
        """Write one attempt's record under the run's lease.

        A step attempt that finished after its run was cancelled is recorded
        all the same, marked as such (see
        :func:`~stepflows.store.steps.record_after_cancel`); the invocation
        still stops (:class:`LeaseLost`).
        """
        attempt = self.attempt
        exists = self.end_attempt() or exists
        try:
            return step_store.record_inline(self.run_id, self.token, record, exists=exists)
        except LeaseLost as lost:
            if lost.cancelled and attempt is not None and record.kind == StepKind.RUN:
                step_store.record_after_cancel(self.run_id, self.token, record, exists=exists)
            raise

    def _step_span(self, call: StepCall) -> Any:
        number = call.record.attempt_number if call.record else 0
        return tracing.step_span(self.workflow.id, self.run_id, call.step_id, number)

    def attempt_sync(self, call: StepCall) -> StepOutcome:
        self.begin_attempt(call)
        try:
            with self._step_span(call) as span:
                outcome = attempts.attempt_sync(self, call)
                _traced(span, outcome)
                return outcome
        finally:
            self.end_attempt()
            self.attempt = None

    async def attempt_async(self, call: StepCall) -> StepOutcome:
        self.begin_attempt(call)
        try:
            with self._step_span(call) as span:
                outcome = await attempts.attempt_async(self, call)
                _traced(span, outcome)
                return outcome
        finally:
            self.end_attempt()
            self.attempt = None

    def run_sync(
        self,
        base_id: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        call = self.new_call(base_id, fn, args, kwargs, timeout)
        decided = self.decide_call(call)
        if decided is not RUN_NOW:
            return decided
        self.still_ours()
        return self.after_attempt(call, self.attempt_sync(call))

    async def run_async(
        self,
        base_id: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> Any:
        if self.scheduler is not None and self.plan is None:
            return await self.scheduler.run(base_id, fn, args, kwargs, timeout)
        call = self.new_call(base_id, fn, args, kwargs, timeout)
        decided = self.decide_call(call)
        if decided is not RUN_NOW:
            return decided
        self.still_ours()
        return self.after_attempt(call, await self.attempt_async(call))

    # -- step.parallel ---------------------------------------------------------------

    def parallel_sync(self, callables: tuple[Callable[[], Any], ...]) -> tuple[Any, ...]:
        return parallel.run_sync(self, callables)

    async def parallel_async(
        self, callables: tuple[Callable[[], Awaitable[Any]], ...]
    ) -> tuple[Any, ...]:
        return await parallel.run_async(self, callables)

    def own_callable(self, count: int) -> int | None:
        """In a step task, the index of its step's callable in this group; else None."""
        return None

    def missed_target(self) -> BaseException:
        raise AssertionError("only a step task has a target")

    def group_pending(self, plan: parallel.Plan) -> BaseException:
        """A group has unfinished steps: suspend the run and send them."""
        return self.suspend(Suspend(planned=parallel.planned_steps(self, plan)))


def _traced(span: tracing.SpanHandle, outcome: StepOutcome) -> None:
    if span.span is None:
        return
    if outcome.completed:
        span.set_status(StepStatus.COMPLETED)
    elif outcome.error is not None:
        error = outcome.error
        span.set_status(StepStatus.FAILED, f"{error.error_type}: {error.error_message}")
    else:
        span.set_status("retrying", "the attempt failed; retried")


class _Attempt:
    """The inline attempt in progress: its showing (until it ends) and whether it was shown."""

    __slots__ = ("shown", "step")

    def __init__(self, step: RunningStep | None) -> None:
        self.step = step
        self.shown = False
