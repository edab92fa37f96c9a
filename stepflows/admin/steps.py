"""Steps in the admin: a read-only list, each linking to its run's page."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..models import Step
from .common import ReadOnlyAdmin, status_badge


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
