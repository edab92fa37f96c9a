"""The engine's behaviour, driven in the test process: no worker, no broker.

Memoized replay, step ids, non-determinism, misuse of the step tools,
retries, parallel groups, limits, BaseExceptions, timeouts, typed outputs,
fan-out and cancellation, each run by :mod:`stepflows.testing`'s in-process
driver on the test database (workflows: tests/testapp/flows/engine_units.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

import stepflows
from stepflows import api
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from stepflows.testing import InProcess, InProcessError, run_workflow
from tests.testapp.flows import engine_units as flows
from tests.testapp.flows.engine_units import calls

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _reset_flows() -> None:
    flows.reset()


def steps_of(run: Run) -> dict[str, Step]:
    return {s.step_id: s for s in Step.objects.filter(run=run)}


def step_ids(run: Run) -> list[str]:
    return list(Step.objects.filter(run=run).order_by("position").values_list("step_id", flat=True))


def started_at(attempt: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(attempt["started_at"])


def run_first_message(driver: InProcess) -> None:
    """Execute only the first queued message; what it sends stays queued."""
    with pytest.raises(InProcessError, match="max_messages limit"):
        driver.run_until_idle(max_messages=1)


def assert_failed_by_step(run: Run, step_id: str, error_type: str) -> None:
    assert run.status == RunStatus.FAILED, run.output
    assert run.error["type"] == "StepError", run.error
    assert run.error["step_id"] == step_id, run.error
    assert run.error["step_error_type"] == error_type, run.error


# -- memoized replay and step ids -----------------------------------------------------------


def test_steps_run_once_and_code_outside_steps_on_every_replay() -> None:
    run = run_workflow(flows.memo)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"a": 1, "first": ["zero", "one"], "b": 2, "second": [20, 200]}
    assert [calls[n] for n in ("a", "p0", "p1", "b", "q0", "q1")] == [1] * 6
    # The first invocation, each step task (it replays up to its group) and the
    # invocation after each group: 1 + 2 + 1 + 2 + 1.
    assert calls["body"] == 7
    # Past the first group: the invocation after it, the second group's tasks, the last one.
    assert calls["after-first-group"] == 4
    steps = steps_of(run)
    assert all(s.status == StepStatus.COMPLETED for s in steps.values())
    assert all(s.attempt_count == 1 for s in steps.values())


def test_repeated_step_ids_get_counter_suffixes_in_position_order() -> None:
    run = run_workflow(flows.loop)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [0, 1, 2, "other", 3, 4, 5]
    rows = Step.objects.filter(run=run).order_by("position")
    assert [(s.step_id, s.position, s.group, s.output) for s in rows] == [
        ("chunk", 0, None, 0),
        ("chunk:1", 1, None, 1),
        ("chunk:2", 2, None, 2),
        ("other", 3, None, "other"),
        ("chunk:3", 4, 4, 3),
        ("chunk:4", 5, 4, 4),
        ("chunk:5", 6, None, 5),
    ]


def test_replay_meeting_another_step_blocks_the_run_with_non_determinism_error() -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/unit-nondeterministic")
        run_first_message(driver)
        run = Run.objects.get(event_id=event_id)
        assert run.status == RunStatus.WAITING
        assert [(s, steps_of(run)[s].status) for s in step_ids(run)] == [
            ("first-a", StepStatus.COMPLETED),
            ("left", StepStatus.SCHEDULED),
            ("right", StepStatus.SCHEDULED),
        ]

        flows.flags["flipped"] = True
        driver.run_until_idle()

    run.refresh_from_db()
    assert run.status == RunStatus.BLOCKED
    assert run.error["type"] == "NonDeterminismError", run.error
    assert "'first-a'" in run.error["message"] and "'first-b'" in run.error["message"]
    assert run.attempts == 0
    # The group's step tasks replayed into the same mismatch: their steps never ran.
    steps = steps_of(run)
    for name in ("left", "right"):
        assert steps[name].status == StepStatus.FAILED
        assert steps[name].error["type"] == "NonDeterminismError"
        assert name not in calls


# -- misuse of the step tools -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("parallel", "message"),
    [(False, "step 'inner' was called inside step 'outer'"), (True, "step.parallel")],
)
def test_step_inside_a_step_fails_it_once_with_nested_step_error(
    parallel: bool, message: str
) -> None:
    run = run_workflow(flows.nested, {"parallel": parallel})

    assert_failed_by_step(run, "outer", "NestedStepError")
    outer = steps_of(run)["outer"]
    assert outer.status == StepStatus.FAILED
    assert outer.attempt_count == 1
    assert outer.error["type"] == "NestedStepError"
    assert message in outer.error["message"]
    assert step_ids(run) == ["outer"]
    assert calls == {"outer": 1}


@pytest.mark.parametrize(
    ("kind", "message", "recorded"),
    [
        ("empty-id", "a step id must be a non-empty string, got ''", ["fine"]),
        ("colon-id", "step id 'a:b' contains ':'", ["fine"]),
        ("nul-id", "contains a control character", ["fine"]),
        ("not-callable", "step.run needs a function to call, got 42", ["fine"]),
        ("bad-timeout", "timeout must be a number of seconds above 0", ["fine"]),
        ("zero-timeout", "at most a year (3.1536e+07), got 0", ["fine"]),
        ("long-id", "the limit is STEPFLOWS['MAX_STEP_ID_LENGTH'] = 200", ["fine"]),
        ("parallel-not-callable", "argument 1 is 'nope'", ["fine"]),
        ("parallel-no-step", "callable 1 started 0", ["fine"]),
        ("parallel-two-steps", "callable 0 started 2", ["fine", "x"]),
        ("parallel-nested", "step.parallel cannot be nested", ["fine"]),
    ],
)
def test_step_misuse_fails_the_run_at_once_with_step_usage_error(
    kind: str, message: str, recorded: list[str]
) -> None:
    run = run_workflow(flows.usage, {"kind": kind})

    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "StepUsageError", run.error
    assert message in run.error["message"]
    assert run.attempts == 0  # not retried, though the workflow has retries=3
    assert step_ids(run) == recorded
    assert calls["fine"] == 1


# -- retries ----------------------------------------------------------------------------------


def test_step_fails_for_good_after_its_retries_each_attempt_recorded() -> None:
    run = run_workflow(flows.retries)

    assert_failed_by_step(run, "doomed", "ValueError")
    assert "doomed failure #3" in run.error["message"]
    doomed = steps_of(run)["doomed"]
    assert doomed.status == StepStatus.FAILED
    assert doomed.attempt_count == 3
    assert [a["number"] for a in doomed.attempts] == [0, 1, 2]
    assert [(a["error"]["type"], a["error"]["message"]) for a in doomed.attempts] == [
        ("ValueError", f"doomed failure #{n}") for n in (1, 2, 3)
    ]
    assert doomed.error["message"] == "doomed failure #3"
    assert calls == {"first": 1, "doomed": 3}


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_retries_setting_is_the_default_budget(settings: Any, retries: int) -> None:
    settings.STEPFLOWS = {**settings.STEPFLOWS, "RETRIES": retries}
    run = run_workflow(flows.default_retries)

    assert_failed_by_step(run, "doomed", "ValueError")
    assert steps_of(run)["doomed"].attempt_count == retries + 1
    assert calls["doomed"] == retries + 1


@pytest.mark.parametrize("parallel", [False, True])
def test_non_retriable_error_fails_the_step_after_one_attempt(parallel: bool) -> None:
    run = run_workflow(flows.non_retriable, {"parallel": parallel})

    assert_failed_by_step(run, "charge", "NonRetriableError")
    charge = steps_of(run)["charge"]
    assert charge.attempt_count == 1
    assert charge.error["type"] == "NonRetriableError"
    assert calls["charge"] == 1


@pytest.mark.parametrize("parallel", [False, True])
def test_retry_after_error_retries_after_its_delay_on_the_clock(parallel: bool) -> None:
    run = run_workflow(flows.retry_after, {"parallel": parallel})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == (["done"] if parallel else "done")
    limited = steps_of(run)["limited"]
    assert limited.attempt_count == 2
    assert limited.attempts[0]["error"]["type"] == "RetryAfterError"
    assert limited.attempts[1]["error"] is None
    gap = started_at(limited.attempts[1]) - started_at(limited.attempts[0])
    assert flows.RETRY_AFTER <= gap < flows.RETRY_AFTER + timedelta(minutes=1)
    assert calls["limited"] == 2


def test_workflow_code_error_is_retried_and_the_run_completes() -> None:
    run = run_workflow(flows.workflow_error, {"failures": 1})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "recovered with 1"
    assert run.attempts == 1
    assert calls == {"one": 1, "body": 2}


def test_workflow_code_error_fails_the_run_after_its_retries() -> None:
    run = run_workflow(flows.workflow_error, {"failures": 99})

    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "RuntimeError", run.error
    assert "invocation 3" in run.error["message"]
    assert run.attempts == 2  # retries=2: three invocations, the last one fails for good
    assert calls == {"one": 1, "body": 3}
    assert steps_of(run)["one"].attempt_count == 1


def test_workflow_catching_step_error_completes() -> None:
    run = run_workflow(flows.catches)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"step_id": "doomed", "type": "NonRetriableError", "fallback": "plan b"}
    steps = steps_of(run)
    assert steps["doomed"].status == StepStatus.FAILED
    assert steps["fallback"].status == StepStatus.COMPLETED
    assert calls == {"doomed": 1, "fallback": 1}


# -- parallel ---------------------------------------------------------------------------------


def test_parallel_returns_what_the_callables_compute() -> None:
    run = run_workflow(flows.parallel_values)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["1", 5]
    steps = steps_of(run)
    assert steps["a"].output == 1 and steps["b"].output == {"x": 5}
    assert steps["a"].group == steps["b"].group == 0
    assert calls == {"a": 1, "b": 1}


def test_parallel_callable_catching_step_error_returns_its_fallback() -> None:
    run = run_workflow(flows.parallel_fallback)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == ["fallback for doomed (NonRetriableError)", "ok"]
    steps = steps_of(run)
    assert steps["doomed"].status == StepStatus.FAILED
    assert steps["doomed"].attempt_count == 1
    assert steps["fine"].status == StepStatus.COMPLETED
    assert calls == {"doomed": 1, "fine": 1}


def test_empty_parallel_then_parallel_completes() -> None:
    run = run_workflow(flows.empty_then_parallel)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"nothing": [], "a": "A", "b": "B", "after": 3}
    steps = steps_of(run)
    assert step_ids(run) == ["a", "b", "after"]
    assert steps["a"].group == steps["b"].group == 0
    assert steps["after"].group is None
    assert calls == {"a": 1, "b": 1, "after": 1}


def test_failing_parallel_step_raises_step_error_after_the_whole_group() -> None:
    run = run_workflow(flows.parallel_fail, {"catch": False})

    assert_failed_by_step(run, "doomed", "ValueError")
    steps = steps_of(run)
    assert steps["doomed"].status == StepStatus.FAILED
    assert steps["doomed"].attempt_count == 2  # retries=1
    # The sibling after the failing callable still ran, and keeps its output.
    assert steps["good"].status == StepStatus.COMPLETED
    assert steps["good"].output == "kept"
    assert calls == {"doomed": 2, "good": 1}


def test_failing_parallel_step_error_can_be_caught() -> None:
    run = run_workflow(flows.parallel_fail, {"catch": True})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"caught": "doomed", "type": "ValueError"}
    assert steps_of(run)["good"].status == StepStatus.COMPLETED
    assert calls == {"doomed": 2, "good": 1}


def test_async_parallel_returns_what_an_async_wrapper_computes() -> None:
    run = run_workflow(flows.parallel_async)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [42, "d"]
    steps = steps_of(run)
    assert steps["c"].output == 21 and steps["d"].output == "d"
    assert calls == {"c": 1, "d": 1}


# -- limits -----------------------------------------------------------------------------------


@pytest.fixture
def small_limits(settings: Any) -> None:
    settings.STEPFLOWS = {**settings.STEPFLOWS, "MAX_STEPS_PER_RUN": 5, "MAX_STATE_BYTES": 100}


@pytest.mark.usefixtures("small_limits")
def test_max_steps_per_run_fails_the_step_over_it() -> None:
    ok = run_workflow(flows.many_steps, {"n": 5})
    assert ok.status == RunStatus.COMPLETED, ok.error
    assert ok.output == 10

    run = run_workflow(flows.many_steps, {"n": 6})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError", run.error
    assert "STEPFLOWS['MAX_STEPS_PER_RUN'] = 5" in run.error["message"]
    assert run.attempts == 0
    assert step_ids(run) == ["n", "n:1", "n:2", "n:3", "n:4"]


@pytest.mark.usefixtures("small_limits")
def test_parallel_group_over_max_steps_fails_before_dispatch() -> None:
    ok = run_workflow(flows.many_steps, {"n": 5, "parallel": True})
    assert ok.status == RunStatus.COMPLETED, ok.error

    run = run_workflow(flows.many_steps, {"n": 6, "parallel": True})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError", run.error
    assert "6 steps" in run.error["message"]
    assert "MAX_STEPS_PER_RUN" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 0


@pytest.mark.usefixtures("small_limits")
def test_max_state_bytes_fails_the_inline_step_over_it_once() -> None:
    # Each output is its JSON string: n + 2 bytes.
    ok = run_workflow(flows.state, {"sizes": [40, 56]})
    assert ok.status == RunStatus.COMPLETED, ok.error
    assert sum(s.output_bytes for s in steps_of(ok).values()) == 100
    flows.reset()

    run = run_workflow(flows.state, {"sizes": [40, 57]})
    assert_failed_by_step(run, "big:1", "LimitExceededError")
    steps = steps_of(run)
    over = steps["big:1"]
    assert over.status == StepStatus.FAILED
    assert over.attempt_count == 1
    assert "MAX_STATE_BYTES" in over.error["message"]
    assert over.output is None and over.output_bytes == 0
    assert steps["big"].output_bytes == 42
    assert calls == {"big-0": 1, "big-1": 1}


@pytest.mark.usefixtures("small_limits")
def test_max_state_bytes_holds_across_a_parallel_group() -> None:
    run = run_workflow(flows.state, {"sizes": [40, 40, 40], "parallel": True})

    assert_failed_by_step(run, "big:2", "LimitExceededError")
    steps = steps_of(run)
    assert [steps[s].status for s in ("big", "big:1", "big:2")] == [
        StepStatus.COMPLETED,
        StepStatus.COMPLETED,
        StepStatus.FAILED,
    ]
    over = steps["big:2"]
    assert over.attempt_count == 1
    assert over.error["type"] == "LimitExceededError"
    assert "MAX_STATE_BYTES" in over.error["message"]
    assert over.output is None and over.output_bytes == 0
    assert sum(s.output_bytes for s in steps.values()) == 84
    assert calls == {"big-0": 1, "big-1": 1, "big-2": 1}


@pytest.mark.usefixtures("small_limits")
def test_workflow_return_value_over_max_state_bytes_fails_the_run() -> None:
    ok = run_workflow(flows.big_return, {"size": 98})
    assert ok.status == RunStatus.COMPLETED, ok.error

    run = run_workflow(flows.big_return, {"size": 99})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError", run.error
    assert "101 bytes" in run.error["message"]
    assert "MAX_STATE_BYTES" in run.error["message"]
    assert run.output is None
    assert steps_of(run)["small"].status == StepStatus.COMPLETED


# -- BaseExceptions and timeouts ------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True], ids=["inline", "parallel"])
@pytest.mark.parametrize("kind", ["Boom", "SystemExit", "KeyboardInterrupt"])
def test_base_exception_in_a_step_fails_it_for_good_after_one_attempt(
    kind: str, parallel: bool
) -> None:
    run = run_workflow(flows.base_exception, {"kind": kind, "parallel": parallel})

    assert_failed_by_step(run, "doomed", kind)
    steps = steps_of(run)
    doomed = steps["doomed"]
    assert doomed.status == StepStatus.FAILED
    assert doomed.attempt_count == 1  # not retried, though the workflow has retries=3
    assert doomed.error["type"] == kind
    assert "after" not in steps
    assert calls["doomed"] == 1 and "after" not in calls
    if parallel:
        assert steps["sibling"].status == StepStatus.COMPLETED

    normal = run_workflow(flows.normal)
    assert normal.status == RunStatus.COMPLETED, normal.error
    assert normal.output == {"one": 1, "left": "l", "right": "r"}


def test_cancelled_error_in_an_async_step_fails_it_for_good() -> None:
    run = run_workflow(flows.cancelled_error)

    assert_failed_by_step(run, "doomed", "CancelledError")
    doomed = steps_of(run)["doomed"]
    assert doomed.attempt_count == 1
    assert doomed.error["type"] == "CancelledError"
    assert calls == {"doomed": 1}
    assert run_workflow(flows.normal).status == RunStatus.COMPLETED


@pytest.mark.parametrize(
    ("workflow", "data"),
    [
        (flows.timeout, {}),
        (flows.timeout, {"parallel": True}),
        (flows.timeout_async, {}),
    ],
    ids=["inline", "parallel", "async"],
)
def test_step_over_its_timeout_fails_with_step_timeout_error(workflow: Any, data: Any) -> None:
    run = run_workflow(workflow, data)

    assert_failed_by_step(run, "slow", "StepTimeoutError")
    slow = steps_of(run)["slow"]
    assert slow.attempt_count == 2  # retries=1: retried like any failure
    assert [a["error"]["type"] for a in slow.attempts] == ["StepTimeoutError"] * 2
    assert f"timeout of {flows.TIMEOUT} s" in slow.error["message"]
    # Interrupted at the timeout, not left to finish its 5 s sleep.
    assert calls == {"slow-started": 2}


def test_large_finite_timeout_leaves_a_quick_step_alone() -> None:
    run = run_workflow(flows.huge_timeout, {"timeout": 3e7})

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == "ok"
    assert steps_of(run)["quick"].attempt_count == 1


@pytest.mark.parametrize("seconds", ["inf", 1e10, True])
def test_an_infinite_huge_or_boolean_timeout_is_refused_at_once(seconds: Any) -> None:
    run = run_workflow(flows.huge_timeout, {"timeout": seconds})

    assert run.error["type"] == "StepUsageError", run.error
    assert "at most a year" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 0


# -- typed outputs, fan-out, cancel -----------------------------------------------------------


def test_typed_step_output_comes_back_as_its_model_on_replay() -> None:
    run = run_workflow(flows.typed)

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"item": "Item", "again": "Item", "plain": "dict", "qty": 4}
    steps = steps_of(run)
    assert steps["item"].output == {"sku": "one", "qty": 2}
    assert steps["plain"].output == {"sku": "two", "qty": 3}
    # Every invocation saw the model: the first one, the step task and the replay after it.
    assert flows.seen == [
        ("before-group", "Item"),
        ("before-group", "Item"),
        ("before-group", "Item"),
        ("after-group", "Item"),
    ]
    assert calls == {"make-item": 2}


def test_send_event_starts_child_runs_with_derived_event_ids() -> None:
    with InProcess() as driver:
        parent = run_workflow(flows.fan_parent)
        driver.run_until_idle()

    assert parent.status == RunStatus.COMPLETED, parent.error
    expected = [f"{parent.id}:notify:0", f"{parent.id}:notify:1"]
    assert parent.output == expected
    children = list(Run.objects.filter(parent=parent).order_by("event_id"))
    assert [c.event_id for c in children] == expected
    assert [c.workflow_id for c in children] == ["unit-fan-child"] * 2
    assert [c.status for c in children] == [RunStatus.COMPLETED] * 2
    assert [c.output for c in children] == [0, 10]
    sent = Event.objects.filter(source_run=parent).order_by("id")
    assert list(sent.values_list("id", flat=True)) == expected
    assert {r.id for r in parent.family()} == {c.id for c in children}
    assert calls == {"child-0": 1, "child-1": 1}


def test_cancelled_queued_run_never_runs() -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/unit-memo")
        run = Run.objects.get(event_id=event_id)
        assert run.status == RunStatus.QUEUED
        assert api.cancel_run(run) is True
        driver.run_until_idle()
        assert driver.pending == []

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.error["type"] == "Cancelled"
    assert run.started_at is None
    assert Step.objects.filter(run=run).count() == 0
    assert calls == {}
    assert api.cancel_run(run) is False


def test_cancelled_waiting_run_runs_none_of_its_planned_steps() -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/unit-memo")
        run_first_message(driver)
        run = Run.objects.get(event_id=event_id)
        assert run.status == RunStatus.WAITING
        assert api.cancel_run(run) is True
        driver.run_until_idle()

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    steps = steps_of(run)
    assert steps["a"].status == StepStatus.COMPLETED
    assert [steps[s].status for s in ("p", "p:1")] == [StepStatus.SCHEDULED] * 2
    assert calls == {"body": 1, "a": 1}
