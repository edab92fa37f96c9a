"""pytest fixtures for testing workflows against a real Celery worker (pytest-django).

Loaded by pytest once stepflows is installed (the ``pytest11`` entry point);
it only defines fixtures, none of them autouse, so it changes nothing in a
test that does not ask for one.

``stepflows_worker``
    A real ``celery worker`` process on the test database and a queue of its
    own, started once per session when a test first asks for it, stopped at
    the end. The test gets a transactional database (what it commits, the
    worker sees)::

        def test_fulfil_order(stepflows_worker):
            [event_id] = stepflows.send("shop/order.paid", data={"order_id": 7})
            [run] = runs_for([event_id])
            assert wait_for_run(run.id).status == "completed"

``stepflows_settings``
    The :class:`~stepflows.testing.WorkerSettings` it runs with: the Celery
    app, the test database's name, the private queue and the worker's
    environment. While it is in use this process sends stepflows' tasks to
    that queue, with Celery's eager mode off.

How the worker is told to use the test database: see :mod:`stepflows.testing.live`.
``STEPFLOWS_TEST_CELERY_APP`` names the Celery app when it is not the one
this process loaded; ``STEPFLOWS_TEST_WORKER_CONCURRENCY`` sets its processes (2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def stepflows_settings(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """The settings of the session's test worker; stepflows sends to its queue meanwhile."""
    from stepflows.testing.live import private_queue, worker_settings

    with django_db_blocker.unblock():
        settings = worker_settings()
    with private_queue(settings):
        yield settings


@pytest.fixture(scope="session")
def _stepflows_worker_process(
    stepflows_settings: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    concurrency = int(os.environ.get("STEPFLOWS_TEST_WORKER_CONCURRENCY", "2"))
    worker = stepflows_settings.worker(
        concurrency=concurrency, logdir=tmp_path_factory.mktemp("stepflows-worker")
    )
    with worker:
        yield worker


@pytest.fixture
def stepflows_worker(_stepflows_worker_process: Any, transactional_db: Any) -> Any:
    """The session's worker (a :class:`~stepflows.testing.CeleryWorker`), with a
    transactional database for the test."""
    process = _stepflows_worker_process.process
    if process is None or process.poll() is not None:
        pytest.fail(
            f"the stepflows test worker has exited.\n{_stepflows_worker_process.log_tail()}"
        )
    return _stepflows_worker_process
