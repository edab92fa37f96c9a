"""What a workflow function gets besides its step tools."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from .events import Event


class ReplayAwareLogger(logging.LoggerAdapter):
    """A logger that stays quiet while the workflow replays finished steps.

    Code outside steps runs again on every invocation; without this, each
    replay would log the same lines again.
    """

    def __init__(
        self, logger: logging.Logger, extra: dict[str, Any], replaying: Callable[[], bool]
    ):
        super().__init__(logger, extra)
        self._replaying = replaying

    def isEnabledFor(self, level: int) -> bool:
        if self._replaying():
            return False
        return super().isEnabledFor(level)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return msg, kwargs


class Context:
    """The run a workflow function is executing.

    ``event``: the triggering :class:`~stepflows.Event` (its ``data`` is the
    workflow's schema instance when it declares one). ``run_id``: this run.
    ``attempt``: 0-based attempt number of the step being executed.
    ``logger``: a logger that does not repeat lines when the run replays.
    """

    def __init__(
        self,
        *,
        event: Event,
        run_id: str,
        workflow_id: str,
        replaying: Callable[[], bool],
    ) -> None:
        self.event = event
        # A batched run (Batch) gets every event of its batch, in order; others get theirs.
        self.events: list[Event] = [event]
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.attempt = 0
        self.logger = ReplayAwareLogger(
            logging.getLogger(f"stepflows.workflow.{workflow_id}"),
            {"run_id": run_id, "workflow_id": workflow_id},
            replaying,
        )

    def __repr__(self) -> str:
        return f"<Context run={self.run_id} workflow={self.workflow_id} event={self.event.name}>"
