"""Workflows for flow control, driven in process (tests/unit/test_flow_in_process.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import stepflows
from stepflows import (
    Batch,
    Concurrency,
    Context,
    Cron,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    StepSync,
    Throttle,
)

calls: Counter[str] = Counter()
order: list[str] = []


def mark(name: str) -> str:
    calls[name] += 1
    order.append(name)
    return name


@stepflows.workflow(
    id="fip-limited",
    trigger="test/fip-limited",
    concurrency=[Concurrency(1, key="data.customer")],
    priority=Priority(run=lambda event: event.data.get("ahead", 0)),
)
def limited(ctx: Context, step: StepSync) -> str:
    n = ctx.event.data["n"]
    step.run("start", mark, f"start-{n}")
    step.parallel(lambda: step.run("work", mark, f"work-{n}"))
    if ctx.event.data.get("nap"):
        step.sleep("nap", 600)
    return step.run("end", mark, f"end-{n}")


@stepflows.workflow(
    id="fip-throttled", trigger="test/fip-throttled", throttle=Throttle(2, 60, key="data.k")
)
def throttled(ctx: Context, step: StepSync) -> Any:
    return step.run("go", mark, f"throttled-{ctx.event.data['n']}")


@stepflows.workflow(id="fip-rated", trigger="test/fip-rated", rate_limit=RateLimit(2, 60))
def rated(ctx: Context, step: StepSync) -> Any:
    return ctx.event.data["n"]


@stepflows.workflow(
    id="fip-debounced",
    trigger="test/fip-debounced",
    debounce=Debounce(10, key="data.k", timeout=60),
)
def debounced(ctx: Context, step: StepSync) -> Any:
    return ctx.event.data["n"]


@stepflows.workflow(id="fip-idem", trigger="test/fip-idem", idempotency="data.order")
def idem(ctx: Context, step: StepSync) -> Any:
    return ctx.event.data["order"]


@stepflows.workflow(
    id="fip-single-skip", trigger="test/fip-single-skip", singleton=Singleton(key="data.k")
)
def single_skip(ctx: Context, step: StepSync) -> None:
    step.sleep("hold", 600)


@stepflows.workflow(
    id="fip-single-cancel",
    trigger="test/fip-single-cancel",
    singleton=Singleton(key="data.k", mode="cancel"),
)
def single_cancel(ctx: Context, step: StepSync) -> None:
    step.sleep("hold", 600)


@stepflows.workflow(id="fip-batch", trigger="test/fip-batch", batch=Batch(3, 30, key="data.k"))
def batched(ctx: Context, step: StepSync) -> list[Any]:
    return [e.data["n"] for e in ctx.events]


@stepflows.workflow(id="fip-cron", trigger=Cron("*/5 * * * *"))
def every_five_minutes(ctx: Context, step: StepSync) -> str:
    return ctx.event.data["tick"]
