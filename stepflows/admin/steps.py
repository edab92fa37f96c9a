"""Steps in the admin: a read-only list, and the steps table of the run page.

The run page shows each step with its attempts (start, end, worker, duration,
error), its time running (the attempts' durations summed, backoff waits left
out) next to its time since the first attempt, and a failed step's traceback
with stepflows' own frames dropped from its top.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..models import Run, Step, StepKind, StepStatus
from ..timeline import attempts_of, format_seconds
from .common import ReadOnlyAdmin, duration_text, pretty_json, size_text, status_badge
from .waits import step_wait

#: The stepflows package directory: frames in files under it are stepflows' own.
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])
# A traceback's frame line, as ``traceback.format_exception`` writes it.
FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line \d+')


class StepAdmin(ReadOnlyAdmin):
    list_display = (
        "step_id",
        "run_link",
        "kind",
        "status_display",
        "attempt_count",
        "started_at",
        "wake_at",
    )
    list_filter = ("status", "kind")
    search_fields = ("step_id",)
    list_select_related = ("run",)
    show_full_result_count = False
    fields = (
        "run",
        "step_id",
        "position",
        "group",
        "kind",
        "status",
        "attempt_count",
        "output_bytes",
        "started_at",
        "ended_at",
        "wake_at",
        "wait",
        "output",
        "error",
        "attempts",
        "logs",
    )
    readonly_fields = fields

    @admin.display(description="run")
    def run_link(self, step: Step) -> SafeString:
        url = reverse("admin:stepflows_run_change", args=[step.run_id])
        return format_html(
            '<a href="{}">{} {}</a>', url, step.run.workflow_id, str(step.run_id)[:8]
        )

    @admin.display(description="status", ordering="status")
    def status_display(self, step: Step) -> SafeString:
        return status_badge(step.status)


# -- the run page's steps table ----------------------------------------------------------


def step_row(step: Step, children: dict[str, Run], now: datetime | None = None) -> dict[str, Any]:
    """What the run page's steps table shows for one step (and its attempts' sub-table)."""
    now = now or timezone.now()
    bars = attempts_of(step)
    failed = sum(1 for a in bars if a.failed)
    running = step.status == StepStatus.RUNNING and step.lease_owner
    error = (
        step.error if isinstance(step.error, dict) or not step.error else {"message": step.error}
    )
    attempts = attempt_rows(step, now)
    return {
        "step": step,
        "status": status_badge(step.status),
        "kind": step.get_kind_display(),
        "is_wait": step.kind != StepKind.RUN,
        # A durable wait: what it waits for, and when it wakes up (or times out).
        "waits_for": step_wait(step, children),
        "wakes": step.wake_at if step.kind != StepKind.RUN else None,
        "worker": bars[-1].worker if bars else "",
        # A parallel step being executed: when its worker last said it was alive.
        "heartbeat": step.heartbeat_at if running else None,
        "running": duration_text(sum(a.seconds(now) for a in bars)) if bars else "",
        "since_first": duration_text(since_first_attempt(step, bars, now)),
        "size": size_text(step.output_bytes),
        "failed_attempts": failed,
        "output": pretty_json(step.output),
        "error": error,
        "traceback": trim_traceback(str((error or {}).get("traceback") or "")),
        "attempts": attempts,
        # Lines its code logged with ctx.logger (bounded, see stepflows.context.StepLog).
        "logs": log_lines(step),
        "logs_dropped": (step.logs or {}).get("dropped", 0) if isinstance(step.logs, dict) else 0,
        # The sub-table is worth a row when there is more than one plain success to show.
        "show_attempts": len(bars) > 1 or failed > 0 or any(a.end is None for a in bars),
    }


def log_lines(step: Step) -> list[dict[str, Any]]:
    """The step's ``ctx.logger`` lines, oldest first, their times parsed."""
    stored = step.logs if isinstance(step.logs, dict) else {}
    lines = []
    for line in stored.get("lines") or []:
        if not isinstance(line, dict):
            continue
        try:
            at: datetime | None = datetime.fromisoformat(str(line.get("at")))
        except ValueError:
            at = None
        lines.append(
            {
                "at": at,
                "level": str(line.get("level", "")),
                "attempt": line.get("attempt"),
                "message": str(line.get("message", "")),
            }
        )
    return lines


def since_first_attempt(step: Step, bars: list[Any], now: datetime) -> float | None:
    """Seconds from the first attempt's start to the step's end (to now while unfinished)."""
    start = step.started_at or (bars[0].start if bars else None)
    if start is None:
        return None
    end = step.ended_at
    if end is None and step.status in (StepStatus.COMPLETED, StepStatus.FAILED) and bars:
        end = bars[-1].end
    return ((end or now) - start).total_seconds()


def attempt_rows(step: Step, now: datetime) -> list[dict[str, Any]]:
    """Each attempt: number, start, end, duration, worker, error, and the wait before it."""
    rows = []
    previous = None
    base = int(step.attempts_base or 0)
    for index, bar in enumerate(attempts_of(step)):
        before = ""
        if previous is not None and previous.end is not None:
            gap = format_seconds(max(0.0, (bar.start - previous.end).total_seconds()))
            before = f"retried by a person {gap} later" if index == base else f"backoff {gap}"
        rows.append(
            {
                "number": bar.number + 1,
                "started": bar.start,
                "ended": bar.end,
                "duration": duration_text(bar.seconds(now)),
                "worker": bar.worker,
                "error": bar.error,
                "state": "failed" if bar.failed else ("ok" if bar.end else "running"),
                "before": before,
            }
        )
        previous = bar
    if step.status == StepStatus.SCHEDULED and step.retry_at is not None and rows:
        rows[-1]["next_retry"] = step.retry_at
    return rows


def _ours(path: str) -> bool:
    """Whether a frame's file is stepflows' own (here, or installed on a worker elsewhere)."""
    normal = os.path.normpath(path)
    return normal.startswith(PACKAGE_DIR + os.sep) or "/site-packages/stepflows/" in path.replace(
        "\\", "/"
    )


def trim_traceback(text: str) -> str:
    """The traceback without stepflows' own frames at the top of each stack.

    Frames in files inside the stepflows package, before the first frame of the
    user's code, are replaced by one line saying how many were hidden. A stack
    made only of stepflows' frames is kept whole (the error is ours, then).
    """
    if not text:
        return text
    out: list[str] = []
    frames: list[list[str]] = []

    def flush() -> None:
        lead = 0
        while lead < len(frames) and _ours(FRAME.match(frames[lead][0]).group("file")):  # type: ignore[union-attr]
            lead += 1
        if 0 < lead < len(frames):
            out.append(f"  [{lead} frame(s) of stepflows hidden]\n")
            kept = frames[lead:]
        else:
            kept = frames
        for frame in kept:
            out.extend(frame)
        frames.clear()

    for line in text.splitlines(keepends=True):
        if FRAME.match(line):
            frames.append([line])
        elif frames and (line.startswith("    ") or line.startswith("  [")):
            frames[-1].append(line)  # the frame's source line, its carets, a repeat note
        else:
            if frames:
                flush()
            out.append(line)
    if frames:
        flush()
    return "".join(out)
