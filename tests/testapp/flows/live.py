"""Workflows of tests/integration/test_live.py and the live run page's browser test.

The long step marks ``<key>-long-start`` and then waits until the test marks
``<key>-release`` (or, with ``data["seconds"]``, sleeps that long): a test sees
it running in the database for as long as it needs, with no timing guess.
"""

from __future__ import annotations

import os
import time
from typing import Any

import stepflows

from ..marks import count, mark

# A step left waiting by a test that failed gives up after this long.
GIVE_UP_SECONDS = 120


def _fast(key: str, name: str) -> str:
    mark(f"{key}-{name}")
    return name


def _long(key: str, seconds: float | None, outcome: str) -> dict[str, Any]:
    mark(f"{key}-long-start")
    if seconds is not None:
        time.sleep(seconds)
    else:
        deadline = time.monotonic() + GIVE_UP_SECONDS
        while not count(f"{key}-release"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key}: never released")
            time.sleep(0.02)
    mark(f"{key}-long")
    if outcome == "raise":
        raise stepflows.NonRetriableError("the long step failed after its run was cancelled")
    return {"pid": os.getpid()}


@stepflows.workflow(id="live-steps", trigger="test/live-steps")
def live_steps(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """Two fast steps, a long one (``long``), a fast one: all sequential (inline)."""
    data = ctx.event.data
    key = data["key"]
    out: list[Any] = [
        step.run("fast-1", _fast, key, "fast-1"),
        step.run("fast-2", _fast, key, "fast-2"),
    ]
    out.append(step.run("long", _long, key, data.get("seconds"), data.get("outcome", "return")))
    out.append(step.run("fast-3", _fast, key, "fast-3"))
    return out


def _flaky(key: str) -> str:
    if mark(f"{key}-flaky-start") == 0:
        raise RuntimeError("the first attempt fails at once")
    _long(key, None, "return")
    return "second attempt"


@stepflows.workflow(id="live-retry", trigger="test/live-retry", retries=2)
def live_retry(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """An inline step whose first attempt fails at once and whose second runs long."""
    return step.run("flaky", _flaky, ctx.event.data["key"])
