"""What the store reads and writes about steps, as plain records built by field name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ..exceptions import StepError
from ..models import StepStatus

FINISHED = (StepStatus.COMPLETED, StepStatus.FAILED)


@dataclass
class StepRecord:
    """One step's stored state: its outcome so far and every attempt."""

    step_id: str
    position: int
    group: int | None
    status: str
    output: Any = None
    output_bytes: int = 0
    error: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    attempt_count: int = 0
    retry_at: datetime | None = None
    started_at: datetime | None = None
    attempts_base: int = 0
    kind: str = "run"
    wake_at: datetime | None = None
    wait: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: Any) -> StepRecord:
        """From a ``values()`` dict or a Step model instance, by field name."""
        get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
        values: dict[str, Any] = {name: get(name) for name in FIELDS}
        return cls(**values)

    @property
    def attempt_number(self) -> int:
        """0-based number of the next attempt, counted since the last manual retry."""
        return self.attempt_count - self.attempts_base

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    def step_error(self) -> StepError:
        err = self.error or {}
        return StepError(
            self.step_id,
            str(err.get("type", "Error")),
            str(err.get("message", "")),
            str(err.get("traceback", "")),
        )


FIELDS = tuple(f.name for f in fields(StepRecord))


@dataclass(frozen=True)
class PlannedStep:
    """A step of a parallel group that must run as its own task."""

    step_id: str
    position: int
    group: int
    is_new: bool
