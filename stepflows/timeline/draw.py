"""Drawing tracks as one SVG picture on a shared time axis (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .lanes import AttemptBar, Lane, Marker, Track, format_seconds, local_time, markers_of

WIDTH = 960
LABEL_WIDTH = 220
RIGHT_PAD = 24
ROW = 22
TOP = 8
AXIS = 30
#: Height of the row above a track's lanes that holds its markers' labels.
MARK_ROW = 12
#: No bar is drawn narrower than this (px), so a 1 ms step in a 1 s run stays
#: visible; the legend says so, and the bar's title gives the exact time.
MIN_BAR = 3.0
#: A lane whose bars span less than this (px) gets its running time written next to them.
NARROW = 40.0

RUN_FILL = {
    "completed": "#3d8b4f",
    "failed": "#c0392b",
    "running": "#2f6fb5",
    "waiting": "#7a8fa8",
    "queued": "#9a9a9a",
    "cancelled": "#8a6d3b",
    # Never started: a rate limit or a singleton said no (the reason is in the title).
    "skipped": "#9b8bb4",
    # Stopped by a change of code that does not match its steps, until a retry.
    "blocked": "#c7772b",
}
ATTEMPT_OK = "#2e7d3e"
ATTEMPT_FAILED = "#c0392b"
ATTEMPT_OPEN = "#2f6fb5"
#: Queued (sent, not picked up) and waiting (scheduled, not started): outlines, not bars.
QUEUED_FILL, QUEUED_STROKE = "#eeeeee", "#8c8c8c"
WAITING_FILL, WAITING_STROKE = "#ffffff", "#7f93ad"
BACKOFF = "#b06d00"
MARKER = "#6a1b9a"

WAIT_CLASS = {"sleep": "wait-sleep", "event": "wait-event", "invoke": "wait-invoke"}
WAIT_FILL = {"sleep": "#ddd0f0", "event": "#fbe3b0", "invoke": "#c8e7e7"}
WAIT_STROKE = {"sleep": "#7b5ea7", "event": "#b7791f", "invoke": "#2c7a7b"}
#: A pending wake-up (or retry, or marker) widens the axis only up to this many
#: times its drawn span, so a 30-day sleep does not squash the steps before it;
#: a later one is written at the lane's right end instead.
DUE_STRETCH = 2.0


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return mult * power
    return 10 * power


class _Canvas:
    def __init__(self, origin: datetime, span: float, now: datetime) -> None:
        self.origin = origin
        self.span = span
        self.now = now
        self.plot = WIDTH - LABEL_WIDTH - RIGHT_PAD
        self.parts: list[str] = []

    def x(self, t: datetime, shift: float) -> float:
        return LABEL_WIDTH + ((t - self.origin).total_seconds() - shift) / self.span * self.plot

    def at(self, t: datetime, shift: float) -> str:
        """``t`` in seconds on the axis, for a data- attribute."""
        return f"{(t - self.origin).total_seconds() - shift:.6f}"

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
    ) -> float:
        """A bar at least MIN_BAR wide; ``style``: extra attributes (constants, never user text).

        Returns the drawn width.
        """
        width = max(x1 - x0, MIN_BAR)
        if x1 - x0 < MIN_BAR:
            data["widened"] = "true"
        attrs = "".join(f' data-{k.replace("_", "-")}="{escape(v)}"' for k, v in data.items())
        self.parts.append(
            f'<rect class="{cls}" x="{x0:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{h:.1f}" rx="2" fill="{fill}"{style}{attrs}/>'
        )
        return width

    @property
    def right(self) -> float:
        return LABEL_WIDTH + self.plot

    def text(self, x: float, y: float, content: str, **attrs: Any) -> None:
        # Trailing "_" lets a caller pass a keyword such as class_.
        extra = "".join(
            f' {k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items()
        )
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(content)}</text>')

    def title(self, cls: str, text: str) -> None:
        self.parts.append(f'<g class="{cls}"><title>{escape(text)}</title>')


def _shift(track: Track, origin: datetime, relative: bool) -> float:
    if not relative or track.anchor is None:
        return 0.0
    return (track.anchor - origin).total_seconds()


def _span(
    tracks: Sequence[Track], relative: bool, now: datetime, extra: Sequence[Marker]
) -> tuple[datetime, float]:
    starts: list[float] = []
    ends: list[float] = []
    later: list[float] = []  # wake-ups, retries and markers: widen the axis only so far
    times = [t.anchor for t in tracks if t.anchor is not None]
    if not times:
        return now, 1.0
    origin = min(times)

    def sec(t: datetime, shift: float) -> float:
        return (t - origin).total_seconds() - shift

    for track in tracks:
        shift = _shift(track, origin, relative)
        for lane in track.lanes:
            for t in (lane.queued_from, lane.waiting_from):
                if t is not None:
                    starts.append(sec(t, shift))
            if lane.start is None:
                continue
            starts.append(sec(lane.start, shift))
            ends.append(sec(lane.end or now, shift))
            ends.extend(sec(a.end or now, shift) for a in lane.attempts)
            later.extend(sec(t, shift) for t in (lane.due, lane.retry_at) if t is not None)
        later.extend(sec(m.at, shift) for m in track.markers)
    later.extend(sec(m.at, 0.0) for m in extra)
    lo = min(starts, default=0.0)
    hi = max(ends, default=1.0)
    reach = hi - lo
    for second in later:
        if second > hi and second - lo <= DUE_STRETCH * reach:
            hi = second
        elif second < lo and hi - second <= DUE_STRETCH * reach:
            lo = second
    if lo < 0:
        # Something started before its run's anchor (a clock skew, a replay's
        # marker): widen to show it.
        origin = origin + timedelta(seconds=lo)
        hi -= lo
    return origin, max(hi, 0.001)


def render(
    tracks: Sequence[Track],
    *,
    relative: bool = False,
    now: datetime | None = None,
    interventions: Iterable[Any] | None = None,
) -> SafeString:
    """Draw the tracks on one time axis; returns an escaped, ready-to-embed <svg>.

    ``interventions`` are drawn as markers across the whole picture (a track's
    own, from :func:`track_for_run`, across its lanes only).
    """
    now = now or timezone.now()
    shared = markers_of(interventions)
    origin, span = _span(tracks, relative, now, shared)
    canvas = _Canvas(origin, span, now)
    top = TOP + (MARK_ROW if shared else 0)
    height: float = top + AXIS
    for t in tracks:
        height += (len(t.lanes) + (1 if t.hidden_steps else 0)) * ROW
        height += MARK_ROW if t.markers else 0
    plot_bottom = height - AXIS

    _grid(canvas, top, plot_bottom)
    y: float = top
    for index, track in enumerate(tracks):
        shift = _shift(track, origin, relative)
        if index:
            canvas.parts.append(
                f'<line class="track-separator" x1="0" y1="{y:.1f}" x2="{WIDTH}" y2="{y:.1f}" '
                'stroke="#bbb"/>'
            )
        track_top = y
        if track.markers:
            y += MARK_ROW
        _draw_groups(canvas, track, y)
        for lane in track.lanes:
            _draw_lane(canvas, track, lane, y, shift)
            y += ROW
        if track.hidden_steps:
            canvas.text(8, y + 15, f"... {track.hidden_steps} more steps not drawn", fill="#666")
            y += ROW
        for marker in track.markers:
            _draw_marker(canvas, marker, track_top, y, shift)
    for marker in shared:
        _draw_marker(canvas, marker, TOP, plot_bottom, 0.0)
    body = "".join(canvas.parts)
    label = "timeline of " + ", ".join(t.run_id for t in tracks)
    # Every interpolated text above went through escape().
    return mark_safe(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="stepflows-timeline" '
        # Scales to the page's width; the viewBox keeps the proportions.
        f'width="100%" viewBox="0 0 {WIDTH} {height:.0f}" style="display:block;height:auto" '
        f'role="img" aria-label="{escape(label)}" data-span="{span:.6f}" '
        f'data-min-bar="{MIN_BAR:g}" '
        f'data-relative="{str(relative).lower()}" font-family="sans-serif" font-size="11">'
        f"{body}</svg>"
    )


def _grid(canvas: _Canvas, top: float, bottom: float) -> None:
    step = _nice_step(canvas.span)
    tick = 0.0
    while tick <= canvas.span + step * 0.001:
        x = LABEL_WIDTH + tick / canvas.span * canvas.plot
        canvas.parts.append(
            f'<line class="tick" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 4}" '
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


def _draw_marker(canvas: _Canvas, marker: Marker, top: float, bottom: float, shift: float) -> None:
    """A person's (or code's) retry, cancel, replay...: a vertical line with its action."""
    x = canvas.x(marker.at, shift)
    later = x > canvas.right + 0.5
    x = min(max(x, LABEL_WIDTH), canvas.right)
    dash = ' stroke-dasharray="1 3"' if later else ""
    canvas.parts.append(
        f'<g class="intervention-marker" data-action="{escape(marker.action)}" '
        f'data-by="{escape(marker.by)}" data-at="{canvas.at(marker.at, shift)}">'
        f"<title>{escape(marker.title)}</title>"
        f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="{MARKER}" '
        f'stroke-width="1.5"{dash}/>'
    )
    label = f"{marker.action} ({marker.by})" if marker.by else marker.action
    if later:
        label = f"{label} at {local_time(marker.at)} \u2192"
    right = x > canvas.right - 120
    canvas.text(
        x - 3 if right else x + 3,
        top + 9,
        label,
        text_anchor="end" if right else "start",
        fill=MARKER,
        font_size="9",
    )
    canvas.parts.append("</g>")


def _draw_lane(canvas: _Canvas, track: Track, lane: Lane, y: float, shift: float) -> None:
    indent = 8 if lane.kind == "run" else 60 if lane.group is not None else 20
    label = lane.label if len(lane.label) <= 30 else lane.label[:29] + "\u2026"
    weight = "bold" if lane.kind == "run" else "normal"
    classes = f"lane {lane.kind}" + (f" {WAIT_CLASS[lane.wait]}" if lane.wait else "")
    canvas.parts.append(
        f'<g class="{classes}" data-step="{escape(lane.label)}"><title>{escape(lane.title)}</title>'
        if lane.kind == "step"
        else f'<g class="{classes}"><title>{escape(lane.title)}</title>'
    )
    canvas.text(indent, y + 15, label, font_weight=weight, fill="#222")
    if lane.waiting_from is not None:
        _draw_waiting(canvas, track, lane, y, shift)
    if lane.start is None:
        if lane.waiting_from is None:
            canvas.text(LABEL_WIDTH + 4, y + 15, f"({lane.status}, not started)", fill="#888")
        canvas.parts.append("</g>")
        return
    end = lane.end or canvas.now
    x0, x1 = canvas.x(lane.start, shift), canvas.x(end, shift)
    data = {
        "run": track.run_id,
        "status": lane.status,
        "start": canvas.at(lane.start, shift),
        "end": canvas.at(end, shift),
    }
    if lane.kind == "run":
        if lane.queued_from is not None:
            _draw_queued(canvas, track, lane, y, shift)
        fill = RUN_FILL.get(lane.status, "#999")
        canvas.rect(f"run-bar {lane.status}", x0, x1, y + 5, ROW - 10, fill, **data)
    elif lane.wait:
        _draw_wait(canvas, lane, x0, x1, y, shift, data)
    else:
        _draw_attempts(canvas, track, lane, y, shift)
    canvas.parts.append("</g>")


def _draw_queued(canvas: _Canvas, track: Track, lane: Lane, y: float, shift: float) -> None:
    """Queued: the run was created (its event sent) and no worker had picked it up yet."""
    assert lane.queued_from is not None and lane.start is not None
    seconds = (lane.start - lane.queued_from).total_seconds()
    canvas.title("queued", f"queued {format_seconds(seconds)}: sent, not yet picked up by a worker")
    canvas.rect(
        "queued-bar",
        canvas.x(lane.queued_from, shift),
        canvas.x(lane.start, shift),
        y + 5,
        ROW - 10,
        QUEUED_FILL,
        style=f' stroke="{QUEUED_STROKE}" stroke-dasharray="3 2"',
        run=track.run_id,
        start=canvas.at(lane.queued_from, shift),
        end=canvas.at(lane.start, shift),
    )
    canvas.parts.append("</g>")


def _draw_waiting(canvas: _Canvas, track: Track, lane: Lane, y: float, shift: float) -> None:
    """Waiting: the step was handed to Celery and no worker had started it yet."""
    assert lane.waiting_from is not None
    until = lane.attempts[0].start if lane.attempts else canvas.now
    seconds = (until - lane.waiting_from).total_seconds()
    still = "" if lane.attempts else " (still waiting)"
    canvas.title(
        "waiting",
        f"waiting {format_seconds(seconds)}{still}: scheduled, not yet started by a worker",
    )
    canvas.rect(
        "waiting-bar",
        canvas.x(lane.waiting_from, shift),
        canvas.x(until, shift),
        y + 7,
        ROW - 14,
        WAITING_FILL,
        style=f' stroke="{WAITING_STROKE}" stroke-dasharray="2 2"',
        run=track.run_id,
        step=lane.label,
        start=canvas.at(lane.waiting_from, shift),
        end=canvas.at(until, shift),
        pending=str(not lane.attempts).lower(),
    )
    canvas.parts.append("</g>")


def _draw_attempts(canvas: _Canvas, track: Track, lane: Lane, y: float, shift: float) -> None:
    """One bar per attempt; the gaps between them labelled with their backoff."""
    attempts = lane.attempts
    first_x = last_x = None
    for index, attempt in enumerate(attempts):
        if index:
            # A person's retry in between (not a backoff): the attempts before the
            # last manual retry are counted apart, and markers say when people acted.
            ended = attempts[index - 1].end
            manual = index == lane.attempts_base or any(
                ended is not None and ended <= m.at <= attempt.start for m in track.markers
            )
            _draw_gap(canvas, lane, attempts[index - 1], attempt.start, y, shift, manual=manual)
        x0, width = _draw_attempt(canvas, track, lane, attempt, y, shift)
        first_x = x0 if first_x is None else first_x
        last_x = x0 + width
    if attempts and lane.retry_at is not None:
        _draw_gap(canvas, lane, attempts[-1], lane.retry_at, y, shift, pending=True)
    elif first_x is not None and last_x is not None and last_x - first_x < NARROW:
        # Tiny bars: write how long the step ran beside them.
        running = sum(a.seconds(canvas.now) for a in attempts)
        canvas.text(
            last_x + 3,
            y + 15,
            format_seconds(running),
            fill="#555",
            font_size="9",
            class_="bar-duration",
        )


def _draw_gap(
    canvas: _Canvas,
    lane: Lane,
    before: AttemptBar,
    until: datetime,
    y: float,
    shift: float,
    *,
    pending: bool = False,
    manual: bool = False,
) -> None:
    """The time between two attempts: a backoff (or a person's retry), or a retry to come."""
    if before.end is None:
        return
    seconds = max(0.0, (until - before.end).total_seconds())
    x0, x1 = canvas.x(before.end, shift), canvas.x(until, shift)
    beyond = x1 > canvas.right + 0.5
    x1 = min(x1, canvas.right)
    if pending:
        label = f"next retry {local_time(until)}"
        tip = f"{lane.label}: backoff {format_seconds(seconds)}, next retry at {local_time(until)}"
        cls = "backoff pending"
    elif manual:
        label = ""
        tip = f"{lane.label}: failed, then retried by a person {format_seconds(seconds)} later"
        cls = "retry-gap"
    else:
        label = f"backoff {format_seconds(seconds)}"
        tip = f"{lane.label}: backoff {format_seconds(seconds)}, then attempt {before.number + 2}"
        cls = "backoff"
    mid = y + ROW / 2
    canvas.title(cls, tip)
    dash = "1 3" if manual else "4 2"
    canvas.parts.append(
        f'<line class="gap-line" x1="{x0:.1f}" y1="{mid:.1f}" x2="{x1:.1f}" y2="{mid:.1f}" '
        f'stroke="{"#999" if manual else BACKOFF}" stroke-width="1.5" stroke-dasharray="{dash}" '
        f'data-seconds="{seconds:.6f}"/>'
    )
    if pending and not beyond:
        canvas.parts.append(
            f'<line class="retry-mark" x1="{x1:.1f}" y1="{y + 3:.1f}" x2="{x1:.1f}" '
            f'y2="{y + ROW - 3:.1f}" stroke="{BACKOFF}" stroke-width="2"/>'
        )
    if label:
        # Above the dashed line when it fits, else after its end (or at the right edge).
        room = x1 - x0
        if room >= 5.5 * len(label):
            canvas.text(
                (x0 + x1) / 2,
                y + 8,
                label,
                text_anchor="middle",
                fill=BACKOFF,
                font_size="9",
                class_="backoff-label",
            )
        elif x1 + 4 + 5.5 * len(label) <= canvas.right:
            canvas.text(x1 + 4, y + 15, label, fill=BACKOFF, font_size="9", class_="backoff-label")
        else:
            canvas.text(
                canvas.right - 2,
                y + 8,
                label + (" \u2192" if beyond else ""),
                text_anchor="end",
                fill=BACKOFF,
                font_size="9",
                class_="backoff-label",
            )
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
        extra["due"] = canvas.at(lane.due, shift)
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
) -> tuple[float, float]:
    """One attempt's bar: green done, red failed (with a cross), blue still running."""
    end = attempt.end or canvas.now
    x0, x1 = canvas.x(attempt.start, shift), canvas.x(end, shift)
    state = "failed" if attempt.failed else ("ok" if attempt.end else "open")
    fill = {"failed": ATTEMPT_FAILED, "ok": ATTEMPT_OK, "open": ATTEMPT_OPEN}[state]
    what = f"failed: {attempt.error}" if attempt.failed else {"ok": "ok", "open": "running"}[state]
    seconds = format_seconds(attempt.seconds(canvas.now))
    tip = f"{lane.label} attempt {attempt.number + 1} {what} ({seconds}"
    tip += f", {attempt.worker})" if attempt.worker else ")"
    canvas.title(f"attempt {state}", tip)
    width = canvas.rect(
        f"attempt-bar {state}",
        x0,
        x1,
        y + 4,
        ROW - 8,
        fill,
        run=track.run_id,
        step=lane.label,
        attempt=str(attempt.number + 1),
        status=lane.status,
        start=canvas.at(attempt.start, shift),
        end=canvas.at(end, shift),
    )
    if attempt.failed:
        cx = x0 + width
        canvas.parts.append(
            f'<path class="failed-mark" d="M{cx - 3:.1f} {y + 1:.1f} l6 6 m0 -6 l-6 6" '
            f'stroke="{ATTEMPT_FAILED}" stroke-width="1.6"/>'
        )
    canvas.parts.append("</g>")
    return x0, width
