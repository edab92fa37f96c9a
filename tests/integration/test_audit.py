"""Regression tests of the engine audit, on real Celery workers (tests/testapp/flows/audit.py).

Each test pins one bug of the first engine: BaseExceptions in steps, an empty
``parallel`` before another one, the values ``parallel`` returns, the state
limit across a parallel group and on the run's own output, errors while
recording a step, and the recovery limit counted since the last progress.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)

MIB = 1024 * 1024
LIMIT = 4 * MIB  # STEPFLOWS["MAX_STATE_BYTES"]: the default; tests/settings.py keeps it


def steps_of(run):
    return {s.step_id: s for s in Step.objects.filter(run=run)}


def step_error_type(run) -> str | None:
    """The type of the step error that failed the run (StepError carries it)."""
    return run.error.get("step_error_type") if run.error else None


def assert_failed_by_step(run, step_id: str, error_type: str) -> None:
    assert run.status == RunStatus.FAILED, (run.status, run.output)
    assert run.error["type"] == "StepError", run.error
    assert run.error.get("step_id") == step_id, run.error
    assert step_error_type(run) == error_type or error_type in run.error["message"], run.error


def assert_worker_healthy(celery_worker, runs: int = 4) -> None:
    """The worker still runs normal workflows: several at once, to reach both pool processes."""
    import stepflows
    from stepflows.testing import runs_for, wait_for_runs

    assert celery_worker.process is not None and celery_worker.process.poll() is None
    keys = [uuid.uuid4().hex[:12] for _ in range(runs)]
    event_ids = [stepflows.send("test/audit-normal", data={"key": k})[0] for k in keys]
    done = wait_for_runs([r.id for r in runs_for(event_ids)], timeout=90)
    assert [r.status for r in done] == [RunStatus.COMPLETED] * runs, [r.error for r in done]
    for run in done:
        assert {k: run.output[k] for k in ("one", "left", "right")} == {
            "one": 1,
            "left": "l",
            "right": "r",
        }
    for k in keys:
        assert [count(f"{k}-{s}") for s in ("one", "left", "right")] == [1, 1, 1]


# -- 8: an empty parallel followed by another parallel ----------------------------------


def test_empty_parallel_then_parallel_completes(run_event, key):
    run = run_event("test/audit-empty-then-parallel", {"key": key}, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"nothing": [], "a": "A", "b": "B", "after": 3}
    steps = steps_of(run)
    assert sorted(steps) == ["a", "after", "b"]
    assert all(s.status == StepStatus.COMPLETED and s.attempt_count == 1 for s in steps.values())
    assert steps["a"].group is not None and steps["a"].group == steps["b"].group
    assert [count(f"{key}-{s}") for s in ("a", "b", "after")] == [1, 1, 1]


# -- 9: parallel returns what each callable returns -----------------------------------


def test_parallel_returns_the_callables_values(run_event, key):
    run = run_event("test/audit-parallel-values", {"key": key}, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["1", 5]
    steps = steps_of(run)
    assert steps["a"].output == 1 and steps["b"].output == {"x": 5}
    assert [count(f"{key}-{s}") for s in ("a", "b")] == [1, 1]


def test_async_parallel_returns_the_callables_values(run_event, key):
    run = run_event("test/audit-parallel-values-async", {"key": key}, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [42, "d"]
    assert steps_of(run)["c"].output == 21
    assert [count(f"{key}-{s}") for s in ("c", "d")] == [1, 1]


def test_parallel_callable_catching_a_step_error_returns_its_fallback(run_event, key):
    run = run_event("test/audit-parallel-fallback", {"key": key}, timeout=90)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["fallback for doomed (NonRetriableError)", "ok"]
    steps = steps_of(run)
    assert steps["doomed"].status == StepStatus.FAILED
    assert steps["doomed"].attempt_count == 1
    assert steps["doomed"].error["type"] == "NonRetriableError"
    assert steps["fine"].status == StepStatus.COMPLETED
    assert [count(f"{key}-{s}") for s in ("doomed", "fine")] == [1, 1]


# -- 10: the state limit ----------------------------------------------------------------


def test_state_limit_holds_across_a_parallel_group(run_event, key):
    from stepflows.conf import get_settings

    assert get_settings().MAX_STATE_BYTES == LIMIT
    run = run_event("test/audit-state-parallel", {"key": key, "size": 2 * MIB}, timeout=120)
    assert run.status == RunStatus.FAILED, run.output
    assert "LimitExceededError" in (run.error["type"], step_error_type(run)), run.error
    assert "MAX_STATE_BYTES" in run.error["message"], run.error
    steps = list(Step.objects.filter(run=run))
    assert len(steps) == 3
    over = [s for s in steps if s.error and s.error["type"] == "LimitExceededError"]
    assert over, [(s.step_id, s.status, s.error) for s in steps]
    assert all(s.status == StepStatus.FAILED for s in over)
    assert all("MAX_STATE_BYTES" in s.error["message"] for s in over)
    assert all(s.output is None and s.output_bytes == 0 for s in over)
    assert sum(s.output_bytes for s in steps) <= LIMIT


def test_run_output_over_the_state_limit_fails_the_run(run_event, key):
    run = run_event("test/audit-big-return", {"key": key}, timeout=90)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError", run.error
    assert "MAX_STATE_BYTES" in run.error["message"]
    assert run.output is None
    assert steps_of(run)["small"].status == StepStatus.COMPLETED
    assert count(f"{key}-small") == 1


# -- 11: errors while recording a step are final, and the step runs once -----------------


def test_output_with_a_lone_surrogate_fails_the_step_once(run_event, key):
    run = run_event("test/audit-lone-surrogate", {"key": key}, timeout=90)
    assert_failed_by_step(run, "surrogate", "OutputSerializationError")
    step = steps_of(run)["surrogate"]
    assert step.status == StepStatus.FAILED
    assert step.attempt_count == 1
    assert step.error["type"] == "OutputSerializationError"
    assert step.output is None
    assert count(f"{key}-surrogate") == 1
    assert count(f"{key}-fine") == 1


def test_step_id_with_nul_fails_the_run_before_the_step_runs(run_event, key):
    run = run_event("test/audit-nul-step-id", {"key": key}, timeout=90)
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] in ("StepError", "StepUsageError"), run.error
    message = run.error["message"]
    assert "step id" in message.lower(), message
    assert any(s in message for s in ("\\x00", "NUL", "U+0000", "\\u0000")), message
    assert [s.step_id for s in Step.objects.filter(run=run)] == ["fine"]
    assert count(f"{key}-bad") == 0
    assert count(f"{key}-fine") == 1


@pytest.mark.parametrize("kind", ["naive-datetime", "infinity"])
def test_bad_retry_after_fails_the_step_once(run_event, key, kind):
    run = run_event("test/audit-bad-retry-after", {"key": key, "kind": kind}, timeout=90)
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] == "StepError" and run.error.get("step_id") == "later", run.error
    step = steps_of(run)["later"]
    assert step.status == StepStatus.FAILED
    assert step.attempt_count == 1
    assert "retry_after" in step.error["message"], step.error
    assert count(f"{key}-later") == 1
    assert count(f"{key}-fine") == 1


# -- 13: recoveries count since the run last made progress (no workers) -----------------


def stuck_run(key: str, *, recoveries: int, recovered_ago: timedelta, step_ended_ago: timedelta):
    """A run whose worker died: running under an expired lease, recovered before."""
    now = timezone.now()
    event = Event.objects.create(id=f"audit-{key}", name="test/audit-normal", data={"key": key})
    run = Run.objects.create(
        workflow_id="audit-normal",
        event=event,
        status=RunStatus.RUNNING,
        created_at=now - timedelta(hours=3),
        started_at=now - timedelta(hours=3),
        # Claimed again right after its last recovery.
        progress_at=now - recovered_ago + timedelta(minutes=1),
        lease_owner="x",
        lease_expires_at=now - timedelta(minutes=9),
        recoveries=recoveries,
        recovered_at=now - recovered_ago,
    )
    ended = now - step_ended_ago
    Step.objects.create(
        run=run,
        step_id="one",
        position=0,
        status=StepStatus.COMPLETED,
        output=1,
        output_bytes=1,
        started_at=ended - timedelta(seconds=1),
        ended_at=ended,
        attempt_count=1,
        attempts=[
            {
                "number": 0,
                "started_at": (ended - timedelta(seconds=1)).isoformat(),
                "ended_at": ended.isoformat(),
                "error": None,
                "worker": "x",
            }
        ],
    )
    return run


# Not transactional: nothing commits, so the wake-up message recovery sends on
# commit never reaches the session's worker.
@pytest.mark.django_db(transaction=False)
def test_recovery_limit_counts_from_the_last_progress(settings, key):
    from stepflows.engine.recovery import find_stuck_runs, recover_stuck_runs

    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_RECOVERIES": 2}
    run = stuck_run(
        key, recoveries=2, recovered_ago=timedelta(hours=1), step_ended_ago=timedelta(minutes=10)
    )
    before = run.recovered_at
    assert str(run.id) in [s.run_id for s in find_stuck_runs()]
    report = recover_stuck_runs()
    assert str(run.id) in [str(r) for r in report.resumed], report
    assert str(run.id) not in [str(r) for r in report.failed]
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING, run.error
    assert run.recoveries == 1
    assert run.recovered_at is not None and run.recovered_at > before
    assert run.error is None


@pytest.mark.django_db(transaction=False)
def test_recovery_limit_without_progress_fails_the_run(settings, key):
    from stepflows.engine.recovery import recover_stuck_runs

    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_RECOVERIES": 2}
    run = stuck_run(
        key, recoveries=2, recovered_ago=timedelta(hours=1), step_ended_ago=timedelta(hours=2)
    )
    report = recover_stuck_runs()
    assert str(run.id) in [str(r) for r in report.failed], report
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "RecoveryLimitError"
    assert "MAX_RECOVERIES" in run.error["message"]


# -- 7: BaseExceptions raised in a step (last: the first engine loses pool processes) ----


@pytest.mark.parametrize(
    ("kind", "name", "parallel"),
    [
        ("boom", "Boom", False),
        ("boom", "Boom", True),
        ("system-exit", "SystemExit", False),
        ("keyboard-interrupt", "KeyboardInterrupt", False),
    ],
)
def test_base_exception_in_a_step_fails_once(run_event, key, celery_worker, kind, name, parallel):
    data = {"key": key, "kind": kind, "parallel": parallel}
    run = run_event("test/audit-base-exception", data, timeout=60)
    assert_failed_by_step(run, "doomed", name)
    steps = steps_of(run)
    doomed = steps["doomed"]
    assert doomed.status == StepStatus.FAILED
    assert doomed.attempt_count == 1
    assert doomed.error["type"] == name
    assert "after" not in steps
    assert count(f"{key}-doomed") == 1
    assert count(f"{key}-before") == 1
    assert count(f"{key}-after") == 0
    if parallel:
        assert steps["sibling"].status == StepStatus.COMPLETED
        assert count(f"{key}-sibling") == 1
    assert_worker_healthy(celery_worker)


def test_cancelled_error_in_an_async_step_fails_it_once(run_event, key, celery_worker):
    run = run_event("test/audit-cancelled-error", {"key": key}, timeout=60)
    assert_failed_by_step(run, "doomed", "CancelledError")
    steps = steps_of(run)
    doomed = steps["doomed"]
    assert doomed.status == StepStatus.FAILED
    assert doomed.attempt_count == 1
    assert doomed.error["type"] == "CancelledError"
    assert "after" not in steps
    assert count(f"{key}-doomed") == 1
    assert count(f"{key}-before") == 1
    assert_worker_healthy(celery_worker)
