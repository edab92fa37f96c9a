"""Django admin for events, runs and steps (read-only: changes go through stepflows.api)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Event, Run, Step


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class StepInline(admin.TabularInline):
    model = Step
    extra = 0
    can_delete = False
    fields = (
        "position",
        "step_id",
        "status",
        "attempt_count",
        "started_at",
        "ended_at",
        "output_bytes",
    )
    readonly_fields = fields
    ordering = ("position",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ("id", "workflow_id", "status", "event", "created_at", "started_at", "ended_at")
    list_filter = ("status", "workflow_id", "created_at")
    search_fields = ("id", "event__name")
    list_select_related = ("event",)
    date_hierarchy = "created_at"
    inlines = [StepInline]


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "ts", "source_run")
    search_fields = ("id", "name")
    list_filter = ("name",)


@admin.register(Step)
class StepAdmin(ReadOnlyAdmin):
    list_display = ("step_id", "run", "status", "attempt_count", "started_at", "ended_at")
    list_filter = ("status",)
    search_fields = ("step_id", "run__id")
    list_select_related = ("run",)
