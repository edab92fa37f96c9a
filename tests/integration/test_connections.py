"""Workers keep their database connections across tasks, and drop broken ones.

The project's settings follow stepflows.celery_config: CELERY_DB_REUSE_MAX
set, and CONN_MAX_AGE with health checks on the database.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from django.db import connection

from stepflows.models import RunStatus, Step

pytestmark = pytest.mark.django_db(transaction=True)


def opened_by_process(output: dict) -> dict[int, list[int]]:
    """For each worker process, the connection counts its steps saw, in order."""
    seen: dict[int, list[int]] = defaultdict(list)
    for pid, opened in [output["first"], *output["parallel"], output["last"]]:
        seen[pid].append(opened)
    return seen


def test_step_tasks_reuse_their_process_connection(run_event):
    run = run_event("test/connections", {"n": 12})
    assert run.status == RunStatus.COMPLETED, run.error
    seen = opened_by_process(run.output)
    # 14 steps, 12 of them separate tasks, on 2 processes: one ran at least 6.
    assert max(len(counts) for counts in seen.values()) >= 6, seen
    # A new connection per task would count up with every step; at most one
    # reconnection (CONN_MAX_AGE reached mid-run) is allowed.
    assert all(max(c) - min(c) <= 1 for c in seen.values()), seen


@pytest.mark.skipif(connection.vendor != "postgresql", reason="terminates server connections")
def test_a_connection_broken_between_tasks_costs_no_step_attempt(run_event):
    warm = run_event("test/connections", {"n": 4})
    assert warm.status == RunStatus.COMPLETED, warm.error
    with connection.cursor() as cursor:
        # What a database restart does to the workers' idle connections.
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        [(terminated,)] = cursor.fetchall()
    assert terminated >= 1
    run = run_event("test/connections", {"n": 4}, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    steps = Step.objects.filter(run=run)
    assert steps.count() == 6
    assert {s.attempt_count for s in steps} == {1}
    # Each process reconnected once, then kept the new connection.
    before = opened_by_process(warm.output)
    after = opened_by_process(run.output)
    for pid, counts in after.items():
        assert max(counts) - min(counts) <= 1, after
        if pid in before:
            assert min(counts) > max(before[pid]), (before, after)
