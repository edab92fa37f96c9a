"""The step tools a workflow function receives: StepSync (def) and Step (async def)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

from ..events import Event
from .calls import current_step
from .invocation import Invocation

T = TypeVar("T")

EventsArg = Event | dict[str, Any] | Iterable[Event | dict[str, Any]]


def _sender(inv: Invocation, events: EventsArg) -> Callable[[], list[str]]:
    """The step function behind send_event: ids derive from run and step, so a
    re-run of the step after a crash sends nothing twice."""
    # Take a one-shot iterable (a generator) now: a retried attempt must send the same events.
    items: Any = events
    if not isinstance(events, Event | dict | str):
        try:
            items = list(events)
        except TypeError:
            pass  # not an iterable: sending refuses it with InvalidEventError, in the step

    def send_events() -> list[str]:
        from ..sending import send_from_run

        step_id = current_step.get()
        assert step_id is not None
        return send_from_run(items, run_id=inv.run_id, step_id=step_id)

    return send_events


class StepSync:
    """Step tools for a plain ``def`` workflow."""

    def __init__(self, invocation: Invocation) -> None:
        self._inv = invocation

    def run(
        self,
        step_id: str,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn(*args, **kwargs)`` once as step ``step_id`` and return its output.

        The output is stored; on every later invocation of the run, the stored
        output is returned without calling ``fn``. A failing ``fn`` is retried
        with backoff; when it fails for good, :class:`StepError` is raised here.

        ``timeout``: seconds an attempt may run; one that runs longer fails with
        :class:`~stepflows.exceptions.StepTimeoutError` and is retried like any
        failure. (``timeout`` is stepflows' keyword: to pass a ``timeout`` to
        ``fn`` itself, wrap it with ``functools.partial``.)
        """
        return self._inv.run_sync(step_id, fn, args, kwargs, timeout)

    def parallel(self, *callables: Callable[[], Any]) -> tuple[Any, ...]:
        """Run several steps at once on Celery workers; return what each callable returns.

        Each callable starts exactly one step, e.g. ``lambda: step.run("a", fa)``,
        and may compute its value from the step's output
        (``lambda: step.run("a", fa)["total"]``) or catch its ``StepError``.
        The callables are called again, with every output at hand, once all the
        steps have finished; the values are returned in argument order.
        """
        return self._inv.parallel_sync(callables)

    def send_event(self, step_id: str, events: EventsArg) -> list[str]:
        """Send one or many events as step ``step_id``; returns their ids, in order.

        ``events`` is an :class:`Event`, a dict with ``name`` and ``data``, or a
        list of them. The step is memoized like any other: a replay returns the
        stored ids and sends nothing. An event without an ``id`` gets one
        derived from the run and step (``<run>:<step>:<index>``), so even a
        step re-run after a crash sends nothing twice. The events record this
        run as ``source_run``; the runs they start record it as ``parent``.
        """
        return self.run(step_id, _sender(self._inv, events))


class Step:
    """Step tools for an ``async def`` workflow: the same methods, awaitable."""

    def __init__(self, invocation: Invocation) -> None:
        self._inv = invocation

    @overload
    async def run(
        self,
        step_id: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def run(
        self,
        step_id: str,
        fn: Callable[..., T],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def run(
        self,
        step_id: str,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``fn`` (plain or async) once as step ``step_id``; see :meth:`StepSync.run`."""
        return await self._inv.run_async(step_id, fn, args, kwargs, timeout)

    async def parallel(self, *callables: Callable[[], Awaitable[Any]]) -> tuple[Any, ...]:
        """Run several steps at once on Celery workers; see :meth:`StepSync.parallel`."""
        return await self._inv.parallel_async(callables)

    async def send_event(self, step_id: str, events: EventsArg) -> list[str]:
        """Send one or many events as a memoized step; see :meth:`StepSync.send_event`."""
        return await self.run(step_id, _sender(self._inv, events))
