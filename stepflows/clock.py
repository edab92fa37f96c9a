"""The engine's clock: ``timezone.now()``, moved forward by the in-process driver.

Retry delays, leases and recovery read the time from here, so a test driven by
:class:`stepflows.testing.InProcess` can jump over a delay instead of sleeping.
Outside such a test the offset is always zero.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

_offset = timedelta(0)


def now() -> datetime:
    """The current time (aware), plus the offset a test moved the clock by."""
    return timezone.now() + _offset


def offset() -> timedelta:
    """How far a test moved the clock (zero outside such a test)."""
    return _offset


def advance(seconds: float) -> None:
    """Move the clock forward (tests only; see :class:`stepflows.testing.InProcess`)."""
    global _offset
    _offset += timedelta(seconds=max(0.0, seconds))


def reset() -> None:
    """Back to the real time."""
    global _offset
    _offset = timedelta(0)
