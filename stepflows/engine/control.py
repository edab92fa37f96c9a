"""Control-flow signals that end an invocation early.

They derive from BaseException so that a workflow's ``except Exception``
cannot swallow them by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PlannedStep:
    """A new step found by ``parallel`` that must run as its own task."""

    step_id: str
    position: int
    group: int
    is_new: bool


class Suspend(BaseException):
    """Stop this invocation; the run goes on later.

    ``countdown``: re-invoke the run after that many seconds (a step retry).
    ``planned``: dispatch these parallel steps as a chord, then re-invoke.
    """

    def __init__(
        self, *, countdown: float | None = None, planned: list[PlannedStep] | None = None
    ) -> None:
        super().__init__("run suspended")
        self.countdown = countdown
        self.planned = planned or []


class Cancelled(BaseException):
    """The run was cancelled: stop before the next step."""


@dataclass
class StepOutcome:
    """What one attempt of a step came to."""

    completed: bool = False
    value: Any = None
    retry_in: float | None = None
    error: Any = None  # StepError when the step failed for good
    extra: dict[str, Any] = field(default_factory=dict)


class TargetReached(BaseException):
    """A step task ran its own step; the rest of the workflow is not its business."""

    def __init__(self, outcome: StepOutcome) -> None:
        super().__init__("target step reached")
        self.outcome = outcome
