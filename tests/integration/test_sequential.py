"""Sequential steps on real workers: memoized, retried on their own, failing clearly."""

from __future__ import annotations

import pytest

from stepflows.models import RunStatus, Step, StepStatus
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def steps_of(run):
    return {s.step_id: s for s in Step.objects.filter(run=run)}


@pytest.mark.smoke
def test_three_sequential_steps_complete(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert {k: run.output[k] for k in "abc"} == {"a": 1, "b": 2, "c": 3}
    steps = steps_of(run)
    assert [s.step_id for s in sorted(steps.values(), key=lambda s: s.position)] == ["a", "b", "c"]
    assert all(s.status == StepStatus.COMPLETED and s.attempt_count == 1 for s in steps.values())
    assert [count(f"{key}-{x}") for x in "abc"] == [1, 1, 1]
    assert run.started_at and run.ended_at and run.ended_at >= run.started_at


@pytest.mark.smoke
def test_async_workflow_with_plain_and_async_steps(run_event, key):
    run = run_event("test/async-steps", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [21, 42, "ok after 2 attempts"]
    assert count(f"{key}-plain") == 1
    assert count(f"{key}-double") == 1
    assert steps_of(run)["flaky"].attempt_count == 2


@pytest.mark.smoke
def test_step_failing_twice_then_succeeding(run_event, key):
    run = run_event("test/flaky", {"key": key, "failures": 2})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"before": "b", "result": "ok after 3 attempts"}
    flaky = steps_of(run)["flaky"]
    assert flaky.attempt_count == 3
    assert [a["number"] for a in flaky.attempts] == [0, 1, 2]
    assert [a["error"] is not None for a in flaky.attempts] == [True, True, False]
    assert "flaky failure #1" in flaky.attempts[0]["error"]["message"]
    assert all(a["worker"] for a in flaky.attempts)
    # The step before it ran once, not once per invocation.
    assert count(f"{key}-before") == 1
    assert count(f"{key}-flaky") == 3


def test_step_always_failing_fails_the_run_after_five_attempts(run_event, key):
    run = run_event("test/always-fails", {"key": key})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepError"
    assert run.error["step_id"] == "doomed"
    assert "this step always fails" in run.error["message"]
    assert "ValueError" in run.error["traceback"]
    doomed = steps_of(run)["doomed"]
    assert doomed.status == StepStatus.FAILED
    assert doomed.attempt_count == 5
    assert doomed.error["type"] == "ValueError"
    assert count(f"{key}-doomed") == 5
    assert count(f"{key}-first") == 1


def test_workflow_catching_step_error_completes(run_event, key):
    run = run_event("test/catches", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"caught": "doomed", "type": "ValueError", "fallback": "plan b"}
    assert count(f"{key}-fallback") == 1


def test_non_retriable_error_fails_at_once(run_event, key):
    run = run_event("test/non-retriable", {"key": key})
    assert run.status == RunStatus.FAILED
    assert count(f"{key}-give-up") == 1
    assert steps_of(run)["charge"].error["type"] == "NonRetriableError"


def test_retry_after_error_waits_then_retries(run_event, key):
    run = run_event("test/retry-after", {"key": key})
    assert run.status == RunStatus.COMPLETED
    step = steps_of(run)["later"]
    assert step.attempt_count == 2
    from datetime import datetime

    first_end = datetime.fromisoformat(step.attempts[0]["ended_at"])
    second_start = datetime.fromisoformat(step.attempts[1]["started_at"])
    assert (second_start - first_end).total_seconds() >= 0.25


def test_workflow_code_error_is_retried(run_event, key):
    run = run_event("test/workflow-error", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "recovered"
    assert run.attempts == 1
    assert count(f"{key}-one") == 1


def test_repeated_step_ids_get_counter_suffixes(run_event):
    run = run_event("test/repeated-ids", {})
    assert run.output == [0, 1, 2]
    assert sorted(steps_of(run)) == ["item", "item:1", "item:2"]


def test_asend_from_async_code(celery_worker, key):
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    import stepflows
    from stepflows.testing import runs_for, wait_for_run

    async def send() -> list[str]:
        try:
            return await stepflows.asend("test/three-steps", data={"key": key})
        finally:
            # asend's database work runs in asgiref's worker thread; close that
            # thread's connection, as Django does at the end of a request.
            await sync_to_async(connections.close_all)()

    [event_id] = asyncio.run(send())
    [run] = runs_for([event_id])
    assert wait_for_run(run.id).status == RunStatus.COMPLETED
