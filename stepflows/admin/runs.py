"""Runs in the admin: the list, the run page (timeline, steps, fan-out family), actions."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Q, QuerySet, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from .. import timeline
from ..models import ACTIVE_RUN_STATUSES, RETRYABLE_RUN_STATUSES, Run, RunStatus, Step, StepKind
from ..store.fence import worker_of
from . import compare
from .actions import CANCELLABLE, RUN_ACTIONS
from .common import (
    ReadOnlyAdmin,
    duration_text,
    on_changelist,
    per_row,
    pretty_json,
    status_badge,
)
from .family import fan_out_family
from .flow_control import flow_control_view, skip_summary
from .flow_text import line_counts, skip_reason
from .interventions import cancelled_by, origin, trail, trail_rows
from .run_columns import (
    WIDE_LIST,
    TopLevelFilter,
    VersionFilter,
    error_summary,
    parent_link,
    started,
    workflow_cell,
)
from .steps import step_row, trim_traceback
from .waits import (
    WaitingForFilter,
    failure_handlers,
    invoked_runs,
    origin_line,
    wait_detail,
    waiting_line,
    waiting_summary,
)

#: Columns of Step the run page needs (no outputs of other runs, no big blobs twice).
STEP_FIELDS = (
    "id",
    "run_id",
    "step_id",
    "position",
    "group",
    "status",
    "output",
    "output_bytes",
    "error",
    "started_at",
    "ended_at",
    "attempts",
    "attempt_count",
    # A retry still to come, and where the last manual retry began (timeline, attempts table).
    "retry_at",
    "attempts_base",
    "lease_owner",
    "heartbeat_at",
    "kind",
    "wake_at",
    "wait",
    "logs",
)


def _step_count(filter: Q | None = None) -> Coalesce:
    """How many steps each listed run has (those matching ``filter``); patch markers
    (step.patched's answers) are not steps of work."""
    steps = Step.objects.filter(run=OuterRef("pk")).exclude(kind=StepKind.PATCH)
    return per_row(steps.filter(filter) if filter is not None else steps, "run", Count("pk"))


def _attempt_sum() -> Coalesce:
    """How many attempts each listed run's steps made."""
    return per_row(Step.objects.filter(run=OuterRef("pk")), "run", Sum("attempt_count"))


class RunAdmin(ReadOnlyAdmin):
    list_display = (
        "run_link",
        workflow_cell,
        "status_display",
        "trigger_event",
        parent_link,
        started,
        "duration_display",
        "steps_display",
        "attempts_display",
        error_summary,
    )
    list_display_links = None
    list_filter = (
        "status",
        WaitingForFilter,
        TopLevelFilter,
        "workflow_id",
        VersionFilter,
        ("created_at", admin.DateFieldListFilter),
    )
    search_fields = ("event__name",)
    search_help_text = "A run id (full, or its first 8 characters), or part of an event name."
    # Counting every row on each page load is slow on large tables.
    show_full_result_count = False
    list_per_page = 50
    actions = RUN_ACTIONS
    ordering = ("-created_at",)

    # -- permissions of the actions ------------------------------------------------

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "retry_run")

    def has_rerun_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "rerun_run")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "cancel_run")

    def has_fork_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "fork_run")

    def has_compare_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "compare_runs")

    # -- the list ------------------------------------------------------------------

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        qs = super().get_queryset(request).select_related("event")
        if on_changelist(request):
            qs = qs.annotate(
                steps_total=_step_count(),
                steps_done=_step_count(Q(status="completed")),
                attempts_total=_attempt_sum(),
                # What a waiting run waits for, from its scheduled wait step.
                waiting_event=wait_detail("event"),
                waiting_child=wait_detail("child"),
                # A run in a concurrency line: slots of its key in use, runs ahead of it.
                **line_counts(),
            )
        return qs

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # The list needs the width: every column fits 1,400 px without the nav sidebar.
        return super().changelist_view(request, {**WIDE_LIST, **(extra_context or {})})

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Run], search_term: str
    ) -> tuple[QuerySet[Run], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        by_id = _run_id_filter(term)
        if by_id is not None:
            return queryset.filter(by_id), False
        return queryset.filter(event__name__icontains=term), False

    @admin.display(description="run", ordering="created_at")
    def run_link(self, run: Run) -> SafeString:
        url = reverse("admin:stepflows_run_change", args=[run.pk])
        return format_html('<a href="{}" title="{}">{}</a>', url, run.pk, str(run.pk)[:8])

    @admin.display(description="status", ordering="status")
    def status_display(self, run: Run) -> SafeString:
        return format_html(
            "{}{}{}", status_badge(run.status), waiting_summary(run), skip_summary(run)
        )

    @admin.display(description="trigger event", ordering="event__name")
    def trigger_event(self, run: Run) -> SafeString:
        url = reverse("admin:stepflows_event_change", args=[quote(run.event_id)])
        return format_html('<a href="{}">{}</a>', url, run.event.name)

    @admin.display(description="duration")
    def duration_display(self, run: Run) -> str:
        return duration_text(run.duration)

    @admin.display(description="steps", ordering="steps_total")
    def steps_display(self, run: Any) -> str:
        return f"{run.steps_done}/{run.steps_total}"

    @admin.display(description="attempts", ordering="attempts_total")
    def attempts_display(self, run: Any) -> int:
        return int(run.attempts_total)

    # -- the run page --------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("compare/", wrap(self.compare_view), name="stepflows_run_compare"),
            path("flow-control/", wrap(self.flow_control_view), name="stepflows_flow_control"),
            *super().get_urls(),
        ]

    def compare_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_compare_permission(request):
            raise PermissionDenied
        return compare.compare_view(self, request)

    def flow_control_view(self, request: HttpRequest) -> HttpResponse:
        return flow_control_view(self, request)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        run = _get_run(unquote(object_id))
        if run is None:
            return self.missing(request, object_id)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        steps = list(Step.objects.filter(run=run).only(*STEP_FIELDS).order_by("position"))
        family = fan_out_family(run)
        children = invoked_runs(steps)
        siblings = Run.objects.filter(event_id=run.event_id).count()
        # Who retried, reran, cancelled, replayed or forked it (one query).
        interventions = trail(run)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": f"Run {run.pk}",
            "subtitle": run.workflow_id,
            "original": run,
            "run": run,
            "status": status_badge(run.status),
            "executing_on": worker_of(run.lease_owner) if run.lease_owner else "",
            "duration": duration_text(run.duration),
            "payload": pretty_json(run.event.data),
            "output": pretty_json(run.output),
            # A skipped run never started: its reason is not an error with a traceback.
            "error": (run.error or None) if run.status != RunStatus.SKIPPED else None,
            "blocked": run.status == RunStatus.BLOCKED,
            "skipped": skip_reason(run) if run.status == RunStatus.SKIPPED else "",
            "error_traceback": trim_traceback(str((run.error or {}).get("traceback") or ""))
            if isinstance(run.error, dict)
            else "",
            "waiting": waiting_line(run, steps, children),
            "origin": origin_line(run),
            "failure_handlers": failure_handlers(run),
            "steps": [step_row(s, children) for s in steps],
            "used_parallel": any(s.group is not None for s in steps),
            "has_waits": any(s.kind != StepKind.RUN for s in steps),
            # Markers where a person retried, cancelled...: the trail's rows, no new query.
            "timeline": timeline.render(
                [timeline.track_for_run(run, steps, interventions=interventions)]
            ),
            "family": family,
            "siblings": siblings,
            "buttons": self._buttons(request, run),
            "interventions": interventions,
            "audit_trail": trail_rows(run, interventions),
            "started_by": origin(run, interventions),
            "cancelled_by": cancelled_by(run, interventions)
            if run.status == RunStatus.CANCELLED
            else None,
            "compare_links": self._compare_links(request, run, family, siblings, steps),
            "changelist_url": reverse("admin:stepflows_run_changelist"),
            "here": request.get_full_path(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/stepflows/run/detail.html", context)

    def _buttons(self, request: HttpRequest, run: Run) -> list[dict[str, str]]:
        buttons = []
        if run.status in RETRYABLE_RUN_STATUSES and self.has_retry_permission(request):
            buttons.append({"action": "retry_runs", "label": "Retry"})
        if self.has_rerun_permission(request):
            buttons.append({"action": "rerun_runs", "label": "Rerun from the start"})
        if run.status in CANCELLABLE and self.has_cancel_permission(request):
            buttons.append({"action": "cancel_runs", "label": "Cancel"})
        if run.status not in ACTIVE_RUN_STATUSES and self.has_fork_permission(request):
            buttons.append({"action": "fork_runs", "label": "Fork from a step"})
        return buttons

    def _compare_links(
        self, request: HttpRequest, run: Run, family: Any, siblings: int, steps: list[Step]
    ) -> list[dict[str, str]]:
        if not self.has_compare_permission(request):
            return []
        links = []
        if family:
            links.append(
                {
                    "url": compare.url(family=[run.pk]),
                    "label": f"Compare with the {len(family.runs)} run(s) its fan-out started",
                }
            )
        if siblings > 1:
            links.append(
                {
                    "url": compare.url(event=run.event_id, fan_out=True),
                    "label": f"Compare the {siblings} runs of this event (and their fan-outs)",
                }
            )
        if run.parent_id is not None:
            links.append(
                {
                    "url": compare.url(family=[run.parent_id]),
                    "label": "Compare the fan-out family this run belongs to",
                }
            )
        if not links and any(s.group is not None for s in steps):
            links.append(
                {
                    "url": compare.url(workflow_of=run.pk),
                    "label": "Compare with recent runs of this workflow",
                }
            )
        return links


def _run_id_filter(term: str) -> Q | None:
    try:
        return Q(pk=uuid.UUID(term))
    except ValueError:
        pass
    hexdigits = term.replace("-", "").lower()
    if len(hexdigits) == 8 and all(c in "0123456789abcdef" for c in hexdigits):
        # The list shows the first 8 characters of a run id: a UUID range holds them all.
        low = uuid.UUID(hexdigits + "0" * 24)
        high = uuid.UUID(hexdigits + "f" * 24)
        return Q(pk__gte=low, pk__lte=high)
    return None


def _get_run(object_id: str) -> Run | None:
    try:
        return Run.objects.select_related("event").get(pk=uuid.UUID(str(object_id)))
    except (ValueError, Run.DoesNotExist):
        return None
