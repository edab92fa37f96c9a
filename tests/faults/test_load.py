"""Load with faults: many runs of a 10-step parallel workflow at once on 2 worker
processes, one worker killed (SIGKILL) and replaced twice during the load.

STEPFLOWS_FAULTS_LOAD_RUNS sets the number of runs (default 500; 200 on SQLite,
whose single writer makes 6,000 tasks slow on a small machine).
"""

from __future__ import annotations

import os
import time

import pytest
from django.db import connection
from django.db.models import Count

import stepflows
from stepflows.models import Run, RunStatus, Step
from tests.faults.conftest import record_figures

pytestmark = pytest.mark.django_db(transaction=True)

WIDTH = 10


def load_runs() -> int:
    default = "200" if connection.vendor == "sqlite" else "500"
    return int(os.environ.get("STEPFLOWS_FAULTS_LOAD_RUNS", default))


def steps_done(run_ids):
    return Step.objects.filter(run_id__in=run_ids, status="completed").count()


@pytest.mark.timeout(1800)
def test_load_with_a_worker_killed_and_restarted_twice(faults, settings):
    # Under a backlog of thousands of messages a run can wait minutes for its turn:
    # recover only runs idle for a minute, so that recovery mostly finds lost work.
    settings.STEPFLOWS = {
        **settings.STEPFLOWS,
        "RECOVERY_STALL_SECONDS": 60,
        "RECOVERY_JOIN_SECONDS": 10,
    }
    n = load_runs()
    workers = [faults.worker("load-a"), faults.worker("load-b")]
    started = time.monotonic()
    ids = stepflows.send(
        [stepflows.Event(name="test/fault-load", data={"width": WIDTH}) for _ in range(n)]
    )
    run_ids = [str(r) for r in Run.objects.filter(event_id__in=ids).values_list("id", flat=True)]
    assert len(run_ids) == n
    kills = 0
    for fraction in (0.25, 0.6):
        deadline = time.monotonic() + 600
        while steps_done(run_ids) < fraction * n * WIDTH and time.monotonic() < deadline:
            faults.recover()
            time.sleep(0.5)
        victim = workers[kills % 2]
        victim.kill()
        kills += 1
        workers[kills % 2 - 1] = faults.worker(f"load-{kills}")
    runs = faults.wait(run_ids, timeout=900)
    seconds = time.monotonic() - started

    lost_runs = [
        r for r in runs if r.status != RunStatus.COMPLETED or r.output != sum(range(WIDTH))
    ]
    steps = Step.objects.filter(run_id__in=run_ids)
    per_run = dict(steps.values_list("run_id").annotate(n=Count("id")))
    lost_steps = sum(WIDTH - per_run.get(r.id, 0) for r in runs)
    doubled = steps.count() - steps.values("run_id", "step_id").distinct().count()
    rerun = steps.filter(attempt_count__gt=1).count()
    record_figures(
        "load: 10-step parallel runs, a worker killed and restarted twice",
        runs=n,
        steps=steps.count(),
        faults=kills,
        lost=len(lost_runs) + lost_steps,
        doubled=doubled,
        recoveries=faults.recovered,
        steps_recorded_twice=rerun,
        seconds=round(seconds, 1),
    )
    assert not lost_runs, [(r.id, r.status, r.error) for r in lost_runs[:5]]
    assert steps.count() == n * WIDTH and lost_steps == 0
    assert doubled == 0 and rerun == 0
