"""What the parts of an invocation (attempts, parallel planning, the experimental
scheduler) need from it: :class:`~.invocation.Invocation` and its step-task mode
provide this, and the parts name this protocol instead of importing them.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..context import Context
from ..exceptions import NonDeterminismError
from ..store.records import StepRecord
from .calls import StepCall
from .control import StepOutcome, Suspend
from .ids import StepIds, Target
from .memo import Memo


class Host(Protocol):
    SIGNALS: tuple[type[BaseException], ...]
    run: Any
    run_id: str
    token: str
    workflow: Any
    workflow_id: str
    ctx: Context
    ids: StepIds
    memo: Memo
    plan: Any
    retries: int
    max_state: int
    max_steps: int
    target: Target | None
    reached: StepOutcome | None
    suspended: Suspend | None
    diverged: NonDeterminismError | None

    def where(self, step_id: str | None = None) -> str: ...

    def new_call(
        self,
        base_id: Any,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None = None,
    ) -> StepCall: ...

    def replayed(self, call: StepCall) -> Any: ...

    def unfinished(self, call: StepCall) -> Any: ...

    def still_ours(self) -> None: ...

    def after_attempt(self, call: StepCall, outcome: StepOutcome) -> Any: ...

    def store_attempt(self, record: StepRecord, *, exists: bool) -> StepRecord: ...

    def suspend(self, signal: Suspend) -> Suspend: ...

    def diverge(self, error: NonDeterminismError) -> NonDeterminismError: ...

    def own_callable(self, count: int) -> int | None: ...

    def missed_target(self) -> BaseException: ...

    def group_pending(self, plan: Any) -> BaseException: ...
