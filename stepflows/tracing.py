"""OpenTelemetry spans of runs and steps (the optional extra ``stepflows[otel]``).

A span per run invocation (``stepflows.run <workflow id>``) and per step
attempt (``stepflows.step <step id>``), with the attributes
``stepflows.workflow_id``, ``stepflows.run_id``, ``stepflows.step_id``,
``stepflows.attempt`` and ``stepflows.status``.

The W3C trace context (``traceparent``) travels two ways:

- in the event: ``send()`` stores the caller's context on the ``Event`` row
  (``Event.trace``), so a run's first invocation is a child of the code that
  sent its event, however late it starts (a throttled or debounced run, one
  started by the sweep);
- in the task messages: each message the engine sends carries the context of
  the run invocation that sent it (the ``trace`` keyword of the task), so a
  parallel step's task, the join callback and a retry's invocation are
  children of the invocation that planned them, and stay in one trace.

Tracing is on when ``opentelemetry-api`` is importable and either
``STEPFLOWS["TRACING"]`` is true or (the default ``None``) the process has set
a TracerProvider of its own. Off, each entry point costs one check and
messages carry nothing more.

A leaf module: it imports nothing of stepflows but ``conf``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from .conf import get_settings

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = ["enabled", "run_span", "stamp", "step_span", "step_task", "traceparent"]

TRACER_NAME = "stepflows"

# The traceparent that what is sent now must carry: the run invocation's own, or in a
# step task the invocation that sent the step (so the join callback links back to it).
_carry: ContextVar[str | None] = ContextVar("stepflows_trace", default=None)
_propagator: Any = TraceContextTextMapPropagator() if trace is not None else None


def enabled() -> bool:
    """Whether spans are made in this process (see the module docstring)."""
    if trace is None:
        return False
    setting = get_settings().TRACING
    if setting is not None:
        return setting
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def traceparent() -> str:
    """The traceparent to carry with what is sent now; '' when none (or tracing is off)."""
    if not enabled():
        return ""
    carried = _carry.get()
    if carried:
        return carried
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def stamp(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A task message's keyword arguments with the trace context to carry, if any."""
    if trace is None:
        return kwargs
    tp = traceparent()
    return {**kwargs, "trace": tp} if tp else kwargs


def _context(tp: str | None) -> Any:
    return _propagator.extract({"traceparent": tp}) if tp else None


def _own(span: Any) -> str:
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent", "")


class SpanHandle:
    """What the engine tells a span once it knows how things went (no-op when off)."""

    __slots__ = ("span",)

    def __init__(self, span: Any = None) -> None:
        self.span = span

    def set_status(self, status: str, error: str | None = None) -> None:
        if self.span is None:
            return
        self.span.set_attribute("stepflows.status", status)
        if error is not None:
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, error))


_OFF = SpanHandle()


@contextmanager
def run_span(workflow_id: str, run_id: str, parent: str | None) -> Iterator[SpanHandle]:
    """One invocation of a run; ``parent``: the traceparent of the message, else the event's."""
    if not enabled():
        yield _OFF
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"stepflows.run {workflow_id}",
        context=_context(parent),
        kind=trace.SpanKind.CONSUMER,
        attributes={"stepflows.workflow_id": workflow_id, "stepflows.run_id": run_id},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        token = _carry.set(_own(span))
        try:
            yield SpanHandle(span)
        finally:
            _carry.reset(token)


@contextmanager
def step_task(parent: str | None) -> Iterator[None]:
    """A parallel step's task: its spans, and what it sends, belong to ``parent``."""
    if not parent or not enabled():
        yield
        return
    attached = otel_context.attach(_context(parent))
    token = _carry.set(parent)
    try:
        yield
    finally:
        _carry.reset(token)
        otel_context.detach(attached)


@contextmanager
def step_span(workflow_id: str, run_id: str, step_id: str, attempt: int) -> Iterator[SpanHandle]:
    """One attempt of a step, a child of the current run invocation (or step task)."""
    if not enabled():
        yield _OFF
        return
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"stepflows.step {step_id}",
        attributes={
            "stepflows.workflow_id": workflow_id,
            "stepflows.run_id": run_id,
            "stepflows.step_id": step_id,
            "stepflows.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield SpanHandle(span)
