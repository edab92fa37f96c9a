"""Workflows of the durable waits (test_waits.py, test_waits_faults.py).

Each event carries a unique ``key``; steps mark ``<key>-<name>`` (and
``<key>-<name>-start`` for the slow ones) so a test can count how often a
step's code really ran. Event names start with ``test/waits-``.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta
from typing import Any

from celery.signals import task_received
from pydantic import BaseModel

import stepflows
from stepflows import NonRetriableError, StepError

from ..marks import mark

SIGNAL = "test/waits-signal"
"""What ``waits-event`` waits for, matched on ``data.key``."""
OFFER = "test/waits-offer"
"""What ``waits-event-if`` waits for: matched on ``data.key`` and filtered by ``if_``."""
CANCEL = "test/waits-cancel"
"""Cancels the ``waits-cancel-on`` run with the same ``data.key``."""


def _marked(key: str, value: Any = None) -> Any:
    if key:
        mark(key)
    return value


def _work(key: str, name: str, seconds: float) -> str:
    mark(f"{key}-{name}-start")
    time.sleep(seconds)
    mark(f"{key}-{name}")
    return name


def _fail_once(key: str) -> str:
    if mark(key) == 0:
        raise RuntimeError("the first attempt fails")
    return "ok"


def _boom(key: str) -> None:
    mark(f"{key}-boom")
    raise NonRetriableError(f"boom {key}")


def _event(event: stepflows.Event | None) -> dict[str, Any] | None:
    return None if event is None else {"id": event.id, "name": event.name, "data": event.data}


# -- which messages a worker received ------------------------------------------------------
# STEPFLOWS_TEST_MARK_RECEIVED=1 in a worker's env: each stepflows.execute_run or
# stepflows.resume_run message it receives (also one held for a later time) marks
# ``received-<run id>``, with the task name and the message's eta.


@task_received.connect
def _mark_received(request: Any = None, **_: Any) -> None:
    if os.environ.get("STEPFLOWS_TEST_MARK_RECEIVED") != "1" or request is None:
        return
    if request.name in ("stepflows.execute_run", "stepflows.resume_run") and request.args:
        mark(f"received-{request.args[0]}", f"{request.name} eta={request.eta}")


# -- sleeps ------------------------------------------------------------------------------


@stepflows.workflow(id="waits-sleep", trigger="test/waits-sleep")
def sleeper(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Step ``before``, a sleep ``nap`` of ``data["seconds"]`` (or until ``data["until"]``),
    then step ``after``."""
    data = ctx.event.data
    key = data["key"]
    step.run("before", _marked, f"{key}-before", "before")
    if data.get("until"):
        step.sleep_until("nap", datetime.fromisoformat(data["until"]))
    else:
        step.sleep("nap", timedelta(seconds=data["seconds"]))
    step.run("after", _marked, f"{key}-after", "after")
    return "slept"


# -- waiting for events ------------------------------------------------------------------


@stepflows.workflow(id="waits-event", trigger="test/waits-event")
def event_waiter(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any] | None:
    """Step ``ready``, then wait for SIGNAL with the same ``data.key``, then step ``after``.

    ``data["marks"] = False``: only the wait, no marks (the 1,000 runs of one key).
    """
    data = ctx.event.data
    key = data["key"]
    marks = data.get("marks", True)
    if marks:
        step.run("ready", _marked, f"{key}-ready", None)
    timeout = data.get("timeout")
    event = step.wait_for_event("signal", event=SIGNAL, match="data.key", timeout=timeout)
    if marks:
        step.run("after", _marked, f"{key}-after", None)
    return _event(event)


def _big_enough(trigger: stepflows.Event, candidate: stepflows.Event) -> bool:
    return bool(candidate.data["amount"] >= trigger.data["min"])


@stepflows.workflow(id="waits-event-if", trigger="test/waits-event-if")
def event_waiter_if(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any] | None:
    """Wait for an OFFER of the same ``data.key`` whose amount is at least ``data["min"]``."""
    key = ctx.event.data["key"]
    event = step.wait_for_event(
        "offer", event=OFFER, match="data.key", if_=_big_enough, timeout=timedelta(minutes=2)
    )
    step.run("after", _marked, f"{key}-after", None)
    return _event(event)


# -- invoke ------------------------------------------------------------------------------


class Quote(BaseModel):
    amount: int
    note: str


@stepflows.workflow(id="waits-quote", trigger="test/waits-quote", retries=0)
def quote(ctx: stepflows.Context, step: stepflows.StepSync) -> Quote:
    """The invoked child: optional ``work`` step of ``data["seconds"]``, optional sleep
    ``nap`` of ``data["nap"]`` seconds, fails when ``data["mode"] == "fail"``."""
    data = ctx.event.data
    key = data["key"]
    if data.get("seconds"):
        step.run("work", _work, key, "child-work", data["seconds"])
    if data.get("nap"):
        step.sleep("nap", data["nap"])
    if data.get("mode") == "fail":
        step.run("boom", _boom, key)
    step.run("done", _marked, f"{key}-child-done", None)
    return Quote(amount=data.get("amount", 42), note=f"for {key}")


@stepflows.workflow(id="waits-invoke", trigger="test/waits-invoke", retries=2)
def invoker(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    """Invoke ``waits-quote`` as step ``get-quote`` (with ``data["child"]`` and
    ``data["timeout"]``); a failure or timeout is caught and reported. With
    ``data["fail_once"]``, a step after the invoke fails once and is retried."""
    data = ctx.event.data
    key = data["key"]
    child = {"key": key, **data.get("child", {})}
    target: Any = "waits-quote" if data.get("by_id") else quote
    out: dict[str, Any] = {}
    try:
        got = step.invoke("get-quote", workflow=target, data=child, timeout=data.get("timeout"))
    except StepError as exc:
        out = {"error": exc.error_type, "message": exc.error_message}
    else:
        out = {"type": type(got).__name__, "amount": got.amount, "note": got.note}
    if data.get("fail_once"):
        out["after"] = step.run("after", _fail_once, f"{key}-after")
    step.run("end", _marked, f"{key}-parent-end", None)
    return out


# -- run timeouts ------------------------------------------------------------------------


@stepflows.workflow(
    id="waits-finish-timeout",
    trigger="test/waits-finish-timeout",
    timeouts=stepflows.Timeouts(finish=timedelta(seconds=2)),
)
def finish_timeout(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Runs past its 2 s finish timeout: ``data["mode"]`` "sleep" (a 30 s sleep),
    "loop" (100 steps of 0.2 s) or "step" (a 5 s step, then step ``next``)."""
    data = ctx.event.data
    key, mode = data["key"], data["mode"]
    step.run("first", _marked, f"{key}-first", None)
    if mode == "sleep":
        step.sleep("nap", 30)
    elif mode == "loop":
        for _ in range(100):
            step.run("tick", _work, key, "tick", 0.2)
    else:
        step.run("long", _work, key, "long", 5)
    step.run("next", _marked, f"{key}-next", None)
    return "not timed out"


# -- cancel_on ---------------------------------------------------------------------------


@stepflows.workflow(
    id="waits-cancel-on",
    trigger="test/waits-cancel-on",
    cancel_on=[stepflows.CancelOn(event=CANCEL, match="data.key")],
)
def cancel_on(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Step ``work`` of ``data["seconds"]``, a sleep of ``data["nap"]`` seconds (if any),
    then step ``after``; a CANCEL event with the same ``data.key`` cancels it."""
    data = ctx.event.data
    key = data["key"]
    step.run("work", _work, key, "work", data.get("seconds", 0))
    if data.get("nap"):
        step.sleep("nap", data["nap"])
    step.run("after", _marked, f"{key}-after", None)
    return "not cancelled"


# -- on_failure --------------------------------------------------------------------------


def record_failure(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    """The on_failure handler of ``waits-fails``: marks ``<key>-on-failure`` once."""
    failed = ctx.event.data
    key = failed["event"]["data"]["key"]
    step.run("record", _marked, f"{key}-on-failure", None)
    return {"run_id": failed["run_id"], "error": failed["error"]["type"]}


@stepflows.workflow(
    id="waits-fails", trigger="test/waits-fails", retries=0, on_failure=record_failure
)
def fails(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    """Sleeps ``data["nap"]`` seconds (if any), then fails for good in step ``boom``."""
    data = ctx.event.data
    key = data["key"]
    if data.get("nap"):
        step.sleep("nap", data["nap"])
    step.run("boom", _boom, key)
    return "unreachable"
