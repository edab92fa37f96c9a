"""Workflows of the fault-injection suite (tests/faults/), and its duplicate-message hook.

Steps mark ``<key>-<name>-start`` (with their pid) before they sleep and
``<key>-<name>`` when they finish, so a test can kill the process running a
step mid-step and count how often the step started and finished.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

from celery.signals import after_task_publish

import stepflows

from ..marks import mark


def _slow(key: str, name: str, seconds: float) -> str:
    mark(f"{key}-{name}-start")
    time.sleep(seconds)
    mark(f"{key}-{name}")
    return f"{name} done"


def _marked(key: str, value: Any) -> Any:
    mark(key)
    return value


@stepflows.workflow(id="t-fault-parallel", trigger="test/fault-parallel")
def fault_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key, seconds = ctx.event.data["key"], ctx.event.data.get("seconds", 0)
    slow, quick = step.parallel(
        lambda: step.run("slow", _slow, key, "slow", seconds),
        lambda: step.run("quick", _slow, key, "quick", 0),
    )
    after = step.run("after", _marked, f"{key}-after", "after")
    return [slow, quick, after]


@stepflows.workflow(id="t-fault-inline", trigger="test/fault-inline")
def fault_inline(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    key, seconds = ctx.event.data["key"], ctx.event.data.get("seconds", 0)
    first = step.run("first", _marked, f"{key}-first", "first")
    slow = step.run("slow", _slow, key, "slow", seconds)
    return [first, slow]


def _part(i: int) -> int:
    return i


@stepflows.workflow(id="t-fault-load", trigger="test/fault-load")
def fault_load(ctx: stepflows.Context, step: stepflows.StepSync) -> int:
    """Ten parallel steps, then one inline step: the load scenario."""
    width = ctx.event.data.get("width", 10)
    parts = step.parallel(*[functools.partial(step.run, "part", _part, i) for i in range(width)])
    return int(sum(parts))


@stepflows.workflow(id="t-fault-echo", trigger="test/fault-echo")
def fault_echo(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """Returns whatever the event asks its steps to return (property-based tests)."""
    values = ctx.event.data.get("values", [])
    inline = [step.run("echo", _echo, v) for v in values[:2]]
    parallel = step.parallel(*[functools.partial(step.run, "par", _echo, v) for v in values[2:]])
    return [*inline, *parallel]


def _echo(value: Any) -> Any:
    if isinstance(value, dict) and value.get("raise"):
        raise stepflows.NonRetriableError(str(value["raise"]))
    if isinstance(value, dict) and value.get("unserializable"):
        return {1, 2}
    return value


# -- duplicate delivery -------------------------------------------------------------
# STEPFLOWS_FAULT_DUPLICATE="stepflows.run_step,..." publishes every message of those
# tasks a second time, byte for byte (same task id, same chord): a broker redelivery.

_DUPLICATED_HEADER = "stepflows_fault_duplicate"


@after_task_publish.connect
def _publish_twice(
    sender: str | None = None,
    body: Any = None,
    headers: dict[str, Any] | None = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    wanted = os.environ.get("STEPFLOWS_FAULT_DUPLICATE", "")
    if not wanted or sender not in wanted.split(",") or not headers:
        return
    if headers.get(_DUPLICATED_HEADER):
        return
    from celery import current_app

    with current_app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=exchange or "",
            routing_key=routing_key,
            headers={**headers, _DUPLICATED_HEADER: 1},
            serializer="json",
            retry=True,
        )


def _kill_own_worker() -> None:
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@stepflows.workflow(id="t-fault-poison", trigger="test/fault-poison")
def fault_poison(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """A parallel step that kills the worker process running it, every time."""
    return list(step.parallel(lambda: step.run("killer", _kill_own_worker)))
