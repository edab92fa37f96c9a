"""Restart the database, then the broker, while runs are in flight: every run completes.

The restart commands come from the environment (``.ci/run`` sets them for its
services): STEPFLOWS_TEST_DB_RESTART_CMD and STEPFLOWS_TEST_BROKER_RESTART_CMD.
On the embedded default, SQLite is a file with no server to restart, and
"restarting the broker" means killing the worker while messages sit in the
broker's folder and starting a new one.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from django.db import DatabaseError, connection

from stepflows.models import RunStatus, Step
from tests.faults.conftest import record_figures, restart_command, wait_for_marks

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = 6


def send_runs(faults, key):
    keys = [f"{key}-{i}" for i in range(RUNS)]
    ids = [faults.send("test/fault-parallel", {"key": k, "seconds": 2}) for k in keys]
    wait_for_marks(f"{keys[0]}-slow-start")  # mid-run: steps are running
    return ids


def restart(command):
    started = time.monotonic()
    subprocess.run(command, shell=True, check=True, timeout=180, capture_output=True)
    return time.monotonic() - started


def check_done(run_ids):
    from stepflows.models import Run

    runs = list(Run.objects.filter(id__in=run_ids))
    assert len(runs) == RUNS
    assert all(r.status == RunStatus.COMPLETED for r in runs), [(r.status, r.error) for r in runs]
    steps = Step.objects.filter(run_id__in=run_ids)
    assert steps.count() == 3 * RUNS
    assert all(s.attempt_count == 1 for s in steps)


def finish(faults, run_ids, scenario, took, **figures):
    """Wait for every run, check none lost or doubled, and record the scenario's figures."""
    faults.wait(run_ids, timeout=240)
    check_done(run_ids)
    record_figures(
        scenario,
        runs=RUNS,
        steps=3 * RUNS,
        faults=1,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
        restart_seconds=round(took, 1),
        **figures,
    )


def supervise(faults, worker, run_ids, received_before, *, patience=90.0):
    """Do what a supervisor's liveness check does for a worker that stopped consuming.

    After a Redis restart, a Celery worker can reconnect and yet never take another
    message (kombu's reconnection races, celery/celery#8030 and #10302). Nothing of
    the runs is lost meanwhile, they wait in the database; but only a worker that
    consumes can finish them. Give the worker ``patience`` seconds to receive a task
    (the recovery resends every lost message meanwhile); if it receives none, replace
    it, print why, and return 1 (the figures count it).
    """
    from stepflows.models import Run

    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if received(worker) > received_before:
            return 0
        try:
            if not Run.objects.filter(id__in=run_ids).active().exists():
                return 0
            faults.recover()
        except DatabaseError:
            connection.close()
        time.sleep(1.0)
    print(
        f"the worker received no task {patience:g} s after the broker restarted "
        f"(a Celery worker that stopped consuming): replacing it.\n{worker.log_tail(40)}",
        file=sys.stderr,
    )
    worker.kill()
    faults.worker("broker-restart-replaced", concurrency=2)
    return 1


def received(worker):
    """How many tasks the worker's log (file or stderr) says it received."""
    count = 0
    for path in (worker.logfile, worker.stderr_file):
        try:
            count += path.read_bytes().count(b"] received")
        except FileNotFoundError:
            pass
    return count


def test_database_restart_mid_run(faults, key):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite is a file in the worker's own process: there is no server to restart")
    command = restart_command("STEPFLOWS_TEST_DB_RESTART_CMD", "the PostgreSQL server")
    faults.worker("db-restart", concurrency=2)
    run_ids = send_runs(faults, key)
    connection.close()
    took = restart(command)
    connection.close()
    finish(faults, run_ids, "PostgreSQL restarted mid-run", took)


@pytest.mark.timeout(420)
def test_broker_restart_mid_run(faults, key, settings):
    broker = settings.CELERY_BROKER_URL
    worker = faults.worker("broker-restart", concurrency=2)
    run_ids = send_runs(faults, key)
    if broker.startswith("filesystem"):
        # No server: the broker is the folder. Kill the worker with messages in it.
        worker.kill()
        took = 0.0
        faults.worker("broker-restart-new", concurrency=2)
        replaced = 0
    else:
        command = restart_command("STEPFLOWS_TEST_BROKER_RESTART_CMD", "the broker")
        received_before = received(worker)
        took = restart(command)
        replaced = supervise(faults, worker, run_ids, received_before)
    finish(faults, run_ids, "broker restarted mid-run", took, workers_replaced=replaced)
