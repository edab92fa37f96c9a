"""The in-process driver: workflows run to their end in the test process, no worker."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test import TestCase
from django.utils import timezone

import stepflows
from stepflows import clock, dispatch
from stepflows.models import Run, RunStatus, Step, StepStatus
from stepflows.registry import registry
from stepflows.testing import InProcess, InProcessError, run_workflow, runs_for
from tests.testapp.flows import in_process as flows
from tests.testapp.flows.in_process import calls


def attempts(run: Run, step_id: str) -> int:
    return Step.objects.get(run=run, step_id=step_id).attempt_count


# -- run_workflow, pytest django_db (the test's transaction never commits) ----------------


@pytest.mark.django_db
def test_sequential_steps_run_once_each(key: str) -> None:
    run = run_workflow(flows.sequential, {"key": key})

    assert run.status == RunStatus.COMPLETED
    assert run.output == {"a": 1, "b": 2, "c": 3}
    assert [calls[f"{key}-{s}"] for s in "abc"] == [1, 1, 1]
    assert calls[f"{key}-body"] == 1  # sequential steps run inline, in one invocation
    steps = Step.objects.filter(run=run).order_by("position")
    assert [(s.step_id, s.status) for s in steps] == [
        ("a", StepStatus.COMPLETED),
        ("b", StepStatus.COMPLETED),
        ("c", StepStatus.COMPLETED),
    ]


@pytest.mark.django_db
def test_parallel_group_returns_outputs_in_order(key: str) -> None:
    run = run_workflow(flows.parallel, {"key": key})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"first": "first", "outputs": ["zero", "one", "two"], "last": 3}
    # Replays after the group took "first" from the memo.
    assert calls[f"{key}-first"] == 1
    assert [calls[f"{key}-p{i}"] for i in range(3)] == [1, 1, 1]
    assert calls[f"{key}-last"] == 1


@pytest.mark.django_db
def test_flaky_step_is_retried_until_it_succeeds(key: str) -> None:
    run = run_workflow(flows.flaky_step, {"key": key})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"before": "before", "result": "ok"}
    assert attempts(run, "flaky") == 3
    assert calls[f"{key}-flaky"] == 3
    assert calls[f"{key}-before"] == 1


@pytest.mark.django_db
def test_flaky_parallel_step_task_is_queued_again(key: str) -> None:
    run = run_workflow(flows.parallel_flaky, {"key": key})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["steady", "flaky"]
    assert attempts(run, "flaky") == 3
    assert attempts(run, "steady") == 1


@pytest.mark.django_db
def test_retry_delay_is_jumped_by_the_clock_not_slept(key: str) -> None:
    with InProcess() as driver:
        run = driver.run_until_finished(
            Run.objects.get(event_id=stepflows.send("test/inproc-retry-later", {"key": key})[0])
        )
        # The step asked to be retried in an hour; the driver moved the clock there.
        assert clock.now() - timezone.now() > timedelta(minutes=59)
    assert clock.now() - timezone.now() < timedelta(minutes=1)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "done"
    assert attempts(run, "limited") == 2


@pytest.mark.django_db
def test_step_failing_for_good_fails_the_run_with_step_error(key: str) -> None:
    run = run_workflow(flows.fails, {"key": key})

    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepError"
    assert run.error["step_id"] == "doomed"
    assert run.error["step_error_type"] == "ValueError"
    assert attempts(run, "doomed") == 2  # retries=1
    assert calls[f"{key}-first"] == 1


@pytest.mark.django_db
def test_non_retriable_error_fails_at_once() -> None:
    run = run_workflow("inproc-declined")

    assert run.status == RunStatus.FAILED
    assert run.error["step_id"] == "charge"
    assert attempts(run, "charge") == 1


@pytest.mark.django_db
def test_async_workflow(key: str) -> None:
    run = run_workflow(flows.async_flow, {"key": key})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [21, 42, ["left", "right"]]
    assert [calls[f"{key}-{s}"] for s in ("plain", "double", "left", "right")] == [1, 1, 1, 1]


@pytest.mark.django_db
def test_send_event_fan_out_is_driven_by_run_until_idle(key: str) -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/inproc-fan-parent", data={"key": key})
        driver.run_until_idle()

    [parent] = runs_for([event_id])
    assert parent.status == RunStatus.COMPLETED, parent.error
    children = list(Run.objects.filter(parent=parent).order_by("event_id"))
    assert [c.workflow_id for c in children] == ["inproc-fan-child", "inproc-fan-child"]
    assert [c.status for c in children] == [RunStatus.COMPLETED] * 2
    assert sorted(c.output for c in children) == [0, 10]
    assert sorted(c.event_id for c in children) == sorted(parent.output)


@pytest.mark.django_db
def test_run_workflow_drives_only_its_own_run(key: str) -> None:
    with InProcess() as driver:
        run = run_workflow(flows.twin_a, {"key": key})
        twin = Run.objects.get(event_id=run.event_id, workflow_id="inproc-twin-b")
        assert run.status == RunStatus.COMPLETED
        assert twin.status == RunStatus.QUEUED
        assert [m.args[0] for m in driver.pending] == [str(twin.id)]

        driver.run_until_idle()

    twin.refresh_from_db()
    assert twin.status == RunStatus.COMPLETED
    assert calls[f"{key}-twin-a"] == 1
    assert calls[f"{key}-twin-b"] == 1


@pytest.mark.django_db
def test_run_workflow_takes_a_workflow_or_its_id_and_an_event(key: str) -> None:
    by_object = run_workflow(registry.get("inproc-sequential"), {"key": key})
    by_id = run_workflow("inproc-sequential", {"key": key})
    by_event = run_workflow(
        flows.sequential,
        event=stepflows.Event(name="test/inproc-sequential", data={"key": key}, id=f"{key}-e"),
    )

    assert [r.status for r in (by_object, by_id, by_event)] == [RunStatus.COMPLETED] * 3
    assert by_event.event_id == f"{key}-e"
    assert calls[f"{key}-a"] == 3


@pytest.mark.django_db
def test_run_workflow_errors() -> None:
    with pytest.raises(InProcessError, match="not a workflow"):
        run_workflow(print)
    with pytest.raises(InProcessError, match="started no run of workflow 'inproc-sequential'"):
        run_workflow(flows.sequential, {"key": "x"}, event="test/inproc-parallel")


@pytest.mark.django_db
def test_a_workflow_that_never_ends_hits_the_limit() -> None:
    with InProcess() as driver:
        stepflows.send("test/inproc-forever")
        with pytest.raises(InProcessError, match=r"max_messages limit.*'inproc-forever'"):
            driver.run_until_idle(max_messages=20)


def test_driver_installs_itself_only_inside_the_block() -> None:
    before = dispatch.publisher()
    with InProcess() as driver:
        assert dispatch.publisher() is driver
        driver.publish([dispatch.execute_run("r1", countdown=5), dispatch.execute_run("r2")])
        assert [m.args[0] for m in driver.pending] == ["r2", "r1"]
    assert dispatch.publisher() is before
    with pytest.raises(InProcessError, match="inside `with InProcess"):
        driver.run_until_idle()


# -- real commits: pytest django_db(transaction=True) --------------------------------------


@pytest.mark.django_db(transaction=True)
def test_run_workflow_outside_a_test_transaction(key: str) -> None:
    assert not connection.in_atomic_block
    run = run_workflow(flows.parallel, {"key": key})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["outputs"] == ["zero", "one", "two"]


# -- django.test.TestCase ----------------------------------------------------------------


class InProcessTestCaseTests(TestCase):
    def setUp(self) -> None:
        self.key = uuid.uuid4().hex[:12]

    def test_run_workflow(self) -> None:
        self.assertTrue(connection.in_atomic_block)
        run = run_workflow(flows.flaky_step, {"key": self.key})

        self.assertEqual(run.status, RunStatus.COMPLETED)
        self.assertEqual(run.output, {"before": "before", "result": "ok"})
        self.assertEqual(attempts(run, "flaky"), 3)

    def test_send_then_run_until_idle(self) -> None:
        with InProcess() as driver:
            [event_id] = stepflows.send("test/inproc-parallel", data={"key": self.key})
            # The run's first message waits in an on_commit callback until the driver runs it.
            self.assertEqual(driver.pending, [])
            driver.run_until_idle()

        [run] = runs_for([event_id])
        self.assertEqual(run.status, RunStatus.COMPLETED)
        self.assertEqual(run.output["outputs"], ["zero", "one", "two"])
        self.assertEqual(connection.run_on_commit, [])

    def test_async_workflow_and_fan_out(self) -> None:
        run = run_workflow(flows.async_flow, {"key": self.key})
        self.assertEqual(run.status, RunStatus.COMPLETED)
        self.assertEqual(run.output, [21, 42, ["left", "right"]])

        with InProcess() as driver:
            parent = run_workflow(flows.fan_parent, {"key": self.key})
            driver.run_until_idle()
        children = Run.objects.filter(parent=parent)
        self.assertEqual(
            sorted(children.values_list("status", flat=True)), [RunStatus.COMPLETED] * 2
        )
