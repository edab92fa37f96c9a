"""A real worker process for a test: on the test database and a private queue.

How the worker finds the test database, with no change to the project's
settings: it is started with the test process's own ``DJANGO_SETTINGS_MODULE``
and ``sys.path``, plus two environment variables that stepflows' app config
reads when Django starts in the worker (``StepflowsConfig.ready``, through
:func:`apply_worker_overrides`; nothing else reads them):

``STEPFLOWS_TEST_DATABASE_NAME``
    the ``NAME`` of the ``default`` database: the test database the test
    runner created (``test_<name>`` on PostgreSQL, a file on SQLite).
``STEPFLOWS_TEST_QUEUE``
    ``STEPFLOWS["QUEUE"]``: stepflows' tasks go to, and the worker consumes
    (``--queues``), a queue of its own, so a development worker on the
    project's usual queue never takes the test's messages.

In the test process, :func:`private_queue` points ``STEPFLOWS["QUEUE"]`` at
the same queue and turns Celery's eager mode off. An in-memory SQLite test
database (Django's default for SQLite) cannot be shared with another process:
give it a file (``DATABASES["default"]["TEST"] = {"NAME": ...}``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .workers import CeleryWorker

ENV_DATABASE_NAME = "STEPFLOWS_TEST_DATABASE_NAME"
ENV_QUEUE = "STEPFLOWS_TEST_QUEUE"
ENV_CELERY_APP = "STEPFLOWS_TEST_CELERY_APP"


@dataclass(frozen=True)
class WorkerSettings:
    """What a test worker needs: the Celery app, the test database, the private queue."""

    app: str
    """The Celery app (``celery -A``): ``STEPFLOWS_TEST_CELERY_APP``, else this process's app."""
    database_name: str
    """``NAME`` of the test database the worker uses."""
    queue: str
    """The private queue of stepflows' tasks."""
    env: dict[str, str] = field(default_factory=dict)
    """The worker's environment variables, on top of this process's."""

    def worker(
        self,
        *,
        concurrency: int = 2,
        logdir: str | Path | None = None,
        name: str = "stepflows-test",
        **options: Any,
    ) -> CeleryWorker:
        """A :class:`CeleryWorker` with these settings (not started)."""
        folder = Path(logdir) if logdir else Path(tempfile.mkdtemp(prefix="stepflows-worker-"))
        return CeleryWorker(
            self.app,
            env=self.env,
            concurrency=concurrency,
            queues=self.queue,
            logfile=folder / f"{name}.log",
            name=name,
            cwd=os.getcwd(),
            **options,
        )


def _import_paths() -> str:
    """This process's import path, less the interpreter's own: how the worker finds the
    project the way the test process does (pytest's rootdir, ``pythonpath``)."""
    own = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    paths = [
        p
        for p in sys.path
        if p and os.path.isdir(p) and not any(p.startswith(prefix) for prefix in own)
    ]
    existing = os.environ.get("PYTHONPATH")
    return os.pathsep.join([*paths, *([existing] if existing else [])])


def worker_settings(
    *, app: str | None = None, queue: str | None = None, alias: str = "default"
) -> WorkerSettings:
    """The settings of a worker for this test session; call it after the test database exists."""
    from celery import current_app
    from django.db import connections

    connection = connections[alias]
    name = str(connection.settings_dict["NAME"])
    creation: Any = connection.creation  # the SQLite one has is_in_memory_db
    if connection.vendor == "sqlite" and creation.is_in_memory_db(name):
        raise ImproperlyConfigured(
            f"the test database {alias!r} is an in-memory SQLite database, which a worker "
            "process cannot open. Give it a file: DATABASES[" + repr(alias) + "]['TEST'] = "
            "{'NAME': BASE_DIR / 'test-db.sqlite3'}"
        )
    app = app or os.environ.get(ENV_CELERY_APP) or current_app.main
    if not app or app == "__main__":
        raise ImproperlyConfigured(
            "no Celery app to start a worker with: load your project's app in its package's "
            "__init__.py (as in Celery's Django guide) or set STEPFLOWS_TEST_CELERY_APP"
        )
    queue = queue or f"stepflows-test-{uuid.uuid4().hex[:10]}"
    env = {ENV_DATABASE_NAME: name, ENV_QUEUE: queue, "PYTHONPATH": _import_paths()}
    if os.environ.get("DJANGO_SETTINGS_MODULE"):
        env["DJANGO_SETTINGS_MODULE"] = os.environ["DJANGO_SETTINGS_MODULE"]
    return WorkerSettings(app=app, database_name=name, queue=queue, env=env)


@contextmanager
def private_queue(settings: WorkerSettings) -> Iterator[WorkerSettings]:
    """In this process: stepflows' tasks go to the worker's queue; Celery's eager mode is off."""
    from celery import current_app
    from django.conf import settings as django_settings
    from django.test.utils import override_settings

    eager = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = False
    stepflows = {**getattr(django_settings, "STEPFLOWS", {}), "QUEUE": settings.queue}
    try:
        with override_settings(STEPFLOWS=stepflows):
            yield settings
    finally:
        current_app.conf.task_always_eager = eager


@contextmanager
def start_worker(
    settings: WorkerSettings | None = None,
    *,
    concurrency: int = 2,
    logdir: str | Path | None = None,
) -> Iterator[CeleryWorker]:
    """Start a worker on the test database and a private queue; stop it after the block.

    No celery beat runs: a sleep or a wait's timeout that is due ends when the
    test runs the periodic pass itself (``call_command("stepflows", "recover")``).
    """
    settings = settings or worker_settings()
    with (
        private_queue(settings),
        settings.worker(concurrency=concurrency, logdir=logdir) as worker,
    ):
        yield worker


def apply_worker_overrides() -> None:
    """In a worker started by :func:`start_worker`: use the test database and queue.

    Called by ``StepflowsConfig.ready`` when the variables are set, before any
    task runs: the same change Django's test runner makes in its own process.
    """
    from django.conf import settings
    from django.db import connections

    from ..conf import get_settings

    name = os.environ.get(ENV_DATABASE_NAME)
    if name:
        settings.DATABASES["default"]["NAME"] = name
        connection = connections["default"]
        connection.close()
        connection.settings_dict["NAME"] = name
    queue = os.environ.get(ENV_QUEUE)
    if queue:
        settings.STEPFLOWS = {**getattr(settings, "STEPFLOWS", {}), "QUEUE": queue}
        get_settings.cache_clear()
