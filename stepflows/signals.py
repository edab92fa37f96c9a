"""Django signals of runs and steps, sent after the state they report is committed.

Each is sent with the workflow's function as ``sender`` (what ``@stepflows.workflow``
returned, so ``connect(receiver, sender=my_workflow)`` listens to one workflow;
None when the workflow is no longer registered) and keyword arguments:

- ``run_started``: ``run_id``, ``workflow_id``; once, when a worker first starts the run.
- ``run_finished``: ``run_id``, ``workflow_id``, ``status`` (``completed``,
  ``failed``, ``cancelled`` for a run timeout, or ``blocked`` for a run stopped by a
  change of workflow code: a retry resumes it), ``error`` (the stored error dict, or
  None), ``duration`` (seconds from start to end, or None).
- ``step_retrying``: ``run_id``, ``workflow_id``, ``step_id``, ``attempt`` (0-based,
  the attempt that failed), ``error``, ``retry_in`` (seconds).
- ``step_failed``: ``run_id``, ``workflow_id``, ``step_id``, ``attempt``, ``error``;
  the step failed for good.

Nothing is scheduled when a signal has no receivers. A receiver that raises is
logged (logger ``stepflows.signals``) and never breaks the engine; a signal
about a change rolled back is never sent.

```python
from django.dispatch import receiver
from stepflows.signals import run_finished

@receiver(run_finished)
def notify(sender, run_id, workflow_id, status, **kwargs):
    if status == "failed":
        page_someone(run_id)
```
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.dispatch import Signal

__all__ = ["run_finished", "run_started", "step_failed", "step_retrying"]

logger = logging.getLogger("stepflows.signals")

run_started = Signal()
run_finished = Signal()
step_retrying = Signal()
step_failed = Signal()


def send_after_commit(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal`` once the current transaction commits (at once outside one).

    Costs nothing when nobody listens.
    """
    if not signal.has_listeners(sender):
        return
    transaction.on_commit(lambda: _send(signal, sender, kwargs), robust=True)


def _send(signal: Signal, sender: Any, kwargs: dict[str, Any]) -> None:
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, Exception):
            logger.error(
                "a receiver of a stepflows signal raised: %r raised %s: %s",
                receiver,
                type(result).__name__,
                result,
                exc_info=result,
                extra={
                    k: kwargs[k]
                    for k in ("run_id", "workflow_id", "step_id", "attempt")
                    if k in kwargs
                },
            )
