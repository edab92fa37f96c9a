"""Leases with heartbeats, fencing, and a lost database connection.

While a worker runs a run's workflow code or an inline step, a heartbeat
renews the run's lease every LEASE_SECONDS / 3; a parallel step task keeps
its own heartbeat on its Step row. The recovery takes over a run only when its
lease expired, and restarts a running parallel step only when its heartbeat is
older than LEASE_SECONDS: a long healthy step is never restarted, a stopped or
dead one is. Every write of a worker is fenced by its lease: a worker whose
lease was taken over writes nothing and runs no further step.

Each scenario checks, with marks written by the step code itself, that every
run completes, that no output is lost or stored twice, and how many times each
step's code ran.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from stepflows.models import Run, RunStatus, Step, StepStatus
from tests.faults.conftest import record_figures, wait_for_marks
from tests.testapp.marks import count, lines

pytestmark = pytest.mark.django_db(transaction=True)

# Scenario 6: CI runs it for 600 s under a 30 s lease on one backend.
LONG_STEP_SECONDS = float(os.environ.get("STEPFLOWS_FAULTS_LONG_STEP_SECONDS", "40"))
LONG_STEP_LEASE = os.environ.get("STEPFLOWS_FAULTS_LONG_STEP_LEASE", "3")


def lease(faults: Any, seconds: float | str, **stepflows: Any) -> dict[str, str]:
    """The env of workers holding leases of ``seconds``.

    The recovery runs in this process and judges parallel steps' heartbeats
    against its own LEASE_SECONDS: it gets the same value (and ``stepflows``
    overrides, such as RECOVERY_STALL_SECONDS).
    """
    faults.configure(LEASE_SECONDS=float(seconds), **stepflows)
    return {"STEPFLOWS_TEST_LEASE_SECONDS": str(seconds)}


def step_names(n: int) -> list[str]:
    return [f"step-{i}" for i in range(1, n + 1)]


def pids(key: str) -> list[int]:
    """The pid of the process behind each occurrence of the mark ``key``."""
    return [int(pid) for pid, *_ in lines(key)]


def assert_stored_once(run: Run, expected: list[str]) -> dict[str, Any]:
    """The run completed; each expected step has one row, completed, whose output the run got."""
    assert run.status == RunStatus.COMPLETED, (run.status, run.error)
    steps = list(Step.objects.filter(run=run).order_by("position"))
    assert [s.step_id for s in steps] == expected
    assert all(s.status == StepStatus.COMPLETED for s in steps), [
        (s.step_id, s.status) for s in steps
    ]
    outputs = {s.step_id: s.output for s in steps}
    assert all(outputs[name] is not None for name in expected), outputs
    assert run.output == [outputs[name] for name in expected]
    return outputs


def assert_ran_once(key: str, names: list[str]) -> None:
    """Each step's code started once and finished once."""
    for name in names:
        assert (count(f"{key}-{name}-start"), count(f"{key}-{name}")) == (1, 1), name


def snapshot(run_id: str) -> tuple[Any, ...]:
    run = Run.objects.get(id=run_id)
    steps = Step.objects.filter(run_id=run_id).order_by("position")
    return (
        (run.status, run.output, run.error, run.ended_at, run.wake, run.lease_owner),
        [(s.step_id, s.status, s.output, s.attempt_count, s.attempts) for s in steps],
    )


def wait_for_log(worker: Any, text: str, timeout: float) -> None:
    """Wait until ``text`` shows in the worker's log (celery's file, or its stderr)."""
    files = [Path(worker.logfile), Path(str(worker.logfile) + ".stderr")]
    deadline = time.monotonic() + timeout
    while True:
        if any(f.exists() and text in f.read_text(errors="replace") for f in files):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {[str(f) for f in files]} after {timeout}s")
        time.sleep(0.2)


def wait_for_step(run_id: str, step_id: str, status: str, timeout: float = 30) -> Step:
    deadline = time.monotonic() + timeout
    while True:
        step = Step.objects.filter(run_id=run_id, step_id=step_id).first()
        if step is not None and step.status == status:
            return step
        if time.monotonic() > deadline:
            raise TimeoutError(f"step {step_id!r} not {status} after {timeout}s: {step}")
        time.sleep(0.05)


# -- 1. a paused worker past its lease --------------------------------------------------


def test_paused_worker_past_its_lease_runs_no_further_step(faults, key):
    """SIGSTOP the process running step 2 past its lease; another worker finishes the run;
    resumed, the first process writes nothing and runs no further step."""
    env = lease(faults, 3)
    names = step_names(5)
    first = faults.worker("lease-paused", concurrency=1, env=env)
    run_id = faults.send("test/lease-steps", {"key": key, "sleeps": [0, 6, 0, 0, 0]})
    [[pid, *_]] = wait_for_marks(f"{key}-step-2-start")
    paused = int(pid)
    assert paused in first.child_pids()
    faults.pause(paused)  # mid-step 2: its heartbeat stops with it
    second = faults.worker("lease-taker", concurrency=2, env=env)
    [run] = faults.wait([run_id], timeout=120)
    outputs = assert_stored_once(run, names)
    taker = set(second.child_pids())
    assert paused not in taker
    before = snapshot(run_id)

    faults.unpause(paused)
    # Its step 2 returns now (its sleep ended long ago); the write is fenced.
    wait_for_log(first, "lost its lease", timeout=20)
    time.sleep(3)

    assert snapshot(run_id) == before  # the resumed process wrote nothing
    assert pids(f"{key}-step-1") == [paused]  # stored before the pause: never run again
    starts = pids(f"{key}-step-2-start")
    assert len(starts) == 2 and starts[0] == paused and starts[1] in taker, starts
    assert outputs["step-2"]["pid"] in taker  # the paused process's late output was dropped
    for name in names[2:]:
        for mark in (f"{key}-{name}-start", f"{key}-{name}"):
            found = pids(mark)
            assert len(found) == 1 and found[0] in taker, (mark, found, paused, taker)
        assert outputs[name]["pid"] in taker
    assert run.recoveries >= 1
    record_figures(
        "worker paused (SIGSTOP) past its lease",
        runs=1,
        steps=len(names),
        faults=1,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )


# -- 2. inline steps shorter and longer than the lease ----------------------------------


def test_inline_steps_shorter_and_longer_than_the_lease_run_once(faults, key):
    """Lease 4 s, steps of 1.9, 3.5 and 9 s: the heartbeat keeps the run; each runs once."""
    env = lease(faults, 4)
    names = step_names(3)
    faults.worker("lease-inline", concurrency=2, env=env)
    run_id = faults.send("test/lease-steps", {"key": key, "sleeps": [1.9, 3.5, 9]})
    [run] = faults.wait([run_id], timeout=120)
    assert_stored_once(run, names)
    assert_ran_once(key, names)
    assert all(s.attempt_count == 1 for s in Step.objects.filter(run=run))
    assert run.recoveries == 0, "a run under a live heartbeat was taken for stuck"
    record_figures(
        "inline steps longer than the lease (4 s)",
        runs=1,
        steps=len(names),
        faults=0,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )


# -- 3. a parallel step longer than the stall time --------------------------------------

PARALLEL = ["long", "quick", "after"]


@pytest.mark.parametrize("seconds", [9, 20])
def test_parallel_step_longer_than_stall_and_lease_is_not_restarted(faults, key, seconds):
    """RECOVERY_STALL_SECONDS 2, lease 3 s: a 9 s (20 s) parallel step runs once, and the
    run completes, never counted as stuck: even MAX_RECOVERIES = 2 is not reached
    (a recovery judging by stall time alone would find it stuck at 2, 6 and 14 s)."""
    env = lease(faults, 3, RECOVERY_STALL_SECONDS=2, MAX_RECOVERIES=2)
    faults.worker(f"lease-parallel-{seconds}", concurrency=2, env=env)
    run_id = faults.send("test/lease-parallel", {"key": key, "seconds": seconds})
    [run] = faults.wait([run_id], timeout=seconds + 120)
    assert (run.error or {}).get("type") != "RecoveryLimitError", run.error
    assert_stored_once(run, PARALLEL)
    assert_ran_once(key, PARALLEL)
    assert all(s.attempt_count == 1 for s in Step.objects.filter(run=run))
    record_figures(
        f"parallel step of {seconds} s, stall 2 s, lease 3 s",
        runs=1,
        steps=len(PARALLEL),
        faults=0,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )


# -- 4. a worker killed mid-step, recovered by celery beat with the defaults ------------

# The library's defaults: LEASE_SECONDS 30 and a recovery every
# stepflows.celery_config.RECOVERY_INTERVAL = 10 s. tests/settings.py defaults to a
# 60 s lease (STEPFLOWS_TEST_LEASE_SECONDS) and a 30 s beat interval
# (STEPFLOWS_TEST_RECOVERY_INTERVAL): pass the library's values explicitly.
DEFAULT_LEASE = {"STEPFLOWS_TEST_LEASE_SECONDS": "30"}
DEFAULT_INTERVAL = {"STEPFLOWS_TEST_RECOVERY_INTERVAL": "10"}


@pytest.mark.parametrize("where", ["inline", "parallel"])
def test_killed_worker_step_restarts_within_a_minute_with_the_defaults(faults, key, where):
    """SIGKILL the whole worker mid-step; a second worker with embedded beat (default
    lease and interval) starts the step again within 60 s of the kill."""
    first = faults.worker(f"lease-kill-{where}", concurrency=2, env=DEFAULT_LEASE)
    if where == "inline":
        run_id = faults.send("test/lease-steps", {"key": key, "sleeps": [0, 5, 0]})
        slow, expected = "step-2", step_names(3)
    else:
        run_id = faults.send("test/lease-parallel", {"key": key, "seconds": 8})
        slow, expected = "long", PARALLEL
    wait_for_marks(f"{key}-{slow}-start")
    if where == "parallel":
        # Killed once its heartbeat marked it running: the step's lease must expire (a
        # step killed while still scheduled is restarted after RECOVERY_STALL_SECONDS).
        wait_for_step(run_id, slow, StepStatus.RUNNING)
    first.kill()
    killed_at = time.time()
    faults.worker(
        f"lease-kill-{where}-beat",
        concurrency=2,
        env={**DEFAULT_LEASE, **DEFAULT_INTERVAL},
        beat=True,
    )
    [run] = faults.wait([run_id], timeout=240, recover=False)
    assert_stored_once(run, expected)
    starts = lines(f"{key}-{slow}-start")
    assert len(starts) >= 2, starts
    restarted_after = float(starts[1][1]) - killed_at
    assert 0 < restarted_after <= 60, f"step started again {restarted_after:.1f} s after the kill"
    assert count(f"{key}-{slow}") >= 1
    if where == "inline":
        assert count(f"{key}-step-1") == 1  # stored before the kill: not run again
        assert count(f"{key}-step-3") == 1
    else:
        assert count(f"{key}-after") == 1
    record_figures(
        f"whole worker killed mid-step ({where}), default lease and recovery interval",
        runs=1,
        steps=len(expected),
        faults=1,
        lost=0,
        doubled=0,
        recoveries=run.recoveries,
        restarted_after_seconds=round(restarted_after, 1),
    )


# -- 5. the database connection lost mid-invocation -------------------------------------


def kill_other_backends() -> int:
    """Terminate every other connection to the test database (the workers'); keep ours."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        )
        return sum(1 for (done,) in cursor.fetchall() if done)


def test_lost_database_connection_mid_invocation_reclaims_at_once(faults, key):
    """Kill the worker's PostgreSQL connections while step 1 runs (lease 30 s, no
    recovery): the task retries with its lease token and the run completes within 15 s."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "PostgreSQL only: SQLite is a file opened inside the worker process, "
            "there is no server connection to kill"
        )
    env = lease(faults, 30)
    names = step_names(2)
    faults.worker("lease-db-conn", concurrency=1, env=env)
    run_id = faults.send("test/lease-steps", {"key": key, "sleeps": [2, 0]})
    wait_for_marks(f"{key}-step-1-start")
    killed = kill_other_backends()
    killed_at = time.monotonic()
    assert killed >= 1, "no worker connection to kill"
    [run] = faults.wait([run_id], timeout=120, recover=False)
    took = time.monotonic() - killed_at
    # A durability bound: well under the 30 s lease, so the run was not left to expire.
    assert took <= 15, f"the run completed {took:.1f} s after its connection was killed"
    assert_stored_once(run, names)
    assert count(f"{key}-step-1") >= 1
    assert count(f"{key}-step-2") == 1
    record_figures(
        "database connection killed mid-invocation",
        runs=1,
        steps=len(names),
        faults=killed,
        lost=0,
        doubled=0,
        recoveries=run.recoveries,
        completed_after_seconds=round(took, 1),
    )


# -- 6. a long parallel step, exactly once ----------------------------------------------


@pytest.mark.timeout(LONG_STEP_SECONDS + 300)
def test_long_parallel_step_runs_exactly_once(faults, key):
    """A parallel step of STEPFLOWS_FAULTS_LONG_STEP_SECONDS (40 s; CI 600 s) under a lease
    of STEPFLOWS_FAULTS_LONG_STEP_LEASE (3 s; CI 30 s), recovery every second: once."""
    env = lease(faults, LONG_STEP_LEASE)
    faults.worker("lease-long-step", concurrency=2, env=env)
    run_id = faults.send("test/lease-parallel", {"key": key, "seconds": LONG_STEP_SECONDS})
    [run] = faults.wait([run_id], timeout=LONG_STEP_SECONDS + 120)
    assert_stored_once(run, PARALLEL)
    assert_ran_once(key, PARALLEL)
    assert Step.objects.get(run=run, step_id="long").attempt_count == 1
    assert all(s.attempt_count == 1 for s in Step.objects.filter(run=run))
    record_figures(
        f"parallel step of {LONG_STEP_SECONDS:g} s, lease {LONG_STEP_LEASE} s",
        runs=1,
        steps=len(PARALLEL),
        faults=0,
        lost=0,
        doubled=0,
        recoveries=faults.recovered,
    )
