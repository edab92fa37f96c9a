"""Columns and a filter of the runs list: the parent run, start time, error summary, and
"top-level runs only" (so the children of a fan-out do not flood the list).

Each column reads the listed row only (``parent_id``, ``started_at``, ``error``): the
list costs the same queries however many rows it shows.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..models import Run, RunStatus
from .cells import moment_cell, one_line

#: The context of a list that needs the page's width (the nav sidebar left out).
WIDE_LIST = {"is_nav_sidebar_enabled": False}
#: Characters of an error's first line shown in the list (the whole error on hover).
ERROR_CHARS = 70
#: The error's colour, by the run's status (a cancellation's otherwise).
ERROR_COLOURS: dict[str, str] = {RunStatus.FAILED: "#9b2218", RunStatus.BLOCKED: "#8a4b00"}
#: The error column's width at most, so the list fits 1,400 px with every column.
ERROR_WIDTH = "16em"


class TopLevelFilter(admin.SimpleListFilter):
    """Runs started by an event sent from outside, or only those a fan-out started."""

    title = "fan-out"
    parameter_name = "top_level"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Top-level runs only"), ("no", "Fan-out runs only")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if self.value() == "yes":
            return queryset.filter(parent__isnull=True)
        if self.value() == "no":
            return queryset.filter(parent__isnull=False)
        return queryset


class VersionFilter(admin.SimpleListFilter):
    """Runs by the version of the code that started them (``@workflow(version=...)``)."""

    title = "version"
    parameter_name = "version"
    #: Versions offered at most: the highest first, so dated versions list the newest.
    MAX_CHOICES = 30

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        # Read from Run.version's index, not from every row.
        rows = Run.objects.exclude(version="").order_by("-version")
        versions = rows.values_list("version", flat=True).distinct()[: self.MAX_CHOICES]
        return [(v, v) for v in versions] + [(NO_VERSION, "(none)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        value = self.value()
        if value == NO_VERSION:
            return queryset.filter(version="")
        if value:
            return queryset.filter(version=value)
        return queryset


#: The filter's value for runs of a workflow that declares no version.
NO_VERSION = "-"


@admin.display(description="workflow", ordering="workflow_id")
def workflow_cell(run: Run) -> SafeString:
    """The workflow's id, and under it the version of the code that started the run.

    One column for both: a version column of its own would widen the list past a
    1,400 px window.
    """
    if not run.version:
        return format_html("{}", run.workflow_id)
    return format_html(
        '{}<br><small class="sf-version">{}</small>',
        run.workflow_id,
        one_line(run.version, VERSION_CHARS, code=True),
    )


#: Characters of a version shown in the list (the whole of it on hover).
VERSION_CHARS = 12


@admin.display(description="parent")
def parent_link(run: Run) -> SafeString:
    """The run whose fan-out started this one (its first 8 characters; all on hover)."""
    if run.parent_id is None:
        return mark_safe("")
    url = reverse("admin:stepflows_run_change", args=[run.parent_id])
    return format_html(
        '<a class="sf-parent" href="{}" title="parent run {}">{}</a>',
        url,
        run.parent_id,
        str(run.parent_id)[:8],
    )


@admin.display(description="started", ordering="started_at")
def started(run: Run) -> SafeString:
    return moment_cell(run.started_at)


def error_text(error: Any) -> str:
    """A run's error as one text: ``Type: message``."""
    if not isinstance(error, dict):
        return ""
    kind, message = str(error.get("type") or ""), str(error.get("message") or "")
    # A cancellation's message says it all ("cancelled by alice at ...").
    if kind == "Cancelled" or message.lower().startswith(kind.lower() + ":"):
        return message
    return f"{kind}: {message}" if kind and message else kind or message


@admin.display(description="error")
def error_summary(run: Run) -> SafeString:
    """The first line of a failed, blocked or cancelled run's error; the whole on hover."""
    if run.status not in (RunStatus.FAILED, RunStatus.BLOCKED, RunStatus.CANCELLED):
        return mark_safe("")
    text = error_text(run.error)
    if not text:
        return mark_safe("")
    first = text.strip().splitlines()[0] if text.strip() else text
    cell = one_line(first, ERROR_CHARS, css="sf-error-summary", title=text, width=ERROR_WIDTH)
    colour = ERROR_COLOURS.get(str(run.status), "#6d5526")
    return format_html('<span style="color:{}">{}</span>', colour, cell)
