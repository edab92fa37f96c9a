"""Workflows for the durable waits, driven in process (tests/unit/test_waits_in_process.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

import stepflows
from stepflows import CancelOn, Context, NonRetriableError, StepError, StepSync, Timeouts

calls: Counter[str] = Counter()


def mark(name: str) -> str:
    calls[name] += 1
    return name


@stepflows.workflow(id="wip-sleep", trigger="test/wip-sleep")
def sleeper(ctx: Context, step: StepSync) -> str:
    key = ctx.event.data["key"]
    step.run("before", mark, f"{key}-before")
    step.sleep("nap", ctx.event.data.get("seconds", 86400))
    return step.run("after", mark, f"{key}-after")


@stepflows.workflow(id="wip-sleep-async", trigger="test/wip-sleep-async")
async def sleeper_async(ctx: Context, step: stepflows.Step) -> str:
    key = ctx.event.data["key"]
    await step.sleep("nap", 3600)
    return await step.run("after", mark, f"{key}-after")


@stepflows.workflow(id="wip-sleep-until", trigger="test/wip-sleep-until")
def sleep_until(ctx: Context, step: StepSync) -> None:
    from datetime import datetime

    step.sleep_until("until", datetime.fromisoformat(ctx.event.data["when"]))


@stepflows.workflow(id="wip-wait", trigger="test/wip-order")
def waiter(ctx: Context, step: StepSync) -> Any:
    paid = step.wait_for_event("paid", event="test/wip-paid", match="data.order", timeout=3600)
    step.run("after", mark, f"{ctx.event.data['order']}-after")
    return None if paid is None else paid.data


@stepflows.workflow(id="wip-wait-if", trigger="test/wip-order-if")
async def waiter_if(ctx: Context, step: stepflows.Step) -> Any:
    paid = await step.wait_for_event(
        "paid",
        event="test/wip-paid",
        match="data.order",
        if_=lambda trigger, candidate: candidate.data["amount"] >= trigger.data["amount"],
        timeout=3600,
    )
    return None if paid is None else paid.data


class Receipt(BaseModel):
    order: str
    total: int


@stepflows.workflow(id="wip-child", trigger="test/wip-child-direct")
def child(ctx: Context, step: StepSync) -> Receipt:
    if ctx.event.data.get("fail"):
        raise NonRetriableError("the child gave up")
    if ctx.event.data.get("sleep"):
        step.sleep("slow", ctx.event.data["sleep"])
    mark(f"{ctx.event.data['order']}-child")
    return Receipt(order=ctx.event.data["order"], total=ctx.event.data["total"])


@stepflows.workflow(id="wip-parent", trigger="test/wip-parent")
def parent(ctx: Context, step: StepSync) -> Any:
    data = ctx.event.data
    try:
        receipt = step.invoke(
            "charge", workflow=child, data=data["child"], timeout=data.get("timeout")
        )
    except StepError as exc:
        return {"error": exc.error_type, "message": exc.error_message}
    assert isinstance(receipt, Receipt)
    step.run("after", mark, f"{data['child']['order']}-parent-after")
    return {"total": receipt.total}


@stepflows.workflow(id="wip-timeout", trigger="test/wip-timeout", timeouts=Timeouts(finish=60))
def too_slow(ctx: Context, step: StepSync) -> None:
    step.sleep("long", 3600)


@stepflows.workflow(
    id="wip-cancel-on",
    trigger="test/wip-cancel-on",
    cancel_on=[CancelOn(event="test/wip-cancel", match="data.order")],
)
def cancellable(ctx: Context, step: StepSync) -> None:
    step.sleep("long", 3600)
    step.run("after", mark, f"{ctx.event.data['order']}-after")


def handle_failure(ctx: Context, step: StepSync) -> str:
    return step.run("notify", mark, f"{ctx.event.data['event']['data']['key']}-handled")


@stepflows.workflow(id="wip-fails", trigger="test/wip-fails", on_failure=handle_failure, retries=0)
def fails(ctx: Context, step: StepSync) -> None:
    if ctx.event.data.get("sleep"):
        step.sleep("nap", 3600)
    step.run("boom", _boom)


def _boom() -> None:
    raise RuntimeError("boom")


@stepflows.workflow(id="wip-misuse", trigger="test/wip-misuse", retries=0)
def misuse(ctx: Context, step: StepSync) -> None:
    how = ctx.event.data["how"]
    if how == "in-parallel":
        step.parallel(lambda: step.sleep("nap", 1))
    elif how == "unknown-workflow":
        step.invoke("call", workflow="no-such-workflow")
    elif how == "missing-field":
        step.wait_for_event("paid", event="test/wip-paid", match="data.order")
