"""Workflows for the in-process driver's tests (tests/unit/test_in_process.py).

They run in the test process, so ``calls`` (an in-memory counter) counts how
often each step's code really ran; each event carries a unique ``key``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import stepflows
from stepflows import Event, NonRetriableError, RetryAfterError

calls: Counter[str] = Counter()


def counted(name: str, value: Any) -> Any:
    calls[name] += 1
    return value


def flaky(name: str, failures: int, value: Any) -> Any:
    """Fail the first ``failures`` calls, then return ``value``."""
    calls[name] += 1
    if calls[name] <= failures:
        raise ConnectionError(f"{name}: failure #{calls[name]}")
    return value


@stepflows.workflow(id="inproc-sequential", trigger="test/inproc-sequential")
def sequential(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, int]:
    key = ctx.event.data["key"]
    calls[f"{key}-body"] += 1
    a = step.run("a", counted, f"{key}-a", 1)
    b = step.run("b", counted, f"{key}-b", a + 1)
    c = step.run("c", counted, f"{key}-c", a + b)
    return {"a": a, "b": b, "c": c}


@stepflows.workflow(id="inproc-parallel", trigger="test/inproc-parallel")
def parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    first = step.run("first", counted, f"{key}-first", "first")
    outputs = step.parallel(
        lambda: step.run("p", counted, f"{key}-p0", "zero"),
        lambda: step.run("p", counted, f"{key}-p1", "one"),
        lambda: step.run("p", counted, f"{key}-p2", "two"),
    )
    last = step.run("last", counted, f"{key}-last", len(outputs))
    return {"first": first, "outputs": list(outputs), "last": last}


@stepflows.workflow(id="inproc-parallel-flaky", trigger="test/inproc-parallel-flaky")
def parallel_flaky(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]
    outputs = step.parallel(
        lambda: step.run("steady", counted, f"{key}-steady", "steady"),
        lambda: step.run("flaky", flaky, f"{key}-flaky", 2, "flaky"),
    )
    return list(outputs)


@stepflows.workflow(id="inproc-flaky", trigger="test/inproc-flaky")
def flaky_step(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    before = step.run("before", counted, f"{key}-before", "before")
    result = step.run("flaky", flaky, f"{key}-flaky", 2, "ok")
    return {"before": before, "result": result}


@stepflows.workflow(id="inproc-retry-later", trigger="test/inproc-retry-later")
def retry_later(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key = ctx.event.data["key"]

    def rate_limited() -> str:
        calls[f"{key}-limited"] += 1
        if calls[f"{key}-limited"] == 1:
            raise RetryAfterError("rate limited for an hour", retry_after=3600)
        return "done"

    return step.run("limited", rate_limited)


@stepflows.workflow(id="inproc-fails", trigger="test/inproc-fails", retries=1)
def fails(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    key = ctx.event.data["key"]

    def doomed() -> None:
        calls[f"{key}-doomed"] += 1
        raise ValueError("this step always fails")

    step.run("first", counted, f"{key}-first", 1)
    step.run("doomed", doomed)


@stepflows.workflow(id="inproc-declined", trigger="test/inproc-declined")
def declined(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    def charge() -> None:
        raise NonRetriableError("card declined")

    step.run("charge", charge)


@stepflows.workflow(id="inproc-async", trigger="test/inproc-async")
async def async_flow(ctx: stepflows.Context, step: stepflows.Step) -> list[Any]:
    key = ctx.event.data["key"]

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return int(counted(f"{key}-double", x * 2))

    one = await step.run("plain", counted, f"{key}-plain", 21)
    two = await step.run("async", double, one)
    pair = await step.parallel(
        lambda: step.run("left", counted, f"{key}-left", "left"),
        lambda: step.run("right", counted, f"{key}-right", "right"),
    )
    return [one, two, list(pair)]


@stepflows.workflow(id="inproc-fan-parent", trigger="test/inproc-fan-parent")
def fan_parent(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    key = ctx.event.data["key"]
    children = [Event(name="test/inproc-fan-child", data={"key": key, "n": n}) for n in range(2)]
    return list(step.send_event("notify", children))


@stepflows.workflow(id="inproc-fan-child", trigger="test/inproc-fan-child")
def fan_child(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    data = ctx.event.data
    return int(step.run("child", counted, f"{data['key']}-child-{data['n']}", data["n"] * 10))


# Two workflows triggered by the same event name: run_workflow drives only one.
@stepflows.workflow(id="inproc-twin-a", trigger="test/inproc-twins")
def twin_a(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return str(step.run("a", counted, f"{ctx.event.data['key']}-twin-a", "a"))


@stepflows.workflow(id="inproc-twin-b", trigger="test/inproc-twins")
def twin_b(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return str(step.run("b", counted, f"{ctx.event.data['key']}-twin-b", "b"))


@stepflows.workflow(id="inproc-forever", trigger="test/inproc-forever")
def forever(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    """Triggers itself again: a family of runs that never ends."""
    n = ctx.event.data.get("n", 0)
    return list(step.send_event("again", {"name": "test/inproc-forever", "data": {"n": n + 1}}))
