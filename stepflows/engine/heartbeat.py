"""Heartbeats: keep the leases of what this process is executing alive.

One daemon thread per worker process renews, every ``LEASE_SECONDS / 3``,
the lease of each run whose code is running here (inline steps included)
and marks each parallel step this process executes as ``running`` with a
fresh ``heartbeat_at``. So a lease expires only when the process stops
(killed, paused, cut off from the database), within ``LEASE_SECONDS``,
however long a step runs; and recovery leaves a live step alone for hours.

A parallel step is first marked after :data:`FIRST_STEP_BEAT` seconds: a
step quicker than that costs no write for it. So is an inline step (one run
under the run's lease, :class:`RunningStep`): once its code has run that
long, its row shows it ``running``, with the worker, the attempt and since
when, and its ``heartbeat_at`` is renewed with the run's lease. The
invocation ends the showing before it records the attempt, waiting for a
write in progress, so the running row never overwrites the recorded attempt.
When a renewal finds the lease
held by another token (taken over, or the run cancelled), the lease is
marked lost; the invocation checks it before each step and stops
(:class:`~stepflows.store.fence.LeaseLost`).

The thread has its own database connection (Django's are per thread).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection

from .. import clock
from ..conf import get_settings
from ..store import runs as run_store
from ..store import steps as step_store
from ..store.fence import LeaseLost
from ..store.records import StepRecord

logger = logging.getLogger("stepflows.engine")

# Seconds before a parallel step is first marked running.
FIRST_STEP_BEAT = 0.5
# Seconds between looks for an inline step to show, while a run's lease is held.
STEP_LOOK = FIRST_STEP_BEAT / 2
# Seconds to wait before trying again when a heartbeat could not reach the database.
RETRY_AFTER_ERROR = 1.0


@dataclass(eq=False)
class Lease:
    """A lease this process holds: a run (``step_id`` None) or one parallel step."""

    run_id: Any
    token: str
    step_id: str | None = None
    attempt_count: int = 0  # a step's attempts recorded before this one
    due: float = 0.0
    lost: bool = False
    tracked: bool = field(default=True, repr=False)
    # A run's lease: the inline step whose code runs now (set and cleared by the invocation).
    step: RunningStep | None = field(default=None, repr=False)

    def check(self) -> None:
        """Raise LeaseLost when a heartbeat found the lease taken from this process."""
        if self.lost:
            what = f"run {self.run_id}"
            if self.step_id is not None:
                what = f"step {self.step_id!r} of {what}"
            raise LeaseLost(what)


@dataclass(eq=False)
class RunningStep:
    """An inline step whose code runs now, shown ``running`` once it runs past FIRST_STEP_BEAT.

    ``build`` makes the row to show from the moment the attempt started (the
    running attempt has no ``ended_at``); it is called only for a step that
    runs that long, so a fast step costs no more than creating this object.
    ``exists``: the step has a row already. The heartbeat writes under
    ``lock`` and only while ``ended`` is False; the invocation sets ``ended``
    under the same lock before it records the attempt.
    """

    lease: Lease
    build: Callable[[datetime], StepRecord]
    exists: bool
    began: float  # time.monotonic() when the attempt started
    due: float
    step_id: str = ""
    shown: bool = False
    ended: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Heartbeat:
    """The thread that renews the leases registered with :meth:`hold`."""

    def __init__(self) -> None:
        self.leases: set[Lease] = set()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.pid = 0
        self.enabled = True

    @property
    def interval(self) -> float:
        return get_settings().LEASE_SECONDS / 3

    def hold(
        self, run_id: Any, token: str, step_id: str | None = None, attempt_count: int = 0
    ) -> Lease:
        """Keep this lease alive until :meth:`release`."""
        first = FIRST_STEP_BEAT if step_id is not None else self.interval
        lease = Lease(run_id, token, step_id, attempt_count, due=time.monotonic() + first)
        if not self.enabled:
            lease.tracked = False
            return lease
        with self.cond:
            self._ensure_thread()
            self.leases.add(lease)
            self.cond.notify()
        return lease

    def release(self, lease: Lease) -> None:
        if not lease.tracked:
            return
        with self.cond:
            self.leases.discard(lease)

    @contextmanager
    def holding(
        self, run_id: Any, token: str, step_id: str | None = None, attempt_count: int = 0
    ) -> Iterator[Lease]:
        lease = self.hold(run_id, token, step_id, attempt_count)
        try:
            yield lease
        finally:
            self.release(lease)

    def show_running(
        self, lease: Lease, build: Callable[[datetime], StepRecord], *, exists: bool
    ) -> RunningStep | None:
        """Show this inline step as running if its code runs past FIRST_STEP_BEAT.

        Costs no lock and no write: the thread, which wakes often while a run's
        lease is held, finds the step on the lease.
        """
        if not lease.tracked:
            return None
        began = time.monotonic()
        step = RunningStep(lease, build, exists, began, due=began + FIRST_STEP_BEAT)
        lease.step = step
        return step

    def stop_running(self, step: RunningStep) -> bool:
        """The attempt is over: show it no longer; True when its running row was written.

        Waits for a write in progress, so that nothing is shown after this returns.
        """
        if step.lease.step is step:
            step.lease.step = None
        with step.lock:
            step.ended = True
            return step.shown

    def _ensure_thread(self) -> None:
        # A prefork pool child inherits no threads: start one in each process.
        if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
            self.pid = os.getpid()
            self.thread = threading.Thread(
                target=self._loop, name="stepflows-heartbeat", daemon=True
            )
            self.thread.start()

    def _loop(self) -> None:
        while True:
            with self.cond:
                now = time.monotonic()
                due = [lease for lease in self.leases if lease.due <= now]
                steps = [
                    step
                    for lease in self.leases
                    if (step := lease.step) is not None and step.due <= now
                ]
                if not due and not steps:
                    nearest = min((lease.due for lease in self.leases), default=now + 60)
                    if any(lease.step_id is None for lease in self.leases):
                        # An inline step may start at any moment: look again soon.
                        nearest = min(nearest, now + STEP_LOOK)
                    self.cond.wait(timeout=max(0.01, nearest - now))
                    continue
            try:
                self._beat(due)
                self._show(steps)
            except Exception:  # the database is away: try again soon
                logger.warning("heartbeat: could not renew leases; retrying", exc_info=True)
                connection.close()
                retry = time.monotonic() + RETRY_AFTER_ERROR
                for lease in due:
                    lease.due = retry
                for step in steps:
                    step.due = retry

    def _show(self, steps: list[RunningStep]) -> None:
        """Show each inline step as running, or renew its heartbeat, under the run's lease."""
        for step in steps:
            lease = step.lease
            with step.lock:
                if step.ended or lease.lost:
                    continue
                if not step.shown:
                    ran = time.monotonic() - step.began
                    record = step.build(clock.now() - timedelta(seconds=ran))
                    step.step_id = record.step_id
                    step.shown = step_store.show_running(
                        lease.run_id, lease.token, record, exists=step.exists
                    )
                    ok = step.shown
                else:
                    ok = step_store.beat_running(lease.run_id, step.step_id, lease.token)
                if not ok:
                    # The run is no longer ours (its renewal will say so), or the step
                    # was recorded meanwhile: show nothing more for it.
                    step.ended = True
                step.due = time.monotonic() + self.interval

    def _beat(self, due: list[Lease]) -> None:
        runs = [(lease.run_id, lease.token) for lease in due if lease.step_id is None]
        steps = [
            (lease.run_id, lease.step_id, lease.token, lease.attempt_count)
            for lease in due
            if lease.step_id is not None
        ]
        lost_runs = set(run_store.renew_run_leases(runs)) if runs else set()
        lost_steps = set(step_store.beat_steps(steps)) if steps else set()
        following = time.monotonic() + self.interval
        for lease in due:
            key: tuple[Any, ...] = (lease.run_id, lease.token)
            if lease.step_id is not None:
                key = (lease.run_id, lease.step_id, lease.token, lease.attempt_count)
            if key in lost_runs or key in lost_steps:
                if lease in self.leases:
                    lease.lost = True
                    logger.warning(
                        "%s: lost its lease (taken over or cancelled); stopping it",
                        f"run {lease.run_id}"
                        if lease.step_id is None
                        else f"step {lease.step_id!r} of run {lease.run_id}",
                    )
                with self.cond:
                    self.leases.discard(lease)
            else:
                lease.due = following


heartbeat = Heartbeat()


@contextmanager
def disabled() -> Iterator[None]:
    """No heartbeat thread inside the block (the in-process test driver)."""
    was, heartbeat.enabled = heartbeat.enabled, False
    try:
        yield
    finally:
        heartbeat.enabled = was
