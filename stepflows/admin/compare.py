"""The compare page: chosen runs side by side, their timelines on one time axis.

Runs are chosen by query parameters, combined:

- ``ids=<run id>,<run id>``: these runs;
- ``family=<run id>``: that run and every run its fan-out started (any depth);
- ``event=<event id>``: every run of that event (the variants of one piece of
  work, e.g. a ``step.parallel`` workflow and a fan-out one triggered by the
  same event); with ``fan_out=1``, each with its fan-out family;
- ``workflow_of=<run id>``: that run and the latest runs of the same workflow;
- ``axis=relative`` (the default, on every compare page) or ``axis=wall``: each
  family from its own start (a run with no fan-out is a family of one; the runs a
  fan-out started stay where they happened after the run that started them), or
  all runs on the wall clock.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from .. import timeline
from ..models import Run, Step
from .common import duration_text, size_text, status_badge
from .family import fan_out_family

#: Runs one compare page shows at most.
MAX_RUNS = 50
#: Runs of the same workflow added by ``workflow_of``.
RECENT_OF_WORKFLOW = 4

STEP_FIELDS = (
    "id",
    "run_id",
    "step_id",
    "position",
    "group",
    "status",
    "output_bytes",
    "started_at",
    "ended_at",
    "attempts",
    "attempt_count",
    # Durable waits are drawn as bars of their own (stepflows.timeline).
    "kind",
    "wake_at",
    "wait",
)


def url(
    *,
    ids: Iterable[Any] = (),
    family: Iterable[Any] = (),
    event: str | None = None,
    workflow_of: Any = None,
    fan_out: bool = False,
    axis: str | None = None,
) -> str:
    """The compare page's address for these runs."""
    params: dict[str, str] = {}
    if ids:
        params["ids"] = ",".join(str(i) for i in ids)
    if family:
        params["family"] = ",".join(str(i) for i in family)
    if event:
        params["event"] = event
        if fan_out:
            params["fan_out"] = "1"
    if workflow_of:
        params["workflow_of"] = str(workflow_of)
    if axis:
        params["axis"] = axis
    return reverse("admin:stepflows_run_compare") + "?" + urlencode(params)


@dataclass
class Row:
    """One run's figures on the compare page."""

    run: Run
    label: str
    depth: int
    steps: int
    attempts: int
    failed_attempts: int
    output_bytes: int

    @property
    def status(self) -> Any:
        return status_badge(self.run.status)

    @property
    def wall_time(self) -> str:
        return duration_text(self.run.duration)

    @property
    def size(self) -> str:
        return size_text(self.output_bytes)


def _uuids(values: Iterable[str], bad: list[str]) -> list[uuid.UUID]:
    found = []
    for raw in values:
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                found.append(uuid.UUID(part))
            except ValueError:
                bad.append(part)
    return found


def _choose(
    request: HttpRequest, bad: list[str]
) -> tuple[list[Run], dict[Any, int], dict[Any, Any]]:
    """The runs to compare, in order, each with its fan-out depth and its family's root."""
    chosen: list[Run] = []
    depth: dict[Any, int] = {}
    roots: dict[Any, Any] = {}
    seen: set[Any] = set()

    def add(run: Run, level: int = 0, root: Any = None) -> None:
        if run.pk not in seen:
            seen.add(run.pk)
            chosen.append(run)
            depth[run.pk] = level
            roots[run.pk] = root if root is not None else run.pk

    def add_family(root: Run) -> None:
        add(root)
        family = fan_out_family(root, max_runs=MAX_RUNS)
        for row in family.rows:
            for run in row.runs:
                add(run, depth[root.pk] + row.depth, roots[root.pk])

    ids = _uuids(request.GET.getlist("ids"), bad)
    by_id = Run.objects.in_bulk(ids)
    for pk in ids:
        if pk in by_id:
            add(by_id[pk])
        else:
            bad.append(str(pk))
    family_ids = _uuids(request.GET.getlist("family"), bad)
    roots = Run.objects.in_bulk(family_ids)
    for pk in family_ids:
        if pk in roots:
            add_family(roots[pk])
        else:
            bad.append(str(pk))
    event_id = request.GET.get("event")
    if event_id:
        runs = list(Run.objects.filter(event_id=event_id).order_by("created_at"))
        if not runs:
            bad.append(event_id)
        for run in runs:
            if request.GET.get("fan_out"):
                add_family(run)
            else:
                add(run)
    base_ids = _uuids(request.GET.getlist("workflow_of"), bad)
    for base in Run.objects.filter(pk__in=base_ids):
        add(base)
        recent = Run.objects.filter(workflow_id=base.workflow_id).exclude(pk=base.pk)
        for run in recent.order_by("-created_at")[:RECENT_OF_WORKFLOW]:
            add(run)
    return chosen[:MAX_RUNS], depth, roots


def _figures(
    runs: Sequence[Run],
) -> tuple[dict[Any, list[Step]], dict[Any, tuple[int, int, int, int]]]:
    steps_by_run: dict[Any, list[Step]] = defaultdict(list)
    steps = Step.objects.filter(run_id__in=[r.pk for r in runs]).only(*STEP_FIELDS)
    for step in steps.order_by("run_id", "position"):
        steps_by_run[step.run_id].append(step)
    figures: dict[Any, tuple[int, int, int, int]] = {}
    for run in runs:
        own = steps_by_run.get(run.pk, [])
        failed = sum(
            1 for s in own for a in (s.attempts or []) if isinstance(a, dict) and a.get("error")
        )
        figures[run.pk] = (
            len(own),
            sum(s.attempt_count for s in own),
            failed,
            sum(s.output_bytes for s in own),
        )
    return steps_by_run, figures


def compare_view(modeladmin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    bad: list[str] = []
    runs, depth, roots = _choose(request, bad)
    # One default for every compare page, however its runs were chosen.
    wall = request.GET.get("axis") == "wall"
    if bad:
        modeladmin.message_user(
            request, "Not found, left out: " + ", ".join(bad[:20]), messages.WARNING
        )
    steps_by_run, figures = _figures(runs)
    rows = [
        Row(r, f"{r.workflow_id} {str(r.pk)[:8]}", depth.get(r.pk, 0), *figures[r.pk]) for r in runs
    ]
    tracks = [
        timeline.track_for_run(
            r, steps_by_run.get(r.pk, []), label=f"{r.workflow_id} {str(r.pk)[:8]}"
        )
        for r in runs
    ]
    _anchor_families(tracks, runs, roots)
    params = request.GET.copy()
    params["axis"] = "relative" if wall else "wall"
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "app_label": modeladmin.opts.app_label,
        "title": f"Compare {len(runs)} runs",
        "rows": rows,
        "groups": _groups(rows),
        "timeline": timeline.render(tracks, relative=not wall) if tracks else "",
        "wall": wall,
        "toggle_axis_url": request.path + "?" + params.urlencode(),
        "changelist_url": reverse("admin:stepflows_run_changelist"),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/stepflows/compare.html", context)


def _anchor_families(
    tracks: Sequence[timeline.Track], runs: Sequence[Run], roots: dict[Any, Any]
) -> None:
    """Draw a fan-out run from its family's start, not its own: on the relative axis a
    family keeps its shape (its runs where they happened after the root started)."""
    anchors = {run.pk: track.anchor for run, track in zip(runs, tracks, strict=True)}
    for run, track in zip(runs, tracks, strict=True):
        root_anchor = anchors.get(roots.get(run.pk, run.pk))
        if root_anchor is not None and (track.anchor is None or root_anchor <= track.anchor):
            track.anchor = root_anchor


def _groups(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Rows split by family (a run at depth 0 and the fan-out runs after it), with totals."""
    groups: list[dict[str, Any]] = []
    for row in rows:
        if row.depth == 0 or not groups:
            groups.append({"rows": [row], "total": None})
        else:
            groups[-1]["rows"].append(row)
    for group in groups:
        if len(group["rows"]) > 1 and any(r.depth for r in group["rows"]):
            group["total"] = _family_total(group["rows"])
    return groups


def _family_total(rows: Sequence[Row]) -> dict[str, Any]:
    """A family's figures together: from the first start to the last end."""
    starts = [r.run.started_at for r in rows if r.run.started_at]
    ends = [r.run.ended_at for r in rows if r.run.ended_at]
    wall = (max(ends) - min(starts)).total_seconds() if starts and ends else None
    return {
        "runs": len(rows),
        "wall_time": duration_text(wall),
        "steps": sum(r.steps for r in rows),
        "attempts": sum(r.attempts for r in rows),
        "failed_attempts": sum(r.failed_attempts for r in rows),
        "size": size_text(sum(r.output_bytes for r in rows)),
    }
