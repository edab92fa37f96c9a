"""Control-flow signals that end an invocation (or one parallel callable) early.

They derive from BaseException so that a workflow's ``except Exception``
cannot swallow them by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..store.fence import LeaseLost
from ..store.records import PlannedStep

__all__ = [
    "Cancelled",
    "LeaseLost",
    "Pending",
    "PlannedStep",
    "StepOutcome",
    "Suspend",
    "TargetReached",
]


class Suspend(BaseException):
    """Stop this invocation; the run goes on later.

    ``countdown``: re-invoke the run after that many seconds (a step retry).
    ``planned``: dispatch these parallel steps as a chord, then re-invoke.
    ``written``: the run is already released (a durable wait stored it).
    """

    def __init__(
        self,
        *,
        countdown: float | None = None,
        planned: list[PlannedStep] | None = None,
        written: bool = False,
    ) -> None:
        super().__init__("run suspended")
        self.countdown = countdown
        self.planned = planned or []
        self.written = written


class Cancelled(BaseException):
    """The run was cancelled: stop before the next step."""


class Pending(BaseException):
    """Inside ``step.parallel``: this callable's step has not finished yet.

    Raised by ``step.run`` so that the callable stops there; ``parallel``
    catches it, plans the step, and calls the callable again once every step
    of the group has finished, when ``step.run`` returns the stored output and
    the callable computes its value from it.
    """


@dataclass
class StepOutcome:
    """What one attempt of a step came to."""

    completed: bool = False
    value: Any = None
    retry_in: float | None = None
    error: Any = None  # StepError when the step failed for good


class TargetReached(BaseException):
    """A step task ran its own step; the rest of the workflow is not its business."""

    def __init__(self, outcome: StepOutcome) -> None:
        super().__init__("target step reached")
        self.outcome = outcome
