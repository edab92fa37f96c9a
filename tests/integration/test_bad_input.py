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


def nothing_stored() -> bool:
    return Event.objects.count() == 0 and Run.objects.count() == 0


@pytest.mark.parametrize("name", ["test/three-steps\n", "test/three-steps\r\n", "\ntest/x"])
def test_an_event_name_with_a_line_break_is_refused(name):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send([stepflows.Event(name="test/three-steps"), {"name": name}])
    message = str(info.value)
    assert f"event #1 ({name!r})" in message and "line breaks" in message
    assert nothing_stored()


@pytest.mark.parametrize(
    "event, words",
    [
        ({"name": "test/three-steps", "id": "order-\x00-1"}, "event id 'order-\\x00-1'"),
        ({"name": "test/three-\x00steps"}, "event name"),
    ],
)
def test_nul_in_an_event_id_or_name_is_refused(event, words):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send([stepflows.Event(name="test/three-steps"), event])
    message = str(info.value)
    assert "event #1" in message and words in message and "NUL" in message
    assert nothing_stored()


def test_a_lone_surrogate_in_event_data_is_refused():
    with pytest.raises(InvalidEventError) as info:
        stepflows.send("test/three-steps", data={"key": "ok", "note": ["fine", "bad\ud800"]})
    message = str(info.value)
    assert "event #0 ('test/three-steps')" in message and "its data holds a value" in message
    assert "lone surrogate (U+D800 at ['note'][1])" in message
    assert nothing_stored()


def test_a_lone_surrogate_in_an_event_id_is_refused():
    with pytest.raises(InvalidEventError) as info:
        stepflows.send("test/three-steps", data={"key": "ok"}, id="order-\udc80")
    message = str(info.value)
    assert "event #0 ('test/three-steps')" in message and "lone surrogate (U+DC80)" in message
    assert nothing_stored()


@pytest.mark.parametrize("event", [None, 5, object(), b"test/three-steps"])
def test_send_of_something_that_is_no_event_says_what_send_takes(event):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send(event)
    message = str(info.value)
    assert message.startswith("send() takes an event name, an Event, a dict")
    assert type(event).__name__ in message
    assert nothing_stored()


@pytest.mark.parametrize("item", [5, None, "test/three-steps"])
def test_a_list_item_that_is_no_event_is_named_by_its_index(item):
    with pytest.raises(InvalidEventError) as info:
        stepflows.send([{"name": "test/three-steps"}, item])
    message = str(info.value)
    assert message.startswith("event #1: an event is an Event or a dict with name and data")
    assert repr(item) in message
    assert nothing_stored()


def test_a_dict_that_is_no_event_names_the_field():
    with pytest.raises(InvalidEventError) as info:
        stepflows.send([{"name": "test/three-steps", "id": 7}])
    message = str(info.value)
    assert message.startswith("event #0 ('test/three-steps'): id: ")
    assert "https://" not in message
    assert nothing_stored()


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
    assert run.status == RunStatus.BLOCKED
    assert run.error["type"] == "NonDeterminismError"
    assert "first-a" in run.error["message"] and "first-b" in run.error["message"]
    assert count(f"{key}-flaky") == 1
