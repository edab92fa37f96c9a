"""A step call: what ``step.run`` was asked, and the step whose code is running."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..serialization import return_type
from ..store.records import StepRecord

# The step whose function is running. A context variable, not an attribute:
# in experimental async mode several asyncio tasks share one invocation, and
# only code inside a step's own task is "inside" that step.
current_step: ContextVar[str | None] = ContextVar("stepflows_current_step", default=None)


@dataclass
class StepCall:
    """One call of ``step.run`` in this invocation."""

    step_id: str
    position: int
    record: StepRecord | None
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    group: int | None = None
    timeout: float | None = None

    @property
    def annotation(self) -> Any:
        return return_type(self.fn)
