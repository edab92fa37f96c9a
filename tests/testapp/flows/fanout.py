"""Workflows for fan-out, triggers, schemas and typed step outputs.

Each event carries a unique ``key``; steps call ``mark()`` so tests can count
how often their code really ran, and workflow code marks each invocation.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, Field

import stepflows
from stepflows import Event, TriggerEvent

from ..marks import mark


def _marked(key: str, value: Any) -> Any:
    mark(key)
    return value


def _noop(i: int = 0) -> int:
    return i


# -- one event, several workflows; filters ------------------------------------------


@stepflows.workflow(id="t-fan-all", trigger="test/fan.order")
def fan_all(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("record", _marked, f"{ctx.event.data['key']}-all", "all")


@stepflows.workflow(
    id="t-fan-big",
    trigger=TriggerEvent("test/fan.order", if_=lambda e: e.data.get("amount", 0) >= 100),
)
def fan_big(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("record", _marked, f"{ctx.event.data['key']}-big", "big")


@stepflows.workflow(
    id="t-fan-vip",
    trigger=[
        "test/fan.vip",
        TriggerEvent("test/fan.order", if_=lambda e: bool(e.data.get("vip"))),
    ],
)
def fan_vip(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    return step.run("record", _marked, f"{ctx.event.data['key']}-vip", ctx.event.name)


@stepflows.workflow(
    id="t-fan-broken-filter",
    trigger=TriggerEvent("test/fan.broken-filter", if_=lambda e: e.data["missing"] > 1),
)
def fan_broken_filter(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    return None


# -- fan-out families ---------------------------------------------------------------------


@stepflows.workflow(id="t-fan-child", trigger="test/fan.child")
def fan_child(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    data = ctx.event.data
    return step.run("work", _marked, f"{data['key']}-child-{data['i']}", data["i"] * 2)


@stepflows.workflow(id="t-fan-parent", trigger="test/fan.parent")
def fan_parent(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    """Sends n child events, then a parallel group forces a replay of the sending step."""
    key, n = ctx.event.data["key"], ctx.event.data["n"]
    mark(f"{key}-parent-invocations")
    ids = step.send_event(
        "fan-out",
        [Event(name="test/fan.child", data={"key": key, "i": i}) for i in range(n)],
    )
    a, b = step.parallel(
        lambda: step.run("after-1", _noop, 1), lambda: step.run("after-2", _noop, 2)
    )
    return {"sent": len(ids), "ids": ids, "after": [a, b]}


@stepflows.workflow(id="t-fan-async-parent", trigger="test/fan.async-parent")
async def fan_async_parent(ctx: stepflows.Context, step: stepflows.Step) -> dict[str, Any]:
    """send_event from an async workflow, with a single dict, an Event and a list of dicts."""
    key = ctx.event.data["key"]
    mark(f"{key}-async-invocations")
    one = await step.send_event(
        "one-dict", {"name": "test/fan.child", "data": {"key": key, "i": 0}}
    )
    single = await step.send_event(
        "one-event", Event(name="test/fan.child", data={"key": key, "i": 1})
    )
    many = await step.send_event(
        "dicts",
        [{"name": "test/fan.child", "data": {"key": key, "i": i}} for i in (2, 3)],
    )
    await step.parallel(lambda: step.run("after", _noop, 1))
    return {"ids": [*one, *single, *many]}


@stepflows.workflow(id="t-fan-tree", trigger="test/fan.tree")
def fan_tree(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """Each run with depth > 0 sends two events of depth - 1: a family of 2 + 4 + ... runs."""
    depth, key = ctx.event.data["depth"], ctx.event.data["key"]
    if depth > 0:
        step.send_event(
            "grow",
            [Event(name="test/fan.tree", data={"key": key, "depth": depth - 1}) for _ in range(2)],
        )
    return depth


@stepflows.workflow(id="t-fan-explicit-ids", trigger="test/fan.explicit-ids")
def fan_explicit_ids(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    """Events with their own ids: the ids are idempotency keys across runs, too."""
    key = ctx.event.data["key"]
    return step.send_event(
        "notify",
        [Event(name="test/fan.child", data={"key": key, "i": 7}, id=f"{key}-notify")],
    )


@stepflows.workflow(id="t-fan-bad-event", trigger="test/fan.bad-event")
def fan_bad_event(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    return step.send_event("bad", {"name": "not a valid name!", "data": {}})


# -- schemas -------------------------------------------------------------------------------


class Signup(BaseModel):
    email: str
    age: int = Field(ge=0)
    plan: str = "free"


@stepflows.workflow(id="t-schema", trigger="test/schema", schema=Signup)
def schema_flow(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    data = ctx.event.data
    assert isinstance(data, Signup), type(data)
    return {"type": type(data).__name__, "email": data.email, "age": data.age, "plan": data.plan}


@stepflows.workflow(id="t-schema-plain", trigger="test/schema")
def schema_plain(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Same event, no schema: it must not start either when the schema rejects the data."""
    return type(ctx.event.data).__name__


# -- typed step outputs -------------------------------------------------------------------


class Item(BaseModel):
    sku: str
    price: Decimal
    added: datetime


def make_item(sku: str) -> Item:
    return Item(sku=sku, price=Decimal("9.90"), added=datetime(2024, 5, 1, 12, 0, tzinfo=UTC))


def make_items(n: int) -> list[Item]:
    return [make_item(f"sku-{i}") for i in range(n)]


def make_index(n: int) -> dict[str, Item]:
    return {f"k{i}": make_item(f"idx-{i}") for i in range(n)}


def make_when() -> datetime:
    return datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)


def make_amount() -> Decimal:
    return Decimal("1234.5600")


def make_uuid(key: str) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, key)


def _types(values: dict[str, Any]) -> dict[str, Any]:
    """What the workflow got, by name: checked in the workflow and reported in its output."""
    item, items, index = values["item"], values["items"], values["index"]
    return {
        "item": type(item).__name__,
        "items": [type(i).__name__ for i in items],
        "index": {k: type(v).__name__ for k, v in index.items()},
        "when": type(values["when"]).__name__,
        "amount": type(values["amount"]).__name__,
        "uuid": type(values["uuid"]).__name__,
        "ok": isinstance(item, Item)
        and all(isinstance(i, Item) for i in items)
        and all(isinstance(v, Item) for v in index.values())
        and isinstance(item.price, Decimal)
        and isinstance(values["when"], datetime)
        and isinstance(values["amount"], Decimal)
        and isinstance(values["uuid"], uuid.UUID),
    }


def _typed_report(key: str, values: dict[str, Any], seen: dict[str, Any]) -> dict[str, Any]:
    after = _types(values)
    return {
        "before_group": seen,
        "after_group": after,
        "amount": str(values["amount"]),
        "when": values["when"].isoformat(),
        "item_price": str(values["item"].price),
        "uuid": str(values["uuid"]),
    }


@stepflows.workflow(id="t-typed", trigger="test/typed")
def typed(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    values = {
        "item": step.run("item", make_item, "one"),
        "items": step.run("items", make_items, 2),
        "index": step.run("index", make_index, 2),
        "when": step.run("when", make_when),
        "amount": step.run("amount", make_amount),
        "uuid": step.run("uuid", make_uuid, key),
    }
    seen = _types(values)
    # Every invocation notes what it saw: the first one got fresh values, the
    # one after the parallel group got them all back from the memo.
    mark(f"{key}-typed", json.dumps(seen, sort_keys=True))
    step.parallel(lambda: step.run("p1", _noop, 1), lambda: step.run("p2", _noop, 2))
    return _typed_report(key, values, seen)


@stepflows.workflow(id="t-typed-async", trigger="test/typed-async")
async def typed_async(ctx: stepflows.Context, step: stepflows.Step) -> dict[str, Any]:
    key = ctx.event.data["key"]
    values = {
        "item": await step.run("item", make_item, "one"),
        "items": await step.run("items", make_items, 2),
        "index": await step.run("index", make_index, 2),
        "when": await step.run("when", make_when),
        "amount": await step.run("amount", make_amount),
        "uuid": await step.run("uuid", make_uuid, key),
    }
    seen = _types(values)
    mark(f"{key}-typed", json.dumps(seen, sort_keys=True))
    await step.parallel(lambda: step.run("p1", _noop, 1), lambda: step.run("p2", _noop, 2))
    return _typed_report(key, values, seen)


@stepflows.workflow(id="t-typed-parallel", trigger="test/typed-parallel")
def typed_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    """Typed outputs of steps that ran inside a parallel group, on other workers."""
    item, items, amount = step.parallel(
        lambda: step.run("item", make_item, "p"),
        lambda: step.run("items", make_items, 3),
        lambda: step.run("amount", make_amount),
    )
    return {
        "item": type(item).__name__,
        "items": [type(i).__name__ for i in items],
        "amount": type(amount).__name__,
    }


class Receipt(BaseModel):
    total: Decimal
    at: datetime


@stepflows.workflow(id="t-typed-output", trigger="test/typed-output")
def typed_output(ctx: stepflows.Context, step: stepflows.StepSync) -> Receipt:
    """The run output: stored as JSON, read back as a Receipt with Run.typed_output()."""
    return Receipt(total=step.run("amount", make_amount), at=step.run("when", make_when))
