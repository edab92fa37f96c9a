"""Database connections in Celery workers, kept across tasks as Django keeps them across requests.

Celery's Django fixup closes every database connection before and after each
task, unless ``CELERY_DB_REUSE_MAX`` is set; then it closes them only every
that many tasks, and never looks at whether a connection still works. Opening
a connection per task costs more than a short step itself (a TCP and
authentication round trip on PostgreSQL, the file and its pragmas on SQLite).

With ``CELERY_DB_REUSE_MAX`` set (``stepflows.celery_config.RECOMMENDED``
sets it), stepflows gives every task what Django gives every request: before
and after it, ``close_old_connections()``, which honours the database's
``CONN_MAX_AGE`` (0 closes the connection after each task, as before) and
``CONN_HEALTH_CHECKS``, and closes a connection that raised a database error
unless it still answers. So a connection broken by a database restart fails
at most the task that met it, which retries with stepflows' own backoff, and
the next task connects afresh.
"""

from __future__ import annotations

from typing import Any

from django.db import close_old_connections

#: The Celery setting (read by Celery's Django fixup) that stops it closing per task.
REUSE_SETTING = "CELERY_DB_REUSE_MAX"


def _eager(sender: Any) -> bool:
    # An eager task runs inside the caller (a test's transaction, a view): its
    # connection is the caller's to manage, as Celery's own fixup assumes.
    request = getattr(sender, "request", None)
    return bool(getattr(request, "is_eager", False))


def task_boundary(sender: Any = None, **kwargs: Any) -> None:
    """Before and after each task: drop connections that are too old or broken."""
    if not _eager(sender):
        close_old_connections()


def install() -> None:
    """Connect :func:`task_boundary` to Celery's task signals (idempotent)."""
    from celery.signals import task_postrun, task_prerun

    task_prerun.connect(task_boundary, weak=False, dispatch_uid="stepflows.task_prerun")
    task_postrun.connect(task_boundary, weak=False, dispatch_uid="stepflows.task_postrun")
