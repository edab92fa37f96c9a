"""Workflows of flow control against real workers (tests/integration/test_flow.py,
tests/faults/test_flow_faults.py).

Each step marks ``<key>-start`` and ``<key>-end`` with a label (the note of the
mark line, after the pid and the time): a test can tell when each run's work
began and ended, in which process, and how often it ran.

The cron workflow ``flow-cron`` (``Cron("* * * * *")``) is registered only where
``STEPFLOWS_TEST_FLOW_CRON=1`` (the workers of the cron scenarios), or by
:func:`register_cron` in the test process: a cron trigger registered everywhere
would make every sweep of the whole suite (beat workers of other tests, the
in-process driver) send its ticks.
"""

from __future__ import annotations

import os
import time
from typing import Any

import stepflows
from stepflows import Batch, Concurrency, Cron, Debounce, RateLimit, Singleton, Throttle

from ..marks import count, mark

CRON_ID = "flow-cron"
CRON_EXPRESSION = "* * * * *"


def _span(key: str, label: str, seconds: float) -> str:
    """Mark the start and the end of the work of one run (``label``), ``seconds`` apart."""
    mark(f"{key}-start", label)
    time.sleep(seconds)
    mark(f"{key}-end", label)
    return label


def _hold(key: str, label: str, timeout: float = 60) -> str:
    """Mark ``<key>-holding``, then wait until the test marks ``<key>-release-<label>``."""
    mark(f"{key}-holding", label)
    deadline = time.monotonic() + timeout
    while count(f"{key}-release-{label}") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return label


def _label(ctx: stepflows.Context) -> str:
    return str(ctx.event.data["label"])


# -- concurrency --------------------------------------------------------------------------


@stepflows.workflow(
    id="flow-limited",
    trigger="test/flow-limited",
    concurrency=[Concurrency(2, key="data.customer")],
)
def limited(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """At most two runs per customer at once; each works ``data["seconds"]``."""
    data = ctx.event.data
    return step.run("work", _span, data["key"], _label(ctx), data["seconds"])


@stepflows.workflow(
    id="flow-one-at-a-time",
    trigger="test/flow-one-at-a-time",
    concurrency=[Concurrency(1, key="data.customer")],
)
def one_at_a_time(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """One run per customer at once; each works ``data["seconds"]``, then a quick step."""
    data = ctx.event.data
    label = step.run("work", _span, data["key"], _label(ctx), data["seconds"])
    step.run("after", _span, f"{data['key']}-after", label, 0)
    return label


@stepflows.workflow(
    id="flow-napping",
    trigger="test/flow-napping",
    concurrency=[Concurrency(1, key="data.customer")],
)
def napping(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """One run per customer at once, except while it sleeps ``data["nap"]`` seconds (its
    slot is given back) between two pieces of work."""
    data, label = ctx.event.data, _label(ctx)
    step.run("before", _span, data["key"], f"{label}-before", 0.1)
    if data.get("nap"):
        step.sleep("nap", data["nap"])
    return step.run("work", _span, data["key"], f"{label}-work", data["seconds"])


# -- throttle, rate limit, debounce, idempotency ------------------------------------------


@stepflows.workflow(
    id="flow-throttled",
    trigger="test/flow-throttled",
    throttle=Throttle(2, 4, key="data.k"),
)
def throttled(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Two starts per 4 s per key: one every 2 s."""
    return step.run("go", _span, ctx.event.data["key"], _label(ctx), 0)


@stepflows.workflow(
    id="flow-rated", trigger="test/flow-rated", rate_limit=RateLimit(3, 60, key="data.k")
)
def rated(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("go", _span, ctx.event.data["key"], _label(ctx), 0)


@stepflows.workflow(
    id="flow-debounced", trigger="test/flow-debounced", debounce=Debounce(2, key="data.k")
)
def debounced(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    """Starts 2 s after the last event of a burst, with that event."""
    step.run("go", _span, ctx.event.data["key"], _label(ctx), 0)
    return ctx.event.data["n"]


@stepflows.workflow(id="flow-idem", trigger="test/flow-idem", idempotency="data.order")
def idem(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    step.run("go", _span, ctx.event.data["key"], _label(ctx), 0)
    return ctx.event.data["order"]


# -- singleton ----------------------------------------------------------------------------


def _held_then_after(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key, label = ctx.event.data["key"], _label(ctx)
    step.run("hold", _hold, key, label)
    return step.run("after", _span, f"{key}-after", label, 0)


@stepflows.workflow(
    id="flow-single-skip",
    trigger="test/flow-single-skip",
    singleton=Singleton(key="data.k", mode="skip"),
)
def single_skip(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Holds until the test releases it; a second run for the key meanwhile is skipped."""
    return _held_then_after(ctx, step)


@stepflows.workflow(
    id="flow-single-cancel",
    trigger="test/flow-single-cancel",
    singleton=Singleton(key="data.k", mode="cancel"),
)
def single_cancel(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Holds until the test releases it; a second run for the key cancels it."""
    return _held_then_after(ctx, step)


# -- batch --------------------------------------------------------------------------------


@stepflows.workflow(id="flow-batch", trigger="test/flow-batch", batch=Batch(3, 3, key="data.k"))
def batched(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """Three events per run, or what came within 3 s of the first."""
    ns = [e.data["n"] for e in ctx.events]
    step.run("go", _span, ctx.events[0].data["key"], ",".join(map(str, ns)), 0)
    return ns


# -- cron ---------------------------------------------------------------------------------


def every_minute(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    """Returns the tick it was started for."""
    return ctx.event.data["tick"]


def register_cron() -> Any:
    """Register ``flow-cron`` in this process (undo with ``registry.unregister(CRON_ID)``)."""
    return stepflows.workflow(id=CRON_ID, trigger=Cron(CRON_EXPRESSION))(every_minute)


if os.environ.get("STEPFLOWS_TEST_FLOW_CRON") == "1":
    register_cron()
