"""The failure policy: one decision for every failure of a step or of workflow code.

``decide(exc, attempt, retries)`` is used by inline steps, parallel step tasks
and errors of the workflow code outside steps alike; callers store what it
returns. Backoff between attempts is exponential, capped, with jitter.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from .. import clock
from ..conf import get_settings
from ..exceptions import (
    InvalidEventError,
    LimitExceededError,
    NestedStepError,
    NonDeterminismError,
    NonRetriableError,
    OutputSerializationError,
    RetryAfterError,
    StepUsageError,
)

# Errors that no retry can mend (invalid events sent by a step stay invalid).
FINAL_ERRORS: tuple[type[BaseException], ...] = (
    InvalidEventError,
    NonRetriableError,
    NestedStepError,
    NonDeterminismError,
    LimitExceededError,
    OutputSerializationError,
    StepUsageError,
)

# Longest delay a RetryAfterError may ask for (a year); longer is refused.
MAX_RETRY_AFTER = 365 * 24 * 3600.0


@dataclass(frozen=True)
class RetryDecision:
    """Retry after ``delay`` seconds, or (``delay`` None) fail for good with ``error``.

    ``error`` is the exception to record: the one raised, or one explaining
    why it could not be honoured (a ``RetryAfterError`` with a naive datetime).
    """

    error: BaseException
    delay: float | None

    @property
    def retry(self) -> bool:
        return self.delay is not None


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based).

    Half of the delay is fixed and half is random ("equal jitter"), so retries
    of many failing steps spread out instead of arriving together.
    """
    conf = get_settings()
    delay = min(conf.RETRY_MAX_DELAY, conf.RETRY_BASE_DELAY * (2**attempt))
    return delay / 2 + random.uniform(0, delay / 2)


def decide(exc: BaseException, attempt: int, retries: int) -> RetryDecision:
    """What to do after failed attempt number ``attempt`` (0-based) of ``retries + 1``.

    Final: the errors of :data:`FINAL_ERRORS`, anything that is not an
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``, a cancelled task: a
    retry would not be wanted), and the last attempt. Otherwise retry after
    the delay the error asks for (``RetryAfterError``) or the backoff.
    """
    if not isinstance(exc, Exception) or isinstance(exc, FINAL_ERRORS):
        return RetryDecision(exc, None)
    if isinstance(exc, RetryAfterError):
        try:
            delay = retry_after_seconds(exc)
        except StepUsageError as bad:
            return RetryDecision(bad, None)
    else:
        delay = backoff(attempt)
    if attempt >= retries:
        return RetryDecision(exc, None)
    return RetryDecision(exc, delay)


def retry_after_seconds(exc: RetryAfterError) -> float:
    """The delay a RetryAfterError asks for, or StepUsageError saying why it is wrong."""
    when = exc.retry_after
    if isinstance(when, datetime):
        if timezone.is_naive(when):
            raise StepUsageError(
                f"RetryAfterError({str(exc)!r}, {when!r}): retry_after is a naive datetime; "
                "give an aware one (django.utils.timezone.now() + ...), a timedelta or seconds"
            )
        seconds = (when - clock.now()).total_seconds()
    elif isinstance(when, timedelta):
        seconds = when.total_seconds()
    elif isinstance(when, int | float) and not isinstance(when, bool):
        seconds = float(when)
    else:
        raise StepUsageError(
            f"RetryAfterError({str(exc)!r}, {when!r}): retry_after must be a timedelta, "
            "seconds or an aware datetime"
        )
    if not math.isfinite(seconds) or seconds > MAX_RETRY_AFTER:
        raise StepUsageError(
            f"RetryAfterError({str(exc)!r}, {when!r}): retry_after must be finite and at "
            "most a year away"
        )
    return max(0.0, seconds)
