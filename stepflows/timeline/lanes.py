"""What a timeline shows, read from rows: lanes of runs and steps, their attempts, markers.

Nothing here draws; :mod:`stepflows.timeline.draw` turns these into SVG. Rows
are read by attribute name only (``run.created_at``, ``step.attempts``...), so
tests and other pages can pass plain objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.utils import timezone

#: Lanes drawn per run at most; a note says how many more steps there are.
MAX_STEP_LANES = 200

#: Step.kind of the durable waits.
WAIT_KINDS = ("sleep", "event", "invoke")
#: Step.kind of step.patched's stored answers: no work, not drawn.
PATCH_KIND = "patch"
WAIT_NAME = {"sleep": "sleep", "event": "waiting for event", "invoke": "invoked run"}
#: Run statuses in which a step not started yet may still start.
ACTIVE = ("queued", "running", "waiting")


@dataclass
class AttemptBar:
    """One attempt of a step: from its start to its end (``None`` while it runs)."""

    number: int
    start: datetime
    end: datetime | None
    error: str = ""
    worker: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)

    def seconds(self, now: datetime) -> float:
        return ((self.end or now) - self.start).total_seconds()


@dataclass
class Marker:
    """Where a person (or code, or the command line) retried, cancelled or replayed a run."""

    at: datetime
    action: str
    by: str
    reason: str = ""

    @property
    def title(self) -> str:
        text = f"{self.action} by {self.by or 'unknown'} at {local_time(self.at, full=True)}"
        return text + (f": {self.reason}" if self.reason else "")


@dataclass
class Lane:
    """One row of the picture: a run's span or a step with its attempts."""

    label: str
    kind: str  # "run" or "step"
    status: str
    start: datetime | None
    end: datetime | None
    attempts: list[AttemptBar] = field(default_factory=list)
    group: int | None = None
    title: str = ""
    # A durable wait ("sleep", "event", "invoke"; "" for code): drawn as one bar of
    # its own colour, dashed while pending, with its wake-up time (``due``) marked.
    wait: str = ""
    pending: bool = False
    due: datetime | None = None
    # Run lane: when the run was created (its event sent); queued until ``start``.
    queued_from: datetime | None = None
    # Step lane: when the step was handed to Celery; waiting until its first attempt.
    waiting_from: datetime | None = None
    # Step lane: a failed attempt's retry still to come.
    retry_at: datetime | None = None
    # Step lane: attempts made before the last manual retry of the run (the gap
    # after them is a person's retry, not a backoff).
    attempts_base: int = 0


@dataclass
class Track:
    """The lanes of one run, the instant its time axis starts from, and its markers."""

    run_id: str
    lanes: list[Lane]
    anchor: datetime | None
    hidden_steps: int = 0
    markers: list[Marker] = field(default_factory=list)


def parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error)


def worker_name(token: str) -> str:
    """The host:pid part of a lease token (as ``stepflows.store.fence.worker_of``)."""
    return token.rsplit(":", 1)[0] if token.count(":") >= 2 else token


def attempts_of(step: Any) -> list[AttemptBar]:
    """The attempts recorded on a Step row, as bars.

    A step marked running by its worker's heartbeat whose attempt is not
    recorded yet gets an open bar from when it was marked (or its last
    attempt ended), on the worker holding it.
    """
    bars = []
    for i, item in enumerate(step.attempts or []):
        if not isinstance(item, dict):
            continue
        start = parse_time(item.get("started_at"))
        if start is None:
            continue
        bars.append(
            AttemptBar(
                number=int(item.get("number", i)),
                start=start,
                end=parse_time(item.get("ended_at")),
                error=error_text(item.get("error")),
                worker=str(item.get("worker") or ""),
            )
        )
    started = getattr(step, "started_at", None)
    if str(step.status) == "running" and started and not any(b.end is None for b in bars):
        since = max([started, *(b.end for b in bars if b.end)])
        number = int(getattr(step, "attempt_count", len(bars)) or len(bars))
        owner = worker_name(str(getattr(step, "lease_owner", "") or ""))
        bars.append(AttemptBar(number=number, start=since, end=None, worker=owner))
    return bars


def markers_of(interventions: Iterable[Any] | None) -> list[Marker]:
    """Markers from ``Intervention`` rows (anything with .at, .action, .by, .reason)."""
    found = []
    for item in interventions or ():
        at = parse_time(getattr(item, "at", None))
        if at is None:
            continue
        found.append(
            Marker(
                at=at,
                action=str(getattr(item, "action", "") or "?"),
                by=str(getattr(item, "by", "") or ""),
                reason=str(getattr(item, "reason", "") or ""),
            )
        )
    return sorted(found, key=lambda m: m.at)


def track_for_run(
    run: Any,
    steps: Sequence[Any],
    *,
    label: str | None = None,
    interventions: Iterable[Any] | None = None,
) -> Track:
    """The lanes of one run: its own span first, then its steps in call order.

    ``interventions``: the run's ``Intervention`` rows (or objects with ``at``,
    ``action``, ``by`` and ``reason``), drawn as markers across its lanes.
    """
    created = getattr(run, "created_at", None)
    started = run.started_at
    run_lane = Lane(
        label=label or f"{run.workflow_id} {str(run.pk)[:8]}",
        kind="run",
        status=str(run.status),
        start=started or created,
        end=run.ended_at,
        title=f"run {run.pk} of {run.workflow_id}: {run.status}{_skipped(run)}",
        # Queued: sent, not yet picked up by a worker.
        queued_from=created if started and created and created < started else None,
    )
    lanes = [run_lane]
    ordered = sorted(
        (s for s in steps if getattr(s, "kind", "") != PATCH_KIND), key=lambda s: s.position
    )
    active = str(run.status) in ACTIVE
    # The latest end of the steps drawn so far: where a wait with no start of its own
    # began, and when a parallel group was handed to Celery.
    latest = run_lane.start
    scheduled: dict[int, datetime | None] = {}
    for step in ordered[:MAX_STEP_LANES]:
        kind = str(getattr(step, "kind", "") or "run")
        if kind in WAIT_KINDS:
            lane = wait_lane(step, kind, latest)
        else:
            if step.group is not None and step.group not in scheduled:
                scheduled[step.group] = latest
            since = getattr(step, "scheduled_at", None) or (
                scheduled.get(step.group) if step.group is not None else None
            )
            lane = _code_lane(step, since, active)
        lanes.append(lane)
        for t in (lane.start, lane.end):
            if t is not None and (latest is None or t > latest):
                latest = t
    return Track(
        run_id=str(run.pk),
        lanes=lanes,
        anchor=run_lane.queued_from or run_lane.start,
        hidden_steps=max(0, len(ordered) - MAX_STEP_LANES),
        markers=markers_of(interventions),
    )


def _skipped(run: Any) -> str:
    """Why a skipped run never started, for its lane's title."""
    error = getattr(run, "error", None)
    error = error if isinstance(error, dict) else {}
    return f" ({error.get('message')})" if run.status == "skipped" and error.get("message") else ""


def _code_lane(step: Any, scheduled: datetime | None, active: bool) -> Lane:
    attempts = attempts_of(step)
    start = step.started_at or (attempts[0].start if attempts else None)
    end = step.ended_at
    if end is None and step.status != "running" and attempts:
        end = attempts[-1].end
    first = attempts[0].start if attempts else None
    # Waiting: handed to Celery, not yet started by a worker. A step never
    # started waits while its run may still start it.
    waiting_from = None
    if scheduled is not None:
        if first is not None and scheduled < first:
            waiting_from = scheduled
        elif first is None and active and step.status == "scheduled":
            waiting_from = scheduled
    retry_at = getattr(step, "retry_at", None)
    pending_retry = step.status == "scheduled" and retry_at is not None and attempts
    running = sum(a.seconds(timezone.now()) for a in attempts)
    title = f"step {step.step_id}: {step.status}, {len(attempts)} attempt(s)"
    if attempts:
        title += f", running {format_seconds(running)}"
    return Lane(
        label=step.step_id,
        kind="step",
        status=str(step.status),
        start=start,
        end=end,
        attempts=attempts,
        group=step.group,
        title=title,
        waiting_from=waiting_from,
        retry_at=retry_at if pending_retry else None,
        attempts_base=int(getattr(step, "attempts_base", 0) or 0),
    )


def wait_lane(step: Any, kind: str, after: datetime | None) -> Lane:
    """A durable wait's lane: from when it began to when it ended (or now, while pending).

    It began at the step's ``started_at`` if the engine recorded one, else at the
    ``since`` of its details, else when the steps before it ended (``after``).
    """
    wait = step.wait if isinstance(getattr(step, "wait", None), dict) else {}
    wake_at = getattr(step, "wake_at", None) or parse_time(wait.get("until"))
    pending = step.status not in ("completed", "failed")
    start = step.started_at or parse_time(wait.get("since")) or after
    end = None if pending else (step.ended_at or wake_at)
    state = "pending" if pending else str(step.status)
    title = f"{WAIT_NAME[kind]} {step.step_id}: {describe_wait(kind, wait, wake_at)} ({state})"
    return Lane(
        label=step.step_id,
        kind="step",
        status=str(step.status),
        start=start,
        end=end,
        group=step.group,
        title=title,
        wait=kind,
        pending=pending,
        due=wake_at if pending else None,
    )


def local_time(value: datetime | None, *, full: bool = False) -> str:
    """A time as people read it: local time, the date only when not today (or ``full``)."""
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    if local.date() == timezone.localdate() and not full:
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M:%S")


def describe_wait(kind: str, wait: dict[str, Any] | None, wake_at: datetime | None) -> str:
    """What a durable wait waits for, in plain words (escaped by whoever shows it)."""
    wait = wait or {}
    if kind == "sleep":
        return f"until {local_time(wake_at)}" if wake_at else "sleep"
    if kind == "event":
        text = f"event {wait.get('event') or '?'}"
        if wait.get("match"):
            text += f" with {wait['match']} = {json.dumps(wait.get('value'), default=str)}"
        if wait.get("filter"):
            text += " (and an if_ filter)"
        return text + (f", times out at {local_time(wake_at)}" if wake_at else ", no timeout")
    if kind == "invoke":
        child = str(wait.get("child") or "")
        text = f"run {child[:8] or '?'} of {wait.get('workflow') or '?'}"
        return text + (f", times out at {local_time(wake_at)}" if wake_at else "")
    return kind


def format_seconds(seconds: float) -> str:
    """A short duration label: 250 ms, 1.5 s, 2 min 5 s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"
