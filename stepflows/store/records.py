"""What the store reads and writes about steps, as plain records built by field name."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
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
    logs: dict[str, Any] | None = None

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

    @property
    def named(self) -> str:
        """The step as an error names it: ``'charge'``, or ``'nap' (sleep)`` for a wait."""
        kind = "" if self.kind == "run" else f" ({self.kind})"
        return f"{self.step_id!r}{kind}"

    @property
    def diverged(self) -> bool:
        """It failed because its task replayed code that no longer matched the run's steps."""
        return (
            self.status == StepStatus.FAILED
            and isinstance(self.error, dict)
            and self.error.get("type") == "NonDeterminismError"
        )

    def before_unended_attempt(self) -> StepRecord:
        """The record without an attempt that was shown running and never ended.

        An inline step is shown ``running`` while its code runs (see
        :mod:`stepflows.engine.heartbeat`); when its worker stopped before the
        attempt ended, the next invocation runs the attempt again as the same
        one: a worker that stopped costs no retry, as for a parallel step.
        """
        last = self.attempts[-1] if self.attempts else None
        if self.status != StepStatus.RUNNING or not isinstance(last, dict) or "ended_at" in last:
            return self
        return replace(
            self,
            status=StepStatus.SCHEDULED,
            attempts=self.attempts[:-1],
            attempt_count=self.attempt_count - 1,
        )

    def after_cancel(self) -> StepRecord:
        """This attempt's record as written after its run was cancelled.

        The attempt is marked ``"after_cancel": true``; one that would have
        been retried failed for good, since no retry comes to a cancelled run.
        """
        attempts = list(self.attempts)
        if attempts and isinstance(attempts[-1], dict):
            attempts[-1] = {**attempts[-1], "after_cancel": True}
        if self.is_finished:
            return replace(self, attempts=attempts)
        last_error = attempts[-1].get("error") if attempts else None
        return replace(
            self,
            status=StepStatus.FAILED,
            error=self.error or last_error,
            retry_at=None,
            attempts=attempts,
        )

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
