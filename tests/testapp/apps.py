from __future__ import annotations

import os
from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from stepflows.dispatch import Message, Publisher


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"

    def ready(self) -> None:
        if os.environ.get("STEPFLOWS_FAULT_DROP_CALLBACKS") == "1":
            drop_chord_callbacks()


class DropCallbacks:
    """A publisher that forwards every message except the chord callbacks."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner

    def publish(self, messages: list[Message]) -> None:
        from stepflows import dispatch

        kept = [m for m in messages if m.task != dispatch.RESUME_RUN]
        if kept:
            self.inner.publish(kept)


def drop_chord_callbacks() -> None:
    """Fault hook of tests/faults/ (STEPFLOWS_FAULT_DROP_CALLBACKS=1 in a worker's env).

    The worker never publishes a parallel group's callback (``stepflows.resume_run``),
    as if it died between the join's commit and the publish: only the recovery
    resumes such runs (tests/faults/test_recovery.py).
    """
    from stepflows import dispatch

    dispatch.set_publisher(DropCallbacks(dispatch.publisher()))
