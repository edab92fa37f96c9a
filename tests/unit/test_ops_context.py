"""Every public attribute of ``ctx`` is documented (README: "What ctx holds")."""

from __future__ import annotations

import inspect

from stepflows import context
from stepflows.context import Context
from stepflows.events import Event


def make_context() -> Context:
    return Context(
        event=Event(name="shop/order.paid", data={"order_id": 7}),
        run_id="3f2a",
        workflow_id="fulfil-order",
        replaying=lambda: False,
    )


def public_names(ctx: Context) -> set[str]:
    return {name for name in dir(ctx) if not name.startswith("_")}


def test_every_public_name_is_documented_or_the_engines() -> None:
    listed = set(context.ATTRIBUTES) | set(context.ENGINE_HOOKS)
    assert public_names(make_context()) == listed, (
        "a public name of Context is in neither context.ATTRIBUTES (documented for "
        "workflows: add a docstring in Context and a row in the README's table) nor "
        "context.ENGINE_HOOKS"
    )
    assert not set(context.ATTRIBUTES) & set(context.ENGINE_HOOKS)


def test_each_attribute_has_a_docstring_and_a_line_in_the_class_docstring() -> None:
    source = inspect.getsource(Context)
    doc = inspect.getdoc(Context) or ""
    for name in context.ATTRIBUTES:
        assert name in Context.__annotations__, name
        # An attribute docstring: the string right after the class-level annotation.
        declared = source.index(f"\n    {name}: ")
        after = source[declared:].split("\n", 2)[2].lstrip()
        assert after.startswith('"""'), f"Context.{name} has no docstring"
        assert f"- ``{name}``: " in doc, f"Context's docstring does not list {name}"


def test_the_values_a_workflow_reads() -> None:
    ctx = make_context()
    assert ctx.events == [ctx.event] and ctx.event.data == {"order_id": 7}
    assert (ctx.run_id, ctx.workflow_id, ctx.attempt) == ("3f2a", "fulfil-order", 0)
    assert ctx.logger.logger.name == "stepflows.workflow.fulfil-order"
    ctx.begin_step("charge", 2, None)
    assert ctx.attempt == 2
