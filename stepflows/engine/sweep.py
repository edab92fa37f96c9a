"""The periodic sweep (the ``stepflows.recover`` beat task): everything that is due by time.

One pass wakes runs whose sleep or wait is due (:mod:`.waits`), starts runs
that a throttle, debounce or batch held until now, gives concurrency slots of
ended runs back, sends the cron ticks that came due, and cancels runs past
their timeouts. Recovery of stuck runs (:mod:`.recovery`) runs after it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

from django.db import transaction

from ..flow import CRON_EVENT, Cron
from ..models import FlowState
from ..registry import Workflow, registry
from ..store import admission
from ..store.waits import database_now
from .waits import wake_due_runs

logger = logging.getLogger("stepflows.sweep")

MISSED_TICK_GRACE = timedelta(minutes=2)
"""With ``catch_up=False``, a tick older than this when the sweep sees it is skipped."""


def sweep(now: datetime | None = None, *, limit: int = 1000) -> dict[str, int]:
    """One pass of everything due at ``now`` (the database clock by default)."""
    now = now or database_now()
    counts = wake_due_runs(now, limit=limit)
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
