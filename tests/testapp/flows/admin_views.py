"""Workflows the admin tests look at: one piece of work done two ways.

``test/admin-summarize`` starts both variants: ``t-admin-parallel`` summarizes
every chunk in one ``step.parallel``; ``t-admin-fanout`` sends one event per
chunk, each starting a ``t-admin-chunk`` run. The first chunk fails once in
each variant, so timelines show a failed attempt.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import stepflows

from ..marks import mark


def _summarize_chunk(key: str, index: int, text: str) -> str:
    if mark(f"{key}-{index}") == 0 and index == 0:
        raise ConnectionError(f"chunk {index}: summarizer busy")
    time.sleep(0.2)
    return text.upper()


def _chunks(ctx: stepflows.Context) -> list[str]:
    return list(ctx.event.data["chunks"])


@stepflows.workflow(id="t-admin-parallel", trigger="test/admin-summarize")
def summarize_parallel(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    key = f"{ctx.event.data['key']}-parallel"
    parts = step.parallel(
        *[
            functools.partial(step.run, "summarize-chunk", _summarize_chunk, key, i, c)
            for i, c in enumerate(_chunks(ctx))
        ]
    )
    return step.run("combine", lambda items: " | ".join(items), list(parts))


@stepflows.workflow(id="t-admin-fanout", trigger="test/admin-summarize")
def summarize_fanout(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    key = f"{ctx.event.data['key']}-fanout"
    events = [
        stepflows.Event(name="test/admin-chunk", data={"key": key, "index": i, "text": c})
        for i, c in enumerate(_chunks(ctx))
    ]
    return {"sent": step.send_event("fan-out", events)}


@stepflows.workflow(id="t-admin-chunk", trigger="test/admin-chunk")
def summarize_one_chunk(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    data = ctx.event.data
    return step.run("summarize-chunk", _summarize_chunk, data["key"], data["index"], data["text"])
