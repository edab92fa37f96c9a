"""Workflows whose code changes between deploys (tests/unit/test_deploys_in_process.py,
tests/integration/test_deploys.py).

The code deployed is ``code["now"]`` in the test process (the in-process
tests set it), else the worker's ``STEPFLOWS_TEST_DEPLOY`` (v1, v2, v2-fixed...):
a deploy is a worker stopped and one started with another value. Each run waits
for ``test/deploy-go`` (matched on ``data.key``) between its steps, so it is in
flight, in the database, while the code changes under it. Steps mark
``<key>-<name>`` (tests/testapp/marks.py) each time their code runs.
"""

from __future__ import annotations

import os
from typing import Any

import stepflows
from stepflows import Concurrency, Context, StepSync
from stepflows.exceptions import NonDeterminismError
from tests.testapp.marks import mark

DEPLOY_ENV = "STEPFLOWS_TEST_DEPLOY"
GO = "test/deploy-go"

#: The code deployed in the test process: {"now": "v2"}.
code: dict[str, str] = {}


def deployed() -> str:
    return code.get("now") or os.environ.get(DEPLOY_ENV) or "v1"


def touch(key: str, name: str) -> str:
    mark(f"{key}-{name}")
    return name


def go(ctx: Context, step: StepSync) -> None:
    step.wait_for_event("go", event=GO, match="data.key")


@stepflows.workflow(id="deploy-add-step", trigger="test/deploy-add-step", retries=0)
def add_step(ctx: Context, step: StepSync) -> list[str]:
    """v1: reserve, go, ship. v2 adds "audit" under step.patched("add-audit");
    v3 deprecates the patch; v4 keeps the new path only."""
    key, now = ctx.event.data["key"], deployed()
    path = [step.run("reserve", touch, key, "reserve")]
    if now == "v2" and step.patched("add-audit"):
        path.append(step.run("audit", touch, key, "audit"))
    if now == "v3":
        step.deprecate_patch("add-audit")
    if now in ("v3", "v4"):
        path.append(step.run("audit", touch, key, "audit"))
    go(ctx, step)
    path.append(step.run("ship", touch, key, "ship"))
    return path


@stepflows.workflow(id="deploy-rename", trigger="test/deploy-rename", retries=0)
def rename(ctx: Context, step: StepSync) -> list[str]:
    """v1 charges with step "charge"; v2 renames it "charge-card" (no patch);
    v2-fixed keeps "charge" for the runs that recorded it."""
    key, now = ctx.event.data["key"], deployed()
    path = [step.run("reserve", touch, key, "reserve")]
    if now == "v2" or (now == "v2-fixed" and step.patched("rename-charge")):
        path.append(step.run("charge-card", touch, key, "charge-card"))
    else:
        path.append(step.run("charge", touch, key, "charge"))
    go(ctx, step)
    path.append(step.run("ship", touch, key, "ship"))
    return path


@stepflows.workflow(id="deploy-group", trigger="test/deploy-group", retries=0)
def group(ctx: Context, step: StepSync) -> dict[str, Any]:
    """v1 runs three parts at once; v2 two; v2-fixed two for new runs only; v3 four."""
    key, now = ctx.event.data["key"], deployed()
    size = 4 if now == "v3" else 3
    if now == "v2" or (now == "v2-fixed" and step.patched("two-parts")):
        size = 2
    parts = step.parallel(
        *[lambda i=i: step.run("part", touch, key, f"part-{i}") for i in range(size)]
    )
    go(ctx, step)
    return {"parts": list(parts), "total": step.run("total", touch, key, "total")}


@stepflows.workflow(id="deploy-swallow", trigger="test/deploy-swallow", retries=0)
def swallow(ctx: Context, step: StepSync) -> str:
    """v2 renames a step and catches the error: the run is blocked all the same."""
    key = ctx.event.data["key"]
    try:
        step.run("first" if deployed() == "v1" else "first-renamed", touch, key, "first")
    except NonDeterminismError:
        return "swallowed"
    go(ctx, step)
    return "done"


@stepflows.workflow(
    id="deploy-limited",
    trigger="test/deploy-limited",
    retries=0,
    concurrency=[Concurrency(1)],
)
def limited(ctx: Context, step: StepSync) -> str:
    key = ctx.event.data["key"]
    step.run("first" if deployed() == "v1" else "first-renamed", touch, key, "first")
    go(ctx, step)
    return step.run("last", touch, key, "last")


@stepflows.workflow(id="deploy-patch-in-group", trigger="test/deploy-patch-in-group")
def patch_in_group(ctx: Context, step: StepSync) -> Any:
    return step.parallel(lambda: step.patched("inside") or step.run("a", touch, "x", "a"))


@stepflows.workflow(id="deploy-async", trigger="test/deploy-async", retries=0)
async def patched_async(ctx: Context, step: stepflows.Step) -> list[str]:
    key = ctx.event.data["key"]
    path = [await step.run("reserve", touch, key, "reserve")]
    if await step.patched("add-audit"):
        path.append(await step.run("audit", touch, key, "audit"))
    step.deprecate_patch("older-change")
    return path


@stepflows.workflow(
    id="deploy-versioned", trigger="test/deploy-versioned", version="2026-11-27", retries=0
)
def versioned(ctx: Context, step: StepSync) -> str:
    return step.run("only", touch, ctx.event.data["key"], "only")
