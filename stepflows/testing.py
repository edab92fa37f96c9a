"""Helpers for testing workflows against real Celery workers.

```python
from stepflows.testing import CeleryWorker, wait_for_run

with CeleryWorker("project", env={...}, concurrency=2) as worker:
    [event_id] = stepflows.send("shop/order.paid", data={...})
    run = wait_for_run(Run.objects.get(event_id=event_id).id)
```
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from .models import Run


class CeleryWorker:
    """A real ``celery worker`` process (prefork pool) started for a test."""

    def __init__(
        self,
        app: str,
        *,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        queues: str | None = None,
        logfile: str | Path | None = None,
        name: str = "stepflows-test",
        cwd: str | Path | None = None,
        ready_timeout: float = 60.0,
        beat: bool = False,
    ) -> None:
        self.app = app
        self.env = {**os.environ, **(env or {})}
        self.concurrency = concurrency
        self.queues = queues
        self.logfile = Path(logfile) if logfile else Path(f"/tmp/{name}-{os.getpid()}.log")
        self.name = name
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        # Embed celery beat (-B): the periodic tasks, such as stepflows' recovery.
        self.beat = beat
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(self.concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{self.name}-{os.getpid()}-{time.monotonic_ns()}@%h",
            "--logfile",
            str(self.logfile),
        ]
        if self.queues:
            cmd += ["--queues", self.queues]
        if self.beat:
            schedule = self.logfile.with_name(f"{self.name}-beat-schedule")
            cmd += ["--beat", "--schedule", str(schedule)]
        return cmd

    def start(self) -> CeleryWorker:
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        stderr = Path(str(self.logfile) + ".stderr")
        offset = stderr.stat().st_size if stderr.exists() else 0
        with open(stderr, "ab") as err:
            # Celery prints its " ready." banner line on stderr.
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"celery worker exited at start; see {stderr}")
            with open(stderr, "rb") as f:
                f.seek(offset)
                if b" ready." in f.read():
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"celery worker not ready after {self.ready_timeout}s; see {self.logfile}"
        )

    def child_pids(self) -> list[int]:
        """Process ids of the pool's child processes."""
        if self.process is None:
            return []
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in path.read_text().split()]
        except OSError:
            return []

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool children."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=30)
        self.process = None

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not exit in time."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
        self.kill()

    def __enter__(self) -> CeleryWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_runs(
    run_ids: Iterable[Any], *, timeout: float = 120.0, interval: float = 0.05
) -> list[Run]:
    """Poll until every run is finished (completed, failed or cancelled); return them.

    Raises TimeoutError naming the runs still unfinished.
    """
    ids = [str(r) for r in run_ids]
    deadline = time.monotonic() + timeout
    while True:
        runs = list(Run.objects.filter(id__in=ids))
        if len(runs) == len(ids) and all(r.is_finished for r in runs):
            order = {rid: i for i, rid in enumerate(ids)}
            return sorted(runs, key=lambda r: order[str(r.id)])
        if time.monotonic() > deadline:
            pending = [f"{r.workflow_id} {r.id} ({r.status})" for r in runs if not r.is_finished]
            raise TimeoutError(f"runs not finished after {timeout}s: {pending}")
        time.sleep(interval)


def wait_for_run(run_id: Any, *, timeout: float = 120.0) -> Run:
    """Poll until the run is finished; return it."""
    return wait_for_runs([run_id], timeout=timeout)[0]


def runs_for(event_ids: Iterable[str]) -> list[Run]:
    """The runs the given events started, oldest first."""
    return list(Run.objects.filter(event_id__in=list(event_ids)).order_by("created_at"))
