"""Typed settings, read from the ``STEPFLOWS`` dict in Django settings.

```python
STEPFLOWS = {"RETRIES": 4, "MAX_STEPS_PER_RUN": 1000}
```

A wrong value is reported by the system check ``stepflows.E001`` at startup.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from pydantic import BaseModel, ConfigDict, Field


class StepflowsSettings(BaseModel):
    """All stepflows settings with their defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    RETRIES: int = Field(4, ge=0, le=100)
    """Retries of a failing step (and of failing workflow code) before it fails for good."""
    RETRY_BASE_DELAY: float = Field(1.0, ge=0)
    """Seconds before the first retry; doubled at each further attempt, with jitter."""
    RETRY_MAX_DELAY: float = Field(600.0, ge=0)
    """Upper bound of a retry delay, in seconds."""
    MAX_STEPS_PER_RUN: int = Field(1000, ge=1)
    MAX_STATE_BYTES: int = Field(4 * 1024 * 1024, ge=1)
    """Total size of all step outputs of one run, as JSON."""
    MAX_EVENT_BYTES: int = Field(256 * 1024, ge=1)
    """Size of one event's data, as JSON."""
    MAX_EVENT_NAME_LENGTH: int = Field(255, ge=1, le=255)
    MAX_STEP_ID_LENGTH: int = Field(200, ge=1, le=240)
    LEASE_SECONDS: float = Field(30.0, ge=1)
    """How long a run or a running step stays held by a worker that stopped sending
    heartbeats. A live worker renews it every third of it, however long its step
    runs; a dead worker's run or step is taken over once it expires."""
    RECOVERY_STALL_SECONDS: float = Field(300.0, gt=0)
    """A queued run, or a parallel step whose message no worker picked up, with no
    progress for this long is stuck: recovery sends it again. Running steps are
    judged by their heartbeat instead, so this need not exceed your longest step."""
    RECOVERY_JOIN_SECONDS: float = Field(30.0, gt=0)
    """A run whose parallel steps all finished this long ago, with no callback, is stuck."""
    MAX_RECOVERIES: int = Field(5, ge=0)
    """Recoveries of one run before it is failed with RecoveryLimitError."""
    QUEUE: str | None = None
    """Celery queue for stepflows' tasks; None uses the project's default queue."""
    TRACING: bool | None = None
    """OpenTelemetry spans (needs ``stepflows[otel]``): True on, False off; None (the
    default) on when the process has set a TracerProvider of its own."""
    ADMIN_SHOW_CELERY_RESULTS: bool = False
    """Show django-celery-results' task, group and chord rows in the admin index. Hidden
    by default (stepflows keeps its state in its own rows); a project that registers
    its own ModelAdmin for them sees them anyway."""


def _raw() -> dict[str, Any]:
    value = getattr(django_settings, "STEPFLOWS", {})
    return dict(value or {})


@lru_cache(maxsize=1)
def get_settings() -> StepflowsSettings:
    """The validated settings (raises pydantic.ValidationError on a wrong value)."""
    return StepflowsSettings(**_raw())


@receiver(setting_changed)
def _reset(setting: str, **kwargs: Any) -> None:
    if setting == "STEPFLOWS":
        get_settings.cache_clear()
