"""Durable waits, driven in process on the test database: sleeps, waits for events,
invokes, run timeouts, cancel_on and on_failure. The real-worker versions are in
tests/integration/test_waits.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

import stepflows
from stepflows import api, clock
from stepflows.engine.waits import wake_due_runs
from stepflows.models import Event, Run, RunStatus, Step, StepStatus, Waiter
from stepflows.testing import InProcess, InProcessError, run_workflow, runs_for
from tests.testapp.flows import waits_in_process as flows
from tests.testapp.flows.waits_in_process import calls

pytestmark = pytest.mark.django_db


def start(driver: InProcess, name: str, data: dict) -> Run:
    [event_id] = stepflows.send(name, data=data)
    driver.run_until_idle()
    [run] = runs_for([event_id])
    return run


# -- step.sleep ----------------------------------------------------------------------


def test_a_day_long_sleep_waits_in_the_database_then_wakes(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-sleep", {"key": key})
        assert run.status == RunStatus.WAITING and run.waiting_for == "sleep"
        nap = Step.objects.get(run=run, step_id="nap")
        assert nap.kind == "sleep" and nap.status == StepStatus.SCHEDULED
        assert nap.wake_at == run.wait_until
        assert timedelta(hours=23) < nap.wake_at - timezone.now() <= timedelta(days=1, seconds=5)
        assert not driver.pending  # nothing parked in the broker for a long sleep
        assert calls[f"{key}-after"] == 0
        # The sweep before the due time wakes nothing.
        assert wake_due_runs()["woken"] == 0
        driver.advance(86400)
        run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.waiting_for == "" and run.wait_until is None
    assert calls[f"{key}-before"] == 1 and calls[f"{key}-after"] == 1
    nap.refresh_from_db()
    assert nap.status == StepStatus.COMPLETED and nap.ended_at is not None


def test_a_short_sleep_sends_a_countdown_message_and_replays_keep_the_wake_time(key: str) -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/wip-sleep", data={"key": key, "seconds": 5})
        with pytest.raises(InProcessError):
            driver.run_until_idle(max_messages=1)  # the first invocation only
        [run] = runs_for([event_id])
        wake_at = Step.objects.get(run=run, step_id="nap").wake_at
        [message] = driver.pending
        assert message.kwargs["wake"] == run.wake and 4 < message.countdown <= 5
        driver.run_until_idle()
        run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED
    assert Step.objects.get(run=run, step_id="nap").wake_at == wake_at


def test_an_async_workflow_sleeps_too(key: str) -> None:
    run = run_workflow(flows.sleeper_async, {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert calls[f"{key}-after"] == 1


def test_sleep_until_refuses_a_naive_datetime() -> None:
    run = run_workflow(flows.sleep_until, {"when": "2030-01-01T00:00:00"})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUsageError"
    assert "aware datetime" in run.error["message"] and "'until'" in run.error["message"]


def test_sleep_until_a_past_time_does_not_wait() -> None:
    run = run_workflow(flows.sleep_until, {"when": "2020-01-01T00:00:00+00:00"})
    assert run.status == RunStatus.COMPLETED, run.error
    assert Step.objects.get(run=run, step_id="until").status == StepStatus.COMPLETED


# -- step.wait_for_event -------------------------------------------------------------


def test_wait_for_event_is_resumed_by_a_match_only(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-order", {"order": key})
        assert run.status == RunStatus.WAITING and run.waiting_for == "event"
        [waiter] = Waiter.objects.filter(run=run)
        assert waiter.event_name == "test/wip-paid" and waiter.step_id == "paid"
        stepflows.send("test/wip-paid", data={"order": f"{key}-other", "amount": 1})
        stepflows.send("test/wip-other", data={"order": key, "amount": 2})
        driver.run_until_idle()
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING
        stepflows.send("test/wip-paid", data={"order": key, "amount": 3})
        stepflows.send("test/wip-paid", data={"order": key, "amount": 4})
        driver.run_until_idle()
        run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"order": key, "amount": 3}  # the first match, once
    assert calls[f"{key}-after"] == 1
    assert not Waiter.objects.filter(run=run).exists()


def test_wait_for_event_times_out_with_none(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-order", {"order": key})
        driver.advance(3600)
        run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output is None
    assert not Waiter.objects.filter(run=run).exists()


def test_an_event_sent_before_the_wait_counts_only_within_the_invocation(key: str) -> None:
    stepflows.send("test/wip-paid", data={"order": key, "amount": 1})
    with InProcess() as driver:
        clock.advance(1)
        run = start(driver, "test/wip-order", {"order": key})
        assert run.status == RunStatus.WAITING  # sent before the run started: not a match


def test_wait_with_if_calls_the_predicate_in_the_workflow(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-order-if", {"order": key, "amount": 10})
        stepflows.send("test/wip-paid", data={"order": key, "amount": 5})
        driver.run_until_idle()
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING and run.waiting_for == "event"
        stepflows.send("test/wip-paid", data={"order": key, "amount": 12})
        driver.run_until_idle()
        run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"order": key, "amount": 12}


def test_one_event_resumes_every_run_waiting_for_it(key: str) -> None:
    with InProcess() as driver:
        ids = stepflows.send([{"name": "test/wip-order", "data": {"order": key}}] * 1)
        ids += stepflows.send("test/wip-order", data={"order": key}, id=f"{key}-2")
        ids += stepflows.send("test/wip-order", data={"order": key}, id=f"{key}-3")
        driver.run_until_idle()
        runs = runs_for(ids)
        assert {r.status for r in runs} == {RunStatus.WAITING}
        stepflows.send("test/wip-paid", data={"order": key, "amount": 1})
        driver.run_until_idle()
    assert {r.status for r in runs_for(ids)} == {RunStatus.COMPLETED}


# -- step.invoke -----------------------------------------------------------------------


def test_invoke_returns_the_childs_typed_output_and_links_it(key: str) -> None:
    run = run_workflow(flows.parent, {"child": {"order": key, "total": 42}})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"total": 42}
    [child] = Run.objects.filter(parent=run)
    assert child.workflow_id == "wip-child" and child.caller_step == "charge"
    assert child.status == RunStatus.COMPLETED
    assert Step.objects.get(run=run, step_id="charge").wait["child"] == str(child.id)
    assert calls[f"{key}-child"] == 1 and calls[f"{key}-parent-after"] == 1


def test_invoke_raises_step_error_when_the_child_fails(key: str) -> None:
    run = run_workflow(flows.parent, {"child": {"order": key, "total": 1, "fail": True}})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["error"] == "ChildRunFailed"
    assert "the child gave up" in run.output["message"]


def test_invoke_times_out_and_the_child_goes_on(key: str) -> None:
    with InProcess() as driver:
        run = start(
            driver,
            "test/wip-parent",
            {"child": {"order": key, "total": 1, "sleep": 7200}, "timeout": 60},
        )
        driver.advance(61)
        run.refresh_from_db()
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output["error"] == "InvokeTimeoutError"
        [child] = Run.objects.filter(parent=run)
        assert child.status == RunStatus.WAITING
        driver.advance(7200)
        child.refresh_from_db()
    assert child.status == RunStatus.COMPLETED
    assert Run.objects.filter(parent=run).count() == 1


def test_cancelling_a_parent_cancels_its_invoked_child_unless_kept(key: str) -> None:
    with InProcess() as driver:
        data = {"child": {"order": key, "total": 1, "sleep": 7200}}
        parent = start(driver, "test/wip-parent", data)
        [child] = Run.objects.filter(parent=parent)
        assert api.cancel_run(parent)
        child.refresh_from_db()
        assert child.status == RunStatus.CANCELLED
        parent2 = start(driver, "test/wip-parent", data | {"n": 2})
        [child2] = Run.objects.filter(parent=parent2)
        assert api.cancel_run(parent2, children=False)
        child2.refresh_from_db()
        assert child2.status == RunStatus.WAITING


# -- run timeouts, cancel_on, on_failure ------------------------------------------------


def test_a_run_over_its_finish_timeout_is_cancelled(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-timeout", {"key": key})
        driver.advance(61)
        run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.error["message"].startswith("timed out: not finished within 60 s")


def test_cancel_on_cancels_a_sleeping_run_at_once(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-cancel-on", {"order": key})
        assert Waiter.objects.filter(run=run, kind="cancel").count() == 1
        stepflows.send("test/wip-cancel", data={"order": f"{key}-other"})
        run.refresh_from_db()
        assert run.status == RunStatus.WAITING
        stepflows.send("test/wip-cancel", data={"order": key})
        run.refresh_from_db()
        assert run.status == RunStatus.CANCELLED
        assert run.error["message"].startswith("cancelled by event test/wip-cancel")
        driver.advance(3600)
    assert calls[f"{key}-after"] == 0
    assert not Waiter.objects.filter(run=run).exists()


def test_a_cancel_event_sent_before_the_first_invocation_still_cancels(key: str) -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/wip-cancel-on", data={"order": key})
        stepflows.send("test/wip-cancel", data={"order": key})
        driver.run_until_idle()
        [run] = runs_for([event_id])
    assert run.status == RunStatus.CANCELLED


def test_on_failure_runs_once_per_failure_and_never_for_a_cancel(key: str) -> None:
    with InProcess() as driver:
        run = run_workflow(flows.fails, {"key": key})
        assert run.status == RunStatus.FAILED
        driver.run_until_idle()
    [handler] = Run.objects.filter(parent=run)
    assert handler.workflow_id == "wip-fails.on_failure"
    assert handler.status == RunStatus.COMPLETED, handler.error
    event = Event.objects.get(id=handler.event_id)
    assert event.name == "stepflows/run.failed"
    assert event.data["run_id"] == str(run.id) and event.data["error"]["type"] == "StepError"
    assert calls[f"{key}-handled"] == 1
    with InProcess() as driver:
        cancelled = start(driver, "test/wip-fails", {"key": f"{key}-c", "sleep": True})
        api.cancel_run(cancelled)
        driver.run_until_idle()
    assert not Run.objects.filter(parent=cancelled).exists()


def test_a_duplicate_wake_up_does_nothing(key: str) -> None:
    with InProcess() as driver:
        run = start(driver, "test/wip-sleep", {"key": key})
        driver.advance(86400)
        run.refresh_from_db()
        from stepflows import dispatch

        dispatch.publish([dispatch.execute_run(run.id, wake=run.wake)] * 2)
        driver.run_until_idle()
    assert calls[f"{key}-after"] == 1 and calls[f"{key}-before"] == 1


@pytest.mark.parametrize(
    ("how", "says"),
    [
        ("in-parallel", "step.sleep cannot run inside step.parallel"),
        ("unknown-workflow", "no workflow is registered with id 'no-such-workflow'"),
        ("missing-field", "the run's trigger event has no field 'data.order' to match"),
    ],
)
def test_a_misused_wait_fails_the_run_with_a_clear_error_and_stores_no_step(how, says) -> None:
    run = run_workflow("wip-misuse", {"how": how})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUsageError", run.error
    assert says in run.error["message"]
    assert "workflow 'wip-misuse'" in run.error["message"] and str(run.id) in run.error["message"]
    assert not Step.objects.filter(run=run).exclude(kind="run").exists()
    assert not Run.objects.filter(parent=run).exists()
