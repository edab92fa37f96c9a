"""Bench workflows and the raw Celery tasks they are compared with.

Every step and task is a no-op: the bench measures what stepflows adds
around user code, not the code.
"""

from __future__ import annotations

import functools
import time

from celery import shared_task

import stepflows


def noop(i: int = 0) -> int:
    return i


@shared_task(name="stepflows_bench.noop")
def noop_task() -> None:
    """A header task of a raw chord."""


@shared_task(name="stepflows_bench.callback")
def callback_task() -> None:
    """The callback of a raw chord; it ignores the header's results, like stepflows."""


@stepflows.workflow(id="bench-parallel", trigger="bench/parallel", retries=0)
def bench_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    n = ctx.event.data["n"]
    values = step.parallel(*[functools.partial(step.run, "noop", noop, i) for i in range(n)])
    return len(values)


@stepflows.workflow(id="bench-sequential", trigger="bench/sequential", retries=0)
def bench_sequential(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    n = ctx.event.data["n"]
    for i in range(n):
        step.run("noop", noop, i)
    return n


@stepflows.workflow(id="bench-small", trigger="bench/small", retries=0)
def bench_small(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """A small run touching every path: an inline step, then a parallel pair."""
    first = step.run("first", noop, 1)
    a, b = step.parallel(
        functools.partial(step.run, "left", noop, 2),
        functools.partial(step.run, "right", noop, 3),
    )
    return int(first + a + b)


@stepflows.workflow(id="bench-tiny", trigger="bench/tiny", retries=0)
def bench_tiny(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """The smallest run: one inline step, one task."""
    return int(step.run("only", noop, 1))


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@stepflows.workflow(id="bench-long", trigger="bench/long", retries=0)
def bench_long(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """A parallel group of steps that each take ``seconds`` (sleeping: the pool stays busy)."""
    n, seconds = ctx.event.data["n"], ctx.event.data["seconds"]
    step.parallel(*[functools.partial(step.run, "nap", nap, seconds) for _ in range(n)])
    return n


# -- durable waits ------------------------------------------------------------


@stepflows.workflow(id="bench-sleep", trigger="bench/sleep", retries=0)
def bench_sleep(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """Sleeps, then one step: how late that step starts is the wake-up lag."""
    step.sleep("nap", ctx.event.data["seconds"])
    return int(step.run("after-nap", noop, 1))


@stepflows.workflow(id="bench-wait", trigger="bench/wait", retries=0)
def bench_wait(ctx: stepflows.Context, step: stepflows.StepSync) -> bool:
    """Waits, without a timeout, for a bench/match event with its own key."""
    event = step.wait_for_event("match", event="bench/match", match="data.key")
    return event is not None


@stepflows.workflow(id="bench-child", trigger="bench/child", retries=0)
def bench_child(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """The no-op child of bench-invoke: no step, returns its input."""
    return int(ctx.event.data.get("i", 0))


@stepflows.workflow(id="bench-invoke", trigger="bench/invoke", retries=0)
def bench_invoke(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """N sequential invocations of the no-op child (bench-sequential is the inline side)."""
    n = ctx.event.data["n"]
    for i in range(n):
        step.invoke("child", workflow=bench_child, data={"i": i})
    return n


# -- flow control ---------------------------------------------------------------------


@stepflows.workflow(
    id="bench-parallel-limited",
    trigger="bench/parallel-limited",
    retries=0,
    concurrency=[stepflows.Concurrency(1000, key="data.tenant")],
)
def bench_parallel_limited(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """bench-parallel under a concurrency limit no run reaches: what taking a slot costs."""
    return bench_parallel(ctx, step)


def hold_slot(line: int, timeout: float = 30.0) -> int:
    """Until ``line`` bench-handoff runs wait in line (or ``timeout`` s): the runs queue up
    behind the run holding the slot, so every start after it is a hand-over."""
    from stepflows.models import Run, RunStatus, WaitKind

    if not line:
        return 0
    waiting = Run.objects.filter(
        workflow_id="bench-handoff", status=RunStatus.QUEUED, waiting_for=WaitKind.CONCURRENCY
    )
    deadline = time.monotonic() + timeout
    while waiting.count() < line and time.monotonic() < deadline:
        time.sleep(0.01)
    return waiting.count()


@stepflows.workflow(
    id="bench-handoff",
    trigger="bench/handoff",
    retries=0,
    concurrency=stepflows.Concurrency(1),
)
def bench_handoff(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """One step, one run at a time. The first run holds its slot until the others are in line."""
    return int(step.run("noop", hold_slot, ctx.event.data.get("line", 0)))
