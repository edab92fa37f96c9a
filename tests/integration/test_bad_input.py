"""Bad input: each a clear error that names where it happened; nothing half-written."""

from __future__ import annotations

import pytest

import stepflows
from stepflows.exceptions import InvalidEventError
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "name",
    ["", " spaces ", "bad name", "-leading-dash", "x" * 256, "emoji/\N{SNOWMAN}"],
)
def test_invalid_event_name_is_refused_and_nothing_stored(name):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send(name, data={"a": 1})
    assert "event" in str(info.value)
    assert Event.objects.count() == 0 and Run.objects.count() == 0


@pytest.mark.parametrize(
    "data, words",
    [
        ({"when": object()}, "cannot be stored as JSON"),
        ({"x": float("nan")}, "NaN"),
        ([1, 2], "must be a JSON object"),
        ({"blob": "x" * (256 * 1024 + 1)}, "MAX_EVENT_BYTES"),
    ],
)
def test_invalid_event_data_is_refused_and_nothing_stored(data, words):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send("test/three-steps", data=data)
    assert words in str(info.value)
    assert Event.objects.count() == 0 and Run.objects.count() == 0


def test_one_bad_event_in_a_batch_stores_none_of_them():
    with pytest.raises(InvalidEventError) as info:
        stepflows.send(
            [
                stepflows.Event(name="test/three-steps", data={"key": "ok"}),
                stepflows.Event(name="test/three-steps", data={"bad": object()}),
            ]
        )
    assert "event #1" in str(info.value)
    assert Event.objects.count() == 0 and Run.objects.count() == 0


def test_event_sent_in_rolled_back_transaction_starts_nothing():
    from django.db import transaction

    with pytest.raises(RuntimeError), transaction.atomic():
        stepflows.send("test/three-steps", data={"key": "rolled-back"})
        raise RuntimeError("roll back")
    assert Event.objects.count() == 0 and Run.objects.count() == 0


def test_non_serializable_step_output_fails_the_step_clearly(run_event):
    run = run_event("test/bad-output", {})
    assert run.status == RunStatus.FAILED
    step = Step.objects.get(run=run, step_id="not-json")
    assert step.status == StepStatus.FAILED
    assert step.attempt_count == 1  # no retry can make it serializable
    assert step.output is None
    assert step.error["type"] == "OutputSerializationError"
    assert "t-bad-output" in step.error["message"] and "not-json" in step.error["message"]
    assert Step.objects.get(run=run, step_id="fine").output == 1


def test_non_serializable_run_output_fails_the_run_clearly(run_event):
    run = run_event("test/bad-run-output", {})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "OutputSerializationError"
    assert "t-bad-run-output" in run.error["message"]
    assert run.output is None


def test_step_output_over_state_limit_is_not_stored(run_event):
    run = run_event("test/too-big", {})
    assert run.status == RunStatus.FAILED
    huge = Step.objects.get(run=run, step_id="huge")
    assert huge.output is None and huge.output_bytes == 0
    assert huge.error["type"] == "LimitExceededError"
    assert "MAX_STATE_BYTES" in huge.error["message"]


def test_more_steps_than_the_limit_fails_the_run(run_event):
    run = run_event("test/too-many", {"steps": 1001}, timeout=300)
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "LimitExceededError"
    assert "MAX_STEPS_PER_RUN" in run.error["message"]
    assert Step.objects.filter(run=run).count() == 1000


def test_step_inside_a_step_is_a_clear_error(run_event):
    run = run_event("test/nested", {})
    assert run.status == RunStatus.FAILED
    outer = Step.objects.get(run=run, step_id="outer")
    assert outer.error["type"] == "NestedStepError"
    assert "inside step 'outer'" in outer.error["message"]
    assert not Step.objects.filter(run=run, step_id="inner").exists()


def test_non_determinism_names_both_steps(run_event, key):
    run = run_event("test/nondeterministic", {"key": key})
    assert run.status == RunStatus.FAILED
    assert run.error["type"] == "NonDeterminismError"
    assert "first-a" in run.error["message"] and "first-b" in run.error["message"]
    assert count(f"{key}-flaky") == 1
