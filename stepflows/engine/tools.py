"""The step tools a workflow function receives: StepSync (def) and Step (async def)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar, overload

from asgiref.sync import sync_to_async

from ..events import Event
from . import patches, waits
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

    def sleep(self, step_id: str, duration: timedelta | float) -> None:
        """Pause the run for ``duration`` (a ``timedelta`` or seconds) as step ``step_id``.

        The run holds no worker while it sleeps. The wake-up time is computed
        once, when the step is first reached, and stored; a replay never
        recomputes it. A sleep of 60 s or less wakes about on time; a longer
        one within the sweep's interval (``stepflows.recover``, 10 s) of it.
        """
        waits.sleep(self._inv, step_id, duration=duration)

    def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until ``when`` (an aware ``datetime``); see :meth:`sleep`."""
        waits.sleep(self._inv, step_id, until=when)

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        match: str | None = None,
        if_: Callable[[Event, Event], bool] | None = None,
        timeout: timedelta | float | None = None,
        lookback: timedelta | float = 0,
    ) -> Event | None:
        """Pause the run until an event named ``event`` arrives; return it, or None at ``timeout``.

        ``match="data.order_id"``: only an event whose value there equals the
        trigger event's counts. ``if_(trigger, candidate)``: a further test.
        Events received since the start of the invocation that reached this
        wait count, and earlier ones within ``lookback``. The run holds no
        worker while it waits; each event resumes a waiting run at most once.
        """
        return waits.wait_for_event(
            self._inv,
            step_id,
            event=event,
            match=match,
            if_=if_,
            timeout=timeout,
            lookback=lookback,
        )

    def invoke(
        self,
        step_id: str,
        *,
        workflow: Callable[..., Any] | str,
        data: Any = None,
        timeout: timedelta | float | None = None,
    ) -> Any:
        """Start a run of another workflow with ``data``, wait for it, return its output.

        The child run is started once (a replay finds it), is linked to this
        run as its parent, and its output comes back typed by its return
        annotation. Raises :class:`StepError` when the child fails, is
        cancelled, or does not finish within ``timeout`` (it then goes on).
        """
        return waits.invoke(self._inv, step_id, workflow=workflow, data=data, timeout=timeout)

    def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of a code change named ``patch_id``.

        True when the run reaches this call on the new code with nothing
        recorded from here on (a new run, or one in flight that had not got
        this far); False when the run recorded steps past this point under the
        old code, which it must replay. The answer is stored on the run, so
        every replay gets the same one::

            if step.patched("add-audit"):
                step.run("audit", audit, order)

        Once no run recorded before the change is in flight, replace the ``if``
        with ``step.deprecate_patch("add-audit")`` and keep the new path only;
        later, remove that line too. Not inside ``step.parallel`` (a
        :class:`StepUsageError`): call it before the group.
        """
        return patches.patched(self._inv, patch_id)

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark change ``patch_id`` as in every run: the code keeps its new path only.

        Stores nothing and returns None; runs that stored an answer for
        ``patch_id`` replay as before. Remove the call once no run started
        before the change is left.
        """
        patches.deprecate_patch(self._inv, patch_id)


async def _in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a waits function from an async workflow, on the invocation's thread.

    The signals it raises (the run suspends) cross back as values, then are raised here.
    """

    def call() -> tuple[Any, BaseException | None]:
        try:
            return fn(*args, **kwargs), None
        except BaseException as exc:  # re-raised below, in the workflow's task
            return None, exc

    value, exc = await sync_to_async(call)()
    if exc is not None:
        raise exc
    return value


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

    async def sleep(self, step_id: str, duration: timedelta | float) -> None:
        """Pause the run durably; see :meth:`StepSync.sleep`."""
        await _in_thread(waits.sleep, self._inv, step_id, duration=duration)

    async def sleep_until(self, step_id: str, when: datetime) -> None:
        """Pause the run until ``when``; see :meth:`StepSync.sleep_until`."""
        await _in_thread(waits.sleep, self._inv, step_id, until=when)

    async def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        match: str | None = None,
        if_: Callable[[Event, Event], bool] | None = None,
        timeout: timedelta | float | None = None,
        lookback: timedelta | float = 0,
    ) -> Event | None:
        """Wait durably for an event; see :meth:`StepSync.wait_for_event`."""
        result: Event | None = await _in_thread(
            waits.wait_for_event,
            self._inv,
            step_id,
            event=event,
            match=match,
            if_=if_,
            timeout=timeout,
            lookback=lookback,
        )
        return result

    async def invoke(
        self,
        step_id: str,
        *,
        workflow: Callable[..., Any] | str,
        data: Any = None,
        timeout: timedelta | float | None = None,
    ) -> Any:
        """Run another workflow and wait for its output; see :meth:`StepSync.invoke`."""
        return await _in_thread(
            waits.invoke, self._inv, step_id, workflow=workflow, data=data, timeout=timeout
        )

    async def patched(self, patch_id: str) -> bool:
        """Whether this run takes the new path of change ``patch_id``; see
        :meth:`StepSync.patched` (``if await step.patched("add-audit"): ...``)."""
        answer: bool = await _in_thread(patches.patched, self._inv, patch_id)
        return answer

    def deprecate_patch(self, patch_id: str) -> None:
        """Mark change ``patch_id`` as in every run; see :meth:`StepSync.deprecate_patch`.

        Not awaited: it stores nothing.
        """
        patches.deprecate_patch(self._inv, patch_id)
