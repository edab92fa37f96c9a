"""Workflows of the lease scenarios (tests/faults/test_leases.py).

Each step marks ``<key>-<name>-start`` (with its pid) before it sleeps and
``<key>-<name>`` when it is done, and returns its name and pid: a test can
stop or kill the process running a step mid-step, count how often the step's
code started and finished, and tell which process's output was stored.
"""

from __future__ import annotations

import os
import time
from typing import Any

import stepflows

from ..marks import mark


def _work(key: str, name: str, seconds: float) -> dict[str, Any]:
    mark(f"{key}-{name}-start")
    time.sleep(seconds)
    mark(f"{key}-{name}")
    return {"step": name, "pid": os.getpid()}


@stepflows.workflow(id="lease-steps", trigger="test/lease-steps")
def lease_steps(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """Sequential (inline) steps ``step-1``, ``step-2``... sleeping ``data["sleeps"]`` seconds."""
    key, sleeps = ctx.event.data["key"], ctx.event.data["sleeps"]
    return [
        step.run(f"step-{i}", _work, key, f"step-{i}", seconds)
        for i, seconds in enumerate(sleeps, start=1)
    ]


@stepflows.workflow(id="lease-parallel", trigger="test/lease-parallel")
def lease_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """A parallel step ``long`` of ``data["seconds"]`` next to a quick one, then an inline step."""
    key, seconds = ctx.event.data["key"], ctx.event.data["seconds"]
    long, quick = step.parallel(
        lambda: step.run("long", _work, key, "long", seconds),
        lambda: step.run("quick", _work, key, "quick", 0),
    )
    after = step.run("after", _work, key, "after", 0)
    return [long, quick, after]
