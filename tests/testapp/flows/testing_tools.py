"""Workflows for stepflows.testing's own tests: step stubs and the TestCase mixin
(tests/unit/test_testing_in_process.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel

import stepflows
from stepflows import Context, StepSync

calls: Counter[str] = Counter()


class Receipt(BaseModel):
    order_id: int
    amount: int


def reserve(order_id: int) -> dict[str, Any]:
    calls["reserve"] += 1
    return {"order_id": order_id, "reserved": True}


def charge_card(order_id: int, amount: int) -> Receipt:
    calls["charge"] += 1
    raise RuntimeError("the real payment API was called")


def notify(order_id: int, channel: str) -> str:
    calls[f"notify-{channel}"] += 1
    return f"{channel}:{order_id}"


@stepflows.workflow(id="tt-checkout", trigger="test/tt-order.paid", retries=1)
def checkout(ctx: Context, step: StepSync) -> dict[str, Any]:
    order = ctx.event.data
    step.run("reserve", reserve, order["order_id"])
    receipt = step.run("charge", charge_card, order["order_id"], order["amount"])
    assert isinstance(receipt, Receipt), type(receipt)  # the declared type, stub or not
    sent = [step.run("notify", notify, order["order_id"], c) for c in ("email", "sms")]
    return {"amount": receipt.amount, "sent": sent}


@stepflows.workflow(id="tt-await-payment", trigger="test/tt-order.created")
def await_payment(ctx: Context, step: StepSync) -> dict[str, Any]:
    order_id = ctx.event.data["order_id"]
    paid = step.wait_for_event("paid", event="test/tt-payment", match="data.order_id", timeout=3600)
    if paid is None:
        step.sleep("grace", 600)
        return {"paid": False, "reminded": step.run("remind", notify, order_id, "email")}
    return {"paid": True}
