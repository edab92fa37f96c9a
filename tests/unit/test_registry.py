"""The workflow decorator, triggers and the system checks over the registry."""

from __future__ import annotations

import re

import pytest

import stepflows
from stepflows.checks import check_settings, check_workflows
from stepflows.exceptions import ConfigurationError, WorkflowNotFoundError
from stepflows.models import Run
from stepflows.registry import MAX_WORKFLOW_ID_LENGTH, Registry, TriggerEvent, Workflow, registry


@pytest.fixture
def clean_registry():
    saved = dict(registry._workflows), list(registry.duplicates)
    yield registry
    registry._workflows.clear()
    registry._workflows.update(saved[0])
    registry.duplicates[:] = saved[1]


def test_decorator_registers_and_returns_the_function(clean_registry):
    @stepflows.workflow(id="u-one", trigger=["u/a", TriggerEvent("u/b")], retries=2)
    def one(ctx, step):
        return 1

    wf = clean_registry.get("u-one")
    assert one(None, None) == 1 and wf.fn is one and wf.retries == 2
    assert [t.event for t in wf.triggers] == ["u/a", "u/b"]
    assert not wf.is_async


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"trigger": "x"}, "needs id="),
        ({"id": "", "trigger": "x"}, "needs id="),
        ({"id": "w", "trigger": []}, "at least one trigger"),
        ({"id": "w", "trigger": 3}, "a trigger is an event name"),
        ({"id": "w", "trigger": "x", "retries": -1}, "retries"),
        ({"id": "w", "trigger": "x", "schema": dict}, "schema must be a pydantic"),
    ],
)
def test_decorator_rejects_bad_options(kwargs, words):
    with pytest.raises(ConfigurationError, match=words):
        stepflows.workflow(**kwargs)


@pytest.mark.parametrize(
    "workflow_id, words",
    [
        ("w" * 256, "is 256 characters long; the limit is 255"),
        ("orders\x00v2", "contains the NUL character"),
        ("orders-\ud800", "contains a lone surrogate (U+D800)"),
    ],
)
def test_a_workflow_id_the_run_table_cannot_hold_is_refused_at_decoration(
    clean_registry, workflow_id, words
):
    with pytest.raises(ConfigurationError, match=re.escape(words)):

        @stepflows.workflow(id=workflow_id, trigger="u/x")
        def flow(ctx, step):
            pass

    assert all(wf.id != workflow_id for wf in clean_registry.all())


def test_workflow_ids_may_fill_the_run_column_and_registering_checks_them_too(clean_registry):
    assert Run._meta.get_field("workflow_id").max_length == MAX_WORKFLOW_ID_LENGTH
    stepflows.workflow(id="w" * MAX_WORKFLOW_ID_LENGTH, trigger="u/x")(lambda ctx, step: None)
    assert clean_registry.get("w" * MAX_WORKFLOW_ID_LENGTH)
    for bad in ("", "x" * 256, "a\x00b"):
        with pytest.raises(ConfigurationError, match="workflow id"):
            clean_registry.register(Workflow(id=bad, fn=lambda c, s: None, triggers=[]))


def test_trigger_filter():
    big = TriggerEvent("shop/order", if_=lambda e: e.data["total"] > 100)
    assert big.matches(stepflows.Event(name="shop/order", data={"total": 150}))
    assert not big.matches(stepflows.Event(name="shop/order", data={"total": 50}))
    assert not big.matches(stepflows.Event(name="shop/other", data={"total": 150}))


def test_unknown_workflow_names_the_registered_ones():
    reg = Registry()
    reg.register(Workflow(id="known", fn=lambda c, s: None, triggers=[TriggerEvent("e")]))
    with pytest.raises(WorkflowNotFoundError, match="known"):
        reg.get("missing")


def test_duplicate_ids_and_bad_signatures_are_system_check_errors(clean_registry):
    @stepflows.workflow(id="u-dup", trigger="u/x")
    def first(ctx, step):
        pass

    @stepflows.workflow(id="u-dup", trigger="u/y")
    def second(ctx, step):
        pass

    @stepflows.workflow(id="u-bad-signature", trigger="u/z")
    def bad(ctx):
        pass

    errors = {e.id: e.msg for e in check_workflows()}
    assert "u-dup" in errors["stepflows.E002"] and "second" in errors["stepflows.E002"]
    assert "u-bad-signature" in errors["stepflows.E003"]
    assert clean_registry.get("u-dup").fn is first


def test_wrong_setting_is_a_system_check_error(settings):
    settings.STEPFLOWS = {"RETRIES": -1, "NOPE": 1}
    errors = check_settings()
    assert {e.id for e in errors} == {"stepflows.E001"}
    assert any("RETRIES" in e.msg for e in errors) and any("NOPE" in e.msg for e in errors)


def test_project_workflows_pass_the_checks():
    assert check_workflows() == []
    assert check_settings() == []
