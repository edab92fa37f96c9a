"""Workflows of the engine's in-process unit tests (tests/unit/test_engine_in_process.py).

They run in the test process, so ``calls`` counts how often each piece of
code really ran and ``flags`` switches a workflow's path between invocations;
the tests reset them (and ``seen``) before each test.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

import stepflows
from stepflows import Event, NonRetriableError, RetryAfterError, StepError

calls: dict[str, int] = {}
flags: dict[str, Any] = {}
# What each invocation of unit-typed saw: (where, type name) pairs.
seen: list[tuple[str, str]] = []


def reset() -> None:
    calls.clear()
    flags.clear()
    seen.clear()


def count(name: str) -> int:
    """Count one call of ``name``; returns how many there were, this one included."""
    calls[name] = calls.get(name, 0) + 1
    return calls[name]


def counted(name: str, value: Any) -> Any:
    count(name)
    return value


def noop(value: Any = None) -> Any:
    return value


def always_fails(name: str) -> None:
    n = count(name)
    raise ValueError(f"{name} failure #{n}")


def give_up(name: str) -> None:
    count(name)
    raise NonRetriableError(f"{name}: card declined")


# -- memoized replay and step ids ----------------------------------------------------------


@stepflows.workflow(id="unit-memo", trigger="test/unit-memo")
def memo(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    count("body")
    a = step.run("a", counted, "a", 1)
    first = step.parallel(
        lambda: step.run("p", counted, "p0", "zero"),
        lambda: step.run("p", counted, "p1", "one"),
    )
    count("after-first-group")
    b = step.run("b", counted, "b", a + 1)
    second = step.parallel(
        lambda: step.run("q", counted, "q0", b * 10),
        lambda: step.run("q", counted, "q1", b * 100),
    )
    return {"a": a, "first": list(first), "b": b, "second": list(second)}


@stepflows.workflow(id="unit-loop", trigger="test/unit-loop")
def loop(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    out = [step.run("chunk", noop, i) for i in range(3)]
    out.append(step.run("other", noop, "other"))
    out += step.parallel(
        lambda: step.run("chunk", noop, 3),
        lambda: step.run("chunk", noop, 4),
    )
    out.append(step.run("chunk", noop, 5))
    return out


@stepflows.workflow(id="unit-nondeterministic", trigger="test/unit-nondeterministic")
def nondeterministic(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    first = step.run("first-b" if flags.get("flipped") else "first-a", noop, 1)
    pair = step.parallel(
        lambda: step.run("left", counted, "left", "l"),
        lambda: step.run("right", counted, "right", "r"),
    )
    return [first, *pair]


# -- misuse of the step tools ----------------------------------------------------------------


@stepflows.workflow(id="unit-nested", trigger="test/unit-nested")
def nested(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    def outer() -> Any:
        count("outer")
        if ctx.event.data.get("parallel"):
            return step.parallel(lambda: step.run("inner", counted, "inner", 1))
        return step.run("inner", counted, "inner", 1)

    return step.run("outer", outer)


USAGE_ERRORS: dict[str, Any] = {
    "empty-id": lambda step: step.run("", noop),
    "colon-id": lambda step: step.run("a:b", noop),
    "nul-id": lambda step: step.run("bad\x00id", noop),
    "not-callable": lambda step: step.run("x", 42),
    "bad-timeout": lambda step: step.run("x", noop, timeout=-1),
    "zero-timeout": lambda step: step.run("x", noop, timeout=0),
    "long-id": lambda step: step.run("x" * 201, noop),
    "parallel-not-callable": lambda step: step.parallel(lambda: step.run("x", noop), "nope"),
    "parallel-no-step": lambda step: step.parallel(lambda: step.run("x", noop), lambda: 5),
    "parallel-two-steps": lambda step: step.parallel(
        lambda: [step.run("x", noop, 1), step.run("y", noop, 2)]
    ),
    "parallel-nested": lambda step: step.parallel(
        lambda: step.parallel(lambda: step.run("x", noop))
    ),
}


@stepflows.workflow(id="unit-usage", trigger="test/unit-usage", retries=3)
def usage(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    step.run("fine", counted, "fine", 1)
    count("body")
    return USAGE_ERRORS[ctx.event.data["kind"]](step)


# -- retries -----------------------------------------------------------------------------------


@stepflows.workflow(id="unit-retries", trigger="test/unit-retries", retries=2)
def retries(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    step.run("first", counted, "first", 1)
    step.run("doomed", always_fails, "doomed")


@stepflows.workflow(id="unit-default-retries", trigger="test/unit-default-retries")
def default_retries(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    step.run("doomed", always_fails, "doomed")


@stepflows.workflow(id="unit-non-retriable", trigger="test/unit-non-retriable", retries=3)
def non_retriable(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    if ctx.event.data.get("parallel"):
        step.parallel(lambda: step.run("charge", give_up, "charge"))
    else:
        step.run("charge", give_up, "charge")


RETRY_AFTER = timedelta(minutes=10)


def rate_limited() -> str:
    if count("limited") == 1:
        raise RetryAfterError("rate limited", retry_after=RETRY_AFTER)
    return "done"


@stepflows.workflow(id="unit-retry-after", trigger="test/unit-retry-after")
def retry_after(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    if ctx.event.data.get("parallel"):
        return list(step.parallel(lambda: step.run("limited", rate_limited)))
    return step.run("limited", rate_limited)


@stepflows.workflow(id="unit-workflow-error", trigger="test/unit-workflow-error", retries=2)
def workflow_error(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    one = step.run("one", counted, "one", 1)
    if count("body") <= ctx.event.data["failures"]:
        raise RuntimeError(f"workflow code failed (invocation {calls['body']})")
    return f"recovered with {one}"


@stepflows.workflow(id="unit-catches", trigger="test/unit-catches")
def catches(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    try:
        step.run("doomed", give_up, "doomed")
    except StepError as exc:
        fallback = step.run("fallback", counted, "fallback", "plan b")
        return {"step_id": exc.step_id, "type": exc.error_type, "fallback": fallback}
    return {"step_id": None}


# -- parallel ------------------------------------------------------------------------------------


@stepflows.workflow(id="unit-parallel-values", trigger="test/unit-parallel-values")
def parallel_values(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    return list(
        step.parallel(
            lambda: str(step.run("a", counted, "a", 1)),
            lambda: step.run("b", counted, "b", {"x": 5})["x"],
        )
    )


@stepflows.workflow(id="unit-parallel-fallback", trigger="test/unit-parallel-fallback")
def parallel_fallback(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    def guarded() -> Any:
        try:
            return step.run("doomed", give_up, "doomed")
        except StepError as exc:
            return f"fallback for {exc.step_id} ({exc.error_type})"

    return list(step.parallel(guarded, lambda: step.run("fine", counted, "fine", "ok")))


@stepflows.workflow(id="unit-empty-then-parallel", trigger="test/unit-empty-then-parallel")
def empty_then_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    nothing = step.parallel()
    a, b = step.parallel(
        lambda: step.run("a", counted, "a", "A"),
        lambda: step.run("b", counted, "b", "B"),
    )
    after = step.run("after", counted, "after", 3)
    return {"nothing": list(nothing), "a": a, "b": b, "after": after}


@stepflows.workflow(id="unit-parallel-fail", trigger="test/unit-parallel-fail", retries=1)
def parallel_fail(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    try:
        step.parallel(
            lambda: step.run("doomed", always_fails, "doomed"),
            lambda: step.run("good", counted, "good", "kept"),
        )
    except StepError as exc:
        if not ctx.event.data.get("catch"):
            raise
        return {"caught": exc.step_id, "type": exc.error_type}
    return {"caught": None}


@stepflows.workflow(id="unit-parallel-async", trigger="test/unit-parallel-async")
async def parallel_async(ctx: stepflows.Context, step: stepflows.Step) -> list[Any]:
    async def doubled() -> int:
        return int(await step.run("c", counted, "c", 21)) * 2

    return list(await step.parallel(doubled, lambda: step.run("d", counted, "d", "d")))


# -- limits ---------------------------------------------------------------------------------------


@stepflows.workflow(id="unit-many-steps", trigger="test/unit-many-steps")
def many_steps(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    n = ctx.event.data["n"]
    if ctx.event.data.get("parallel"):
        return sum(step.parallel(*[(lambda i=i: step.run("n", noop, i)) for i in range(n)]))
    return sum(step.run("n", noop, i) for i in range(n))


@stepflows.workflow(id="unit-state", trigger="test/unit-state")
def state(ctx: stepflows.Context, step: stepflows.StepSync) -> list[int]:
    sizes = ctx.event.data["sizes"]
    if ctx.event.data.get("parallel"):
        outputs = step.parallel(
            *[
                (lambda i=i, n=n: step.run("big", counted, f"big-{i}", "x" * n))
                for i, n in enumerate(sizes)
            ]
        )
    else:
        outputs = tuple(step.run("big", counted, f"big-{i}", "x" * n) for i, n in enumerate(sizes))
    return [len(o) for o in outputs]


@stepflows.workflow(id="unit-big-return", trigger="test/unit-big-return")
def big_return(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    small = step.run("small", counted, "small", "x")
    return small * ctx.event.data["size"]


# -- BaseExceptions and timeouts ------------------------------------------------------------


class Boom(BaseException):
    """A BaseException that is not an Exception, raised by a step."""


BASE_EXCEPTIONS: dict[str, Any] = {
    "Boom": lambda: Boom("boom in a step"),
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": lambda: KeyboardInterrupt("interrupted in a step"),
}


def raise_base(kind: str) -> None:
    count("doomed")
    raise BASE_EXCEPTIONS[kind]()


@stepflows.workflow(id="unit-base-exception", trigger="test/unit-base-exception", retries=3)
def base_exception(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    kind = ctx.event.data["kind"]
    step.run("before", counted, "before", 1)
    if ctx.event.data.get("parallel"):
        step.parallel(
            lambda: step.run("doomed", raise_base, kind),
            lambda: step.run("sibling", counted, "sibling", 2),
        )
    else:
        step.run("doomed", raise_base, kind)
    return str(step.run("after", counted, "after", "not reached"))


@stepflows.workflow(id="unit-cancelled-error", trigger="test/unit-cancelled-error", retries=3)
async def cancelled_error(ctx: stepflows.Context, step: stepflows.Step) -> str:
    async def cancelled() -> None:
        await asyncio.sleep(0)
        count("doomed")
        raise asyncio.CancelledError("cancelled inside a step")

    await step.run("doomed", cancelled)
    return str(await step.run("after", counted, "after", "not reached"))


@stepflows.workflow(id="unit-normal", trigger="test/unit-normal")
def normal(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    one = step.run("one", counted, "normal-one", 1)
    left, right = step.parallel(
        lambda: step.run("left", counted, "normal-left", "l"),
        lambda: step.run("right", counted, "normal-right", "r"),
    )
    return {"one": one, "left": left, "right": right}


TIMEOUT = 0.2


def sleeper(seconds: float) -> str:
    count("slow-started")
    time.sleep(seconds)
    count("slow-finished")
    return "woke up"


async def async_sleeper(seconds: float) -> str:
    count("slow-started")
    await asyncio.sleep(seconds)
    count("slow-finished")
    return "woke up"


@stepflows.workflow(id="unit-timeout", trigger="test/unit-timeout", retries=1)
def timeout(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    if ctx.event.data.get("parallel"):
        return step.parallel(lambda: step.run("slow", sleeper, 5, timeout=TIMEOUT))
    return step.run("slow", sleeper, 5, timeout=TIMEOUT)


@stepflows.workflow(id="unit-huge-timeout", trigger="test/unit-huge-timeout", retries=1)
def huge_timeout(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    """``timeout`` from the event: a number, or "inf" (JSON has no infinity)."""
    seconds = ctx.event.data["timeout"]
    if isinstance(seconds, str):
        seconds = float(seconds)
    return step.run("quick", counted, "quick", "ok", timeout=seconds)


@stepflows.workflow(id="unit-timeout-async", trigger="test/unit-timeout-async", retries=1)
async def timeout_async(ctx: stepflows.Context, step: stepflows.Step) -> Any:
    return await step.run("slow", async_sleeper, 5, timeout=TIMEOUT)


# -- typed outputs, fan-out ----------------------------------------------------------------


class Item(BaseModel):
    sku: str
    qty: int


def make_item() -> Item:
    count("make-item")
    return Item(sku="one", qty=2)


def make_item_untyped():
    """Not annotated: its output comes back in its JSON form."""
    return Item(sku="two", qty=3)


@stepflows.workflow(id="unit-typed", trigger="test/unit-typed")
def typed(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    item = step.run("item", make_item)
    plain = step.run("plain", make_item_untyped)
    seen.append(("before-group", type(item).__name__))
    (again,) = step.parallel(lambda: step.run("again", make_item))
    seen.append(("after-group", type(item).__name__))
    return {
        "item": type(item).__name__,
        "again": type(again).__name__,
        "plain": type(plain).__name__,
        "qty": item.qty + again.qty,
    }


@stepflows.workflow(id="unit-fan-parent", trigger="test/unit-fan-parent")
def fan_parent(ctx: stepflows.Context, step: stepflows.StepSync) -> list[str]:
    ids = step.send_event(
        "notify", [Event(name="test/unit-fan-child", data={"n": n}) for n in range(2)]
    )
    # A parallel group: the invocation after it replays the send_event step.
    step.parallel(lambda: step.run("pause", noop, 0))
    return list(ids)


@stepflows.workflow(id="unit-fan-child", trigger="test/unit-fan-child")
def fan_child(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    n = ctx.event.data["n"]
    return int(step.run("child", counted, f"child-{n}", n * 10))
