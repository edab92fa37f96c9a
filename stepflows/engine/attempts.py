"""One attempt of a step: call its function, then record what came of it.

Whatever the function does (returns, raises an ``Exception``, raises a
``BaseException`` such as ``SystemExit``, runs past its ``timeout``), the
attempt ends with one record stored through the invocation (which knows
whether it writes under the run's lease or the step's own), and the process
is left as it was. An error while recording (an output that cannot be
stored) is one final failure of the step, never a retry of its code.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.db import DatabaseError, InterfaceError, OperationalError

from .. import clock
from ..exceptions import (
    LimitExceededError,
    OutputSerializationError,
    StepTimeoutError,
    StepUsageError,
)
from ..models import StepStatus
from ..serialization import restore, to_json
from ..store.fence import worker_name
from ..store.records import StepRecord
from ..store.steps import StateLimitExceeded
from . import report
from .calls import StepCall, current_step
from .control import StepOutcome
from .retry import decide

if TYPE_CHECKING:
    from .host import Host as Invocation

MAX_TRACEBACK_CHARS = 20_000

# Errors of the database connection itself, not of the data: the task retries.
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError)


def _text(value: str) -> str:
    """Text the database can store: no NUL, no lone surrogate."""
    return value.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def error_dict(exc: BaseException) -> dict[str, Any]:
    """An exception as stored on a step or run: type, message, traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the failure
        message = repr(exc)
    return {
        "type": type(exc).__name__,
        "message": _text(message),
        "traceback": _text(tb[-MAX_TRACEBACK_CHARS:]),
    }


# -- calling the function -------------------------------------------------------------


def _timed_out(call: StepCall, inv: Invocation) -> StepTimeoutError:
    return StepTimeoutError(
        f"{inv.where(call.step_id)}: the step ran longer than its timeout of {call.timeout} s"
    )


@contextmanager
def _alarm(call: StepCall, inv: Invocation) -> Iterator[bool]:
    """Interrupt the step's code at its timeout (SIGALRM, main thread only).

    Yields whether the timeout can interrupt; elsewhere (a thread) an attempt
    that overran its timeout is failed once it returns.
    """
    if call.timeout is None or threading.current_thread() is not threading.main_thread():
        yield False
        return

    def expire(signum: int, frame: Any) -> None:
        raise _timed_out(call, inv)

    previous = signal.signal(signal.SIGALRM, expire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, call.timeout)
    t0 = time.monotonic()
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            # Someone else's timer was running (a test runner's timeout): give it back.
            left = outer - (time.monotonic() - t0)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


def _start(inv: Invocation, call: StepCall) -> Any:
    record = call.record
    inv.ctx.begin_step(
        call.step_id, record.attempt_number if record else 0, record.logs if record else None
    )
    current_step.set(call.step_id)
    return clock.now()


def _ended(inv: Invocation) -> None:
    current_step.set(None)
    inv.ctx.end_step()


def attempt_sync(inv: Invocation, call: StepCall) -> StepOutcome:
    """Run a step's function in this thread and record the attempt."""
    started = _start(inv, call)
    t0 = time.monotonic()
    try:
        with _alarm(call, inv):
            value = call.fn(*call.args, **call.kwargs)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise StepUsageError(
                f"{inv.where(call.step_id)}: the step function returned an awaitable; "
                "async step functions need an `async def` workflow"
            )
        if call.timeout is not None and time.monotonic() - t0 > call.timeout:
            raise _timed_out(call, inv)
    except inv.SIGNALS:
        raise
    except TRANSIENT_DB_ERRORS:
        raise  # the database went away under the step: the task retries, nothing counted
    except BaseException as exc:
        _ended(inv)
        return record_failure(inv, call, started, exc)
    finally:
        _ended(inv)
    return record_success(inv, call, started, value)


async def attempt_async(inv: Invocation, call: StepCall) -> StepOutcome:
    """Run a step's function (plain or async) from an async workflow; record the attempt."""
    started = _start(inv, call)
    t0 = time.monotonic()
    try:
        if inspect.iscoroutinefunction(call.fn):
            coro = call.fn(*call.args, **call.kwargs)
            if call.timeout is not None:
                try:
                    value = await asyncio.wait_for(coro, call.timeout)
                except TimeoutError:
                    raise _timed_out(call, inv) from None
            else:
                value = await coro
        else:
            value = await sync_to_async(call.fn)(*call.args, **call.kwargs)
            if inspect.isawaitable(value):
                value = await value
            if call.timeout is not None and time.monotonic() - t0 > call.timeout:
                raise _timed_out(call, inv)
    except inv.SIGNALS:
        raise
    except TRANSIENT_DB_ERRORS:
        raise
    except BaseException as exc:
        _ended(inv)
        return await sync_to_async(record_failure)(inv, call, started, exc)
    finally:
        _ended(inv)
    return await sync_to_async(record_success)(inv, call, started, value)


# -- recording the outcome --------------------------------------------------------------


def _entry(call: StepCall, started: Any, error: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "number": call.record.attempt_count if call.record else 0,
        "started_at": started.isoformat(),
        "ended_at": clock.now().isoformat(),
        "error": error,
        "worker": worker_name(),
    }


def running_record(call: StepCall, started: Any) -> StepRecord:
    """The step's row while this attempt runs: one more attempt, started, not ended.

    What the heartbeat shows for an inline step whose code runs past a moment
    (:class:`~stepflows.engine.heartbeat.RunningStep`); built without touching
    the database, so a fast step costs nothing more than building it.
    """
    prev = call.record
    entry = {
        "number": prev.attempt_count if prev else 0,
        "started_at": started.isoformat(),
        "worker": worker_name(),
    }
    return StepRecord(
        step_id=call.step_id,
        position=call.position,
        group=call.group,
        status=StepStatus.RUNNING,
        error=prev.error if prev else None,
        attempts=[*(prev.attempts if prev else []), entry],
        attempt_count=(prev.attempt_count if prev else 0) + 1,
        started_at=(prev.started_at if prev and prev.started_at else started),
        attempts_base=prev.attempts_base if prev else 0,
    )


def next_record(
    call: StepCall,
    started: Any,
    *,
    status: str,
    output: Any = None,
    output_bytes: int = 0,
    error: dict[str, Any] | None = None,
    retry_at: Any = None,
) -> StepRecord:
    """The step's record after this attempt: the previous one plus one attempt."""
    prev = call.record
    entry = _entry(call, started, error if status != StepStatus.COMPLETED else None)
    return StepRecord(
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


def _store(inv: Invocation, call: StepCall, record: StepRecord) -> StepOutcome:
    # The ctx.logger lines of the attempt go in the same statement as the attempt.
    kept = call.record.logs if call.record else None
    ctx = getattr(inv, "ctx", None)
    record.logs = ctx.step_lines(kept) if ctx is not None else kept
    stored = inv.store_attempt(record, exists=call.record is not None)
    inv.memo.put(stored)
    call.record = stored
    if stored.status == StepStatus.COMPLETED:
        return StepOutcome(completed=True, value=restore(stored.output, call.annotation))
    if stored.status == StepStatus.FAILED:
        return StepOutcome(error=stored.step_error())
    delay = 0.0
    if stored.retry_at is not None:
        delay = max(0.0, (stored.retry_at - clock.now()).total_seconds())
    return StepOutcome(retry_in=delay)


def record_success(inv: Invocation, call: StepCall, started: Any, value: Any) -> StepOutcome:
    try:
        data, size = to_json(value, where=f"{inv.where(call.step_id)}:")
    except OutputSerializationError as exc:
        return record_failure(inv, call, started, exc)
    old = call.record.output_bytes if call.record else 0
    total = inv.memo.state_bytes - old + size
    if total > inv.max_state:
        return record_failure(inv, call, started, _too_big(inv, call, size, total))
    record = next_record(call, started, status=StepStatus.COMPLETED, output=data, output_bytes=size)
    try:
        return _store(inv, call, record)
    except StateLimitExceeded:
        return record_failure(inv, call, started, _too_big(inv, call, size, None))
    except TRANSIENT_DB_ERRORS:
        raise
    except DatabaseError as exc:
        return record_failure(inv, call, started, _unstorable(inv, call, exc))


def _too_big(inv: Invocation, call: StepCall, size: int, total: int | None) -> LimitExceededError:
    so_far = f"to {total} bytes" if total is not None else "with its parallel group's"
    return LimitExceededError(
        f"{inv.where(call.step_id)}: its output of {size} bytes would bring the run's stored "
        f"outputs {so_far}, over STEPFLOWS['MAX_STATE_BYTES'] = {inv.max_state}. Store "
        "large data elsewhere and return a reference to it."
    )


def _unstorable(inv: Invocation, call: StepCall, exc: Exception) -> OutputSerializationError:
    return OutputSerializationError(
        f"{inv.where(call.step_id)}: the database refused to store the step's outcome "
        f"({type(exc).__name__}: {exc}). Return plain JSON data (no NUL characters)."
    )


def record_failure(
    inv: Invocation, call: StepCall, started: Any, exc: BaseException
) -> StepOutcome:
    """Record a failed attempt: scheduled for a retry, or failed for good."""
    number = call.record.attempt_number if call.record else 0
    decision = decide(exc, number, inv.retries)
    error = error_dict(decision.error)
    if decision.delay is None:
        record = next_record(call, started, status=StepStatus.FAILED, error=error)
    else:
        retry_at = clock.now() + timedelta(seconds=decision.delay)
        record = next_record(
            call, started, status=StepStatus.SCHEDULED, error=error, retry_at=retry_at
        )
    outcome = _store(inv, call, record)
    stored = call.record
    if stored is record or (
        stored is not None
        and stored.attempt_count == record.attempt_count
        and stored.status == record.status
    ):
        # Stored as this attempt's outcome (not one a duplicate task recorded first).
        if decision.delay is None:
            report.step_failed(inv.workflow_id, inv.run_id, call.step_id, number, error)
        else:
            report.step_retrying(
                inv.workflow_id,
                inv.run_id,
                call.step_id,
                number,
                inv.retries,
                error,
                outcome.retry_in if outcome.retry_in is not None else decision.delay,
            )
    return outcome
