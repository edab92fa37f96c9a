"""Parallel steps: a Celery chord of step tasks, joined by a callback that resumes the run."""

from __future__ import annotations

from datetime import datetime

import pytest

from stepflows.models import RunStatus, Step, StepStatus
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def steps_of(run):
    return {s.step_id: s for s in Step.objects.filter(run=run)}


def test_two_parallel_steps_overlap_on_different_workers(run_event, key):
    run = run_event("test/parallel-sleep", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    left, right, after = run.output
    assert after == "sequential again"
    # Recorded by the steps themselves: different processes, overlapping in time.
    assert left["pid"] != right["pid"]
    assert left["start"] < right["end"] and right["start"] < left["end"]
    steps = steps_of(run)
    assert steps["left"].group == steps["right"].group == 0
    assert steps["after"].group is None
    l_attempt, r_attempt = steps["left"].attempts[0], steps["right"].attempts[0]
    assert l_attempt["worker"] != r_attempt["worker"]
    l0, l1 = (datetime.fromisoformat(l_attempt[k]) for k in ("started_at", "ended_at"))
    r0, r1 = (datetime.fromisoformat(r_attempt[k]) for k in ("started_at", "ended_at"))
    assert l0 < r1 and r0 < l1
    assert [count(f"{key}-{s}") for s in ("left", "right", "after")] == [1, 1, 1]


def test_hundred_chunks_in_order(run_event):
    run = run_event("test/summarize", {"chunks": 100})
    assert run.status == RunStatus.COMPLETED, run.error
    expected = [f"CHUNK {i}" for i in range(100)]
    assert run.output["summaries"] == expected
    assert run.output["joined"] == " | ".join(expected)
    ids = [s.step_id for s in Step.objects.filter(run=run).order_by("position")]
    assert ids == ["summarize-chunk"] + [f"summarize-chunk:{i}" for i in range(1, 100)] + ["join"]


@pytest.mark.smoke
def test_parallel_step_retried_on_its_own(run_event, key):
    run = run_event("test/parallel-flaky", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [1, "ok after 3 attempts", 2]
    steps = steps_of(run)
    assert steps["flaky"].attempt_count == 3
    assert steps["sibling-1"].attempt_count == steps["sibling-2"].attempt_count == 1
    assert count(f"{key}-s1") == count(f"{key}-s2") == 1
    assert count(f"{key}-flaky") == 3


def test_parallel_step_failing_for_good_is_caught(run_event, key):
    run = run_event("test/parallel-fail", {"key": key, "catch": True})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"caught": "doomed"}
    assert steps_of(run)["doomed"].attempt_count == 5


def test_parallel_step_failing_for_good_uncaught_fails_run_keeping_siblings(run_event, key):
    run = run_event("test/parallel-fail", {"key": key})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepError" and run.error["step_id"] == "doomed"
    good = steps_of(run)["good"]
    assert good.status == StepStatus.COMPLETED and good.output == "kept"
    assert count(f"{key}-good") == 1


def test_redelivered_step_task_does_not_run_the_step_again(run_event, key, celery_worker):
    from stepflows.tasks import run_step
    from stepflows.testing import wait_for_run

    run = run_event("test/parallel-redelivery", {"key": key})
    assert run.status == RunStatus.COMPLETED
    one = steps_of(run)["one"]
    # The same message again, as a broker would redeliver it.
    result = run_step.apply_async(args=[str(run.id), "one", one.position, one.group])
    result.get(timeout=60)
    run = wait_for_run(run.id)
    assert count(f"{key}-one") == 1
    assert Step.objects.get(run=run, step_id="one").attempt_count == 1
    assert run.output == [1, 2]


def test_empty_parallel_returns_empty_tuple(run_event):
    run = run_event("test/parallel-empty", {})
    assert run.status == RunStatus.COMPLETED
    assert run.output == [[], 5]
    assert Step.objects.filter(run=run).count() == 1


def test_thousand_step_group_completes(run_event):
    run = run_event("test/parallel-many", {"n": 1000}, timeout=600)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == sum(range(1000))
    assert Step.objects.filter(run=run, status=StepStatus.COMPLETED).count() == 1000


def test_group_over_the_step_limit_fails_before_dispatch(run_event):
    run = run_event("test/parallel-many", {"n": 1001})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError"
    assert "1001" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 0


def test_experimental_gather_and_wait_run_as_parallel_groups(run_event, key):
    run = run_event("test/gather", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    out = run.output
    assert out["first"] == 1 and out["last"] == "end"
    assert out["pids"][0] != out["pids"][1] and out["overlap"] is True
    assert out["chunks"] == [f"C{i}" for i in range(5)]
    assert out["race_done"] == ["a", "b"]  # resumed once the whole group finished
    steps = steps_of(run)
    assert steps["left"].group == steps["right"].group == steps["left"].position
    assert steps["chunk:4"].group == steps["chunk"].position
    assert steps["first"].group is None and steps["last"].group is None
    for name in ("first", "left", "right", "race-a", "race-b", "last"):
        assert count(f"{key}-{name}") == 1, name


def test_experimental_gather_with_a_failing_step(run_event, key):
    run = run_event("test/gather-fail", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"ok": 1, "error": "StepError"}
    assert steps_of(run)["doomed"].attempt_count == 5
    assert count(f"{key}-ok") == 1
