"""The fault-injection suite: workers on the suite's own queue, recovery while waiting.

The suite's workers consume a queue of their own (the session's shared worker
never takes its messages), hold a run's lease for 10 s instead of 60 s (a
killed worker's run is recoverable sooner) and can be killed at will. While a
test waits for its runs, it calls the recovery every second, as
``celery beat`` would in production.

Each scenario appends its figures (runs, steps, faults injected, lost,
doubled) to ``var/faults-figures.jsonl``; the README table comes from there.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

FAULT_QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-faults"
FAULT_LEASE_SECONDS = "10"
FIGURES = Path(django_settings.BASE_DIR) / "var" / "faults-figures.jsonl"


def backend_label() -> str:
    from django.db import connection

    db = "PostgreSQL" if connection.vendor == "postgresql" else "SQLite"
    broker = str(os.environ.get("STEPFLOWS_TEST_BROKER_URL") or "filesystem://").split(":")[0]
    name = {"redis": "Redis", "amqp": "RabbitMQ", "filesystem": "filesystem"}.get(broker, broker)
    return f"{db} + {name}"


def record_figures(scenario: str, **figures: Any) -> None:
    """Append one scenario's measured figures (the README table is made from them)."""
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    line = {"scenario": scenario, "backend": backend_label(), "at": time.time(), **figures}
    with open(FIGURES, "a") as f:
        f.write(json.dumps(line) + "\n")


class FaultKit:
    """Start and kill workers, send events, wait for runs while recovering them."""

    def __init__(self, settings: Any = None) -> None:
        self.workers: list[Any] = []
        self.recovered = 0
        self.settings = settings
        self.paused: set[int] = set()

    def configure(self, **values: Any) -> None:
        """Override ``STEPFLOWS`` settings in this process (where ``recover`` runs)."""
        self.settings.STEPFLOWS = {**self.settings.STEPFLOWS, **values}

    def worker(
        self,
        name: str = "fault",
        concurrency: int = 1,
        env: dict[str, str] | None = None,
        *,
        beat: bool = False,
    ) -> Any:
        """Start a worker on the suite's queue; ``beat``: with embedded celery beat (-B)."""
        from stepflows.testing import CeleryWorker
        from tests.conftest import worker_env
        from tests.settings import SESSION_DIR

        worker = CeleryWorker(
            "project",
            env={
                **worker_env(),
                "STEPFLOWS_TEST_QUEUE": FAULT_QUEUE,
                "STEPFLOWS_TEST_LEASE_SECONDS": FAULT_LEASE_SECONDS,
                **(env or {}),
            },
            concurrency=concurrency,
            queues=FAULT_QUEUE,
            logfile=SESSION_DIR / f"{name}.log",
            name=name,
            cwd=django_settings.BASE_DIR,
            beat=beat,
        )
        self.workers.append(worker)
        return worker.start()

    def send(self, name: str, data: dict[str, Any]) -> str:
        import stepflows
        from stepflows.testing import runs_for

        [event_id] = stepflows.send(name, data=data)
        [run] = runs_for([event_id])
        return str(run.id)

    def recover(self) -> int:
        from stepflows.engine.recovery import recover_stuck_runs

        report = recover_stuck_runs()
        self.recovered += len(report.resumed)
        return len(report.resumed)

    def wait(self, run_ids: list[str], *, timeout: float = 240, recover: bool = True) -> list[Any]:
        """Wait until every run finished, running the recovery every second meanwhile."""
        from django.db import DatabaseError, connection

        from stepflows.models import Run

        deadline = time.monotonic() + timeout
        unfinished = len(run_ids)
        while True:
            try:
                unfinished = Run.objects.filter(id__in=run_ids).active().count()
                if unfinished == 0:
                    runs = {str(r.id): r for r in Run.objects.filter(id__in=run_ids)}
                    return [runs[r] for r in run_ids]
                if recover:
                    self.recover()
            except DatabaseError:
                # The database is restarting (a fault the test injected): reconnect later.
                connection.close()
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {w.name}:\n{w.log_tail(40)}" for w in self.workers)
                raise TimeoutError(f"{unfinished} of {len(run_ids)} runs unfinished\n{tails}")
            time.sleep(1.0)

    def pause(self, pid: int) -> None:
        """SIGSTOP a process (a pool child mid-step): it holds its lease but does nothing."""
        os.kill(pid, signal.SIGSTOP)
        self.paused.add(pid)

    def unpause(self, pid: int) -> None:
        """SIGCONT a process paused with ``pause``."""
        self.paused.discard(pid)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        for pid in list(self.paused):
            self.unpause(pid)
        for worker in self.workers:
            worker.kill()


def wait_until(check: Any, what: str, timeout: float = 60) -> Any:
    """Poll ``check()`` every 50 ms until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


def wait_for_marks(key: str, n: int = 1, timeout: float = 120) -> list[list[str]]:
    """Wait until ``key`` was marked n times; return the marks (pid, time, note)."""
    from tests.testapp.marks import lines

    deadline = time.monotonic() + timeout
    while len(lines(key)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"mark {key!r} not seen {n} times in {timeout}s")
        time.sleep(0.05)
    return lines(key)


def assert_nothing_recorded_after_cancel(run: Any) -> None:
    """A cancelled run recorded no step after its cancel but the one running then.

    That step is marked ``after_cancel``. The run's ``ended_at`` is stamped
    inside the cancel's transaction, a moment before it commits; a step
    recorded in that moment was recorded while the run was still running
    (the cancel was not visible yet), so it ends after ``ended_at`` without
    the mark. So, in step order: at most one unmarked step, then at most the
    marked one.
    """
    from stepflows.models import Step

    late = sorted(Step.objects.filter(run=run, ended_at__gt=run.ended_at), key=lambda s: s.position)
    assert len(late) <= 2, late
    assert all(s.attempts[-1].get("after_cancel") for s in late[1:]), late


@pytest.fixture
def faults(settings: Any) -> Iterator[FaultKit]:
    """A FaultKit; this test's messages go to the suite's queue."""
    settings.STEPFLOWS = {**settings.STEPFLOWS, "QUEUE": FAULT_QUEUE}
    kit = FaultKit(settings)
    try:
        yield kit
    finally:
        kit.stop_all()


def restart_command(variable: str, what: str) -> str | None:
    """The command that restarts a service, from the environment.

    Unset: the test skips, unless STEPFLOWS_REQUIRE_FAULTS=1 (CI), where it fails.
    """
    command = os.environ.get(variable)
    if command:
        return command
    if os.environ.get("STEPFLOWS_REQUIRE_FAULTS") == "1":
        pytest.fail(f"{variable} is not set: CI must say how to restart {what}")
    pytest.skip(f"set {variable} to the command that restarts {what}")
    return None
