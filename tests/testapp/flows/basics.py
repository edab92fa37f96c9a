"""Workflows the integration tests drive through real workers.

Each event carries a unique ``key``; steps call ``mark()`` so tests can count
how often their code really ran.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from typing import Any

import stepflows
from stepflows import NonRetriableError, RetryAfterError, StepError

from ..marks import count, mark


def _noop(i: int = 0) -> int:
    return i


def _marked(key: str, value: Any) -> Any:
    mark(key)
    return value


def _flaky(key: str, failures: int) -> str:
    seen = mark(key)
    if seen < failures:
        raise ConnectionError(f"flaky failure #{seen + 1}")
    return f"ok after {seen + 1} attempts"


def _always_fails(key: str) -> None:
    mark(key)
    raise ValueError("this step always fails <b>bold</b>")


# -- sequential -----------------------------------------------------------------


@stepflows.workflow(id="t-three-steps", trigger="test/three-steps")
def three_steps(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    a = step.run("a", _marked, f"{key}-a", 1)
    b = step.run("b", _marked, f"{key}-b", a + 1)
    c = step.run("c", _marked, f"{key}-c", a + b)
    return {"a": a, "b": b, "c": c, "pid": os.getpid()}


@stepflows.workflow(id="t-async-steps", trigger="test/async-steps")
async def async_steps(ctx: stepflows.Context, step: stepflows.Step) -> list[Any]:
    key = ctx.event.data["key"]

    async def double(x: int) -> int:
        await asyncio.sleep(0)
        mark(f"{key}-double")
        return x * 2

    one = await step.run("plain", _marked, f"{key}-plain", 21)
    two = await step.run("async", double, one)
    three = await step.run("flaky", _flaky, f"{key}-flaky", 1)
    return [one, two, three]


@stepflows.workflow(id="t-flaky", trigger="test/flaky")
def flaky(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    before = step.run("before", _marked, f"{key}-before", "b")
    result = step.run("flaky", _flaky, f"{key}-flaky", ctx.event.data.get("failures", 2))
    return {"before": before, "result": result}


@stepflows.workflow(id="t-always-fails", trigger="test/always-fails")
def always_fails(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    step.run("first", _marked, f"{ctx.event.data['key']}-first", 1)
    step.run("doomed", _always_fails, f"{ctx.event.data['key']}-doomed")


@stepflows.workflow(id="t-catches", trigger="test/catches")
def catches(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    try:
        step.run("doomed", _always_fails, f"{ctx.event.data['key']}-doomed")
    except StepError as exc:
        fallback = step.run("fallback", _marked, f"{ctx.event.data['key']}-fallback", "plan b")
        return {"caught": exc.step_id, "type": exc.error_type, "fallback": fallback}
    return {"caught": None}


@stepflows.workflow(id="t-non-retriable", trigger="test/non-retriable", retries=3)
def non_retriable(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    def give_up() -> None:
        mark(f"{ctx.event.data['key']}-give-up")
        raise NonRetriableError("card declined")

    step.run("charge", give_up)


@stepflows.workflow(id="t-retry-after", trigger="test/retry-after")
def retry_after(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    def later() -> str:
        if mark(f"{ctx.event.data['key']}-later") == 0:
            raise RetryAfterError("rate limited", retry_after=0.3)
        return "done"

    return step.run("later", later)


@stepflows.workflow(id="t-workflow-error", trigger="test/workflow-error")
def workflow_error(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key = ctx.event.data["key"]
    step.run("one", _marked, f"{key}-one", 1)
    if mark(f"{key}-body") < 1:
        raise RuntimeError("workflow code failed once")
    return "recovered"


@stepflows.workflow(id="t-repeated-ids", trigger="test/repeated-ids")
def repeated_ids(ctx: stepflows.Context, step: stepflows.StepSync) -> list[int]:
    return [step.run("item", _noop, i) for i in range(3)]


@stepflows.workflow(id="t-bad-output", trigger="test/bad-output")
def bad_output(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    step.run("fine", _noop, 1)
    return step.run("not-json", lambda: object())


@stepflows.workflow(id="t-bad-run-output", trigger="test/bad-run-output")
def bad_run_output(ctx: stepflows.Context, step: stepflows.StepSync) -> Any:
    return {1, 2, object()}


@stepflows.workflow(id="t-too-big", trigger="test/too-big")
def too_big(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    step.run("small", _noop, 1)
    step.run("huge", lambda: "x" * (4 * 1024 * 1024 + 1))


@stepflows.workflow(id="t-too-many", trigger="test/too-many")
def too_many(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    total = 0
    for i in range(ctx.event.data["steps"]):
        total += step.run("n", _noop, i)
    return total


@stepflows.workflow(id="t-nested", trigger="test/nested")
def nested(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    step.run("outer", lambda: step.run("inner", _noop, 1))


@stepflows.workflow(id="t-nondeterministic", trigger="test/nondeterministic")
def nondeterministic(ctx: stepflows.Context, step: stepflows.StepSync) -> None:
    key = ctx.event.data["key"]
    # The first invocation calls "first-a"; after the retry it calls "first-b".
    first = "first-a" if count(f"{key}-flaky") == 0 else "first-b"
    step.run(first, _noop, 1)
    step.run("flaky", _flaky, f"{key}-flaky", 1)


# -- parallel -------------------------------------------------------------------


def _sleep_and_mark(key: str, seconds: float) -> dict[str, Any]:
    start = time.time()
    time.sleep(seconds)
    mark(key)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


@stepflows.workflow(id="t-parallel-sleep", trigger="test/parallel-sleep")
def parallel_sleep(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]
    left, right = step.parallel(
        lambda: step.run("left", _sleep_and_mark, f"{key}-left", 1.0),
        lambda: step.run("right", _sleep_and_mark, f"{key}-right", 1.0),
    )
    after = step.run("after", _marked, f"{key}-after", "sequential again")
    return [left, right, after]


def _summarize(chunk: str) -> str:
    return chunk.upper()


@stepflows.workflow(id="t-summarize", trigger="test/summarize")
async def summarize(ctx: stepflows.Context, step: stepflows.Step) -> dict[str, Any]:
    chunks = [f"chunk {i}" for i in range(ctx.event.data["chunks"])]
    summaries = await step.parallel(
        *[functools.partial(step.run, "summarize-chunk", _summarize, c) for c in chunks]
    )
    joined = await step.run("join", lambda parts: " | ".join(parts), list(summaries))
    return {"summaries": list(summaries), "joined": joined}


@stepflows.workflow(id="t-parallel-flaky", trigger="test/parallel-flaky")
def parallel_flaky(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]
    return list(
        step.parallel(
            lambda: step.run("sibling-1", _marked, f"{key}-s1", 1),
            lambda: step.run("flaky", _flaky, f"{key}-flaky", 2),
            lambda: step.run("sibling-2", _marked, f"{key}-s2", 2),
        )
    )


@stepflows.workflow(id="t-parallel-fail", trigger="test/parallel-fail")
def parallel_fail(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = ctx.event.data["key"]
    try:
        step.parallel(
            lambda: step.run("good", _marked, f"{key}-good", "kept"),
            lambda: step.run("doomed", _always_fails, f"{key}-doomed"),
        )
    except StepError as exc:
        if not ctx.event.data.get("catch"):
            raise
        return {"caught": exc.step_id}
    return {"caught": None}


@stepflows.workflow(id="t-parallel-many", trigger="test/parallel-many")
def parallel_many(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    n = ctx.event.data["n"]
    results = step.parallel(*[functools.partial(step.run, "noop", _noop, i) for i in range(n)])
    return sum(results)


@stepflows.workflow(id="t-parallel-empty", trigger="test/parallel-empty")
def parallel_empty(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    nothing = step.parallel()
    return [list(nothing), step.run("after", _noop, 5)]


@stepflows.workflow(id="t-parallel-redelivery", trigger="test/parallel-redelivery")
def parallel_redelivery(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key = ctx.event.data["key"]
    return list(
        step.parallel(
            lambda: step.run("one", _marked, f"{key}-one", 1),
            lambda: step.run("two", _marked, f"{key}-two", 2),
        )
    )


# -- managing runs ----------------------------------------------------------------


@stepflows.workflow(id="t-resumable", trigger="test/resumable", retries=1)
def resumable(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """Fails until the test creates the file named by ``gate``; then a retry resumes it."""
    key = ctx.event.data["key"]

    def gated() -> str:
        mark(f"{key}-gated")
        if not os.path.exists(ctx.event.data["gate"]):
            raise RuntimeError("gate closed")
        return "through"

    first = step.run("first", _marked, f"{key}-first", 1)
    return [first, step.run("gated", gated)]


@stepflows.workflow(id="t-slow-steps", trigger="test/slow-steps")
def slow_steps(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    key = ctx.event.data["key"]
    steps = ctx.event.data.get("steps", 20)
    for _ in range(steps):
        step.run("slow", _sleep_and_mark, f"{key}-slow", 0.2)
    return steps


# -- experimental asyncio execution -------------------------------------------------


@stepflows.workflow(id="t-gather", trigger="test/gather", experimental_execution=True)
async def gather(ctx: stepflows.Context, step: stepflows.Step) -> dict[str, Any]:
    key = ctx.event.data["key"]
    first = await step.run("first", _marked, f"{key}-first", 1)
    left, right = await asyncio.gather(
        step.run("left", _sleep_and_mark, f"{key}-left", 1.0),
        step.run("right", _sleep_and_mark, f"{key}-right", 1.0),
    )
    chunks = await asyncio.gather(*[step.run("chunk", _summarize, f"c{i}") for i in range(5)])
    tasks = [
        asyncio.ensure_future(step.run("race-a", _marked, f"{key}-race-a", "a")),
        asyncio.ensure_future(step.run("race-b", _marked, f"{key}-race-b", "b")),
    ]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    last = await step.run("last", _marked, f"{key}-last", "end")
    return {
        "first": first,
        "pids": [left["pid"], right["pid"]],
        "overlap": left["start"] < right["end"] and right["start"] < left["end"],
        "chunks": list(chunks),
        "race_done": sorted(t.result() for t in done),
        "last": last,
    }


@stepflows.workflow(id="t-gather-fail", trigger="test/gather-fail", experimental_execution=True)
async def gather_fail(ctx: stepflows.Context, step: stepflows.Step) -> dict[str, Any]:
    key = ctx.event.data["key"]
    results = await asyncio.gather(
        step.run("ok", _marked, f"{key}-ok", 1),
        step.run("doomed", _always_fails, f"{key}-doomed"),
        return_exceptions=True,
    )
    return {"ok": results[0], "error": type(results[1]).__name__}
