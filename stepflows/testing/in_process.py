"""The in-process driver: stepflows' messages run in the test process, no worker, no broker."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from django.db import connections

from .. import clock, dispatch
from ..dispatch import Message
from ..events import Event
from ..exceptions import StepflowsError
from ..models import Run
from ..registry import Workflow, registry
from .stubs import StepStubs, stubbed_steps

logger = logging.getLogger("stepflows.testing")


class InProcessError(StepflowsError):
    """The in-process driver could not drive the runs to their end."""


@dataclass(order=True)
class _Queued:
    due: datetime
    seq: int
    message: Message = field(compare=False)


def _heartbeats_disabled() -> AbstractContextManager[None]:
    """Switch off the engine's lease heartbeat thread.

    Its thread would write with its own database connection, outside the
    test's transaction; and the driver runs one message at a time, so no
    lease can expire under it.
    """
    try:
        from ..engine.heartbeat import disabled
    except ImportError:  # an engine without heartbeats
        return contextlib.nullcontext()
    return disabled()


def run_on_commit_callbacks() -> int:
    """Run the ``transaction.on_commit`` callbacks waiting in open atomic blocks.

    Inside a test transaction (``django.test.TestCase``, ``pytest.mark.django_db``)
    nothing ever commits, so these never run on their own. As
    ``TestCase.captureOnCommitCallbacks(execute=True)`` does, they run in order,
    callbacks added by a callback run too, and an error in a ``robust`` one is
    logged, not raised. Unlike it, each callback is taken off the connection's
    list before it runs, so a later call (or a real commit) never runs it again.
    Returns how many ran.
    """
    ran = 0
    for conn in connections.all(initialized_only=True):
        while conn.in_atomic_block and conn.run_on_commit:
            # (savepoint ids, callback, robust); django-stubs still types it as a pair.
            entry: tuple[Any, ...] = conn.run_on_commit.pop(0)
            callback, robust = entry[1], entry[2]
            ran += 1
            if not robust:
                callback()
                continue
            try:
                callback()
            except Exception as exc:
                logger.error(
                    "Error calling %s in on_commit() (%s).",
                    getattr(callback, "__qualname__", callback),
                    exc,
                    exc_info=True,
                )
    return ran


class InProcess:
    """Runs stepflows' task messages in the test process: no worker, no broker.

    Inside ``with InProcess() as driver:`` every message stepflows would send
    to Celery is queued in memory instead, with the time it is due on
    :mod:`stepflows.clock`. :meth:`run_until_idle` executes them one after
    another in this process, on the test database, so the steps of a
    ``parallel`` group run one after the other. A delay (a step's retry) is
    not slept through: the clock jumps to the message that is due next. The
    engine's heartbeat thread is off inside the block, and the clock is back
    to the real time after it; messages still queued at exit are dropped.
    ``steps`` stubs steps by id for every run driven in the block (see
    :mod:`stepflows.testing.stubs`).

    With pytest::

        @pytest.mark.django_db
        def test_order_flow():
            with InProcess() as driver:
                stepflows.send("shop/order.paid", data={"order_id": 7})
                driver.run_until_idle()
            assert Run.objects.get(workflow_id="fulfil-order").status == "completed"

    With ``django.test.TestCase`` (the test's transaction never commits;
    :meth:`run_until_idle` runs the ``on_commit`` callbacks itself)::

        class OrderFlowTests(TestCase):
            def test_order_flow(self):
                with InProcess() as driver:
                    stepflows.send("shop/order.paid", data={"order_id": 7})
                    driver.run_until_idle()
                self.assertEqual(Run.objects.get().status, "completed")
    """

    def __init__(self, *, steps: StepStubs | None = None) -> None:
        self.steps = dict(steps or {})
        self._queue: list[_Queued] = []
        self._seq = itertools.count()
        # The store publishes from on_commit callbacks, which may run on
        # another thread (sync_to_async); keep the queue consistent.
        self._lock = threading.Lock()
        self._exit: ExitStack | None = None

    # -- Publisher ---------------------------------------------------------------------

    def publish(self, messages: list[Message]) -> None:
        """Queue messages, each due after its countdown on the stepflows clock."""
        now = clock.now()
        with self._lock:
            for message in messages:
                due = now + timedelta(seconds=message.countdown or 0)
                self._queue.append(_Queued(due, next(self._seq), message))

    @property
    def pending(self) -> list[Message]:
        """The queued messages, in the order they would run."""
        with self._lock:
            return [q.message for q in sorted(self._queue)]

    # -- context manager -----------------------------------------------------------

    def __enter__(self) -> InProcess:
        if self._exit is not None:
            raise InProcessError("this InProcess driver is already in use")
        with ExitStack() as stack:
            stack.enter_context(dispatch.use(self))
            stack.enter_context(_heartbeats_disabled())
            stack.enter_context(stubbed_steps(self.steps))
            stack.callback(clock.reset)
            self._exit = stack.pop_all()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        exit_stack, self._exit = self._exit, None
        with self._lock:
            self._queue.clear()
        if exit_stack is not None:
            exit_stack.close()

    # -- driving -----------------------------------------------------------------------

    def run_until_idle(self, max_messages: int = 10_000, *, wake_waits: bool = False) -> int:
        """Execute queued messages until none is left; returns how many ran.

        Messages run in the order they are due; a step task whose attempt
        failed is queued again after its retry delay. Pending ``on_commit``
        callbacks run before each message (see :func:`run_on_commit_callbacks`),
        which is how runs started inside a test transaction get going. Raises
        :class:`InProcessError` when more than ``max_messages`` would run (a
        workflow that never ends, such as one that keeps triggering itself).

        A run that sleeps or waits for an event is left waiting, unless
        ``wake_waits``: then the clock jumps to each next due time (a sleep's
        end, a wait's timeout) and the sweep wakes the run, as celery beat would.
        """
        return self._drive(max_messages, lambda message: True, wake_waits)

    def advance(self, seconds: float) -> int:
        """Move the clock on by ``seconds``, wake the runs whose wait is then due, and run
        the queued messages; returns how many ran."""
        from ..engine.sweep import sweep

        clock.advance(seconds)
        sweep()
        return self.run_until_idle()

    def run_until_finished(
        self, run: Run | Any, max_messages: int = 10_000, *, wake_waits: bool = True
    ) -> Run:
        """Execute only the messages of one run until none is left; return the run, refreshed.

        Messages of other runs (another workflow the same event triggered, the
        runs a ``step.send_event`` started) stay queued for :meth:`run_until_idle`.
        The clock jumps over its sleeps and wait timeouts (``wake_waits``; a
        run it invoked is driven too). Raises :class:`InProcessError` when the
        run is still unfinished then.
        """
        run_id = str(run.pk if isinstance(run, Run) else run)
        family = {run_id}

        def wanted(message: Message) -> bool:
            target = str(message.args[0])
            if (
                target not in family
                and Run.objects.filter(pk=target, parent_id__in=list(family))
                .exclude(caller_step="")
                .exists()
            ):
                family.add(target)  # a run it invoked: it waits for it
            return target in family

        self._drive(max_messages, wanted, wake_waits)
        row = Run.objects.get(pk=run_id)
        if not row.is_finished:
            raise InProcessError(
                f"run {run_id} of workflow {row.workflow_id!r} is still {row.status} and no "
                "message for it is queued: nothing will move it on"
            )
        return row

    def _drive(
        self, max_messages: int, wanted: Callable[[Message], bool], wake_waits: bool = False
    ) -> int:
        if self._exit is None:
            raise InProcessError("drive runs inside `with InProcess() as driver:` only")
        executed = 0
        while True:
            run_on_commit_callbacks()
            entry = self._take(wanted, allowed=executed < max_messages)
            if entry is None:
                if wake_waits and executed < max_messages and self._wake_next_wait(wanted):
                    continue
                return executed
            executed += 1
            self._execute(entry.message)

    def _take(self, wanted: Callable[[Message], bool], *, allowed: bool) -> _Queued | None:
        """Dequeue the next wanted message, moving the clock on to when it is due."""
        with self._lock:
            candidates = [q for q in self._queue if wanted(q.message)]
            entry = min(candidates) if candidates and allowed else None
            if entry is not None:
                self._queue.remove(entry)
        if candidates and not allowed:
            raise InProcessError(self._limit_message(candidates))
        if entry is not None:
            wait = (entry.due - clock.now()).total_seconds()
            if wait > 0:
                clock.advance(wait)
        return entry

    def _wake_next_wait(self, wanted: Callable[[Message], bool]) -> bool:
        """Nothing is queued: move the clock to the next due wait (a sleep, a timeout) and
        run the sweep, as celery beat would. False when no wanted run waits for a time."""
        from ..engine.sweep import sweep
        from ..store.waits import database_now

        due = Run.objects.filter(
            status__in=("waiting", "queued"), wait_until__isnull=False
        ).order_by("wait_until")
        for run_id, wait_until in due.values_list("id", "wait_until")[:1000]:
            if wait_until is not None and wanted(dispatch.execute_run(run_id)):
                # Due times are on the database's clock (see store.waits.database_now).
                wait = (wait_until - database_now()).total_seconds() + 0.001
                if wait > 0:
                    clock.advance(wait)
                done = sweep()
                return done["woken"] + done["released"] > 0
        return False

    @staticmethod
    def _limit_message(queued: list[_Queued]) -> str:
        run_ids = {str(q.message.args[0]) for q in queued if q.message.args}
        workflows = sorted(
            set(Run.objects.filter(id__in=run_ids).values_list("workflow_id", flat=True))
        )
        return (
            f"the max_messages limit was reached with {len(queued)} message(s) still queued "
            f"for {len(run_ids)} run(s) of {workflows}: does a workflow never end (one that "
            "keeps triggering itself, or retries forever)? Pass a higher max_messages if not."
        )

    def _execute(self, message: Message) -> None:
        # Imported here: the engine is only needed when a message runs.
        from ..engine import runner

        if message.task in (dispatch.EXECUTE_RUN, dispatch.RESUME_RUN):
            runner.execute_run(*message.args, **message.kwargs)
        elif message.task == dispatch.RUN_STEP:
            outcome = runner.execute_step_task(*message.args, **message.kwargs)
            if outcome is not None and outcome.retry_in is not None:
                self.publish([replace(message, countdown=outcome.retry_in)])
        else:
            raise InProcessError(f"the in-process driver cannot run task {message.task!r}")


def _workflow(workflow: Callable[..., Any] | Workflow | str) -> Workflow:
    if isinstance(workflow, Workflow):
        return workflow
    if isinstance(workflow, str):
        return registry.get(workflow)
    found = getattr(workflow, "stepflows_workflow", None)
    if not isinstance(found, Workflow):
        raise InProcessError(
            f"{workflow!r} is not a workflow: pass a function decorated with "
            "@stepflows.workflow, a Workflow, or a workflow id"
        )
    return found


def run_workflow(
    workflow: Callable[..., Any] | Workflow | str,
    data: Any = None,
    *,
    event: str | Event | None = None,
    steps: StepStubs | None = None,
    max_messages: int = 10_000,
) -> Run:
    """Send an event that triggers ``workflow``, run it to its end in this process; return its run.

    ``workflow``: the decorated function, its :class:`~stepflows.registry.Workflow`,
    or its id. The event is named after the workflow's first trigger and
    carries ``data``; ``event`` picks another name, or is a whole
    :class:`~stepflows.Event` (then leave ``data`` out). The event goes
    through :func:`stepflows.send`, as in production, so any other workflow
    it triggers gets its run too; only this workflow's run is driven. Inside
    ``with InProcess() as driver:`` the others (and runs the workflow starts
    with ``step.send_event``) stay queued for ``driver.run_until_idle()``;
    otherwise they are dropped and those runs stay ``queued``.

    ``steps`` stubs steps by id: ``{"charge-card": {"charged": True}}``
    returns that value instead of calling the step's function; a callable
    is called with the step's arguments; an exception is raised (see
    :mod:`stepflows.testing.stubs`). A run that completes without reaching
    a stubbed step raises :class:`InProcessError` (a misspelt step id would
    otherwise call the real function unnoticed).

    Sleeps and wait timeouts are jumped over on the engine's clock; a wait
    for an event that nobody sends ends at its timeout (or never: then
    :class:`InProcessError`); send the event with an :class:`InProcess`
    driver instead (see :class:`~stepflows.testing.WorkflowTestMixin`).

    Works inside ``django.test.TestCase`` (the test's transaction never
    commits: the ``on_commit`` callbacks that start the run are run here) and
    with ``pytest.mark.django_db``. Returns the :class:`~stepflows.models.Run`,
    refreshed: completed, failed or cancelled. Raises :class:`InProcessError`
    when the event starts no run of the workflow (a trigger filter said no).

    With pytest::

        @pytest.mark.django_db
        def test_fulfil_order():
            run = run_workflow(fulfil_order, {"order_id": 7, "items": []},
                               steps={"charge-card": {"charged": True}})
            assert run.status == "completed"
            assert run.output["charged"] is True

    With ``django.test.TestCase``::

        class FulfilOrderTests(TestCase):
            def test_card_declined(self):
                run = run_workflow("fulfil-order", {"order_id": 8},
                                   steps={"charge-card": NonRetriableError("declined")})
                self.assertEqual(run.status, "failed")
                self.assertEqual(run.error["step_id"], "charge-card")
    """
    from ..api import send

    wf = _workflow(workflow)
    if isinstance(event, Event):
        if data is not None:
            raise InProcessError(
                "run_workflow(..., event=Event(...)) takes its data from the Event"
            )
        to_send = event
    else:
        to_send = Event(name=event or wf.triggers[0].event, data={} if data is None else data)
    active = dispatch.publisher()
    driving: AbstractContextManager[InProcess] = (
        contextlib.nullcontext(active) if isinstance(active, InProcess) else InProcess()
    )
    with driving as driver, stubbed_steps(steps) as stubs:
        [event_id] = send(to_send)
        # Inside a test transaction the run's first message waits in on_commit.
        run_on_commit_callbacks()
        run = Run.objects.filter(event_id=event_id, workflow_id=wf.id).order_by("created_at").last()
        if run is None:
            raise InProcessError(
                f"event {to_send.name!r} (id {event_id}) started no run of workflow {wf.id!r}: "
                "its triggers do not match the event (name or if_ filter)"
            )
        finished = driver.run_until_finished(run, max_messages=max_messages)
        if finished.status == "completed" and stubs.unreached:
            raise InProcessError(
                f"run {finished.id} of workflow {wf.id!r} completed without reaching the "
                f"stubbed step(s) {stubs.unreached}; its steps were "
                f"{list(finished.steps.order_by('position').values_list('step_id', flat=True))}"
            )
        return finished
