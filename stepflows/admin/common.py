"""Pieces shared by the stepflows admin pages: read-only base, status badges, JSON."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import Aggregate, IntegerField, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..timeline import format_seconds

#: Characters of one JSON value shown on a page; the rest is cut with a note.
MAX_JSON_CHARS = 20_000

STATUS_COLOURS = {
    "queued": ("#5f5f5f", "#ececec"),
    "running": ("#1d4f91", "#d8e6f8"),
    "waiting": ("#4b5d73", "#e3e9f0"),
    "scheduled": ("#5f5f5f", "#ececec"),
    "completed": ("#1f6b32", "#d9efdd"),
    "failed": ("#9b2218", "#f8d9d5"),
    "cancelled": ("#6d5526", "#f1e7d2"),
    # Never started (a rate limit or a singleton said no): not an error.
    "skipped": ("#5d4b7a", "#e9e4f1"),
    # Stopped by a deploy that does not match its steps: a fix and a retry resume it.
    "blocked": ("#8a4b00", "#fde3c4"),
}


def per_row(related: QuerySet[Any], key: str, aggregate: Aggregate) -> Coalesce:
    """An aggregate over each listed row's related rows, as a correlated subquery.

    ``related`` is filtered on ``OuterRef("pk")``; the subquery is evaluated
    only for the rows a page shows, so a list costs the same queries whatever
    its size (no join over the whole table, no query per row).
    """
    inner = related.order_by().values(key).annotate(n=aggregate).values("n")
    return Coalesce(Subquery(inner, output_field=IntegerField()), Value(0))


def status_badge(status: str) -> SafeString:
    """A coloured, escaped status label."""
    fg, bg = STATUS_COLOURS.get(status, ("#333", "#eee"))
    return format_html(
        '<span class="sf-status sf-{}" style="color:{};background:{};padding:1px 6px;'
        'border-radius:8px;font-weight:600">{}</span>',
        status,
        fg,
        bg,
        status,
    )


def pretty_json(value: Any, limit: int = MAX_JSON_CHARS) -> str:
    """Indented JSON text (escaped later by the template), cut at ``limit`` characters."""
    if value is None:
        return ""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)
    if len(text) > limit:
        return text[:limit] + f"\n... ({len(text) - limit} more characters not shown)"
    return text


def duration_text(seconds: float | None) -> str:
    return "" if seconds is None else format_seconds(seconds)


def size_text(size: int | None) -> str:
    if not size:
        return "0 B"
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.2f} MiB"


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows change only through stepflows.api; admin pages never add, edit or delete."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def missing(self, request: HttpRequest, object_id: str) -> HttpResponseRedirect:
        """Back to the list, saying which id was not found."""
        self.message_user(
            request,
            f"No {self.opts.verbose_name} with id {object_id!r}; it may have been deleted.",
            messages.WARNING,
        )
        return HttpResponseRedirect(
            reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist")
        )

    def has_perm(self, request: HttpRequest, codename: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")


def on_changelist(request: HttpRequest) -> bool:
    """Whether this request is for a list page (which then annotates its counts)."""
    match = request.resolver_match
    return bool(match and match.url_name and match.url_name.endswith("changelist"))
