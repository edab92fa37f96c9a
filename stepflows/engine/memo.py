"""The memo: a run's recorded steps, loaded in one query, looked up by position."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Q

from ..exceptions import StepError
from ..models import Step, StepStatus

FIELDS = (
    "step_id",
    "position",
    "group",
    "status",
    "output",
    "output_bytes",
    "error",
    "attempts",
    "attempt_count",
    "retry_at",
    "started_at",
    "attempts_base",
)


@dataclass
class StepRecord:
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

    @property
    def attempt_number(self) -> int:
        """0-based number of the next attempt, counted since the last manual retry."""
        return self.attempt_count - self.attempts_base

    @property
    def is_finished(self) -> bool:
        return self.status in (StepStatus.COMPLETED, StepStatus.FAILED)

    def step_error(self) -> StepError:
        err = self.error or {}
        return StepError(
            self.step_id,
            str(err.get("type", "Error")),
            str(err.get("message", "")),
            str(err.get("traceback", "")),
        )


class Memo:
    """Recorded steps of one run, by position (the order the workflow calls them)."""

    def __init__(self, records: list[StepRecord]) -> None:
        self.by_position: dict[int, StepRecord] = {r.position: r for r in records}
        self.state_bytes = sum(r.output_bytes for r in records)
        self.count = len(records)

    def get(self, position: int) -> StepRecord | None:
        return self.by_position.get(position)

    def put(self, record: StepRecord) -> None:
        old = self.by_position.get(record.position)
        if old is None:
            self.count += 1
        else:
            self.state_bytes -= old.output_bytes
        self.state_bytes += record.output_bytes
        self.by_position[record.position] = record

    def is_replaying(self, position: int) -> bool:
        """True while the workflow is still going over steps it already finished."""
        record = self.by_position.get(position)
        return record is not None and record.is_finished


def load_memo(
    run_id: Any, *, before_group: int | None = None, plus_step: str | None = None
) -> Memo:
    """All steps of a run in one query.

    A step task passes ``before_group`` (and its own ``plus_step``): it only
    replays up to its parallel group, so later rows are not its concern.
    """
    qs = Step.objects.filter(run_id=run_id)
    if before_group is not None:
        cond = Q(position__lt=before_group)
        if plus_step is not None:
            cond |= Q(step_id=plus_step)
        qs = qs.filter(cond)
    rows = qs.order_by("position").values_list(*FIELDS)
    return Memo([StepRecord(*row) for row in rows])
