"""The periodic sweep (the ``stepflows.recover`` beat task): everything that is due by time.

One pass cancels runs past their timeouts (each told through :mod:`.report`,
as no worker ends them), wakes runs whose sleep or wait is due (:mod:`.waits`),
starts runs that a throttle, debounce or batch held until now, gives
concurrency slots of ended runs back and sends the cron ticks that came due.
Recovery of stuck runs (:mod:`.recovery`) runs after it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from ..flow import CRON_EVENT, Cron
from ..models import FlowState, Run, RunStatus
from ..registry import Workflow, registry
from ..store import admission
from ..store import runs as run_store
from ..store import waits as wait_store
from ..store.waits import database_now
from . import report
from .waits import wake_due_runs

logger = logging.getLogger("stepflows.sweep")

MISSED_TICK_GRACE = timedelta(minutes=2)
"""With ``catch_up=False``, a tick older than this when the sweep sees it is skipped."""


def sweep(now: datetime | None = None, *, limit: int = 1000) -> dict[str, int]:
    """One pass of everything due at ``now`` (the database clock by default)."""
    now = now or database_now()
    # Before the wake-ups: a run past its timeout is cancelled, not woken first.
    timed_out = time_out_runs(now, limit=limit)
    counts = wake_due_runs(now, limit=limit)
    counts["timed_out"] = timed_out
    counts["released"] = admission.release_held(now, limit)
    limits = {
        wf.id: [c.limit for c in wf.flow.concurrency]
        for wf in registry.all()
        if wf.flow.concurrency
    }
    counts["slots_handed_over"] = admission.rebalance(limits, limit) if limits else 0
    counts["cron_ticks"] = sum(
        send_due_ticks(wf, cron, now) for wf in registry.all() for cron in wf.flow.crons
    )
    return counts


def time_out_runs(now: datetime, *, limit: int = 1000) -> int:
    """Cancel the runs past their ``Timeouts``; returns how many.

    ``start``: queued and never started within it; ``finish``: not ended within
    it of its start. A run it invoked is cancelled with it (see
    ``store.runs.cancel_run``).
    """
    count = 0
    for wf in registry.all():
        start, finish = wf.timeouts
        if start is not None:
            before = now - timedelta(seconds=start)
            for run_id in wait_store.queued_longer_than(wf.id, before, limit):
                reason = f"timed out: not started within {start:g} s (Timeouts.start)"
                count += _time_out(run_id, reason)
        if finish is not None:
            before = now - timedelta(seconds=finish)
            for run_id in wait_store.running_longer_than(wf.id, before, limit):
                reason = (
                    f"timed out: not finished within {finish:g} s of its start (Timeouts.finish)"
                )
                count += _time_out(run_id, reason)
    return count


def _time_out(run_id: Any, reason: str) -> bool:
    """Cancel one run and the runs it invoked, and report each that this cancelled."""
    invoked = _invoked_below(run_id)
    if not run_store.cancel_run(run_id, reason=reason):
        return False  # it ended meanwhile
    ended = Run.objects.only(*report.RUN_FIELDS, "error").filter(
        id__in=[run_id, *invoked], status=RunStatus.CANCELLED
    )
    for run in sorted(ended, key=lambda r: r.id != run_id):
        report.run_stopped(run, RunStatus.CANCELLED, run.error)
    return True


def _invoked_below(run_id: Any) -> list[Any]:
    """The runs this run invoked, active or blocked, at any depth (cancel_run cancels them
    with it)."""
    found: list[Any] = []
    level = wait_store.invoked_children(run_id)
    while level:
        found += level
        level = [child for parent in level for child in wait_store.invoked_children(parent)]
    return found


def tick_event_id(workflow_id: str, tick: datetime) -> str:
    """The id of a tick's event: the same in every process, so a tick starts one run."""
    event_id = f"stepflows-cron:{workflow_id}:{tick.isoformat()}"
    if len(event_id) > 255:
        event_id = f"stepflows-cron:{hashlib.sha256(event_id.encode()).hexdigest()}"
    return event_id


def send_due_ticks(wf: Workflow, cron: Cron, now: datetime) -> int:
    """Send the latest tick of ``cron`` that came due since the last one sent (one at most).

    The first time a schedule is seen, it starts from now. Several ticks missed
    while nothing ran start one run, of the latest (none with
    ``catch_up=False`` when that one is older than MISSED_TICK_GRACE).
    """
    from ..sending import as_events, send_events

    with transaction.atomic():
        admission.lock(wf.id, "cron", cron.expression)
        state, created = FlowState.objects.get_or_create(
            workflow_id=wf.id, kind="cron", key=cron.expression, defaults={"at": now}
        )
        if created or state.at is None:
            return 0
        ticks = cron.ticks_after(state.at, now)
        if not ticks:
            return 0
        tick = ticks[-1]
        state.at = tick
        state.count += 1
        state.save(update_fields=["at", "count"])
        if not cron.catch_up and now - tick > MISSED_TICK_GRACE:
            logger.info("workflow %r: cron tick %s missed; skipped (catch_up=False)", wf.id, tick)
            return 0
        events = as_events(
            CRON_EVENT,
            {"workflow": wf.id, "tick": tick.isoformat(), "expression": cron.expression},
            id=tick_event_id(wf.id, tick),
            ts=tick,
        )
        send_events(events)
    if len(ticks) > 1:
        logger.warning(
            "workflow %r: %d cron ticks were missed; started one run, for %s",
            wf.id,
            len(ticks),
            tick,
        )
    return 1
