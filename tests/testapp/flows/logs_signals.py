"""Workflows of the logs, signals and tracing tests (tests/integration/test_logs_signals.py,
tests/unit/test_tracing.py); they run in process and on real workers alike.

Each event carries a unique ``key``; ``mark()`` counts attempts across processes.
"""

from __future__ import annotations

from typing import Any

import stepflows

from ..marks import mark


def _flaky(ctx: stepflows.Context, key: str) -> str:
    seen = mark(key)
    ctx.logger.info("trying %s, attempt %d", key, ctx.attempt)
    if seen < 1:
        raise ConnectionError(f"flaky failure #{seen + 1}")
    return "ok"


def _doomed(ctx: stepflows.Context, key: str) -> None:
    mark(key)
    ctx.logger.warning("about to fail (attempt %d)", ctx.attempt)
    raise ValueError("card declined")


@stepflows.workflow(id="logs-flaky", trigger="test/logs-flaky", retries=2)
def flaky(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    ctx.logger.info("outside steps: not kept with a step")
    return step.run("flaky", _flaky, ctx, ctx.event.data["key"])


@stepflows.workflow(id="logs-doomed", trigger="test/logs-doomed", retries=1)
def doomed(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    return step.run("doomed", _doomed, ctx, ctx.event.data["key"])


def _chatty(ctx: stepflows.Context, lines: int, size: int) -> int:
    for i in range(lines):
        ctx.logger.info("line %d %s", i, "x" * size)
    ctx.logger.debug("a debug line: kept only when the logger is enabled for DEBUG")
    return lines


@stepflows.workflow(id="logs-chatty", trigger="test/logs-chatty")
def chatty(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    data = ctx.event.data
    return step.run("chatty", _chatty, ctx, data.get("lines", 3), data.get("size", 0))


def _part(ctx: stepflows.Context, i: int) -> int:
    ctx.logger.info("part %d", i)
    return i


@stepflows.workflow(id="logs-parallel", trigger="test/logs-parallel")
def in_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    parts = step.parallel(*[lambda i=i: step.run("part", _part, ctx, i) for i in range(3)])
    return step.run("total", sum, parts)
