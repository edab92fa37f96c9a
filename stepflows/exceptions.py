"""Errors raised by stepflows.

Every error derives from :class:`StepflowsError`. Each says what was wrong,
where (workflow, run, step) and what to do about it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any


class StepflowsError(Exception):
    """Something went wrong in stepflows."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(StepflowsError):
    """stepflows is not configured correctly."""


class InvalidEventError(StepflowsError, ValueError):
    """The event is invalid: check its name and data. Nothing was stored."""


class EventValidationError(InvalidEventError):
    """The event data does not match a workflow's schema. Nothing was stored."""

    def __init__(self, message: str, *, workflow_id: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.errors = errors


class TriggerFilterError(InvalidEventError):
    """A workflow's ``TriggerEvent(if_=...)`` filter raised on an event. Nothing was stored."""


class RunStateError(StepflowsError):
    """The run is not in a state that allows this action."""


class RecoveryLimitError(StepflowsError):
    """The run was found stuck and resumed too many times (STEPFLOWS['MAX_RECOVERIES'])."""


class WorkflowNotFoundError(StepflowsError, LookupError):
    """No workflow is registered under this id: is its `workflows.py` in an installed app?"""


class StepUsageError(StepflowsError):
    """A step tool was used the wrong way inside a workflow."""


class NestedStepError(StepUsageError):
    """A step was called inside another step: call steps from the workflow function only."""


class NonDeterminismError(StepflowsError):
    """The workflow reached a different step than its recorded history expects.

    Workflow code outside steps must take the same path on every replay: move
    anything random, time-dependent or external into a step. A run that meets
    it is blocked (``RunStatus.BLOCKED``), not failed: after deploying code that
    matches its recorded steps (``step.patched``), retry it.
    """


class LimitExceededError(StepflowsError):
    """A run went over one of stepflows' limits (steps per run, or step output size)."""


class StepTimeoutError(StepflowsError, TimeoutError):
    """A step ran longer than the ``timeout=`` given to ``step.run``; retried like any error."""


class OutputSerializationError(StepflowsError, TypeError):
    """A step or workflow returned a value that cannot be stored as JSON."""


class NonRetriableError(StepflowsError):
    """Raise in a step or a workflow to fail now, without further retries."""


class RetryAfterError(StepflowsError):
    """Raise in a step or a workflow to retry after a given delay.

    ``retry_after`` is a :class:`~datetime.timedelta`, a number of seconds, or
    an aware :class:`~datetime.datetime` to retry at.
    """

    def __init__(self, message: str, retry_after: timedelta | float | int | datetime) -> None:
        super().__init__(message)
        if not isinstance(retry_after, timedelta | float | int | datetime):
            raise TypeError(
                "RetryAfterError(retry_after=...) takes a timedelta, a number of seconds "
                f"or a datetime, not {type(retry_after).__name__}"
            )
        self.retry_after = retry_after


class StepError(StepflowsError):
    """A step failed for good (after all its retries).

    Raised into the workflow at the step call; catch it to handle the failure,
    or let it propagate to fail the run.
    """

    def __init__(
        self,
        step_id: str,
        error_type: str,
        message: str,
        traceback: str = "",
    ) -> None:
        super().__init__(f"step {step_id!r} failed: {error_type}: {message}")
        self.step_id = step_id
        self.error_type = error_type
        self.error_message = message
        self.traceback = traceback

    def as_dict(self) -> dict[str, str]:
        """The run's ``error`` when this propagates out of the workflow."""
        return {
            "type": "StepError",
            "message": str(self),
            "traceback": self.traceback,
            "step_id": self.step_id,
            "step_error_type": self.error_type,
        }
