"""stepflows: durable step workflows for Django, run by Celery.

```python
import stepflows

@stepflows.workflow(id="welcome", trigger="app/user.created")
def welcome(ctx: stepflows.Context, step: stepflows.StepSync) -> str:
    user = step.run("load-user", load_user, ctx.event.data["user_id"])
    return step.run("send-email", send_welcome_email, user)

stepflows.send("app/user.created", data={"user_id": 42})
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import Context
from .events import Event
from .exceptions import (
    NonRetriableError,
    RetryAfterError,
    StepError,
    StepflowsError,
)
from .flow import Batch, Concurrency, Cron, Debounce, Priority, RateLimit, Singleton, Throttle
from .registry import CancelOn, Timeouts, TriggerEvent, workflow

if TYPE_CHECKING:
    from .api import asend, send
    from .engine.tools import Step, StepSync

__all__ = [
    "Batch",
    "CancelOn",
    "Concurrency",
    "Context",
    "Cron",
    "Debounce",
    "Event",
    "NonRetriableError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "Singleton",
    "Step",
    "StepError",
    "StepSync",
    "StepflowsError",
    "Throttle",
    "Timeouts",
    "TriggerEvent",
    "asend",
    "send",
    "workflow",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # send/asend and the step tools touch models; import them lazily so that
    # `import stepflows` in a workflows.py works before the app registry is ready.
    if name in ("send", "asend"):
        from . import api

        return getattr(api, name)
    if name in ("Step", "StepSync"):
        from .engine import tools

        return getattr(tools, name)
    raise AttributeError(f"module 'stepflows' has no attribute {name!r}")
