"""Events in the admin: the list, the event page (payload, runs it started), replay."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, QuerySet
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..models import Event, Run
from . import compare
from .actions import EVENT_ACTIONS
from .cells import moment_cell, one_line
from .common import ReadOnlyAdmin, duration_text, on_changelist, per_row, pretty_json, status_badge
from .run_columns import WIDE_LIST
from .workflows import workflows_view

#: Characters of the payload shown in the list (the rest is in its title, on hover).
PREVIEW_CHARS = 60
#: Characters of an event id shown in the list.
ID_CHARS = 12


def _run_count() -> Coalesce:
    """How many runs each listed event started."""
    return per_row(Run.objects.filter(event=OuterRef("pk")), "event", Count("pk"))


class EventAdmin(ReadOnlyAdmin):
    list_display = (
        "name_link",
        "id_display",
        "ts_display",
        "payload_preview",
        "runs_started",
        "source_link",
    )
    list_display_links = None
    list_filter = (("received_at", admin.DateFieldListFilter),)
    search_fields = ("=id", "name")
    search_help_text = "An event id (exact), or part of an event name."
    show_full_result_count = False
    list_per_page = 50
    actions = EVENT_ACTIONS
    ordering = ("-received_at",)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return self.has_perm(request, "replay_event")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        qs = super().get_queryset(request)
        if on_changelist(request):
            qs = qs.annotate(run_count=_run_count())
        return qs

    @admin.display(description="name", ordering="name")
    def name_link(self, event: Event) -> SafeString:
        url = reverse("admin:stepflows_event_change", args=[quote(event.pk)])
        return format_html('<a href="{}">{}</a>', url, event.name)

    @admin.display(description="id", ordering="id")
    def id_display(self, event: Event) -> SafeString:
        return one_line(str(event.pk), ID_CHARS, code=True, width="9em")

    @admin.display(description="timestamp", ordering="ts")
    def ts_display(self, event: Event) -> SafeString:
        return moment_cell(event.ts)

    @admin.display(description="payload")
    def payload_preview(self, event: Event) -> SafeString:
        text = json.dumps(event.data, ensure_ascii=False, sort_keys=True, default=str)
        return one_line(text, PREVIEW_CHARS, code=True, width="32em")

    @admin.display(description="runs", ordering="run_count")
    def runs_started(self, event: Any) -> int:
        return int(event.run_count)

    @admin.display(description="sent by run")
    def source_link(self, event: Event) -> SafeString | str:
        if event.source_run_id is None:
            return ""
        url = reverse("admin:stepflows_run_change", args=[event.source_run_id])
        return format_html('<a href="{}">{}</a>', url, str(event.source_run_id)[:8])

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        return super().changelist_view(request, {**WIDE_LIST, **(extra_context or {})})

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            # The workflows page sends test events; it needs the view permission of runs.
            path("workflows/", wrap(self.workflows_view), name="stepflows_workflows"),
            *super().get_urls(),
        ]

    def workflows_view(self, request: HttpRequest) -> HttpResponse:
        return workflows_view(self, request)

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        event = Event.objects.filter(pk=unquote(object_id)).first()
        if event is None:
            return self.missing(request, object_id)
        if not self.has_view_permission(request, event):
            raise PermissionDenied
        runs = list(event.runs.order_by("created_at"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": f"Event {event.name}",
            "original": event,
            "event": event,
            "payload": pretty_json(event.data),
            "runs": [
                {"run": r, "status": status_badge(r.status), "duration": duration_text(r.duration)}
                for r in runs
            ],
            "compare_links": self._compare_links(request, event, runs),
            "can_replay": self.has_replay_permission(request),
            "replay_button": {"action": "replay_events", "label": "Replay this event"},
            "changelist_url": reverse("admin:stepflows_event_changelist"),
            "here": request.get_full_path(),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/stepflows/event/detail.html", context)

    def _compare_links(
        self, request: HttpRequest, event: Event, runs: list[Run]
    ) -> list[dict[str, str]]:
        if not runs or not request.user.has_perm(f"{self.opts.app_label}.compare_runs"):
            return []
        links = []
        if len(runs) > 1:
            links.append(
                {
                    "url": compare.url(event=event.pk),
                    "label": f"Compare the {len(runs)} runs of this event",
                }
            )
        if Event.objects.filter(source_run_id__in=[r.pk for r in runs]).exists():
            label = (
                f"Compare the {len(runs)} runs of this event with their fan-outs"
                if len(runs) > 1
                else "Compare its run with the runs its fan-out started"
            )
            links.append({"url": compare.url(event=event.pk, fan_out=True), "label": label})
        return links
