"""Flow control under faults: a worker killed while its run holds a concurrency slot,
and cron ticks sent by two sweeps (two threads, two celery beat processes) at once.

The cron workflow ``flow-cron`` (``Cron("* * * * *")``) is registered only in the
workers started here (``STEPFLOWS_TEST_FLOW_CRON=1``) and, for the length of a
test, in this process (the ``cron_workflow`` fixture).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection

from stepflows.engine.sweep import sweep, tick_event_id
from stepflows.flow import Cron
from stepflows.models import Event, FlowState, Run, RunStatus, Slot, Step
from stepflows.registry import registry
from stepflows.store.waits import database_now
from stepflows.testing import wait_for_runs
from tests.faults.conftest import record_figures, wait_for_marks, wait_until
from tests.testapp.flows import flow
from tests.testapp.marks import lines

pytestmark = pytest.mark.django_db(transaction=True)

CRON_ENV = {"STEPFLOWS_TEST_FLOW_CRON": "1"}


# -- a worker killed while its run holds a slot ----------------------------------------------


def test_killed_worker_keeps_its_slot_until_recovery_resumes_the_run(faults, key):
    """Concurrency(1): run 1 holds the customer's slot, runs 2 and 3 wait in line. SIGKILL
    the worker mid-step of run 1: a worker with celery beat (lease 3 s, sweep every
    second) resumes run 1 with its slot; 2 and 3 start after it, in order, one at a time;
    all complete, no step stored twice."""
    lease = {"STEPFLOWS_TEST_LEASE_SECONDS": "3", "STEPFLOWS_TEST_RECOVERY_INTERVAL": "1"}
    first = faults.worker("flow-slot-killed", concurrency=2, env=lease)
    data = {"key": key, "customer": key}
    ids = [faults.send("test/flow-one-at-a-time", {**data, "label": "r1", "seconds": 4})]
    wait_for_marks(f"{key}-start")
    ids += [
        faults.send("test/flow-one-at-a-time", {**data, "label": f"r{n}", "seconds": 0.5})
        for n in (2, 3)
    ]

    def in_line() -> bool:
        return (
            Run.objects.filter(
                id__in=ids[1:], status=RunStatus.QUEUED, waiting_for="concurrency"
            ).count()
            == 2
        )

    wait_until(in_line, "runs 2 and 3 waiting in line")
    slots = Slot.objects.filter(workflow_id="flow-one-at-a-time")
    assert [str(r) for r in slots.values_list("run_id", flat=True)] == [ids[0]]
    assert [note for _, _, note in lines(f"{key}-end")] == [], "run 1 ended before the kill"
    first.kill()
    killed_at = time.time()
    # The dead worker's run keeps its slot: nobody else starts.
    time.sleep(1.0)
    assert [note for _, _, note in lines(f"{key}-start")] == ["r1"]
    assert Slot.objects.filter(workflow_id="flow-one-at-a-time", run_id=ids[0]).exists()

    faults.worker("flow-slot-beat", concurrency=2, env=lease, beat=True)
    runs = faults.wait(ids, timeout=120, recover=False)
    assert all(r.status == RunStatus.COMPLETED for r in runs), [(r.status, r.error) for r in runs]
    assert [r.output for r in runs] == ["r1", "r2", "r3"]

    starts = [(note, float(t)) for _, t, note in lines(f"{key}-start")]
    ends = [(note, float(t)) for _, t, note in lines(f"{key}-end")]
    # r1 started twice (killed mid-step, then resumed), ended once; then r2, then r3.
    assert [n for n, _ in starts] == ["r1", "r1", "r2", "r3"], starts
    assert [n for n, _ in ends] == ["r1", "r2", "r3"], ends
    # Resumed by the beat's recovery once its lease expired (on RabbitMQ the broker may
    # redeliver the dead worker's unacknowledged message first: no recovery needed).
    resumed_after = starts[1][1] - killed_at
    assert resumed_after <= 30, f"run 1 resumed {resumed_after:.1f} s after the kill"
    # One at a time: each started after the one before it finished its last step.
    after = {note: float(t) for _, t, note in lines(f"{key}-after-end")}
    assert starts[2][1] >= after["r1"] and starts[3][1] >= after["r2"], (starts, after)
    steps = Step.objects.filter(run_id__in=ids)
    assert steps.count() == 6 and all(s.status == "completed" for s in steps)
    assert not Slot.objects.filter(workflow_id="flow-one-at-a-time").exists()
    record_figures(
        "worker killed while its run holds a concurrency slot (limit 1, 2 in line)",
        runs=3,
        steps=6,
        faults=1,
        lost=0,
        doubled=0,
        recoveries=sum(r.recoveries for r in runs),
        resumed_after_seconds=round(resumed_after, 1),
    )


# -- cron ------------------------------------------------------------------------------------


@pytest.fixture
def cron_workflow() -> Iterator[Any]:
    """``flow-cron`` registered in this process, for the sweeps the test calls."""
    flow.register_cron()
    try:
        yield registry.get(flow.CRON_ID)
    finally:
        registry.unregister(flow.CRON_ID)


def cron_runs() -> list[Run]:
    return list(Run.objects.filter(workflow_id=flow.CRON_ID).order_by("created_at"))


def sweep_in_threads(at: datetime, n: int = 4) -> None:
    """``n`` threads call ``sweep(now=at)`` at the same moment, each on its own connection."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def one() -> None:
        try:
            barrier.wait(timeout=30)
            sweep(now=at)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors


def test_cron_tick_swept_by_four_threads_at_once_starts_one_run_and_a_missed_one_once(
    faults, key, cron_workflow
):
    """Cron("* * * * *"): four sweeps at the same instant send each tick once; after two
    hours without a sweep, the missed ticks start one run (the latest), once."""
    faults.worker("flow-cron-runner", concurrency=2, env=CRON_ENV)
    cron = Cron(flow.CRON_EXPRESSION)
    now = database_now()
    FlowState.objects.filter(workflow_id=flow.CRON_ID).delete()
    sweep(now=now)  # first sight: the schedule starts now, no tick
    assert cron_runs() == []

    expected = []
    for minutes in (1, 2, 3):
        at = now + timedelta(minutes=minutes)
        sweep_in_threads(at)
        [tick] = cron.ticks_after(at - timedelta(minutes=1), at)
        expected.append(tick)
        assert len(cron_runs()) == minutes, f"tick {tick}: {len(cron_runs())} runs"

    # Two hours later: 120 ticks were missed; the latest starts one run.
    later = now + timedelta(minutes=3, hours=2)
    sweep_in_threads(later)
    sweep(now=later)
    [latest] = cron.ticks_after(later - timedelta(minutes=1), later)
    expected.append(latest)
    runs = cron_runs()
    assert len(runs) == 4
    assert [r.event_id for r in runs] == [tick_event_id(flow.CRON_ID, t) for t in expected]
    state = FlowState.objects.get(workflow_id=flow.CRON_ID, kind="cron")
    assert state.at == latest and state.count == 4
    assert Event.objects.filter(name="stepflows/cron", data__workflow=flow.CRON_ID).count() == 4

    done = faults.wait([str(r.id) for r in runs], timeout=120, recover=False)
    assert all(r.status == RunStatus.COMPLETED for r in done), [(r.status, r.error) for r in done]
    assert [r.output for r in done] == [t.astimezone(UTC).isoformat() for t in expected]


def test_two_celery_beats_start_one_run_per_cron_tick(faults, key):
    """Two workers, each with its own celery beat (own schedule file) sweeping every
    second: the next minute's tick starts one run."""
    env = {**CRON_ENV, "STEPFLOWS_TEST_RECOVERY_INTERVAL": "1"}
    # The schedule starts now (as at first sight), so the next minute's tick is sent.
    FlowState.objects.create(
        workflow_id=flow.CRON_ID, kind="cron", key=flow.CRON_EXPRESSION, at=database_now()
    )
    workers = [None, None]

    def start(i: int) -> None:
        workers[i] = faults.worker(f"flow-cron-beat-{i}", concurrency=1, env=env, beat=True)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(workers), "a beat worker did not start"
    schedules = {w.command()[w.command().index("--schedule") + 1] for w in workers}
    assert len(schedules) == 2, schedules

    wait_until(lambda: cron_runs() != [], "the next minute's tick", timeout=90)
    tick_at = time.time()
    # Both beats sweep a few more times past the tick.
    time.sleep(3)
    runs = cron_runs()
    assert len(runs) == 1, [r.event_id for r in runs]
    [run] = wait_for_runs([runs[0].id], timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    tick = datetime.fromisoformat(run.output)
    assert tick.second == 0 and run.event_id == tick_event_id(flow.CRON_ID, tick)
    assert 0 <= tick_at - tick.timestamp() < 30, tick_at - tick.timestamp()
    assert FlowState.objects.get(workflow_id=flow.CRON_ID, kind="cron").at == tick
