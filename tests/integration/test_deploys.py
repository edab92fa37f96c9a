"""Deploying new workflow code while runs are in flight, with real workers.

A deploy is what it is in production: the worker running the old code stops
and a worker with the new code starts (``STEPFLOWS_TEST_DEPLOY`` selects the
code in tests/testapp/flows/deploys.py). Each run is in flight across the
deploy: it waits, in the database, for ``test/deploy-go`` between its steps,
and the event is sent once the new worker runs. Marks count how often each
step's code ran: no output is lost or made twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings

import stepflows
from stepflows import api
from stepflows.models import Run, RunStatus
from stepflows.testing import CeleryWorker, runs_for, wait_for_run
from tests.testapp.flows.deploys import DEPLOY_ENV, GO
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY_QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-deploys"


class Deploys:
    """One worker at a time on this module's queue, running the code deployed last."""

    def __init__(self) -> None:
        self.worker: CeleryWorker | None = None

    def deploy(self, code: str) -> None:
        from tests.conftest import worker_env
        from tests.settings import SESSION_DIR

        self.stop()
        self.worker = CeleryWorker(
            "project",
            env={**worker_env(), "STEPFLOWS_TEST_QUEUE": DEPLOY_QUEUE, DEPLOY_ENV: code},
            concurrency=2,
            queues=DEPLOY_QUEUE,
            logfile=SESSION_DIR / f"deploy-{code}.log",
            name=f"deploy-{code}",
            cwd=django_settings.BASE_DIR,
        ).start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def tail(self) -> str:
        return self.worker.log_tail(40) if self.worker is not None else ""


@pytest.fixture
def deploys(settings: Any) -> Iterator[Deploys]:
    """Deploys on a queue of their own; this test's messages go there too."""
    settings.STEPFLOWS = {**settings.STEPFLOWS, "QUEUE": DEPLOY_QUEUE}
    kit = Deploys()
    try:
        yield kit
    finally:
        kit.stop()


def start(deploys: Deploys, name: str, key: str) -> Run:
    """Start a run and wait until it waits for test/deploy-go."""
    [event_id] = stepflows.send(name, data={"key": key})
    [run] = runs_for([event_id])
    deadline = time.monotonic() + 120
    while not (run.status == RunStatus.WAITING and run.waiting_for == "event"):
        assert not run.is_finished, (run.status, run.error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run.pk} is {run.status}, not waiting\n{deploys.tail()}")
        time.sleep(0.05)
        run.refresh_from_db()
    return run


def resume(run: Run, key: str) -> Run:
    stepflows.send(GO, data={"key": key})
    return wait_for_run(run.pk, timeout=120)


def retry(run: Run) -> Run:
    api.retry_run(run, reason="fix deployed")
    return wait_for_run(run.pk, timeout=120)


def marks(key: str, *names: str) -> list[int]:
    return [count(f"{key}-{name}") for name in names]


def test_a_step_added_under_patched_leaves_the_run_in_flight_on_its_path(
    deploys: Deploys, key: str
) -> None:
    deploys.deploy("v1")
    old = start(deploys, "test/deploy-add-step", f"{key}-old")
    deploys.deploy("v2")
    new = start(deploys, "test/deploy-add-step", f"{key}-new")
    old = resume(old, f"{key}-old")
    new = resume(new, f"{key}-new")

    assert old.status == RunStatus.COMPLETED, old.error
    assert old.output == ["reserve", "ship"]
    assert new.status == RunStatus.COMPLETED, new.error
    assert new.output == ["reserve", "audit", "ship"]
    assert marks(f"{key}-old", "reserve", "audit", "ship") == [1, 0, 1]
    assert marks(f"{key}-new", "reserve", "audit", "ship") == [1, 1, 1]


def test_a_step_renamed_without_patch_blocks_the_run_until_the_fix_is_retried(
    deploys: Deploys, key: str
) -> None:
    deploys.deploy("v1")
    run = start(deploys, "test/deploy-rename", key)
    deploys.deploy("v2")
    run = resume(run, key)

    assert run.status == RunStatus.BLOCKED, (run.status, run.error)
    assert run.error["type"] == "NonDeterminismError"
    message = run.error["message"]
    assert "recorded step 'charge' (position 1), code now calls 'charge-card'" in message
    assert run.lease_owner == ""
    assert marks(key, "reserve", "charge", "charge-card", "ship") == [1, 1, 0, 0]

    deploys.deploy("v2-fixed")
    run = retry(run)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["reserve", "charge", "ship"]
    assert marks(key, "reserve", "charge", "charge-card", "ship") == [1, 1, 0, 1]


def test_a_resized_parallel_group_blocks_the_run_until_the_fix_is_retried(
    deploys: Deploys, key: str
) -> None:
    deploys.deploy("v1")
    run = start(deploys, "test/deploy-group", key)
    assert marks(key, "part-0", "part-1", "part-2") == [1, 1, 1]
    deploys.deploy("v2")
    run = resume(run, key)

    assert run.status == RunStatus.BLOCKED, (run.status, run.error)
    assert (
        "recorded parallel group at position 0 has 3 steps ('part', 'part:1', 'part:2'), "
        "code now plans 2"
    ) in run.error["message"]

    deploys.deploy("v2-fixed")
    run = retry(run)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"parts": ["part-0", "part-1", "part-2"], "total": "total"}
    assert marks(key, "part-0", "part-1", "part-2", "total") == [1, 1, 1, 1]
