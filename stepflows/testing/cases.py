"""Mixins for Django's test cases: workflows in the test process, or on a live worker."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, ClassVar

from ..events import Event
from ..models import Run
from ..registry import Workflow
from .in_process import InProcess, run_workflow
from .live import start_worker
from .stubs import StepStubs
from .workers import CeleryWorker, runs_for, wait_for_runs


class WorkflowTestMixin:
    """For ``django.test.TestCase``: each test drives workflows in the test process.

    Every test runs inside an :class:`InProcess` driver (``self.workflows``):
    whatever stepflows sends to Celery is queued in memory and run here, on
    the test database, inside the test's transaction; nothing needs a worker
    or a broker. ``step_stubs`` stubs steps by id for every test of the class
    (see :mod:`stepflows.testing.stubs`); ``steps=`` does so for one call.

    ::

        class FulfilOrderTests(WorkflowTestMixin, TestCase):
            step_stubs = {"charge-card": {"charged": True}}

            def test_completes(self):
                run = self.run_workflow(fulfil_order, {"order_id": 7})
                self.assertEqual(run.status, "completed")

            def test_waits_for_payment_then_times_out(self):
                [run] = self.send_and_run("shop/order.created", {"order_id": 7})
                self.assertEqual(run.status, "waiting")
                self.advance(3 * 86400)                # past the wait's timeout
                run.refresh_from_db()
    """

    step_stubs: ClassVar[StepStubs] = {}
    workflows: InProcess

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.workflows = InProcess(steps=self.step_stubs)
        self.workflows.__enter__()
        self.addCleanup(self.workflows.__exit__, None, None, None)  # type: ignore[attr-defined]

    def run_workflow(
        self,
        workflow: Callable[..., Any] | Workflow | str,
        data: Any = None,
        *,
        event: str | Event | None = None,
        steps: StepStubs | None = None,
    ) -> Run:
        """Send an event for ``workflow`` and run it to its end, sleeps and timeouts jumped
        over; the run, refreshed (see :func:`stepflows.testing.run_workflow`)."""
        return run_workflow(workflow, data, event=event, steps=steps)

    def send_and_run(self, event: str | Event, data: Any = None) -> list[Run]:
        """Send an event and run what is queued until nothing is; the runs it started.

        Runs that sleep or wait stay so (``status`` ``"waiting"``) until
        :meth:`advance` moves the clock past their time, or an event they wait
        for is sent.
        """
        from ..api import send

        event_ids = send(event, data) if isinstance(event, str) else send(event)
        self.workflows.run_until_idle()
        return runs_for(event_ids)

    def advance(self, seconds: float) -> int:
        """Move the engine's clock on, wake the runs then due, run what is queued."""
        return self.workflows.advance(seconds)


class LiveWorkerMixin:
    """For ``django.test.TransactionTestCase``: a real Celery worker for the class.

    ``setUpClass`` starts a worker process (``worker_concurrency`` prefork
    processes) on the test database and a queue of its own, whatever the
    project's logging or queue settings (see :mod:`stepflows.testing.live`);
    it is stopped after the class. Only transactional test cases work: the
    worker sees what the test committed, and a ``TestCase`` commits nothing.

    ::

        class FulfilOrderLiveTests(LiveWorkerMixin, TransactionTestCase):
            def test_completes_on_a_worker(self):
                [run] = self.send_and_wait("shop/order.paid", {"order_id": 7})
                self.assertEqual(run.status, "completed")
    """

    worker_concurrency: ClassVar[int] = 2
    stepflows_worker: ClassVar[CeleryWorker]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()  # type: ignore[misc]
        stack = ExitStack()
        cls.addClassCleanup(stack.close)  # type: ignore[attr-defined]
        cls.stepflows_worker = stack.enter_context(start_worker(concurrency=cls.worker_concurrency))

    def send_and_wait(
        self, event: str | Event, data: Any = None, *, timeout: float = 60.0
    ) -> list[Run]:
        """Send an event; wait until the runs it started finished; return them."""
        from ..api import send

        event_ids = send(event, data) if isinstance(event, str) else send(event)
        return wait_for_runs([run.id for run in runs_for(event_ids)], timeout=timeout)
