"""Flow control in the admin: what holds a queued run, why a run was skipped, and the
Flow control page (each workflow's limits, with the keys that hold slots or runs now).

The page needs the view permission of runs. It is linked from the runs list and,
through the FlowState entry of the admin index (its state rows), from the index.
Every text from users (workflow ids, key values, event ids) is escaped.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..models import FlowState, Run, RunStatus
from ..registry import registry
from ..store import admission
from .common import STATUS_COLOURS, ReadOnlyAdmin
from .flow_text import (
    FLOW_HOLDS,
    LimitRow,
    flow_table,
    has_flow_control,
    hold_text,
    line_figures,
    skip_reason,
)

EMPTY = mark_safe("")
#: Characters of a skip reason shown in the runs list (the whole one is its title).
REASON_CHARS = 120


def is_held(run: Any) -> bool:
    """A queued run that flow control holds (in a concurrency line, throttled, ...)."""
    return run.status == RunStatus.QUEUED and run.waiting_for in FLOW_HOLDS


def _moment(value: Any) -> str:
    if value is None:
        return ""
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return str(date_format(local, "Y-m-d H:i:s"))


def hold_summary(run: Any) -> SafeString:
    """A held run in the runs list: ``waiting: slot for key data.customer = 42 (...)``.

    The figures of a concurrency line come from the list's annotations
    (``flow_text.line_counts``), evaluated for the rows shown only.
    """
    if not is_held(run):
        return EMPTY
    in_use = getattr(run, "hold_in_use", None)
    ahead = getattr(run, "hold_ahead", None)
    text = hold_text(run, in_use=in_use, place=None if ahead is None else ahead + 1)
    return format_html('<div class="sf-muted sf-waiting sf-held">waiting: {}</div>', text)


def hold_line(run: Run) -> SafeString:
    """The run page's "waiting for" line of a held run, with its place in line."""
    in_use, place = line_figures([run.pk]).get(run.pk, (None, None))
    text = hold_text(run, in_use=in_use, place=place, time=_moment)
    return format_html('<span class="sf-held" data-kind="{}">{}</span>', run.waiting_for, text)


def skip_summary(run: Any) -> SafeString:
    """Why a skipped run never started, under its status in the runs list."""
    if run.status != RunStatus.SKIPPED:
        return EMPTY
    reason = skip_reason(run)
    short = reason if len(reason) <= REASON_CHARS else reason[: REASON_CHARS - 1] + "\u2026"
    return format_html(
        '<div class="sf-skip-reason" style="color:{}" title="{}">{}</div>',
        STATUS_COLOURS[RunStatus.SKIPPED][0],
        reason,
        short,
    )


# -- the Flow control page ---------------------------------------------------------------


def _runs_url(**params: str) -> str:
    return reverse("admin:stepflows_run_changelist") + "?" + urlencode(params)


def _key_cell(row: LimitRow) -> SafeString:
    if not row.key:
        return format_html('<span class="sf-muted">{}</span>', row.key_text)
    return format_html("<code>{}</code>", row.key)


def _waiting_cell(row: LimitRow) -> SafeString:
    if row.waiting is None:
        return EMPTY
    if not row.waiting:
        return format_html("{}", 0)
    url = _runs_url(workflow_id__exact=row.workflow_id, waiting_for=row.kind)
    return format_html('<a href="{}">{}</a>', url, row.waiting)


def _sections(rows: list[LimitRow], skipped: dict[str, int]) -> list[dict[str, Any]]:
    by_workflow: dict[str, list[LimitRow]] = defaultdict(list)
    for row in rows:
        by_workflow[row.workflow_id].append(row)
    return [
        {
            "workflow_id": workflow_id,
            "registered": _registered(workflow_id),
            "skipped": skipped.get(workflow_id, 0),
            "skipped_url": _runs_url(workflow_id__exact=workflow_id, status__exact="skipped"),
            "rows": [
                {
                    "row": row,
                    "key": _key_cell(row),
                    "running": "" if row.running is None else row.running,
                    "waiting": _waiting_cell(row),
                }
                for row in mine
            ],
        }
        for workflow_id, mine in by_workflow.items()
    ]


def _registered(workflow_id: str) -> bool:
    return any(wf.id == workflow_id for wf in registry.all())


def cron_ticks(workflow_id: str | None = None) -> dict[tuple[str, str], tuple[Any, int]]:
    """(workflow, cron expression) -> (last tick sent, ticks sent), from FlowState rows."""
    rows = FlowState.objects.filter(kind="cron")
    if workflow_id is not None:
        rows = rows.filter(workflow_id=workflow_id)
    return {
        (wf, key): (at, n)
        for wf, key, at, n in rows.values_list("workflow_id", "key", "at", "count")
    }


def limits_table(workflow_id: str | None = None) -> list[LimitRow]:
    """The flow-control table now, for the page and ``manage.py stepflows limits``."""
    flows = {
        wf.id: wf.flow
        for wf in sorted(registry.all(), key=lambda wf: wf.id)
        if has_flow_control(wf.flow) and workflow_id in (None, wf.id)
    }
    return flow_table(flows, admission.counts(workflow_id), cron_ticks(workflow_id))


def flow_control_view(modeladmin: Any, request: HttpRequest) -> HttpResponse:
    """The Flow control page (needs the view permission of runs)."""
    if not modeladmin.has_view_permission(request):
        raise PermissionDenied
    rows = limits_table()
    skipped = dict(
        Run.objects.filter(status=RunStatus.SKIPPED, workflow_id__in={r.workflow_id for r in rows})
        .values_list("workflow_id")
        .annotate(n=Count("pk"))
        .values_list("workflow_id", "n")
    )
    context = {
        **modeladmin.admin_site.each_context(request),
        "opts": modeladmin.opts,
        "app_label": modeladmin.opts.app_label,
        "title": "Flow control",
        "sections": _sections(rows, skipped),
        "changelist_url": reverse("admin:stepflows_run_changelist"),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/stepflows/flow_control.html", context)


class FlowStateAdmin(ReadOnlyAdmin):
    """The admin index's entry to the Flow control page, which shows these rows' state.

    It lists no rows of its own: its list is the page, with the view permission of runs.
    """

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.view_run")

    def get_urls(self) -> list[URLPattern]:
        info = (self.opts.app_label, self.opts.model_name)
        view = self.admin_site.admin_view(self.changelist_view)
        return [path("", view, name="{}_{}_changelist".format(*info))]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return HttpResponseRedirect(reverse("admin:stepflows_flow_control"))
