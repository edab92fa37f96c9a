"""One invocation of a workflow function: replay from the memo, then go on.

The function is called from the top every time. Each step call gets an id
(with a counter suffix on repeats) and a position; a finished step returns
its stored output, a new one runs inline (sequential) or is planned for a
Celery chord (inside ``parallel``). In a step task, the invocation replays up
to the step's parallel group and runs only that one step.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from ..conf import get_settings
from ..context import Context
from ..events import Event
from ..exceptions import (
    InvalidEventError,
    LimitExceededError,
    NestedStepError,
    NonDeterminismError,
    NonRetriableError,
    OutputSerializationError,
    StepError,
    StepUsageError,
)
from ..models import Run, StepStatus
from ..registry import Workflow
from . import recording
from .control import Cancelled, PlannedStep, StepOutcome, Suspend, TargetReached
from .memo import Memo, StepRecord
from .retry import delay_for
from .serialization import restore, return_type, to_json

MAX_TRACEBACK_CHARS = 20_000
# Seconds after which a new inline step checks for cancellation with its own query.
CANCEL_CHECK_AFTER = 1.0

# The step whose function is running. A context variable, not an attribute:
# in experimental async mode several asyncio tasks share one invocation, and
# only code inside a step's own task is "inside" that step.
_current_step: ContextVar[str | None] = ContextVar("stepflows_current_step", default=None)

# Errors that no retry can mend (invalid events sent by a step stay invalid).
FINAL_ERRORS = (
    InvalidEventError,
    NonRetriableError,
    NestedStepError,
    NonDeterminismError,
    LimitExceededError,
    OutputSerializationError,
    StepUsageError,
)


@dataclass(frozen=True)
class Target:
    """The one step a step task runs."""

    step_id: str
    position: int
    group: int


@dataclass
class StepCall:
    step_id: str
    position: int
    record: StepRecord | None
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    group: int | None = None

    @property
    def annotation(self) -> Any:
        return return_type(self.fn)


@dataclass
class Plan:
    """Steps met inside one ``parallel`` call."""

    group: int
    values: list[Any] = field(default_factory=list)
    errors: list[StepError] = field(default_factory=list)
    pending: list[StepCall] = field(default_factory=list)


def error_dict(exc: BaseException) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": tb[-MAX_TRACEBACK_CHARS:],
    }


class Invocation:
    """State of one call of a workflow function."""

    def __init__(
        self,
        *,
        run: Run,
        workflow: Workflow,
        memo: Memo,
        event: Event,
        token: str | None = None,
        target: Target | None = None,
    ) -> None:
        self.run = run
        self.run_id = str(run.id)
        self.workflow = workflow
        self.memo = memo
        self.token = token
        self.target = target
        conf = get_settings()
        self.retries = workflow.retries if workflow.retries is not None else conf.RETRIES
        self.max_steps = conf.MAX_STEPS_PER_RUN
        self.max_state = conf.MAX_STATE_BYTES
        self.max_step_id = conf.MAX_STEP_ID_LENGTH
        self.lease_seconds = conf.LEASE_SECONDS
        self.lease_renew_at = timezone.now() + timedelta(seconds=conf.LEASE_SECONDS / 2)
        self.counters: dict[str, int] = {}
        self.position = 0
        self.plan: Plan | None = None
        self.forced: Target | None = None
        self.suspended: Suspend | None = None
        # In a step task: the outcome of its step, once it ran.
        self.reached: StepOutcome | None = None
        # experimental_execution=True: asyncio.gather / asyncio.wait of step.run
        # calls become parallel groups.
        self.scheduler: Any = None
        if workflow.is_async and workflow.experimental_execution:
            from .experimental import GatherScheduler

            self.scheduler = GatherScheduler(self)
        # When the run was last seen not cancelled (claimed, or a step recorded).
        self.confirmed_at = time.monotonic()
        self.ctx = Context(
            event=event,
            run_id=self.run_id,
            workflow_id=workflow.id,
            replaying=self._replaying,
        )

    @property
    def current_step(self) -> str | None:
        return _current_step.get()

    @current_step.setter
    def current_step(self, step_id: str | None) -> None:
        _current_step.set(step_id)

    # -- where ----------------------------------------------------------------

    def where(self, step_id: str | None = None) -> str:
        text = f"workflow {self.workflow.id!r}, run {self.run_id}"
        return f"{text}, step {step_id!r}" if step_id else text

    def _replaying(self) -> bool:
        return self.target is not None or self.memo.is_replaying(self.position)

    # -- calling the workflow -------------------------------------------------

    def call_workflow(self, step_tools: Any) -> Any:
        if self.workflow.is_async:
            return asyncio.run(self.workflow.fn(self.ctx, step_tools))
        return self.workflow.fn(self.ctx, step_tools)

    def suspend(self, signal: Suspend) -> Suspend:
        self.suspended = signal
        return signal

    # -- step ids ---------------------------------------------------------------

    def new_call(
        self, base_id: Any, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> StepCall:
        if self.current_step is not None:
            raise NestedStepError(
                f"{self.where(self.current_step)}: step {base_id!r} was called inside step "
                f"{self.current_step!r}. Call steps from the workflow function only, not from "
                "inside another step's function."
            )
        self._check_id(base_id)
        if not callable(fn):
            raise StepUsageError(
                f"{self.where(base_id)}: step.run needs a function to call, got {fn!r}"
            )
        if self.forced is not None:
            forced, self.forced = self.forced, None
            if forced.step_id.split(":", 1)[0] != base_id:
                raise NonDeterminismError(
                    f"{self.where()}: parallel group at position {forced.group} expected step "
                    f"{forced.step_id!r} but its callable started step {base_id!r}"
                )
            step_id, position = forced.step_id, forced.position
            self.position = position + 1
        else:
            n = self.counters.get(base_id, 0)
            self.counters[base_id] = n + 1
            step_id = base_id if n == 0 else f"{base_id}:{n}"
            position = self.position
            self.position += 1
        record = self.memo.get(position)
        if record is not None and record.step_id != step_id:
            raise NonDeterminismError(
                f"{self.where()}: the recorded history has step {record.step_id!r} at position "
                f"{position}, but this replay reached step {step_id!r} there. Code outside "
                "steps must take the same path on every replay; move anything random, "
                "time-dependent or external into a step."
            )
        group = self.plan.group if self.plan is not None else None
        if self.target is not None and self.target.position == position:
            group = self.target.group
        return StepCall(step_id, position, record, fn, args, kwargs, group)

    def _check_id(self, base_id: Any) -> None:
        if not isinstance(base_id, str) or not base_id:
            raise StepUsageError(
                f"{self.where()}: a step id must be a non-empty string, got {base_id!r}"
            )
        if ":" in base_id:
            raise StepUsageError(
                f"{self.where()}: step id {base_id!r} contains ':', which stepflows keeps for "
                "its own counter suffix (id, id:1, id:2...). Use '-' or '.' instead."
            )
        if len(base_id) > self.max_step_id:
            raise StepUsageError(
                f"{self.where()}: step id {base_id[:40]!r}... is {len(base_id)} characters "
                f"long; the limit is STEPFLOWS['MAX_STEP_ID_LENGTH'] = {self.max_step_id}"
            )

    # -- step.run -------------------------------------------------------------------

    def replayed(self, call: StepCall) -> Any:
        """Outcome of a finished step, from the memo."""
        record = call.record
        assert record is not None
        if record.status == StepStatus.COMPLETED:
            return restore(record.output, call.annotation)
        raise record.step_error()

    def run_sync(self, base_id: Any, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        call = self.new_call(base_id, fn, args, kwargs)
        early = self._before_attempt(call)
        if early is not _RUN:
            return early
        self._still_ours(call)
        outcome = self.attempt_sync(call)
        return self._after_attempt(call, outcome)

    async def run_async(
        self, base_id: Any, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.scheduler is not None and self.plan is None:
            return await self.scheduler.run(base_id, fn, args, kwargs)
        call = self.new_call(base_id, fn, args, kwargs)
        early = self._before_attempt(call)
        if early is not _RUN:
            return early
        await sync_to_async(self._still_ours)(call)
        outcome = await self.attempt_async(call)
        return self._after_attempt(call, outcome)

    def _before_attempt(self, call: StepCall) -> Any:
        """Settle the call without running it when possible; else return _RUN."""
        record = call.record
        if self.plan is not None:
            self._add_to_plan(call)
            return _PLANNED
        if record is not None and record.is_finished:
            return self.replayed(call)
        if self.target is not None:
            if call.position == self.target.position:
                return _RUN
            raise NonDeterminismError(
                f"{self.where(call.step_id)}: a step task for {self.target.step_id!r} reached "
                f"step {call.step_id!r}, which has not finished, before its parallel group"
            )
        if record is None and self.memo.count + 1 > self.max_steps:
            raise LimitExceededError(
                f"{self.where(call.step_id)}: the run would have more than "
                f"STEPFLOWS['MAX_STEPS_PER_RUN'] = {self.max_steps} steps. Split the work into "
                "several runs (step.send_event) or raise the limit."
            )
        if record is not None and record.retry_at is not None:
            wait = (record.retry_at - timezone.now()).total_seconds()
            if wait > 0.05:
                raise self.suspend(Suspend(countdown=wait))
        return _RUN

    def _after_attempt(self, call: StepCall, outcome: StepOutcome) -> Any:
        if self.target is not None:
            self.reached = outcome
            raise TargetReached(outcome)
        if outcome.completed:
            return outcome.value
        if outcome.error is not None:
            raise outcome.error
        raise self.suspend(Suspend(countdown=outcome.retry_in))

    def _still_ours(self, call: StepCall) -> None:
        """Before a new inline step: stop if the run was cancelled; keep the lease alive.

        A new step's INSERT checks for cancellation itself (see ``_record``),
        so the SELECT here is only needed for a retried step, or when the last
        check is older than CANCEL_CHECK_AFTER seconds (slow code between
        steps). A cancelled run thus records no step after the cancel and
        starts at most the one step that was about to start.
        """
        if self.target is not None:
            return
        fresh = time.monotonic() - self.confirmed_at < CANCEL_CHECK_AFTER
        if call.record is not None or not fresh:
            if recording.is_cancelled(self.run_id):
                raise Cancelled()
            self.confirmed_at = time.monotonic()
        self._renew_lease()

    def _renew_lease(self) -> None:
        if self.token is None:
            return
        now = timezone.now()
        if now >= self.lease_renew_at:
            recording.renew_lease(self.run_id, self.token)
            self.lease_renew_at = now + timedelta(seconds=self.lease_seconds / 2)

    # -- attempts -----------------------------------------------------------------

    def _start(self, call: StepCall) -> Any:
        self.ctx.attempt = call.record.attempt_number if call.record else 0
        self.current_step = call.step_id
        return timezone.now()

    def attempt_sync(self, call: StepCall) -> StepOutcome:
        started = self._start(call)
        try:
            value = call.fn(*call.args, **call.kwargs)
            if inspect.isawaitable(value):
                raise StepUsageError(
                    f"{self.where(call.step_id)}: the step function returned an awaitable; "
                    "async step functions need an `async def` workflow"
                )
        except Exception as exc:
            self.current_step = None
            return self.record_failure(call, started, exc)
        self.current_step = None
        return self.record_success(call, started, value)

    async def attempt_async(self, call: StepCall) -> StepOutcome:
        started = self._start(call)
        try:
            if inspect.iscoroutinefunction(call.fn):
                value = await call.fn(*call.args, **call.kwargs)
            else:
                value = await sync_to_async(call.fn)(*call.args, **call.kwargs)
                if inspect.isawaitable(value):
                    value = await value
        except Exception as exc:
            self.current_step = None
            return await sync_to_async(self.record_failure)(call, started, exc)
        self.current_step = None
        return await sync_to_async(self.record_success)(call, started, value)

    def _attempt_entry(
        self, call: StepCall, started: Any, error: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "number": call.record.attempt_count if call.record else 0,
            "started_at": started.isoformat(),
            "ended_at": timezone.now().isoformat(),
            "error": error,
            "worker": recording.worker_name(),
        }

    def _record(
        self,
        call: StepCall,
        started: Any,
        *,
        status: str,
        output: Any = None,
        output_bytes: int = 0,
        error: dict[str, Any] | None = None,
        retry_at: Any = None,
    ) -> StepRecord:
        prev = call.record
        entry = self._attempt_entry(
            call, started, error if status != StepStatus.COMPLETED else None
        )
        record = StepRecord(
            step_id=call.step_id,
            position=call.position,
            group=call.group,
            status=status,
            output=output,
            output_bytes=output_bytes,
            error=error if status == StepStatus.FAILED else None,
            attempts=[*(prev.attempts if prev else []), entry],
            attempt_count=(prev.attempt_count if prev else 0) + 1,
            retry_at=retry_at,
            started_at=(prev.started_at if prev and prev.started_at else started),
            attempts_base=prev.attempts_base if prev else 0,
        )
        stored = recording.save_step(
            self.run_id,
            record,
            exists=prev is not None,
            unless_cancelled=self.target is None and call.group is None,
        )
        if self.target is None:
            self.confirmed_at = time.monotonic()
        self.memo.put(stored)
        call.record = stored
        return stored

    def _outcome(self, call: StepCall, stored: StepRecord, retry_in: float | None) -> StepOutcome:
        if stored.status == StepStatus.COMPLETED:
            return StepOutcome(completed=True, value=restore(stored.output, call.annotation))
        if stored.status == StepStatus.FAILED:
            return StepOutcome(error=stored.step_error())
        return StepOutcome(retry_in=retry_in)

    def record_success(self, call: StepCall, started: Any, value: Any) -> StepOutcome:
        try:
            data, size = to_json(value, where=f"{self.where(call.step_id)}:")
        except OutputSerializationError as exc:
            return self.record_failure(call, started, exc)
        old = call.record.output_bytes if call.record else 0
        total = self.memo.state_bytes - old + size
        if total > self.max_state:
            too_big = LimitExceededError(
                f"{self.where(call.step_id)}: its output of {size} bytes would bring the run's "
                f"stored outputs to {total} bytes, over STEPFLOWS['MAX_STATE_BYTES'] = "
                f"{self.max_state}. Store large data elsewhere and return a reference to it."
            )
            return self.record_failure(call, started, too_big)
        stored = self._record(
            call, started, status=StepStatus.COMPLETED, output=data, output_bytes=size
        )
        return self._outcome(call, stored, None)

    def record_failure(self, call: StepCall, started: Any, exc: Exception) -> StepOutcome:
        number = call.record.attempt_number if call.record else 0
        error = error_dict(exc)
        final = isinstance(exc, FINAL_ERRORS) or number >= self.retries
        if final:
            stored = self._record(call, started, status=StepStatus.FAILED, error=error)
            return self._outcome(call, stored, None)
        delay = delay_for(exc, number)
        stored = self._record(
            call,
            started,
            status=StepStatus.SCHEDULED,
            error=error,
            retry_at=timezone.now() + timedelta(seconds=delay),
        )
        return self._outcome(call, stored, delay)

    # -- step.parallel ------------------------------------------------------------------

    def _add_to_plan(self, call: StepCall) -> None:
        plan = self.plan
        assert plan is not None
        record = call.record
        if record is not None and record.status == StepStatus.COMPLETED:
            plan.values.append(restore(record.output, call.annotation))
        elif record is not None and record.status == StepStatus.FAILED:
            plan.values.append(None)
            plan.errors.append(record.step_error())
        else:
            plan.values.append(None)
            plan.pending.append(call)

    def _check_callable(self, index: int, fn: Any) -> None:
        if not callable(fn):
            raise StepUsageError(
                f"{self.where()}: step.parallel takes callables that each start one step "
                f"(e.g. lambda: step.run('id', fn)); argument {index} is {fn!r}"
            )

    def _check_one_step(self, index: int, before: int) -> None:
        started = self.position - before
        if started != 1:
            raise StepUsageError(
                f"{self.where()}: each callable given to step.parallel must start exactly one "
                f"step; callable {index} started {started}"
            )

    def _target_index(self, group: int, count: int) -> int | None:
        """In a step task: the index of its step in this group, else None."""
        if self.target is None or self.target.group != group:
            return None
        index = self.target.position - group
        if not 0 <= index < count:
            raise NonDeterminismError(
                f"{self.where(self.target.step_id)}: its parallel group now has {count} "
                f"callables, but the step was planned as number {index}"
            )
        self.forced = self.target
        return index

    def parallel_sync(self, callables: tuple[Callable[[], Any], ...]) -> tuple[Any, ...]:
        self._enter_parallel(callables)
        group = self.position
        index = self._target_index(group, len(callables))
        if index is not None:
            callables[index]()
            raise self._missed_target()
        self.plan = Plan(group)
        try:
            for i, fn in enumerate(callables):
                before = self.position
                fn()
                self._check_one_step(i, before)
            plan = self.plan
        finally:
            self.plan = None
        return self._finish_plan(plan)

    async def parallel_async(
        self, callables: tuple[Callable[[], Awaitable[Any]], ...]
    ) -> tuple[Any, ...]:
        self._enter_parallel(callables)
        group = self.position
        index = self._target_index(group, len(callables))
        if index is not None:
            await callables[index]()
            raise self._missed_target()
        self.plan = Plan(group)
        try:
            for i, fn in enumerate(callables):
                before = self.position
                result = fn()
                if inspect.isawaitable(result):
                    await result
                self._check_one_step(i, before)
            plan = self.plan
        finally:
            self.plan = None
        return self._finish_plan(plan)

    def _enter_parallel(self, callables: tuple[Any, ...]) -> None:
        if self.current_step is not None:
            raise NestedStepError(
                f"{self.where(self.current_step)}: step.parallel was called inside a step"
            )
        if self.plan is not None:
            raise StepUsageError(f"{self.where()}: step.parallel cannot be nested in step.parallel")
        for i, fn in enumerate(callables):
            self._check_callable(i, fn)

    def _missed_target(self) -> NonDeterminismError:
        assert self.target is not None
        return NonDeterminismError(
            f"{self.where(self.target.step_id)}: the callable planned for this step did not "
            "start a step on replay"
        )

    def _finish_plan(self, plan: Plan) -> tuple[Any, ...]:
        if plan.pending:
            if self.target is not None:
                raise NonDeterminismError(
                    f"{self.where(self.target.step_id)}: a parallel group before this step's "
                    "own group has unfinished steps"
                )
            new = [c for c in plan.pending if c.record is None]
            if self.memo.count + len(new) > self.max_steps:
                raise LimitExceededError(
                    f"{self.where()}: this parallel group of {len(plan.values)} steps would "
                    f"bring the run to {self.memo.count + len(new)} steps, over "
                    f"STEPFLOWS['MAX_STEPS_PER_RUN'] = {self.max_steps}. Split the work into "
                    "several runs (step.send_event) or raise the limit."
                )
            planned = [
                PlannedStep(c.step_id, c.position, plan.group, is_new=c.record is None)
                for c in plan.pending
            ]
            raise self.suspend(Suspend(planned=planned))
        if plan.errors:
            raise plan.errors[0]
        return tuple(plan.values)


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<stepflows {self.name}>"


_RUN = _Sentinel("run-now")
_PLANNED = _Sentinel("planned step: its value is returned by step.parallel")
