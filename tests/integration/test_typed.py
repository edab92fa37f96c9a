"""Typed events and outputs on real workers: schema= validation, typed step and run outputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest

import stepflows
from stepflows.exceptions import EventValidationError
from stepflows.models import Event, Run, RunStatus, Step
from stepflows.testing import runs_for, wait_for_runs
from tests.testapp.flows.fanout import Receipt
from tests.testapp.marks import count, lines

pytestmark = pytest.mark.django_db(transaction=True)

EXPECTED_TYPES = {
    "item": "Item",
    "items": ["Item", "Item"],
    "index": {"k0": "Item", "k1": "Item"},
    "when": "datetime",
    "amount": "Decimal",
    "uuid": "UUID",
    "ok": True,
}


# -- schema= ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, field",
    [
        ({"email": "a@b.c", "age": "old"}, "age"),
        ({"email": "a@b.c", "age": -4}, "age"),
        ({"age": 30}, "email"),
    ],
)
def test_invalid_data_is_a_clear_error_naming_workflow_and_field(data, field):
    with pytest.raises(EventValidationError) as info:
        stepflows.send("test/schema", data=data)
    err = info.value
    assert err.workflow_id == "t-schema"
    assert "t-schema" in str(err) and "Signup" in str(err) and field in str(err)
    assert "Nothing was stored" in str(err)
    assert [e["loc"] for e in err.errors] == [(field,)]
    # Not even the run of the workflow without a schema, nor the event.
    assert Event.objects.count() == 0 and Run.objects.count() == 0


def test_one_invalid_event_in_a_batch_stores_none(celery_worker):
    with pytest.raises(EventValidationError) as info:
        stepflows.send(
            [
                stepflows.Event(name="test/schema", data={"email": "ok@b.c", "age": 1}),
                {"name": "test/schema", "data": {"email": "bad@b.c"}},
            ]
        )
    assert "event #1" in str(info.value) and "age" in str(info.value)
    assert Event.objects.count() == 0 and Run.objects.count() == 0


def test_valid_data_arrives_as_the_model_inside_the_run(celery_worker):
    ids = stepflows.send("test/schema", data={"email": "ada@example.com", "age": "36"})
    runs = {r.workflow_id: r for r in wait_for_runs([r.id for r in runs_for(ids)])}
    assert runs["t-schema"].status == RunStatus.COMPLETED, runs["t-schema"].error
    assert runs["t-schema"].output == {
        "type": "Signup",
        "email": "ada@example.com",
        "age": 36,
        "plan": "free",
    }
    # The workflow without a schema gets the plain dict; the event stores what was sent.
    assert runs["t-schema-plain"].output == "dict"
    assert Event.objects.get(id=ids[0]).data == {"email": "ada@example.com", "age": "36"}


def test_an_event_may_carry_a_model_as_its_data(celery_worker):
    from tests.testapp.flows.fanout import Signup

    ids = stepflows.send("test/schema", data=Signup(email="m@b.c", age=5, plan="pro"))
    runs = {r.workflow_id: r for r in wait_for_runs([r.id for r in runs_for(ids)])}
    assert runs["t-schema"].output["plan"] == "pro"


# -- typed step outputs ---------------------------------------------------------------------


def _invocations(key):
    """What each invocation of the workflow saw, as it noted it."""
    return [json.loads(note) for _, _, note in lines(f"{key}-typed")]


@pytest.mark.parametrize("name", ["test/typed", "test/typed-async"])
def test_typed_outputs_come_back_as_their_types_after_a_replay(run_event, key, name):
    run = run_event(name, {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    # The invocation after the parallel group replayed every typed step from the memo.
    assert run.output["after_group"] == EXPECTED_TYPES
    assert run.output["before_group"] == EXPECTED_TYPES
    seen = _invocations(key)
    assert len(seen) >= 2 and all(s == EXPECTED_TYPES for s in seen)
    # Values survive exactly, not only their types.
    assert run.output["amount"] == "1234.5600"
    assert run.output["item_price"] == "9.90"
    assert datetime.fromisoformat(run.output["when"]) == datetime(
        2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC
    )
    # Stored as plain JSON.
    steps = {s.step_id: s for s in Step.objects.filter(run=run)}
    assert steps["amount"].output == "1234.5600"
    assert steps["item"].output["sku"] == "one"
    assert steps["items"].attempt_count == 1 and count(f"{key}-typed") == len(seen)


def test_typed_outputs_of_parallel_steps(run_event, key):
    run = run_event("test/typed-parallel", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"item": "Item", "items": ["Item"] * 3, "amount": "Decimal"}


def test_run_output_is_json_and_typed_by_the_workflow_annotation(run_event, key):
    run = run_event("test/typed-output", {"key": key})
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"total": "1234.5600", "at": "2024-05-01T12:30:15.123456Z"}
    typed = Run.objects.get(id=run.id).typed_output()
    assert isinstance(typed, Receipt)
    assert typed.total == Decimal("1234.5600")
    assert typed.at == datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
