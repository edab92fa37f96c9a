"""The engine's fast paths, statement by statement (no workers needed).

The step-task memo cache, the inline step's conditional INSERT (which also
checks for cancellation) and the parallel group's join counter.
"""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from stepflows import dispatch
from stepflows.engine import recording
from stepflows.engine.control import Cancelled, PlannedStep
from stepflows.engine.memo import StepRecord, clear_cache, memo_for_step_task
from stepflows.models import Event, Run, RunStatus, Step, StepStatus

pytestmark = pytest.mark.django_db(transaction=True)


def make_run(status: str = RunStatus.RUNNING) -> Run:
    event = Event.objects.create(id=uuid.uuid4().hex, name="test/fast", data={})
    return Run.objects.create(workflow_id="test-fast", event=event, status=status)


def done(step_id: str, position: int, group: int | None = None, output: object = 1) -> StepRecord:
    return StepRecord(step_id, position, group, StepStatus.COMPLETED, output=output, output_bytes=1)


def queries(fn):
    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return value, len(ctx.captured_queries)


def test_step_task_memo_is_cached_per_run_group_and_resumes():
    clear_cache()
    run = make_run(RunStatus.WAITING)
    recording.save_step(run.id, done("first", 0, output="kept"), exists=False)
    a, b = (StepRecord(sid, pos, 1, StepStatus.SCHEDULED) for pos, sid in ((1, "a"), (2, "b")))
    memo, n = queries(lambda: memo_for_step_task(run.id, 1, 0, a))
    assert n == 1 and memo.get(0).output == "kept" and memo.get(1).step_id == "a"
    memo, n = queries(lambda: memo_for_step_task(run.id, 1, 0, b))
    assert n == 0, "the steps before the group come from the cache"
    assert memo.get(0).output == "kept" and memo.get(2).step_id == "b" and memo.count == 2
    # After api.retry_run (resumes + 1) the rows are read again.
    _, n = queries(lambda: memo_for_step_task(run.id, 1, 1, b))
    assert n == 1


def test_new_inline_step_is_one_statement_and_refused_once_cancelled():
    run = make_run()
    _, n = queries(
        lambda: recording.save_step(run.id, done("one", 0), exists=False, unless_cancelled=True)
    )
    assert n == 1 and Step.objects.get(run=run, step_id="one").output == 1
    Run.objects.filter(id=run.id).update(status=RunStatus.CANCELLED)
    with pytest.raises(Cancelled):
        recording.save_step(run.id, done("two", 1), exists=False, unless_cancelled=True)
    assert not Step.objects.filter(run=run, step_id="two").exists()


def test_group_join_counts_each_step_once_and_the_last_resumes(monkeypatch):
    resumed: list[tuple[object, object]] = []
    monkeypatch.setattr(dispatch, "resume_run", lambda run_id, wake: resumed.append((run_id, wake)))
    monkeypatch.setattr(dispatch, "parallel_group", lambda run_id, planned, wake: None)
    run = make_run()
    token = "test-token"
    Run.objects.filter(id=run.id).update(lease_owner=token)
    planned = [PlannedStep("a", 0, 0, is_new=True), PlannedStep("b", 1, 0, is_new=True)]
    recording.suspend_run(run.id, token, planned=planned, countdown=None)
    assert Run.objects.values_list("join_group", "join_pending").get(id=run.id) == (0, 2)
    recording.save_step(run.id, done("a", 0, group=0), exists=True)
    # A redelivered task finds the step finished: no second count.
    recording.save_step(run.id, done("a", 0, group=0, output=2), exists=True)
    assert Run.objects.get(id=run.id).join_pending == 1 and resumed == []
    assert Step.objects.get(run=run, step_id="a").output == 1
    recording.save_step(run.id, done("b", 1, group=0), exists=True)
    assert Run.objects.get(id=run.id).join_pending == 0
    # The callback names the wake-up the run suspended with.
    wake = Run.objects.get(id=run.id).wake
    assert [(str(r), w) for r, w in resumed] == [(str(run.id), wake)]
