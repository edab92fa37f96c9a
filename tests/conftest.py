"""Fixtures: real Celery worker processes on the test database and broker."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings


def pytest_configure(config: Any) -> None:
    _flush_again_after_a_deadlock()


def _flush_again_after_a_deadlock() -> None:
    """Retry the flush that ends a transactional test when PostgreSQL reports a deadlock.

    The session's workers keep running between tests (heartbeats, the sweep, a
    redelivered task finishing), and a TRUNCATE that takes its table locks in a
    different order than a worker's transaction can be chosen as the deadlock
    victim. The worker's transaction then commits, and the flush succeeds again.
    """
    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def _fixture_teardown(self: TransactionTestCase) -> None:
        for attempt in range(1, 6):
            try:
                return flush(self)
            except CommandError as exc:
                if attempt == 5 or not isinstance(exc.__cause__, OperationalError):
                    raise
                print(f"flush failed ({exc.__cause__}); flushing again", file=sys.stderr)
                time.sleep(0.2 * attempt)

    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[method-assign]


def database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL for the database the test session created."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = quote(settings_dict.get("USER") or "")
    password = quote(settings_dict.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{settings_dict['NAME']}"


def worker_env() -> dict[str, str]:
    from django.db import connection

    return {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "STEPFLOWS_TEST_WORKER": "1",
        "STEPFLOWS_TEST_DATABASE_URL": database_url(connection.settings_dict),
    }


def make_worker(name: str = "worker", concurrency: int = 2) -> Any:
    from stepflows.testing import CeleryWorker
    from tests.settings import SESSION_DIR

    return CeleryWorker(
        "project",
        env=worker_env(),
        concurrency=concurrency,
        queues=settings.CELERY_TASK_DEFAULT_QUEUE,
        logfile=SESSION_DIR / f"{name}.log",
        name=name,
        cwd=settings.BASE_DIR,
    )


@pytest.fixture(scope="session")
def celery_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """Two prefork worker processes consuming this session's queue, for the whole session."""
    with make_worker("worker", concurrency=2) as worker:
        yield worker


@pytest.fixture
def key() -> str:
    """A unique key for side-effect marks of one test."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def run_event(celery_worker: Any) -> Any:
    """Send an event, wait for the one run it starts to finish, return the run."""
    import stepflows
    from stepflows.testing import runs_for, wait_for_run

    def _run(name: str, data: dict[str, Any], timeout: float = 120) -> Any:
        [event_id] = stepflows.send(name, data=data)
        runs = runs_for([event_id])
        assert len(runs) == 1, f"{name} started {len(runs)} runs"
        return wait_for_run(runs[0].id, timeout=timeout)

    return _run
