"""Flow control in the database: who may start, when, and who waits for a slot.

Every decision is taken under a lock on one (workflow, limit, key): a
transaction-level advisory lock on PostgreSQL, the database write lock on
SQLite. So the limits are exact across any number of workers and senders.

- At send (:func:`throttle_start`, :func:`rate_allows`, :func:`idempotent`,
  :func:`singleton_active`, :func:`debounce`, :func:`batch`): a run is
  created now, created to start later (held, ``Run.waiting_for`` says by
  what and ``Run.wait_until`` until when), merged into a pending run, skipped
  (recorded as such), or not created at all.
- At start (:func:`take_slots`): a run of a workflow with a concurrency limit
  takes one slot per key, or waits, queued in the database, in line. A slot
  is given back when the run ends or starts a durable wait
  (:func:`release_slots`), and handed over at once to the first run in line.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from .. import dispatch
from ..models import (
    ACTIVE_RUN_STATUSES,
    FINISHED_RUN_STATUSES,
    FlowState,
    Run,
    RunStatus,
    Slot,
    WaitKind,
)
from .fence import after_commit, hold_name

# Advisory-lock namespace of flow-control keys (store.waits uses another).
LOCK_NAMESPACE = 0x5F20
HELD_AT_SEND = (WaitKind.THROTTLE, WaitKind.DEBOUNCE, WaitKind.BATCH)


def lock(workflow_id: str, kind: str, key: str) -> None:
    """Hold (workflow, kind, key) until the transaction ends."""
    hold_name(LOCK_NAMESPACE, f"{workflow_id}\x1f{kind}\x1f{key}")


def _state(workflow_id: str, kind: str, key: str) -> FlowState:
    lock(workflow_id, kind, key)
    state, _ = FlowState.objects.get_or_create(workflow_id=workflow_id, kind=kind, key=key)
    return state


# -- at send --------------------------------------------------------------------------


def throttle_start(
    workflow_id: str, key: str, *, limit: int, period: float, burst: int, now: datetime
) -> datetime:
    """When a new run may start under a throttle: now, or later (first come, first served).

    The generic cell rate algorithm: runs are spaced ``period / limit`` apart,
    with up to ``burst`` at once; each run takes the next start time.
    """
    spacing = timedelta(seconds=period / limit)
    tolerance = spacing * (burst - 1)
    with transaction.atomic():
        state = _state(workflow_id, "throttle", key)
        tat = max(state.at or now, now)
        start = max(now, tat - tolerance)
        state.at = max(tat, start) + spacing
        state.count += 1
        state.save(update_fields=["at", "count"])
    return start


def rate_allows(workflow_id: str, key: str, *, limit: int, period: float, now: datetime) -> bool:
    """Whether a run may start under a rate limit (``limit`` per ``period``), counting it."""
    spacing = timedelta(seconds=period / limit)
    tolerance = timedelta(seconds=period) - spacing
    with transaction.atomic():
        state = _state(workflow_id, "rate_limit", key)
        tat = max(state.at or now, now)
        if now < tat - tolerance:
            return False
        state.at = tat + spacing
        state.count += 1
        state.save(update_fields=["at", "count"])
    return True


def idempotent(workflow_id: str, key: str, *, period: float, now: datetime) -> bool:
    """True when ``key`` was seen within ``period``: the event starts no run."""
    with transaction.atomic():
        state = _state(workflow_id, "idempotency", key)
        if state.until is not None and state.until > now:
            return True
        state.until = now + timedelta(seconds=period)
        state.count += 1
        state.save(update_fields=["until", "count"])
    return False


def singleton_active(workflow_id: str, key: str) -> Any:
    """The id of the key's active run, or None. Locks the key for this transaction."""
    state = _state(workflow_id, "singleton", key)
    if state.run_id is None:
        return None
    active = Run.objects.filter(id=state.run_id, status__in=ACTIVE_RUN_STATUSES).exists()
    return state.run_id if active else None


def set_singleton(workflow_id: str, key: str, run_id: Any) -> None:
    FlowState.objects.filter(workflow_id=workflow_id, kind="singleton", key=key).update(
        run_id=run_id
    )


def _pending(state: FlowState, kind: str) -> Any:
    """The run a debounce or batch collects events into, locked; None when it started."""
    if state.run_id is None:
        return None
    return (
        Run.objects.select_for_update()
        .filter(id=state.run_id, status=RunStatus.QUEUED, waiting_for=kind)
        .first()
    )


def debounce(
    workflow_id: str,
    key: str,
    run: Run,
    *,
    period: float,
    timeout: float | None,
    now: datetime,
) -> bool:
    """Debounce: True when the event joined the pending run (it now carries this event);
    else ``run`` is set up to start ``period`` from now and becomes the pending one."""
    with transaction.atomic():
        state = _state(workflow_id, "debounce", key)
        pending = _pending(state, WaitKind.DEBOUNCE)
        if pending is not None:
            due = now + timedelta(seconds=period)
            if timeout is not None and state.at is not None:
                due = min(due, state.at + timedelta(seconds=timeout))
            Run.objects.filter(id=pending.id).update(event_id=run.event_id, wait_until=due)
            return True
        due = now + timedelta(seconds=period if timeout is None else min(period, timeout))
        _hold(run, WaitKind.DEBOUNCE, key, due)
        state.run_id, state.at = run.pk, now
        state.count += 1
        state.save(update_fields=["run_id", "at", "count"])
    return False


def batch(
    workflow_id: str, key: str, run: Run, *, max_size: int, timeout: float, now: datetime
) -> bool:
    """Batch: True when the event joined the pending batch run (which starts once full);
    else ``run`` starts a new batch, held until full or ``timeout`` from now."""
    with transaction.atomic():
        state = _state(workflow_id, "batch", key)
        pending = _pending(state, WaitKind.BATCH)
        if pending is not None:
            events = [*(pending.batch or []), run.event_id]
            fields: dict[str, Any] = {"batch": events}
            if len(events) >= max_size:
                fields |= {"waiting_for": "", "wait_until": None}
                after_commit([dispatch.execute_run(pending.id)])
            Run.objects.filter(id=pending.id).update(**fields)
            return True
        run.batch = [run.event_id]
        if max_size > 1:
            _hold(run, WaitKind.BATCH, key, now + timedelta(seconds=timeout))
            state.run_id = run.pk
        else:
            state.run_id = None
        state.at = now
        state.count += 1
        state.save(update_fields=["run_id", "at", "count"])
    return False


def _hold(run: Run, kind: str, key: str, until: datetime | None) -> None:
    run.waiting_for = kind
    run.flow_key = key
    run.wait_until = until


def hold_until(run: Run, kind: str, key: str, until: datetime) -> None:
    """Create ``run`` held (not published) until ``until`` (a throttle)."""
    _hold(run, kind, key, until)


def skip(run: Run, reason: str, now: datetime) -> None:
    """Create ``run`` as skipped: never started, with the reason."""
    run.status = RunStatus.SKIPPED
    run.ended_at = now
    run.error = {"type": "Skipped", "message": reason, "traceback": ""}


def release_held(now: datetime, limit: int = 1000) -> int:
    """Start the queued runs whose throttle, debounce or batch time has come."""
    ids = list(
        Run.objects.filter(
            status=RunStatus.QUEUED, waiting_for__in=HELD_AT_SEND, wait_until__lte=now
        ).values_list("id", flat=True)[:limit]
    )
    started = 0
    for run_id in ids:
        with transaction.atomic():
            # Due still: a debounce may have moved the time on since the query.
            done = Run.objects.filter(
                id=run_id,
                status=RunStatus.QUEUED,
                waiting_for__in=HELD_AT_SEND,
                wait_until__lte=now,
            ).update(waiting_for="", wait_until=None, progress_at=now)
            if done:
                after_commit([dispatch.execute_run(run_id)])
                started += 1
    return started


# -- concurrency slots ----------------------------------------------------------------


def take_slots(
    run_id: Any,
    token: str,
    workflow_id: str,
    keys: list[tuple[str, int]],
    priority_at: datetime,
    first_claim: bool = False,
) -> bool:
    """Hold one slot per (key, limit) for the run this token holds; True when it may run.

    A run that already holds a key's slot (handed over, or held before a
    recovery resumed it) keeps it. When a key is full, or other runs are in
    line for it, the run gives back the slots it has, and waits in line
    (queued, ``waiting_for="concurrency"``), released by this transaction.
    ``first_claim``: the run had not started before; in line it is not started
    yet either (its ``started_at`` is cleared).
    """
    with transaction.atomic():
        ordered = sorted(keys)
        for key, _ in ordered:
            lock(workflow_id, "concurrency", key)
        held = set(Slot.objects.filter(run_id=run_id).values_list("key", flat=True))
        blocked = None
        for key, limit in ordered:
            if key in held:
                continue
            in_line = (
                Run.objects.filter(
                    workflow_id=workflow_id,
                    status=RunStatus.QUEUED,
                    waiting_for=WaitKind.CONCURRENCY,
                    flow_key=key,
                )
                .exclude(id=run_id)
                .exists()
            )
            if in_line or Slot.objects.filter(workflow_id=workflow_id, key=key).count() >= limit:
                blocked = key
                break
        if blocked is None:
            Slot.objects.bulk_create(
                [
                    Slot(workflow_id=workflow_id, key=k, run_id=run_id)
                    for k, _ in ordered
                    if k not in held
                ]
            )
            return True
        not_started: dict[str, Any] = {"started_at": None} if first_claim else {}
        waiting = Run.objects.filter(id=run_id, lease_owner=token, status=RunStatus.RUNNING).update(
            **not_started,
            status=RunStatus.QUEUED,
            waiting_for=WaitKind.CONCURRENCY,
            flow_key=blocked,
            priority_at=priority_at,
            lease_owner="",
            lease_expires_at=None,
        )
        if waiting and held:
            _give_back(run_id)
    return False


def release_slots(run_id: Any) -> None:
    """The run ended or went into a durable wait: give its slots back, in the caller's
    transaction, each to the first run in line for it."""
    slots = _held_by(run_id)
    if slots:
        _give_back(run_id, slots)


def _held_by(run_id: Any) -> list[tuple[str, str]]:
    return list(Slot.objects.filter(run_id=run_id).values_list("workflow_id", "key"))


def _give_back(run_id: Any, slots: list[tuple[str, str]] | None = None) -> None:
    slots = _held_by(run_id) if slots is None else slots
    for workflow_id, key in sorted(slots):
        lock(workflow_id, "concurrency", key)
    Slot.objects.filter(run_id=run_id).delete()
    for workflow_id, key in slots:
        hand_over(workflow_id, key)


def hand_over(workflow_id: str, key: str) -> Any:
    """Give a free slot of ``key`` to the first run in line; returns its id, or None."""
    nxt = (
        Run.objects.select_for_update()
        .filter(
            workflow_id=workflow_id,
            status=RunStatus.QUEUED,
            waiting_for=WaitKind.CONCURRENCY,
            flow_key=key,
        )
        .order_by("priority_at", "created_at")
        .values_list("id", flat=True)
        .first()
    )
    if nxt is None:
        return None
    Slot.objects.create(workflow_id=workflow_id, key=key, run_id=nxt)
    Run.objects.filter(id=nxt).update(waiting_for="", flow_key="")
    after_commit([dispatch.execute_run(nxt)])
    return nxt


def rebalance(limits: dict[str, list[int]], limit: int = 1000) -> int:
    """The sweep's check: slots of ended runs come back, and a key with a free slot and a
    line gets it (a hand-over whose message was lost, a limit raised). Returns hand-overs."""
    moved = 0
    dead = list(
        Slot.objects.filter(run__status__in=FINISHED_RUN_STATUSES).values_list("run_id", flat=True)[
            :limit
        ]
    )
    for run_id in set(dead):
        with transaction.atomic():
            _give_back(run_id)
    lines = (
        Run.objects.filter(status=RunStatus.QUEUED, waiting_for=WaitKind.CONCURRENCY)
        .values_list("workflow_id", "flow_key")
        .distinct()[:limit]
    )
    for workflow_id, key in list(lines):
        cap = _limit_of(limits.get(workflow_id, []), key)
        if cap is None:
            continue
        with transaction.atomic():
            lock(workflow_id, "concurrency", key)
            while Slot.objects.filter(workflow_id=workflow_id, key=key).count() < cap:
                if hand_over(workflow_id, key) is None:
                    break
                moved += 1
    return moved


def _limit_of(limits: list[int], key: str) -> int | None:
    index, _, _ = key.partition(":")
    if not index.isdigit() or int(index) >= len(limits):
        return None
    return limits[int(index)]


def counts(workflow_id: str | None = None) -> list[dict[str, Any]]:
    """Per workflow and key: slots in use, and runs in line or held, for admin and the CLI."""
    from django.db.models import Count

    slots = Slot.objects.all()
    held = Run.objects.filter(status=RunStatus.QUEUED).exclude(waiting_for="")
    if workflow_id is not None:
        slots = slots.filter(workflow_id=workflow_id)
        held = held.filter(workflow_id=workflow_id)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for wf, key, n in slots.values_list("workflow_id", "key").annotate(n=Count("id")):
        rows.setdefault((wf, "concurrency", key), {"running": 0, "waiting": 0})["running"] = n
    for wf, kind, key, n in held.values_list("workflow_id", "waiting_for", "flow_key").annotate(
        n=Count("id")
    ):
        rows.setdefault((wf, kind, key), {"running": 0, "waiting": 0})["waiting"] = n
    return [
        {"workflow_id": wf, "limit": kind, "key": key, **values}
        for (wf, kind, key), values in sorted(rows.items())
    ]
