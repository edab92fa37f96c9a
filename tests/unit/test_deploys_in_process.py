"""Deploying new workflow code with runs in flight, driven in process: step.patched and
deprecate_patch, runs blocked by a change that does not match their steps and retried
after the fix, resized parallel groups, and the workflow's version. The real-worker
deploys are in tests/integration/test_deploys.py (workflows: tests/testapp/flows/deploys.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import stepflows
from stepflows import api
from stepflows.exceptions import ConfigurationError, RunStateError
from stepflows.models import Run, RunStatus, Slot, Step, StepKind, StepStatus
from stepflows.signals import run_finished
from stepflows.testing import InProcess, InProcessError, run_workflow, runs_for
from tests.testapp.flows import deploys as flows
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _code() -> Iterator[None]:
    flows.code.clear()
    yield
    flows.code.clear()


def deploy(version: str) -> None:
    flows.code["now"] = version


def start(driver: InProcess, name: str, key: str) -> Run:
    """Start a run and drive it until it waits for test/deploy-go."""
    [event_id] = stepflows.send(name, data={"key": key})
    driver.run_until_idle()
    [run] = runs_for([event_id])
    assert run.status == RunStatus.WAITING and run.waiting_for == "event", run.error
    return run


def resume(driver: InProcess, run: Run, key: str) -> Run:
    stepflows.send(flows.GO, data={"key": key})
    driver.run_until_idle()
    run.refresh_from_db()
    return run


def steps(run: Run) -> list[tuple[str, int, str]]:
    rows = Step.objects.filter(run=run).order_by("position", "step_id")
    return [(s.step_id, s.position, s.kind) for s in rows]


def marks(key: str, *names: str) -> list[int]:
    return [count(f"{key}-{name}") for name in names]


# -- step.patched ---------------------------------------------------------------------


def test_patched_keeps_a_run_in_flight_on_the_old_path_and_sends_new_runs_down_the_new(
    key: str,
) -> None:
    with InProcess() as driver:
        deploy("v1")
        old = start(driver, "test/deploy-add-step", f"{key}-old")
        deploy("v2")
        new = start(driver, "test/deploy-add-step", f"{key}-new")
        old = resume(driver, old, f"{key}-old")
        new = resume(driver, new, f"{key}-new")

    assert old.status == RunStatus.COMPLETED, old.error
    assert old.output == ["reserve", "ship"]
    assert new.status == RunStatus.COMPLETED, new.error
    assert new.output == ["reserve", "audit", "ship"]
    # Each answer is stored as a marker that takes no position of its own.
    assert steps(old) == [
        ("reserve", 0, "run"),
        ("add-audit:patched", 1, "patch"),
        ("go", 1, "event"),
        ("ship", 2, "run"),
    ]
    assert steps(new) == [
        ("reserve", 0, "run"),
        ("add-audit:patched", 1, "patch"),
        ("audit", 1, "run"),
        ("go", 2, "event"),
        ("ship", 3, "run"),
    ]
    answers = dict(Step.objects.filter(kind=StepKind.PATCH).values_list("run_id", "output"))
    assert answers == {old.pk: False, new.pk: True}
    assert marks(f"{key}-old", "reserve", "audit", "ship") == [1, 0, 1]
    assert marks(f"{key}-new", "reserve", "audit", "ship") == [1, 1, 1]


def test_a_run_that_had_not_reached_the_patch_takes_the_new_path(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        [event_id] = stepflows.send("test/deploy-add-step", data={"key": key})
        deploy("v2")  # deployed before its first invocation: nothing recorded yet
        driver.run_until_idle()
        [run] = runs_for([event_id])
        run = resume(driver, run, key)
    assert run.output == ["reserve", "audit", "ship"]


def test_deprecating_then_removing_a_patch_replays_runs_in_flight_without_error(
    key: str,
) -> None:
    with InProcess() as driver:
        deploy("v2")
        first = start(driver, "test/deploy-add-step", f"{key}-a")
        second = start(driver, "test/deploy-add-step", f"{key}-b")
        deploy("v3")  # step.deprecate_patch("add-audit"), then the new path only
        first = resume(driver, first, f"{key}-a")
        deploy("v4")  # the call is gone too; the marker stays on the run, unread
        second = resume(driver, second, f"{key}-b")

    for run, k in ((first, f"{key}-a"), (second, f"{key}-b")):
        assert run.status == RunStatus.COMPLETED, run.error
        assert run.output == ["reserve", "audit", "ship"]
        assert marks(k, "reserve", "audit", "ship") == [1, 1, 1]


def test_deprecating_a_patch_while_old_runs_are_in_flight_blocks_them(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        run = start(driver, "test/deploy-add-step", key)
        deploy("v3")
        run = resume(driver, run, key)
    assert run.status == RunStatus.BLOCKED
    message = run.error["message"]
    assert "recorded step 'go' (event) (position 1), code now calls 'audit'" in message


def test_patched_in_an_async_workflow_and_deprecate_patch_stores_nothing(key: str) -> None:
    run = run_workflow(flows.patched_async, {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["reserve", "audit"]
    assert [s for s, _, kind in steps(run) if kind == "patch"] == ["add-audit:patched"]


def test_patched_inside_a_parallel_group_is_a_usage_error() -> None:
    run = run_workflow(flows.patch_in_group, {})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUsageError"
    message = run.error["message"]
    assert "step.patched('inside') cannot be called inside step.parallel" in message
    assert "'deploy-patch-in-group'" in message and str(run.pk) in message


# -- blocked runs ---------------------------------------------------------------------


def test_a_renamed_step_blocks_the_run_and_a_retry_after_the_fix_completes_it(
    key: str,
) -> None:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    run_finished.connect(receiver)
    try:
        with InProcess() as driver:
            deploy("v1")
            run = start(driver, "test/deploy-rename", key)
            deploy("v2")
            run = resume(driver, run, key)

            assert run.status == RunStatus.BLOCKED
            assert run.error["type"] == "NonDeterminismError"
            message = run.error["message"]
            assert f"workflow 'deploy-rename', run {run.pk}" in message
            assert "recorded step 'charge' (position 1), code now calls 'charge-card'" in message
            assert "retry" in message
            assert run.lease_owner == "" and run.is_finished
            # Retried on the same code: blocked again.
            api.retry_run(run)
            driver.run_until_idle()
            run.refresh_from_db()
            assert run.status == RunStatus.BLOCKED

            deploy("v2-fixed")
            api.retry_run(run, reason="fix deployed")
            driver.run_until_idle()
            run.refresh_from_db()
    finally:
        run_finished.disconnect(receiver)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["reserve", "charge", "ship"]
    assert run.error is None and run.resumes == 2
    assert marks(key, "reserve", "charge", "charge-card", "ship") == [1, 1, 0, 1]
    assert [(s["status"], s["run_id"]) for s in seen] == [
        ("blocked", str(run.pk)),
        ("blocked", str(run.pk)),
        ("completed", str(run.pk)),
    ]


def test_a_resized_parallel_group_blocks_the_run_until_the_fix(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        run = start(driver, "test/deploy-group", key)
        deploy("v2")
        run = resume(driver, run, key)
        assert run.status == RunStatus.BLOCKED
        assert (
            "recorded parallel group at position 0 has 3 steps ('part', 'part:1', 'part:2'), "
            "code now plans 2"
        ) in run.error["message"]

        deploy("v2-fixed")
        api.retry_run(run)
        driver.run_until_idle()
        run.refresh_from_db()
        fresh = start(driver, "test/deploy-group", f"{key}-new")
        fresh = resume(driver, fresh, f"{key}-new")

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"parts": ["part-0", "part-1", "part-2"], "total": "total"}
    assert marks(key, "part-0", "part-1", "part-2", "total") == [1, 1, 1, 1]
    assert fresh.output == {"parts": ["part-0", "part-1"], "total": "total"}


def test_a_group_grown_behind_a_run_blocks_it(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        run = start(driver, "test/deploy-group", key)
        deploy("v3")
        run = resume(driver, run, key)
    assert run.status == RunStatus.BLOCKED
    assert "recorded parallel group at position 0 has 3 steps" in run.error["message"]
    assert "code now plans 4" in run.error["message"]


def test_a_deploy_mid_group_fails_the_task_that_no_longer_fits_and_a_retry_runs_it(
    key: str,
) -> None:
    with InProcess() as driver:
        deploy("v1")
        [event_id] = stepflows.send("test/deploy-group", data={"key": key})
        with pytest.raises(InProcessError, match="max_messages limit"):
            driver.run_until_idle(max_messages=1)  # the group is planned; its tasks queued
        [run] = runs_for([event_id])
        deploy("v2")
        driver.run_until_idle()
        run.refresh_from_db()
        assert run.status == RunStatus.BLOCKED
        third = Step.objects.get(run=run, step_id="part:2")
        assert third.status == StepStatus.FAILED
        assert third.error["type"] == "NonDeterminismError"
        assert "code now plans 2" in third.error["message"]
        assert marks(key, "part-0", "part-1", "part-2") == [1, 1, 0]

        deploy("v2-fixed")
        api.retry_run(run)
        driver.run_until_idle()
        run = resume(driver, run, key)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"parts": ["part-0", "part-1", "part-2"], "total": "total"}
    assert marks(key, "part-0", "part-1", "part-2", "total") == [1, 1, 1, 1]


def test_a_workflow_that_catches_the_error_is_blocked_all_the_same(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        run = start(driver, "test/deploy-swallow", key)
        deploy("v2")
        run = resume(driver, run, key)
    assert run.status == RunStatus.BLOCKED
    assert run.output is None
    assert "code now calls 'first-renamed'" in run.error["message"]


def test_a_blocked_run_gives_its_concurrency_slot_back_and_can_be_cancelled(key: str) -> None:
    with InProcess() as driver:
        deploy("v1")
        run = start(driver, "test/deploy-limited", key)
        deploy("v2")
        run = resume(driver, run, key)
        assert run.status == RunStatus.BLOCKED
        assert not Slot.objects.filter(run=run).exists()
        assert api.cancel_run(run, reason="abandoned")
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    with pytest.raises(RunStateError, match="only failed runs can be retried, and blocked ones"):
        api.retry_run(run)


# -- version ----------------------------------------------------------------------------


def test_each_run_records_the_version_of_its_workflow(key: str) -> None:
    run = run_workflow(flows.versioned, {"key": key})
    assert run.version == "2026-11-27"
    assert api.rerun(run).version == "2026-11-27"
    unversioned = run_workflow(flows.patched_async, {"key": key})
    assert unversioned.version == ""


@pytest.mark.parametrize("bad", ["", " v1", "x" * 65, "a\nb", 3])
def test_a_version_that_a_run_cannot_store_is_refused_at_import(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="version"):
        stepflows.workflow(id="deploy-bad-version", trigger="test/never", version=bad)


def test_a_blocked_run_step_table_keeps_steps_apart_from_patch_markers(key: str) -> None:
    with InProcess() as driver:
        deploy("v2-fixed")
        run = start(driver, "test/deploy-rename", key)
        run = resume(driver, run, key)
    assert run.output == ["reserve", "charge-card", "ship"]
    marker = Step.objects.get(run=run, kind=StepKind.PATCH)
    assert (marker.step_id, marker.status, marker.output) == (
        "rename-charge:patched",
        StepStatus.COMPLETED,
        True,
    )
