"""Workflows of the engine audit's regression tests (tests/integration/test_audit.py).

Each event carries a unique ``key``; steps call ``mark()`` so a test can count
how often their code really ran.
"""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from typing import Any

import stepflows
from stepflows import NonRetriableError, RetryAfterError, StepError

from ..marks import mark

MIB = 1024 * 1024


class Boom(BaseException):
    """A BaseException that is not an Exception, raised by a step."""


BASE_EXCEPTIONS: dict[str, Any] = {
    "boom": lambda: Boom("boom in a step"),
    "system-exit": lambda: SystemExit(3),
    "keyboard-interrupt": lambda: KeyboardInterrupt("interrupted in a step"),
}


def _marked(key: str, value: Any) -> Any:
    mark(key)
    return value


def _raise_base(key: str, kind: str) -> None:
    mark(key)
    raise BASE_EXCEPTIONS[kind]()


def _give_up(key: str) -> None:
    mark(key)
    raise NonRetriableError("no chance")


def _big(key: str, size: int) -> str:
    mark(key)
    return "x" * size


# -- a normal workflow: the worker still works ------------------------------------------


@stepflows.workflow(id="audit-normal", trigger="test/audit-normal")
def normal(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    one = step.run("one", _marked, f"{key}-one", 1)
    left, right = step.parallel(
        lambda: step.run("left", _marked, f"{key}-left", "l"),
        lambda: step.run("right", _marked, f"{key}-right", "r"),
    )
    return {"one": one, "left": left, "right": right, "pid": os.getpid()}


# -- 7: BaseException (not Exception) raised in a step ---------------------------------


@stepflows.workflow(id="audit-base-exception", trigger="test/audit-base-exception")
def base_exception(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key, kind = ctx.event.data["key"], ctx.event.data["kind"]
    step.run("before", _marked, f"{key}-before", 1)
    if ctx.event.data.get("parallel"):
        step.parallel(
            lambda: step.run("doomed", _raise_base, f"{key}-doomed", kind),
            lambda: step.run("sibling", _marked, f"{key}-sibling", 2),
        )
    else:
        step.run("doomed", _raise_base, f"{key}-doomed", kind)
    return step.run("after", _marked, f"{key}-after", "not reached")


@stepflows.workflow(id="audit-cancelled-error", trigger="test/audit-cancelled-error")
async def cancelled_error(ctx: stepflows.Context, step: stepflows.Step) -> str:
    key = ctx.event.data["key"]

    async def cancelled() -> None:
        await asyncio.sleep(0)
        mark(f"{key}-doomed")
        raise asyncio.CancelledError("cancelled inside a step")

    await step.run("before", _marked, f"{key}-before", 1)
    await step.run("doomed", cancelled)
    return await step.run("after", _marked, f"{key}-after", "not reached")


# -- 8: an empty parallel, then a real one ----------------------------------------------


@stepflows.workflow(id="audit-empty-then-parallel", trigger="test/audit-empty-then-parallel")
def empty_then_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    nothing = step.parallel()
    a, b = step.parallel(
        lambda: step.run("a", _marked, f"{key}-a", "A"),
        lambda: step.run("b", _marked, f"{key}-b", "B"),
    )
    after = step.run("after", _marked, f"{key}-after", 3)
    return {"nothing": list(nothing), "a": a, "b": b, "after": after}


# -- 9: parallel returns what each callable returns -----------------------------------


@stepflows.workflow(id="audit-parallel-values", trigger="test/audit-parallel-values")
def parallel_values(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]
    return list(
        step.parallel(
            lambda: str(step.run("a", _marked, f"{key}-a", 1)),
            lambda: step.run("b", _marked, f"{key}-b", {"x": 5})["x"],
        )
    )


@stepflows.workflow(id="audit-parallel-values-async", trigger="test/audit-parallel-values-async")
async def parallel_values_async(ctx: stepflows.Context, step: stepflows.Step) -> list[Any]:
    key = ctx.event.data["key"]

    async def doubled() -> int:
        return (await step.run("c", _marked, f"{key}-c", 21)) * 2

    return list(await step.parallel(doubled, lambda: step.run("d", _marked, f"{key}-d", "d")))


@stepflows.workflow(id="audit-parallel-fallback", trigger="test/audit-parallel-fallback")
def parallel_fallback(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]

    def guarded() -> Any:
        try:
            return step.run("doomed", _give_up, f"{key}-doomed")
        except StepError as exc:
            return f"fallback for {exc.step_id} ({exc.error_type})"

    return list(step.parallel(guarded, lambda: step.run("fine", _marked, f"{key}-fine", "ok")))


# -- 10: the state limit across a parallel group, and the run's own output ------------


@stepflows.workflow(id="audit-state-parallel", trigger="test/audit-state-parallel")
def state_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> list[int]:
    key = ctx.event.data["key"]
    size = ctx.event.data.get("size", 2 * MIB)
    outputs = step.parallel(
        *[
            (lambda i=i: step.run(f"big-{i}", _big, f"{key}-big-{i}", size))
            for i in range(ctx.event.data.get("steps", 3))
        ]
    )
    return [len(o) for o in outputs]


@stepflows.workflow(id="audit-big-return", trigger="test/audit-big-return")
def big_return(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    step.run("small", _marked, f"{ctx.event.data['key']}-small", 1)
    return "x" * (4 * MIB + 10)


# -- 11: errors while recording a step ------------------------------------------------


@stepflows.workflow(id="audit-lone-surrogate", trigger="test/audit-lone-surrogate")
def lone_surrogate(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key = ctx.event.data["key"]
    step.run("fine", _marked, f"{key}-fine", 1)
    return step.run("surrogate", _marked, f"{key}-surrogate", "half a pair: \ud800")


@stepflows.workflow(id="audit-nul-step-id", trigger="test/audit-nul-step-id")
def nul_step_id(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    key = ctx.event.data["key"]
    step.run("fine", _marked, f"{key}-fine", 1)
    return step.run("bad\x00id", _marked, f"{key}-bad", 2)


RETRY_AFTERS: dict[str, Any] = {
    "naive-datetime": lambda: datetime(2030, 1, 1),  # naive on purpose: no tzinfo
    "infinity": lambda: float("inf"),
}


@stepflows.workflow(id="audit-bad-retry-after", trigger="test/audit-bad-retry-after")
def bad_retry_after(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key, kind = ctx.event.data["key"], ctx.event.data["kind"]

    def later() -> str:
        mark(f"{key}-later")
        raise RetryAfterError("later", RETRY_AFTERS[kind]())

    step.run("fine", _marked, f"{key}-fine", 1)
    return step.run("later", later)
