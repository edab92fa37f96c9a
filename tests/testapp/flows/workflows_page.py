"""Workflows the workflows page (tests/admin/test_workflows_page.py) describes and sends to.

``wp-order`` has a schema, two triggers (one filtered), retries, timeouts, cancel_on,
on_failure and a concurrency limit, so every part of its card says something;
``wp-plain`` has none of them. ``test/wp-shared`` starts both ``wp-plain`` and
``wp-shared-too``, so the page says that a test event starts the other one too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

import stepflows
from stepflows import CancelOn, Concurrency, Timeouts, TriggerEvent


class Order(BaseModel):
    order_id: int = Field(ge=1)
    email: str
    items: list[str] = []
    note: str | None = None


def big_total(event: stepflows.Event) -> bool:
    return float(event.data.get("total", 0)) > 100


def order_failed(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return str(ctx.event.data["run_id"])


@stepflows.workflow(
    id="wp-order",
    trigger=["test/wp-order.created", TriggerEvent("test/wp-order.updated", if_=big_total)],
    schema=Order,
    retries=2,
    timeouts=Timeouts(start=60, finish=timedelta(hours=1)),
    cancel_on=[CancelOn(event="test/wp-order.cancelled", match="data.order_id")],
    on_failure=order_failed,
    concurrency=[Concurrency(2, key="data.email")],
)
def wp_order(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    order = ctx.event.data
    return step.run("confirm", lambda: {"order_id": order.order_id, "items": len(order.items)})


@stepflows.workflow(id="wp-plain", trigger="test/wp-shared")
def wp_plain(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("echo", lambda: "plain")


@stepflows.workflow(id="wp-shared-too", trigger="test/wp-shared")
def wp_shared_too(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("echo", lambda: "too")
