"""Workflows for the engine core's own behaviour: step timeouts, cancellation mid-run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import stepflows
from stepflows import StepError

from ..marks import mark


def _sleepy(key: str, seconds: float) -> str:
    n = mark(key)
    time.sleep(seconds)
    return f"slept {seconds} (attempt {n})"


async def _async_sleepy(key: str, seconds: float) -> str:
    mark(key)
    await asyncio.sleep(seconds)
    return "slept"


@stepflows.workflow(id="core-timeout", trigger="test/core-timeout", retries=1)
def step_timeout(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    """An inline step over its timeout, then a parallel one; both fail after 2 attempts."""
    key = ctx.event.data["key"]
    out: dict[str, Any] = {}
    try:
        step.run("slow", _sleepy, f"{key}-slow", 30, timeout=0.5)
    except StepError as exc:
        out["inline"] = exc.error_type
    out["quick"] = step.run("quick", _sleepy, f"{key}-quick", 0, timeout=10)
    try:
        step.parallel(
            lambda: step.run("p-slow", _sleepy, f"{key}-p-slow", 30, timeout=0.5),
            lambda: step.run("p-quick", _sleepy, f"{key}-p-quick", 0),
        )
    except StepError as exc:
        out["parallel"] = exc.error_type
    return out


@stepflows.workflow(id="core-timeout-async", trigger="test/core-timeout-async", retries=0)
async def step_timeout_async(ctx: stepflows.Context, step: stepflows.Step) -> str:
    key = ctx.event.data["key"]
    try:
        await step.run("slow", _async_sleepy, f"{key}-slow", 30, timeout=0.5)
    except StepError as exc:
        return exc.error_type
    return "no timeout"


@stepflows.workflow(id="core-cancel", trigger="test/core-cancel")
def cancel_mid_run(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Many short steps: a cancel stops it within one step, whatever it is doing."""
    key = ctx.event.data["key"]
    for _ in range(200):
        step.run("tick", _sleepy, f"{key}-tick", 0.1)
    return "not cancelled"


@stepflows.workflow(id="core-live", trigger="test/core-live")
def live(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    """A parallel step long enough to be seen running, with its heartbeat."""
    key = ctx.event.data["key"]
    seconds = ctx.event.data.get("seconds", 3)
    return list(
        step.parallel(
            lambda: step.run("long", _sleepy, f"{key}-long", seconds),
            lambda: step.run("short", _sleepy, f"{key}-short", 0),
        )
    )
