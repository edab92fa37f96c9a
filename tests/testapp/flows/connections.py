"""Workflows that report the database connections their steps ran on.

Each worker process counts the connections Django opened in its main thread
(the tasks' thread; a lease heartbeat has its own thread and connection).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from django.db.backends.signals import connection_created

import stepflows

_opened = {"count": 0}


def _count(sender: Any, connection: Any, **kwargs: Any) -> None:
    if threading.current_thread() is threading.main_thread() and connection.alias == "default":
        _opened["count"] += 1


connection_created.connect(_count, weak=False, dispatch_uid="tests.connections.count")


def where() -> list[int]:
    """(this process, connections it has opened so far)."""
    return [os.getpid(), _opened["count"]]


@stepflows.workflow(id="test-connections", trigger="test/connections", retries=0)
def connections_flow(ctx: stepflows.Context, step: stepflows.StepSync) -> dict[str, Any]:
    n = ctx.event.data.get("n", 12)
    first = step.run("first", where)
    group = step.parallel(*[functools.partial(step.run, f"p{i}", where) for i in range(n)])
    last = step.run("last", where)
    return {"first": first, "parallel": group, "last": last}
