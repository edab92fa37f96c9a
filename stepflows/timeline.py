"""Run timelines, drawn server-side as SVG (no JavaScript, no front-end build).

One lane per run (its whole span) and per step, on a shared time axis. Inside a
step's lane, one bar per attempt: failed attempts are red and marked with a
cross. Steps of one ``step.parallel`` call sit in consecutive lanes on a shaded
band, so their bars visibly overlap in time. Durable waits (``step.sleep``,
``step.wait_for_event``, ``step.invoke``) have bars of their own colour, from
when the wait began to when it ended; a wait still pending is drawn dashed up
to now, with its wake-up time (a sleep's due time, a wait's timeout) marked.
Several runs can share one axis (the compare page): either on the wall clock
(``relative=False``) or each from its own start (``relative=True``).

Every text that comes from users (step ids, error messages, workflow ids) is
escaped; the result is a ``SafeString`` ready for a template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

#: Lanes drawn per run at most; a note says how many more steps there are.
MAX_STEP_LANES = 200

WIDTH = 960
LABEL_WIDTH = 220
RIGHT_PAD = 24
ROW = 22
TOP = 8
AXIS = 30

STEP_FILL = {
    "completed": "#d5ecd9",
    "failed": "#f5d0cc",
    "running": "#d3e3f7",
    "scheduled": "#ececec",
}
RUN_FILL = {
    "completed": "#3d8b4f",
    "failed": "#c0392b",
    "running": "#2f6fb5",
    "waiting": "#7a8fa8",
    "queued": "#9a9a9a",
    "cancelled": "#8a6d3b",
    # Never started: a rate limit or a singleton said no (the reason is in the title).
    "skipped": "#9b8bb4",
}
ATTEMPT_OK = "#2e7d3e"
ATTEMPT_FAILED = "#c0392b"
ATTEMPT_OPEN = "#2f6fb5"

#: Step.kind of the durable waits, and how their bars look (see the legend template).
WAIT_KINDS = ("sleep", "event", "invoke")
WAIT_CLASS = {"sleep": "wait-sleep", "event": "wait-event", "invoke": "wait-invoke"}
WAIT_FILL = {"sleep": "#ddd0f0", "event": "#fbe3b0", "invoke": "#c8e7e7"}
WAIT_STROKE = {"sleep": "#7b5ea7", "event": "#b7791f", "invoke": "#2c7a7b"}
WAIT_NAME = {"sleep": "sleep", "event": "waiting for event", "invoke": "invoked run"}
#: A pending wait's wake-up time widens the axis only up to this many times its
#: drawn span, so a 30-day sleep does not squash the steps before it; a later
#: wake-up is written at the lane's right end instead.
DUE_STRETCH = 2.0


@dataclass
class AttemptBar:
    """One attempt of a step."""

    number: int
    start: datetime
    end: datetime | None
    error: str = ""
    worker: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)


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


@dataclass
class Track:
    """The lanes of one run, and the instant its time axis starts from."""

    run_id: str
    lanes: list[Lane]
    anchor: datetime | None
    hidden_steps: int = 0


def _parse(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


def _error_text(error: Any) -> str:
    if not error:
        return ""
    if isinstance(error, dict):
        return f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return str(error)


def attempts_of(step: Any) -> list[AttemptBar]:
    """The attempts recorded on a Step row, as bars."""
    bars = []
    for i, item in enumerate(step.attempts or []):
        if not isinstance(item, dict):
            continue
        start = _parse(item.get("started_at"))
        if start is None:
            continue
        bars.append(
            AttemptBar(
                number=int(item.get("number", i)),
                start=start,
                end=_parse(item.get("ended_at")),
                error=_error_text(item.get("error")),
                worker=str(item.get("worker") or ""),
            )
        )
    return bars


def track_for_run(run: Any, steps: Sequence[Any], *, label: str | None = None) -> Track:
    """The lanes of one run: its own span first, then its steps in call order."""
    run_lane = Lane(
        label=label or f"{run.workflow_id} {str(run.pk)[:8]}",
        kind="run",
        status=str(run.status),
        start=run.started_at or run.created_at,
        end=run.ended_at,
        title=f"run {run.pk} of {run.workflow_id}: {run.status}{_skipped(run)}",
    )
    lanes = [run_lane]
    ordered = sorted(steps, key=lambda s: s.position)
    # The latest end of the steps drawn so far: where a wait with no start of its own began.
    latest = run_lane.start
    for step in ordered[:MAX_STEP_LANES]:
        kind = str(getattr(step, "kind", "") or "run")
        lane = wait_lane(step, kind, latest) if kind in WAIT_KINDS else _code_lane(step)
        lanes.append(lane)
        for t in (lane.start, lane.end):
            if t is not None and (latest is None or t > latest):
                latest = t
    return Track(
        run_id=str(run.pk),
        lanes=lanes,
        anchor=run_lane.start,
        hidden_steps=max(0, len(ordered) - MAX_STEP_LANES),
    )


def _skipped(run: Any) -> str:
    """Why a skipped run never started, for its lane's title."""
    error = getattr(run, "error", None)
    error = error if isinstance(error, dict) else {}
    return f" ({error.get('message')})" if run.status == "skipped" and error.get("message") else ""


def _code_lane(step: Any) -> Lane:
    attempts = attempts_of(step)
    start = step.started_at or (attempts[0].start if attempts else None)
    end = step.ended_at
    if end is None and step.status != "running" and attempts:
        end = attempts[-1].end
    return Lane(
        label=step.step_id,
        kind="step",
        status=str(step.status),
        start=start,
        end=end,
        attempts=attempts,
        group=step.group,
        title=f"step {step.step_id}: {step.status}, {len(attempts)} attempt(s)",
    )


def wait_lane(step: Any, kind: str, after: datetime | None) -> Lane:
    """A durable wait's lane: from when it began to when it ended (or now, while pending).

    It began at the step's ``started_at`` if the engine recorded one, else at the
    ``since`` of its details, else when the steps before it ended (``after``).
    """
    wait = step.wait if isinstance(getattr(step, "wait", None), dict) else {}
    wake_at = getattr(step, "wake_at", None) or _parse(wait.get("until"))
    pending = step.status not in ("completed", "failed")
    start = step.started_at or _parse(wait.get("since")) or after
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


def local_time(value: datetime | None) -> str:
    """A wake-up time as people read it: local time, the date only when not today."""
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    if local.date() == timezone.localdate():
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


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


def format_seconds(seconds: float) -> str:
    """A short duration label: 250 ms, 1.5 s, 2 min 5 s."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


class _Canvas:
    def __init__(self, origin: datetime, span: float, now: datetime) -> None:
        self.origin = origin
        self.span = span
        self.now = now
        self.plot = WIDTH - LABEL_WIDTH - RIGHT_PAD
        self.parts: list[str] = []

    def x(self, t: datetime, shift: float) -> float:
        return LABEL_WIDTH + ((t - self.origin).total_seconds() - shift) / self.span * self.plot

    def rect(
        self,
        cls: str,
        x0: float,
        x1: float,
        y: float,
        h: float,
        fill: str,
        *,
        style: str = "",
        **data: Any,
    ) -> None:
        """A bar; ``style`` is extra presentation attributes (constants, never user text)."""
        width = max(x1 - x0, 2.0)
        attrs = "".join(f' data-{k.replace("_", "-")}="{escape(v)}"' for k, v in data.items())
        self.parts.append(
            f'<rect class="{cls}" x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{h:.1f}" rx="2" fill="{fill}"{style}{attrs}/>'
        )

    @property
    def right(self) -> float:
        return LABEL_WIDTH + self.plot

    def text(self, x: float, y: float, content: str, **attrs: Any) -> None:
        # Trailing "_" lets a caller pass a keyword such as class_.
        extra = "".join(
            f' {k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items()
        )
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>')


def _span(tracks: Iterable[Track], relative: bool, now: datetime) -> tuple[datetime, float]:
    starts: list[float] = []
    ends: list[float] = []
    dues: list[float] = []
    times = [t.anchor for t in tracks if t.anchor is not None]
    if not times:
        return now, 1.0
    origin = min(times)
    for track in tracks:
        shift = _shift(track, origin, relative)
        for lane in track.lanes:
            if lane.start is None:
                continue
            starts.append((lane.start - origin).total_seconds() - shift)
            end = lane.end or now
            ends.append((end - origin).total_seconds() - shift)
            for a in lane.attempts:
                ends.append(((a.end or now) - origin).total_seconds() - shift)
            if lane.due is not None:
                dues.append((lane.due - origin).total_seconds() - shift)
    lo = min(starts, default=0.0)
    hi = max(ends, default=1.0)
    # Pending wake-ups due soon widen the axis; far ones would squash everything else.
    reach = hi - lo
    for due in dues:
        if due > hi and due - lo <= DUE_STRETCH * reach:
            hi = due
    if lo < 0:
        # Something started before its run's anchor (a clock skew): widen to show it.
        origin = origin + timedelta(seconds=lo)
        hi -= lo
    return origin, max(hi, 0.001)


def _shift(track: Track, origin: datetime, relative: bool) -> float:
    if not relative or track.anchor is None:
        return 0.0
    return (track.anchor - origin).total_seconds()


def render(
    tracks: Sequence[Track], *, relative: bool = False, now: datetime | None = None
) -> SafeString:
    """Draw the tracks on one time axis; returns an escaped, ready-to-embed <svg>."""
    now = now or timezone.now()
    origin, span = _span(tracks, relative, now)
    canvas = _Canvas(origin, span, now)
    lane_count = sum(len(t.lanes) + (1 if t.hidden_steps else 0) for t in tracks)
    height = TOP + lane_count * ROW + AXIS
    plot_bottom = TOP + lane_count * ROW

    _grid(canvas, plot_bottom)
    y: float = TOP
    for index, track in enumerate(tracks):
        shift = _shift(track, origin, relative)
        if index:
            canvas.parts.append(
                f'<line class="track-separator" x1="0" y1="{y:.1f}" x2="{WIDTH}" y2="{y:.1f}" '
                'stroke="#bbb"/>'
            )
        _draw_groups(canvas, track, y)
        for lane in track.lanes:
            _draw_lane(canvas, track, lane, y, shift)
            y += ROW
        if track.hidden_steps:
            canvas.text(8, y + 15, f"... {track.hidden_steps} more steps not drawn", fill="#666")
            y += ROW
    body = "".join(canvas.parts)
    label = "timeline of " + ", ".join(t.run_id for t in tracks)
    # Every interpolated text above went through escape().
    return mark_safe(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stepflows-timeline" '
        # Scales to the page's width; the viewBox keeps the proportions.
        f'width="100%" viewBox="0 0 {WIDTH} {height}" style="display:block;height:auto" '
        f'role="img" aria-label="{escape(label)}" data-span="{span:.6f}" '
        f'data-relative="{str(relative).lower()}" font-family="sans-serif" font-size="11">'
        f"{body}</svg>"
    )


def _grid(canvas: _Canvas, bottom: float) -> None:
    step = _nice_step(canvas.span)
    tick = 0.0
    while tick <= canvas.span + step * 0.001:
        x = LABEL_WIDTH + tick / canvas.span * canvas.plot
        canvas.parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{bottom + 4}" '
            'stroke="#e2e2e2"/>'
        )
        canvas.text(x, bottom + 18, format_seconds(tick), text_anchor="middle", fill="#555")
        tick += step


def _draw_groups(canvas: _Canvas, track: Track, y: float) -> None:
    """Shade the lanes of each parallel group, behind the lanes drawn next."""
    row = y
    groups: dict[int, list[float]] = {}
    for lane in track.lanes:
        if lane.group is not None:
            groups.setdefault(lane.group, []).append(row)
        row += ROW
    for group, rows in groups.items():
        top, bottom = min(rows), max(rows) + ROW
        canvas.parts.append(
            f'<rect class="parallel-group" data-group="{group}" x="2" y="{top:.1f}" '
            f'width="{WIDTH - 4}" height="{bottom - top:.1f}" fill="#fff6d6" stroke="#f0d98a"/>'
        )
        canvas.text(4, top + 10, f"parallel x{len(rows)}", fill="#9a7b12", font_size="9")


def _draw_lane(canvas: _Canvas, track: Track, lane: Lane, y: float, shift: float) -> None:
    indent = 8 if lane.kind == "run" else 60 if lane.group is not None else 20
    label = lane.label if len(lane.label) <= 30 else lane.label[:29] + "\u2026"
    weight = "bold" if lane.kind == "run" else "normal"
    classes = f"lane {lane.kind}" + (f" {WAIT_CLASS[lane.wait]}" if lane.wait else "")
    canvas.parts.append(f'<g class="{classes}"><title>{escape(lane.title)}</title>')
    canvas.text(indent, y + 15, label, font_weight=weight, fill="#222")
    if lane.start is None:
        canvas.text(LABEL_WIDTH + 4, y + 15, f"({lane.status}, not started)", fill="#888")
        canvas.parts.append("</g>")
        return
    end = lane.end or canvas.now
    x0, x1 = canvas.x(lane.start, shift), canvas.x(end, shift)
    data = {
        "run": track.run_id,
        "status": lane.status,
        "start": f"{(lane.start - canvas.origin).total_seconds() - shift:.6f}",
        "end": f"{(end - canvas.origin).total_seconds() - shift:.6f}",
    }
    if lane.kind == "run":
        fill = RUN_FILL.get(lane.status, "#999")
        canvas.rect(f"run-bar {lane.status}", x0, x1, y + 5, ROW - 10, fill, **data)
    elif lane.wait:
        _draw_wait(canvas, lane, x0, x1, y, shift, data)
    else:
        fill = STEP_FILL.get(lane.status, "#eee")
        canvas.rect(
            f"step-bar {lane.status}", x0, x1, y + 3, ROW - 6, fill, step=lane.label, **data
        )
        for attempt in lane.attempts:
            _draw_attempt(canvas, track, lane, attempt, y, shift)
    canvas.parts.append("</g>")


def _draw_wait(
    canvas: _Canvas,
    lane: Lane,
    x0: float,
    x1: float,
    y: float,
    shift: float,
    data: dict[str, str],
) -> None:
    """A durable wait: one bar of its kind's colour; dashed while pending, then its wake-up."""
    stroke = WAIT_STROKE[lane.wait]
    state = "pending" if lane.pending else lane.status
    style = f' stroke="{stroke}"'
    if lane.pending:
        style += ' stroke-dasharray="4 2" fill-opacity="0.6"'
    elif lane.status == "failed":
        style = f' stroke="{ATTEMPT_FAILED}" stroke-width="1.5"'
    extra = {"step": lane.label, "wait": lane.wait, "pending": str(lane.pending).lower()}
    if lane.due is not None:
        extra["due"] = f"{(lane.due - canvas.origin).total_seconds() - shift:.6f}"
    canvas.rect(
        f"wait-bar {WAIT_CLASS[lane.wait]} {state}",
        x0,
        x1,
        y + 3,
        ROW - 6,
        WAIT_FILL[lane.wait],
        style=style,
        **extra,
        **data,
    )
    if lane.due is None:
        return
    due_x = canvas.x(lane.due, shift)
    if due_x <= canvas.right + 0.5:
        if due_x > x1:
            # The rest of the wait, still to come: an outline up to the wake-up.
            canvas.parts.append(
                f'<rect class="wait-due" x="{x1:.1f}" y="{y + 3:.1f}" '
                f'width="{due_x - x1:.1f}" height="{ROW - 6}" rx="2" fill="none" '
                f'stroke="{stroke}" stroke-dasharray="2 3"/>'
            )
        canvas.parts.append(
            f'<line class="wake-mark" x1="{due_x:.1f}" y1="{y + 1:.1f}" x2="{due_x:.1f}" '
            f'y2="{y + ROW - 1:.1f}" stroke="{stroke}" stroke-width="2"/>'
        )
    else:
        canvas.text(
            canvas.right - 2,
            y + 15,
            f"wakes {local_time(lane.due)} \u2192",
            text_anchor="end",
            fill=stroke,
            class_="wake-later",
        )


def _draw_attempt(
    canvas: _Canvas, track: Track, lane: Lane, attempt: AttemptBar, y: float, shift: float
) -> None:
    end = attempt.end or canvas.now
    x0, x1 = canvas.x(attempt.start, shift), canvas.x(end, shift)
    state = "failed" if attempt.failed else ("ok" if attempt.end else "open")
    fill = {"failed": ATTEMPT_FAILED, "ok": ATTEMPT_OK, "open": ATTEMPT_OPEN}[state]
    seconds = (end - attempt.start).total_seconds()
    what = f"failed: {attempt.error}" if attempt.failed else state
    tip = f"{lane.label} attempt {attempt.number + 1} {what} ({format_seconds(seconds)}"
    tip += f", {attempt.worker})" if attempt.worker else ")"
    canvas.parts.append(f'<g class="attempt {state}"><title>{escape(tip)}</title>')
    canvas.rect(
        f"attempt-bar {state}",
        x0,
        x1,
        y + ROW - 10,
        6,
        fill,
        run=track.run_id,
        step=lane.label,
        attempt=str(attempt.number + 1),
        start=f"{(attempt.start - canvas.origin).total_seconds() - shift:.6f}",
        end=f"{(end - canvas.origin).total_seconds() - shift:.6f}",
    )
    if attempt.failed:
        cx = max(x1, x0 + 2)
        canvas.parts.append(
            f'<path class="failed-mark" d="M{cx - 3:.1f} {y + 2:.1f} l6 6 m0 -6 l-6 6" '
            f'stroke="{ATTEMPT_FAILED}" stroke-width="1.6"/>'
        )
    canvas.parts.append("</g>")
