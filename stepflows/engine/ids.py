"""Step ids and positions: one counter per invocation.

Each step call gets its id (the base id, with a counter suffix on repeats:
``chunk``, ``chunk:1``, ...) and its position (the order of step calls in
the workflow function). A step task is told which step it runs; when the
replay reaches that step's callable, the id and position are forced to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import NonDeterminismError, StepUsageError

# What a run blocked by a change of code needs, said once for every mismatch.
FIX = (
    "The run is blocked: deploy code that makes the same step calls in the same order for "
    "runs recorded before the change (put new or changed steps under "
    '`if step.patched("<change-id>"):`), then retry the run.'
)


def mismatch(where: str, recorded: str, position: int, called: str) -> NonDeterminismError:
    """The code called another step than the one recorded at ``position``."""
    return NonDeterminismError(
        f"{where}: recorded step {recorded} (position {position}), code now calls {called}. " + FIX
    )


@dataclass(frozen=True)
class Target:
    """The one step a step task runs."""

    step_id: str
    position: int
    group: int


class StepIds:
    """Hands out step ids and positions in call order."""

    def __init__(self, where: Callable[..., str], max_length: int) -> None:
        self.where = where
        self.max_length = max_length
        self.counters: dict[str, int] = {}
        self.position = 0
        self.forced: Target | None = None

    def check(self, base_id: Any) -> None:
        """Refuse an id that cannot be a memo key, saying why."""
        if not isinstance(base_id, str) or not base_id:
            raise StepUsageError(
                f"{self.where()}: a step id must be a non-empty string, got {base_id!r}"
            )
        if ":" in base_id:
            raise StepUsageError(
                f"{self.where()}: step id {base_id!r} contains ':', which stepflows keeps for "
                "its own counter suffix (id, id:1, id:2...). Use '-' or '.' instead."
            )
        if any(ord(c) < 32 or 0xD800 <= ord(c) <= 0xDFFF for c in base_id):
            raise StepUsageError(
                f"{self.where()}: step id {base_id!r} contains a control character (such as "
                "NUL or a newline) or a lone surrogate; use printable text"
            )
        if len(base_id) > self.max_length:
            raise StepUsageError(
                f"{self.where()}: step id {base_id[:40]!r}... is {len(base_id)} characters "
                f"long; the limit is STEPFLOWS['MAX_STEP_ID_LENGTH'] = {self.max_length}"
            )

    def force(self, target: Target) -> None:
        """The next step call is the step task's own step."""
        self.forced = target

    def next(self, base_id: str) -> tuple[str, int]:
        """The id and position of the next step call with ``base_id``."""
        if self.forced is not None:
            forced, self.forced = self.forced, None
            if forced.step_id.split(":", 1)[0] != base_id:
                raise mismatch(
                    f"{self.where()}: in the parallel group at position {forced.group}",
                    repr(forced.step_id),
                    forced.position,
                    repr(base_id),
                )
            self.position = forced.position + 1
            return forced.step_id, forced.position
        n = self.counters.get(base_id, 0)
        self.counters[base_id] = n + 1
        position = self.position
        self.position += 1
        return (base_id if n == 0 else f"{base_id}:{n}"), position
