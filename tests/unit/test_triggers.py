"""Triggers, event shapes, derived ids and schema checks at send (no database)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from stepflows import Event, TriggerEvent
from stepflows.exceptions import (
    ConfigurationError,
    EventValidationError,
    InvalidEventError,
    TriggerFilterError,
)
from stepflows.registry import Workflow, _triggers, registry
from stepflows.sending import as_events, derived_event_id, prepare


def flow(ctx, step):  # type: ignore[no-untyped-def]
    return None


def ev(name: str, **data: object) -> Event:
    return Event(name=name, data=dict(data))


def test_trigger_event_matches_by_name_and_filter():
    plain = TriggerEvent("shop/order.paid")
    big = TriggerEvent("shop/order.paid", if_=lambda e: e.data["amount"] >= 100)
    assert plain.matches(ev("shop/order.paid", amount=1))
    assert not plain.matches(ev("shop/order.refunded", amount=1))
    assert big.matches(ev("shop/order.paid", amount=100))
    assert not big.matches(ev("shop/order.paid", amount=99))
    assert not big.matches(ev("shop/other", amount=500))


def test_a_workflow_with_several_triggers_matches_any_of_them():
    wf = Workflow(
        id="w",
        fn=flow,
        triggers=_triggers(["a/one", TriggerEvent("a/two", if_=lambda e: e.data.get("ok"))], "w"),
    )
    assert wf.matches(ev("a/one"))
    assert wf.matches(ev("a/two", ok=True))
    assert not wf.matches(ev("a/two", ok=False))
    assert not wf.matches(ev("a/three", ok=True))


def test_a_filter_that_raises_names_the_workflow_and_trigger():
    wf = Workflow(id="w-broken", fn=flow, triggers=[TriggerEvent("a/x", if_=lambda e: 1 / 0)])
    with pytest.raises(TriggerFilterError) as info:
        wf.matches(ev("a/x"))
    assert "w-broken" in str(info.value) and "'a/x'" in str(info.value)
    assert "ZeroDivisionError" in str(info.value)
    # Not even called for other names.
    assert not wf.matches(ev("a/y"))


@pytest.mark.parametrize("bad", [[], [42], [TriggerEvent("a"), None]])
def test_bad_triggers_are_configuration_errors(bad):
    with pytest.raises(ConfigurationError):
        _triggers(bad, "w")


def test_events_may_be_one_event_a_dict_or_a_list_of_either():
    one = Event(name="a/b", data={"x": 1})
    assert as_events(one) == [one]
    [from_dict] = as_events({"name": "a/b", "data": {"x": 1}})
    assert (from_dict.name, from_dict.data) == ("a/b", {"x": 1})
    mixed = as_events([one, {"name": "a/c"}])
    assert [e.name for e in mixed] == ["a/b", "a/c"] and mixed[1].data == {}
    assert as_events(e for e in [one]) == [one]
    with pytest.raises(InvalidEventError):
        as_events([42])


def test_derived_event_ids_are_stable_and_fit_the_id_column():
    assert derived_event_id("run", "fan-out", 3) == "run:fan-out:3"
    assert derived_event_id("run", "fan-out:2", 0) == "run:fan-out:2:0"
    long_id = derived_event_id("r" * 36, "s" * 250, 7)
    assert len(long_id) <= 255 and long_id == derived_event_id("r" * 36, "s" * 250, 7)
    assert long_id != derived_event_id("r" * 36, "s" * 249 + "t", 7)


class Payment(BaseModel):
    email: str
    amount: int


def test_schema_checks_every_workflow_the_event_would_start():
    ids = ("unit-schema", "unit-plain")
    registry.register(
        Workflow(id=ids[0], fn=flow, triggers=[TriggerEvent("unit/pay")], schema=Payment)
    )
    registry.register(Workflow(id=ids[1], fn=flow, triggers=[TriggerEvent("unit/pay")]))
    try:
        prepared = prepare(Event(name="unit/pay", data={"email": "a@b", "amount": "7"}), 0)
        assert sorted(wf.id for wf in prepared.workflows) == sorted(ids)
        assert prepared.data == {"email": "a@b", "amount": "7"}  # stored as sent
        with pytest.raises(EventValidationError) as info:
            prepare(Event(name="unit/pay", data={"email": "a@b", "amount": "lots"}), 2)
        err = info.value
        assert err.workflow_id == "unit-schema"
        assert "event #2" in str(err) and "Payment" in str(err) and "amount" in str(err)
        assert err.errors[0]["loc"] == ("amount",)
    finally:
        for wf_id in ids:
            registry.unregister(wf_id)
