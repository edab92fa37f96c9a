"""Backoff between attempts: exponential, capped, with jitter."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.utils import timezone

from ..conf import get_settings
from ..exceptions import RetryAfterError


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based).

    Half of the delay is fixed and half is random ("equal jitter"), so retries
    of many failing steps spread out instead of arriving together.
    """
    conf = get_settings()
    delay = min(conf.RETRY_MAX_DELAY, conf.RETRY_BASE_DELAY * (2**attempt))
    return delay / 2 + random.uniform(0, delay / 2)


def delay_for(exc: BaseException, attempt: int) -> float:
    """The delay a failure asks for: its own ``retry_after``, else the backoff."""
    if isinstance(exc, RetryAfterError):
        when = exc.retry_after
        if isinstance(when, datetime):
            return max(0.0, (when - timezone.now()).total_seconds())
        if isinstance(when, timedelta):
            return max(0.0, when.total_seconds())
        return max(0.0, float(when))
    return backoff(attempt)
