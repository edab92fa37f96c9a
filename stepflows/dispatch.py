"""Publishing stepflows' Celery messages, by task name.

The store decides what must be sent and hands it here after commit; this
module imports no engine and no task module: it names the tasks
(``stepflows.execute_run``, ``stepflows.run_step``, ``stepflows.resume_run``)
and lets the project's Celery app route them. A :class:`Publisher` does the
sending; :func:`use` swaps it, which is how the in-process test driver
(:class:`stepflows.testing.InProcess`) runs messages in the test process.
Each message carries, when OpenTelemetry tracing is on, the trace context of
the code that made it (a ``trace`` keyword, see :mod:`stepflows.tracing`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery import current_app, group, signature

from . import tracing
from .conf import get_settings

EXECUTE_RUN = "stepflows.execute_run"
RUN_STEP = "stepflows.run_step"
RESUME_RUN = "stepflows.resume_run"


@dataclass(frozen=True)
class Message:
    """One task message: the task's name, its arguments, and an optional delay."""

    task: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    countdown: float | None = None


class Publisher(Protocol):
    def publish(self, messages: list[Message]) -> None: ...


class CeleryPublisher:
    """Sends messages with the project's Celery app, on ``STEPFLOWS['QUEUE']``."""

    def publish(self, messages: list[Message]) -> None:
        queue = get_settings().QUEUE
        options: dict[str, Any] = {"queue": queue} if queue else {}
        steps = [m for m in messages if m.task == RUN_STEP and not m.countdown]
        if len(steps) > 1:
            # A parallel group: one publish of many messages over one connection.
            sigs = [signature(m.task, args=m.args, kwargs=m.kwargs, app=current_app) for m in steps]
            for sig in sigs:
                sig.options.update(options, ignore_result=True)
            group(sigs).apply_async()
            messages = [m for m in messages if m not in steps]
        for m in messages:
            current_app.send_task(
                m.task, args=m.args, kwargs=m.kwargs, countdown=m.countdown or None, **options
            )


_publisher: Publisher = CeleryPublisher()


def publisher() -> Publisher:
    return _publisher


def set_publisher(new: Publisher) -> Publisher:
    """Replace the publisher for this process; returns the previous one."""
    global _publisher
    old, _publisher = _publisher, new
    return old


@contextmanager
def use(new: Publisher) -> Iterator[Publisher]:
    """Send messages through ``new`` inside the block."""
    old = set_publisher(new)
    try:
        yield new
    finally:
        set_publisher(old)


def publish(messages: list[Message]) -> None:
    if messages:
        _publisher.publish(messages)


# -- the messages ------------------------------------------------------------------


def execute_run(run_id: Any, *, wake: int | None = None, countdown: float | None = None) -> Message:
    """An invocation of the run (for its wake-up number ``wake``, see ``Run.wake``)."""
    kwargs = {"wake": wake} if wake is not None else {}
    return Message(EXECUTE_RUN, (str(run_id),), tracing.stamp(kwargs), countdown or None)


def run_step(run_id: Any, step_id: str, position: int, group: int) -> Message:
    """One step of a parallel group (the chord's header task).

    It names no wake-up: the step's own lease decides which task runs it.
    """
    return Message(RUN_STEP, (str(run_id), step_id, position, group), tracing.stamp({}))


def resume_run(run_id: Any, *, wake: int) -> Message:
    """The chord callback: re-invoke a run whose parallel group finished."""
    return Message(RESUME_RUN, (str(run_id),), tracing.stamp({"wake": wake}))
