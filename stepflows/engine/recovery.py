"""Recovery: find runs that no message will ever move again, and resume them.

Celery loses work in known ways: a chord callback never published (a crash
between the join and the publish, or a header task delivered twice that
completes the join before every step is done), messages lost with a killed
worker (the embedded broker, or Redis before its visibility timeout), a worker
killed while it held a run or ran a parallel step. Each leaves a run active
with nothing on its way to it. :func:`recover_stuck_runs` finds those runs and
sends each a new wake-up message.

What is alive is told by heartbeats (:mod:`.heartbeat`): a run being
executed keeps its lease fresh, a parallel step being executed keeps its
``heartbeat_at`` fresh. So a dead worker's run or step is found within
``LEASE_SECONDS`` of its last heartbeat, and a live step is never second-guessed,
however long it runs.

Resuming is idempotent: a run is resumed with one conditional update (on its
status, wake-up number and recovery count), so two recoveries at once resume
it once; the message sent names the run's current wake-up, so it and any
delayed original are interchangeable and only the first to arrive acts. A run
that is not stuck is not touched; a run recovered before must stay idle twice
as long (per recovery) to count as stuck again. A run that needs recovery more
than ``MAX_RECOVERIES`` times is failed with :class:`~stepflows.exceptions.RecoveryLimitError`,
logged and signalled (``run_finished``) through :mod:`.report` once the failure is stored.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Max, Q
from django.db.models.functions import Coalesce

from .. import clock
from ..conf import get_settings
from ..exceptions import RecoveryLimitError
from ..models import Run, RunStatus, StepStatus
from ..store import runs as run_store
from . import report
from .attempts import error_dict

logger = logging.getLogger("stepflows.recovery")

REASONS = {
    "lease-expired": "a worker stopped while it executed the run (its lease expired)",
    "never-picked-up": "queued, and no worker ever started it",
    "no-callback": "every step of its parallel group finished, but no callback came",
    "steps-stalled": "its parallel steps made no progress (their messages were lost)",
    "step-heartbeat-lost": "a worker stopped while it ran one of its parallel steps "
    "(the step's heartbeat stopped)",
    "retry-overdue": "a retry came due, but no message came to run it",
}

_FINISHED = Q(steps__status__in=[StepStatus.COMPLETED, StepStatus.FAILED])


@dataclass(frozen=True)
class StuckRun:
    """A run that no message will move again, and why."""

    run_id: str
    workflow_id: str
    status: str
    wake: int
    recoveries: int
    reason: str

    def describe(self) -> str:
        return f"workflow {self.workflow_id!r}, run {self.run_id}: {REASONS[self.reason]}"


@dataclass
class RecoveryReport:
    """What one pass of the recovery found and did."""

    found: list[StuckRun] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        by_reason = Counter(s.reason for s in self.found)
        return {
            "found": len(self.found),
            "resumed": len(self.resumed),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            **{f"reason:{r}": n for r, n in sorted(by_reason.items())},
        }


def _stuck(run: Run, reason: str) -> StuckRun:
    return StuckRun(str(run.id), run.workflow_id, run.status, run.wake, run.recoveries, reason)


def _idle(latest: datetime, seconds: float, recoveries: int, now: datetime) -> bool:
    """Idle for ``seconds``, doubled for each earlier recovery of the run.

    A message that waits behind a long backlog looks lost; backing off keeps
    recovery from piling up messages for such runs (and from failing them).
    """
    return latest < now - timedelta(seconds=seconds * 2 ** min(recoveries, 12))


def find_stuck_runs(now: datetime | None = None, *, limit: int = 1000) -> list[StuckRun]:
    """Active runs that nothing will move again, oldest progress first."""
    now = now or clock.now()
    conf = get_settings()
    stale = run_store.stale_before(now)
    stall, join = conf.RECOVERY_STALL_SECONDS, conf.RECOVERY_JOIN_SECONDS
    found: list[StuckRun] = []

    expired = Run.objects.filter(status=RunStatus.RUNNING).lease_free(now)
    found += [_stuck(r, "lease-expired") for r in expired.order_by("lease_expires_at")[:limit]]

    # A run held by flow control waits for the sweep or a slot, not for a message.
    queued = (
        Run.objects.filter(status=RunStatus.QUEUED, waiting_for="")
        .lease_free(now)
        .annotate(last=Coalesce("progress_at", "created_at"))
        .filter(last__lt=now - timedelta(seconds=stall))
        .order_by("last")
    )
    found += [
        _stuck(r, "never-picked-up")
        for r in queued[: limit * 2]
        if _idle(r.last, stall, r.recoveries, now)
    ]

    # A durable wait (sleep, event, invoke) is woken by the sweep, an event or its child run.
    waiting = (
        Run.objects.filter(status=RunStatus.WAITING, waiting_for="")
        .lease_free(now)
        .annotate(last=Coalesce("progress_at", "created_at"))
        .filter(last__lt=now - timedelta(seconds=min(stall, join)))
        .annotate(
            unfinished=Count("steps", filter=~_FINISHED),
            unfinished_inline=Count("steps", filter=~_FINISHED & Q(steps__group__isnull=True)),
            alive_steps=Count(
                "steps",
                filter=Q(steps__status=StepStatus.RUNNING, steps__heartbeat_at__gte=stale),
            ),
            dead_steps=Count(
                "steps",
                filter=Q(steps__status=StepStatus.RUNNING, steps__heartbeat_at__lt=stale),
            ),
            last_start=Max("steps__started_at"),
            last_end=Max("steps__ended_at"),
            last_retry=Max("steps__retry_at"),
        )
        .order_by("last")
    )
    for run in waiting[: limit * 2]:
        reason = _waiting_reason(run, now=now, stall=stall, join=join)
        if reason is not None:
            found.append(_stuck(run, reason))
    return found[:limit]


def _waiting_reason(run: Any, *, now: datetime, stall: float, join: float) -> str | None:
    """Why a waiting run is stuck, or None when something may still move it."""
    moments = [run.last, run.last_start, run.last_end, run.last_retry]
    latest = max(m for m in moments if m is not None)
    if run.unfinished == 0:
        if not _idle(latest, join, run.recoveries, now):
            return None  # the callback (or the retry message) may be on its way
        # Suspended before its steps ended (or recovered since): it waits for a callback.
        after_steps = run.last_end is not None and (run.last <= run.last_end or run.recoveries)
        return "no-callback" if after_steps else "retry-overdue"
    if run.unfinished_inline:
        # An inline step waits for its retry; the message is due at progress_at.
        return "retry-overdue" if _idle(latest, join, run.recoveries, now) else None
    if run.dead_steps:
        # Its heartbeat is already LEASE_SECONDS old: wait only for our own last resume.
        return "step-heartbeat-lost" if _idle(run.last, join, run.recoveries, now) else None
    if run.alive_steps == run.unfinished:
        return None  # every unfinished step is running, its worker alive
    return "steps-stalled" if _idle(latest, stall, run.recoveries, now) else None


def resume_stuck_run(stuck: StuckRun) -> str:
    """Resume (or, past MAX_RECOVERIES, fail) one stuck run; returns what was done.

    ``"resumed"``, ``"failed"``, or ``"skipped"`` when the run moved meanwhile
    (another recovery, or a late message, got to it first).
    """
    limit = get_settings().MAX_RECOVERIES
    exc = RecoveryLimitError(
        f"{stuck.describe()}. It was found stuck {stuck.recoveries + 1} times without "
        f"progress in between; STEPFLOWS['MAX_RECOVERIES'] = {limit}. Something keeps "
        "stopping it (a step that kills its worker? messages lost?): check the worker logs, "
        "fix the cause, then retry the run."
    )
    error = error_dict(exc) | {"traceback": "", "reason": stuck.reason}
    outcome, count = run_store.recover_run(
        stuck.run_id,
        status=stuck.status,
        wake=stuck.wake,
        recoveries=stuck.recoveries,
        limit=limit,
        error=error,
        handler=_failure_handler(stuck, error) if stuck.recoveries + 1 >= limit else None,
    )
    if outcome == "failed":
        run = Run.objects.only(*report.RUN_FIELDS).filter(id=stuck.run_id).first()
        if run is not None:
            report.run_stopped(run, RunStatus.FAILED, error)
    elif outcome == "resumed":
        logger.warning(
            "%s; resumed it (recovery %d of at most %d since it last made progress)",
            stuck.describe(),
            count,
            limit,
            extra={
                "run_id": stuck.run_id,
                "workflow_id": stuck.workflow_id,
                "reason": stuck.reason,
                "recoveries": count,
            },
        )
    return outcome


def _failure_handler(stuck: StuckRun, error: dict[str, Any]) -> run_store.Handler | None:
    """The on_failure handler to start if this recovery fails the run."""
    from ..exceptions import WorkflowNotFoundError
    from ..registry import registry

    try:
        handler_id = registry.get(stuck.workflow_id).on_failure
    except WorkflowNotFoundError:
        return None
    run = Run.objects.select_related("event").filter(id=stuck.run_id).first()
    if handler_id is None or run is None:
        return None
    event = run.event
    data = {
        "run_id": stuck.run_id,
        "workflow_id": stuck.workflow_id,
        "error": error,
        "event": {"id": event.id, "name": event.name, "data": event.data},
    }
    return handler_id, data, run.resumes


def recover_stuck_runs(
    now: datetime | None = None, *, limit: int = 1000, dry_run: bool = False
) -> RecoveryReport:
    """One pass: find the stuck runs and resume each (fail those past MAX_RECOVERIES)."""
    now = now or clock.now()
    report = RecoveryReport(found=find_stuck_runs(now, limit=limit))
    if dry_run:
        return report
    for stuck in report.found:
        outcome = resume_stuck_run(stuck)
        getattr(report, outcome).append(stuck.run_id)
    return report
