"""Who did what, and fork from a step: the api verbs on real workers.

Every verb (retry, rerun, cancel, replay, fork) records an Intervention with
who, when and why, in the transaction of its change; a fork keeps the outputs
of the steps before its step (their code does not run again, counted with
marks) and executes the rest.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

import stepflows
from stepflows import api
from stepflows.exceptions import RunStateError, StepflowsError
from stepflows.models import Event, Intervention, Run, RunStatus, Step
from stepflows.testing import runs_for, wait_for_run, wait_for_runs
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def entries(run: Run) -> list[Intervention]:
    return list(Intervention.objects.filter(run_id=run.pk))


def test_retry_records_who_when_and_why(run_event, key, tmp_path):
    gate = tmp_path / "gate"
    run = run_event("test/resumable", {"key": key, "gate": str(gate)})
    assert run.status == RunStatus.FAILED
    gate.write_text("open")
    before = timezone.now()
    api.retry_run(run, by="alice", reason="the gate is open now")
    [entry] = entries(run)
    assert (entry.action, entry.by, entry.reason) == ("retry", "alice", "the gate is open now")
    assert entry.user is None and entry.new_run_id is None
    assert before <= entry.at <= timezone.now()
    assert wait_for_run(run.pk).status == RunStatus.COMPLETED


def test_a_user_names_the_actor_and_a_refused_retry_records_nothing(run_event, key):
    bob = User.objects.create_user("bob")
    run = run_event("test/three-steps", {"key": key})
    with pytest.raises(RunStateError):
        api.retry_run(run, user=bob, reason="no")
    assert entries(run) == []

    new = api.rerun(run, user=bob, reason="again please")
    [entry] = entries(run)
    assert (entry.action, entry.by, entry.user_id, entry.new_run_id) == (
        "rerun",
        "bob",
        bob.pk,
        new.pk,
    )
    assert entry.reason == "again please"
    assert wait_for_run(new.pk).status == RunStatus.COMPLETED
    # The new run's trail finds the rerun that started it.
    assert list(new.started_by.all()) == [entry]


def test_cancel_says_who_and_when_and_records_it(celery_worker, key):
    [event_id] = stepflows.send("test/slow-steps", data={"key": key, "steps": 50})
    [run] = runs_for([event_id])
    deadline = time.monotonic() + 60
    while count(f"{key}-slow") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.cancel_run(run, by="carol", reason="too slow")
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.CANCELLED
    message = run.error["message"]
    match = re.fullmatch(
        r"cancelled by carol at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC: too slow", message
    )
    assert match, message
    [entry] = entries(run)
    assert (entry.action, entry.by, entry.reason) == ("cancel", "carol", "too slow")
    at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    # The message gives whole seconds (cut, not rounded): the entry's time is up to
    # one second after it, plus the moments between the two stamps.
    assert -0.5 < (entry.at - at).total_seconds() < 2
    # Cancelling a finished run changes nothing and records nothing.
    assert not api.cancel_run(run, by="carol")
    assert len(entries(run)) == 1


def test_cancel_from_code_without_a_reason(celery_worker, key):
    [event_id] = stepflows.send("test/slow-steps", data={"key": key, "steps": 50})
    [run] = runs_for([event_id])
    assert api.cancel_run(run)
    run = wait_for_run(run.pk)
    assert re.fullmatch(r"cancelled by code at [\d: -]+ UTC", run.error["message"])
    assert [e.by for e in entries(run)] == ["code"]


def test_replay_records_the_entry_on_each_new_run(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    [new] = api.replay_event(run.event_id, by="command line", reason="after the fix")
    assert entries(run) == []
    [entry] = entries(new)
    assert (entry.action, entry.by, entry.reason) == ("replay", "command line", "after the fix")
    assert entry.new_run_id == new.pk and entry.detail == {"event": run.event_id}
    assert wait_for_run(new.pk).status == RunStatus.COMPLETED


def test_fork_from_the_middle_step_skips_the_first_steps_code(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    assert run.status == RunStatus.COMPLETED
    assert [count(f"{key}-{s}") for s in "abc"] == [1, 1, 1]

    new = api.fork_run(run, from_step="b", by="dave", reason="b was wrong")
    assert (new.forked_from_id, new.fork_step) == (run.pk, "b")
    assert (new.workflow_id, new.event_id, new.parent_id) == (
        run.workflow_id,
        run.event_id,
        run.parent_id,
    )
    new = wait_for_run(new.pk)
    assert new.status == RunStatus.COMPLETED, new.error
    # a's code did not run again; b and c did.
    assert [count(f"{key}-{s}") for s in "abc"] == [1, 2, 2]
    assert {k: v for k, v in new.output.items() if k != "pid"} == {"a": 1, "b": 2, "c": 3}
    old_a = Step.objects.get(run=run, step_id="a")
    new_a = Step.objects.get(run=new, step_id="a")
    assert (new_a.output, new_a.attempts, new_a.position) == (
        old_a.output,
        old_a.attempts,
        old_a.position,
    )
    assert Step.objects.filter(run=new).count() == 3
    [entry] = entries(run)
    assert (entry.action, entry.by, entry.reason, entry.new_run_id) == (
        "fork",
        "dave",
        "b was wrong",
        new.pk,
    )
    assert entry.detail == {"from_step": "b"}
    assert list(run.forks.all()) == [Run.objects.get(pk=new.pk)]
    # The original is left as it was.
    assert Run.objects.get(pk=run.pk).ended_at == run.ended_at


def test_fork_inside_a_parallel_group_reruns_the_whole_group(run_event, key):
    run = run_event("test/fork-group", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    new = wait_for_run(api.fork_run(run, from_step="right").pk)
    assert new.status == RunStatus.COMPLETED, new.error
    assert new.output == run.output == [1, 2, 3, 5]
    names = ["before", "left", "right", "after"]
    assert [count(f"{key}-{n}") for n in names] == [1, 2, 2, 2]


def test_fork_of_a_failed_run_from_its_failed_step(run_event, key, tmp_path):
    gate = tmp_path / "gate"
    run = run_event("test/resumable", {"key": key, "gate": str(gate)})
    assert run.status == RunStatus.FAILED
    gate.write_text("open")
    new = wait_for_run(api.fork_run(run.pk, from_step="gated").pk)
    assert new.status == RunStatus.COMPLETED, new.error
    assert new.output == [1, "through"]
    assert count(f"{key}-first") == 1
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED


def _row_run(status: str) -> Run:
    event = Event.objects.create(id=uuid.uuid4().hex, name="test/three-steps", data={"key": "k"})
    run = Run.objects.create(workflow_id="t-three-steps", event=event, status=status)
    for position, step_id in enumerate(["a", "b", "c"]):
        Step.objects.create(run=run, step_id=step_id, position=position, status="completed")
    return run


def test_fork_errors_say_what_to_do_and_start_nothing():
    finished = _row_run("completed")
    with pytest.raises(StepflowsError) as info:
        api.fork_run(finished, from_step="nope")
    message = str(info.value)
    assert "no step 'nope'" in message and "a, b, c" in message
    assert str(finished.pk) in message and "t-three-steps" in message
    assert isinstance(info.value, LookupError)

    active = _row_run("running")
    with pytest.raises(RunStateError, match="cancel it first"):
        api.fork_run(active, from_step="b")

    with pytest.raises(Run.DoesNotExist):
        api.fork_run(uuid.uuid4(), from_step="b")
    assert Run.objects.count() == 2
    assert Intervention.objects.count() == 0


def test_rerun_and_fork_runs_are_linked_both_ways(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    fork = api.fork_run(run, from_step="c")
    rerun = api.rerun(run)
    wait_for_runs([fork.pk, rerun.pk])
    started = {e.action: e.new_run_id for e in entries(run)}
    assert started == {"fork": fork.pk, "rerun": rerun.pk}
    assert [count(f"{key}-{s}") for s in "abc"] == [2, 2, 3]
