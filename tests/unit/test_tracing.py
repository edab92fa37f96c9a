"""OpenTelemetry spans of runs and steps, and their parent links across task messages.

The in-process driver runs each task message through the same engine entry
points a worker does (``runner.execute_run(*args, **kwargs)``), with the
message's keyword arguments: the trace context crosses the task boundary in
the message, as on Celery (tests/integration/test_logs_signals.py checks the
same links with real workers).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

import stepflows
from stepflows import dispatch, tracing
from stepflows.models import Event, Run, RunStatus
from stepflows.testing import InProcess


def _reset_global_provider() -> None:
    # What opentelemetry's own test utilities do: the global provider may be set once.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        _reset_global_provider()


def by_name(finished: Any, prefix: str) -> list[Any]:
    return [s for s in finished if s.name.startswith(prefix)]


def test_tracing_is_off_without_a_provider_or_setting(settings) -> None:
    _reset_global_provider()
    assert not tracing.enabled()
    assert dispatch.execute_run("r1").kwargs == {}
    settings.STEPFLOWS = {**settings.STEPFLOWS, "TRACING": True}
    assert tracing.enabled()


def test_the_setting_turns_tracing_off_despite_a_provider(settings, spans) -> None:
    assert tracing.enabled()
    settings.STEPFLOWS = {**settings.STEPFLOWS, "TRACING": False}
    assert not tracing.enabled()
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller"):
        assert dispatch.execute_run("r1").kwargs == {}


@pytest.mark.django_db
def test_spans_of_a_parallel_group_link_back_to_the_invocation_and_the_sender(spans) -> None:
    tracer = trace.get_tracer("test")
    with InProcess() as driver:
        with tracer.start_as_current_span("web request") as root:
            [event_id] = stepflows.send("test/logs-parallel", data={})
        # The event keeps the sender's context; the queued message carries it too.
        assert Event.objects.get(id=event_id).trace.split("-")[1] == format(
            root.get_span_context().trace_id, "032x"
        )
        run = Run.objects.get(event_id=event_id)
        driver.run_until_finished(run)
    run.refresh_from_db()
    assert run.status == RunStatus.COMPLETED and run.output == 3

    finished = spans.get_finished_spans()
    [web] = by_name(finished, "web request")
    first, second = sorted(by_name(finished, "stepflows.run "), key=lambda s: s.start_time)
    parts = by_name(finished, "stepflows.step part")
    [total] = by_name(finished, "stepflows.step total")

    # One trace, from send() to the last step.
    assert {s.context.trace_id for s in finished} == {web.context.trace_id}
    assert first.name == "stepflows.run logs-parallel"
    assert first.parent.span_id == web.context.span_id
    # Each parallel step's task is a child of the invocation that planned the group...
    assert sorted(s.name for s in parts) == [
        "stepflows.step part",
        "stepflows.step part:1",
        "stepflows.step part:2",
    ]
    assert {s.parent.span_id for s in parts} == {first.context.span_id}
    # ...and so is the join callback's invocation, sent by the last step's task.
    assert second.parent.span_id == first.context.span_id
    assert total.parent.span_id == second.context.span_id

    assert first.attributes["stepflows.status"] == "waiting"
    assert second.attributes["stepflows.status"] == "completed"
    assert second.attributes["stepflows.run_id"] == str(run.id)
    assert second.attributes["stepflows.workflow_id"] == "logs-parallel"
    part = next(s for s in parts if s.name == "stepflows.step part:1")
    assert part.attributes["stepflows.step_id"] == "part:1"
    assert part.attributes["stepflows.attempt"] == 0
    assert part.attributes["stepflows.status"] == "completed"


@pytest.mark.django_db
def test_a_failed_attempt_and_a_retry_have_their_own_spans(spans) -> None:
    key = uuid.uuid4().hex[:12]
    with InProcess() as driver:
        [event_id] = stepflows.send("test/logs-flaky", data={"key": key})
        driver.run_until_finished(Run.objects.get(event_id=event_id))
    attempts = sorted(
        by_name(spans.get_finished_spans(), "stepflows.step flaky"), key=lambda s: s.start_time
    )
    assert [s.attributes["stepflows.attempt"] for s in attempts] == [0, 1]
    assert [s.attributes["stepflows.status"] for s in attempts] == ["retrying", "completed"]
    assert not attempts[0].status.is_ok
    runs = sorted(by_name(spans.get_finished_spans(), "stepflows.run"), key=lambda s: s.start_time)
    # The retry's invocation is a child of the invocation whose attempt failed.
    assert runs[1].parent.span_id == runs[0].context.span_id
    assert len({s.context.trace_id for s in runs}) == 1


@pytest.mark.django_db
def test_a_run_sent_outside_any_span_starts_its_own_trace(spans) -> None:
    with InProcess() as driver:
        [event_id] = stepflows.send("test/logs-chatty", data={})
        assert Event.objects.get(id=event_id).trace == ""
        driver.run_until_finished(Run.objects.get(event_id=event_id))
    [run_span] = by_name(spans.get_finished_spans(), "stepflows.run")
    [step_span] = by_name(spans.get_finished_spans(), "stepflows.step")
    assert run_span.parent is None
    assert step_span.parent.span_id == run_span.context.span_id
