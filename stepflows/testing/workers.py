"""Real Celery worker processes for tests, and waiting for the runs they execute."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..models import Run

#: How long one control ping waits for the worker's answer, seconds.
PING_TIMEOUT = 0.5


class WorkerStartError(RuntimeError):
    """The worker process exited, or never answered a ping, while starting."""


class CeleryWorker:
    """A real ``celery worker`` process (prefork pool) started for a test.

    ``start()`` (or ``with CeleryWorker(...) as worker:``) returns once the
    worker answers Celery's control ping (``app.control.ping``), whatever the
    project's logging says: it reads no log line. The ping goes through the
    broker of ``control_app`` (default: this process's current Celery app, so
    the same broker settings as the worker's). Start-up fails with
    :class:`WorkerStartError`, and the tail of the worker's log, when the
    process exits first or does not answer within ``ready_timeout`` seconds.
    """

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
        control_app: Any = None,
        loglevel: str = "INFO",
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
        self.control_app = control_app
        self.loglevel = loglevel
        self.nodename = f"{name}-{os.getpid()}-{time.monotonic_ns()}@{socket.gethostname()}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def stderr_file(self) -> Path:
        return Path(str(self.logfile) + ".stderr")

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
            self.loglevel,
            "--hostname",
            self.nodename,
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
        """Start the process and wait until it answers a control ping."""
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_file, "ab") as err:
            self.process = subprocess.Popen(
                self.command(),
                env=self.env,
                cwd=self.cwd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _control(self) -> Any:
        if self.control_app is not None:
            return self.control_app.control
        from celery import current_app

        return current_app.control

    def _wait_until_ready(self) -> None:
        assert self.process is not None
        control = self._control()
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise WorkerStartError(
                    f"celery worker {self.nodename} exited with status {code} while "
                    f"starting.\n{self.log_tail()}"
                )
            if self._answers_ping(control):
                return
            if time.monotonic() > deadline:
                raise WorkerStartError(
                    f"celery worker {self.nodename} did not answer a control ping within "
                    f"{self.ready_timeout:g}s (is the test process using the worker's broker? "
                    f"is remote control disabled?).\n{self.log_tail()}"
                )

    def _answers_ping(self, control: Any) -> bool:
        """Whether the worker answers one control ping.

        A ping sent before the worker listens is lost: each waits PING_TIMEOUT at
        most. Each goes on a fresh broker connection, because a pooled one may
        predate a broker restart; a broker that is away answers nothing yet.
        """
        with control.app.connection_for_write() as conn:
            try:
                answers = control.ping(
                    destination=[self.nodename], timeout=PING_TIMEOUT, limit=1, connection=conn
                )
            except (*conn.connection_errors, *conn.channel_errors, OSError):
                return False
        return bool(answers)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the worker's log file and of its stderr, for error messages."""
        parts = []
        for path in (self.logfile, self.stderr_file):
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- last lines of {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or f"(nothing in {self.logfile} or {self.stderr_file})"

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
            # The main process only: it stops its pool itself. A SIGTERM to the whole
            # group kills pool children under the pool's result lock, and the main
            # process then waits on that lock until the timeout.
            os.kill(self.process.pid, signal.SIGTERM)
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
