"""Helpers for testing workflows: in the test process, or against real Celery workers.

In the test process, on the test database, with no worker and no broker
(:func:`run_workflow`, :class:`InProcess`, :class:`WorkflowTestMixin`), step
functions stubbed by id::

    from stepflows.testing import run_workflow

    @pytest.mark.django_db
    def test_fulfil_order():
        run = run_workflow(fulfil_order, {"order_id": 7}, steps={"charge-card": {"ok": True}})
        assert run.status == "completed"

Against a real worker process on the test database and a private queue: the
pytest fixtures ``stepflows_worker`` and ``stepflows_settings`` (the plugin
:mod:`stepflows.pytest_plugin`, loaded by pytest once stepflows is installed),
or :class:`LiveWorkerMixin` for ``TransactionTestCase``; :class:`CeleryWorker`,
:func:`wait_for_run` underneath::

    def test_fulfil_order(stepflows_worker):
        [event_id] = stepflows.send("shop/order.paid", data={...})
        run = wait_for_run(Run.objects.get(event_id=event_id).id)
"""

from .cases import LiveWorkerMixin, WorkflowTestMixin
from .in_process import InProcess, InProcessError, run_on_commit_callbacks, run_workflow
from .live import WorkerSettings, start_worker, worker_settings
from .stubs import StepStubs
from .workers import CeleryWorker, WorkerStartError, runs_for, wait_for_run, wait_for_runs

__all__ = [
    "CeleryWorker",
    "InProcess",
    "InProcessError",
    "LiveWorkerMixin",
    "StepStubs",
    "WorkerSettings",
    "WorkerStartError",
    "WorkflowTestMixin",
    "run_on_commit_callbacks",
    "run_workflow",
    "runs_for",
    "start_worker",
    "wait_for_run",
    "wait_for_runs",
    "worker_settings",
]
