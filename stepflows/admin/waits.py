"""Durable waits in the admin: what a run or a step waits for, who invoked a run.

A waiting run (``Run.waiting_for``) sleeps, waits for an event or waits for a
run it invoked; the details live on its scheduled step (``Step.wait``). A run
started by ``step.invoke`` names its caller (``Run.caller_step`` of
``Run.parent``); an ``on_failure`` handler is a child run of the failed run,
started by a ``stepflows/run.failed`` event. Every text from users (event
names, match values, step and workflow ids) goes through ``format_html``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.contrib.admin.utils import quote
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.fields.json import KT
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

from ..models import Run, RunStatus, Step, StepKind, StepStatus, WaitKind
from ..timeline import local_time
from .common import status_badge
from .flow_control import hold_line, hold_summary, is_held

#: The event that starts a workflow's ``on_failure`` handler; its run's parent failed.
FAILURE_EVENT = "stepflows/run.failed"
#: Columns of Run shown next to a link to it (never its output or error).
LINKED_RUN_FIELDS = ("id", "workflow_id", "status")

EMPTY = mark_safe("")


class WaitingForFilter(admin.SimpleListFilter):
    """The runs list, by what a waiting run waits for (``Run.waiting_for``)."""

    title = "waiting for"
    parameter_name = "waiting_for"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(kind.value, str(kind.label)) for kind in WaitKind] + [("nothing", "nothing")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == "nothing":
            return queryset.filter(waiting_for="")
        if value in WaitKind.values:
            return queryset.filter(waiting_for=value)
        return queryset


def wait_detail(key: str) -> Subquery:
    """One field of the details of the wait each listed run is in (its scheduled step)."""
    steps = Step.objects.filter(
        run=OuterRef("pk"), kind=OuterRef("waiting_for"), status=StepStatus.SCHEDULED
    ).order_by("-position")
    return Subquery(steps.annotate(value=KT(f"wait__{key}")).values("value")[:1])


def waiting_summary(run: Any) -> SafeString:
    """A waiting run in a few words, for the list: ``waiting: sleep until 12:00:03``.

    A queued run held by flow control says by what: ``waiting: throttled until ...``.
    """
    if is_held(run):
        return hold_summary(run)
    if not run.waiting_for or run.status != RunStatus.WAITING:
        return EMPTY
    kind = run.waiting_for
    if kind == WaitKind.SLEEP:
        text = format_html("sleep until {}", local_time(run.wait_until) or "?")
    elif kind == WaitKind.EVENT:
        text = format_html("event {}", getattr(run, "waiting_event", None) or "?")
        if run.wait_until:
            text = format_html("{}, times out at {}", text, local_time(run.wait_until))
    elif kind == WaitKind.INVOKE:
        child = str(getattr(run, "waiting_child", None) or "")
        text = format_html("run {}", _run_link(child, child[:8]) if child else "?")
    else:
        text = format_html("{}", kind)
    return format_html('<div class="sf-muted sf-waiting">waiting: {}</div>', text)


def when(value: datetime | None) -> SafeString:
    """A moment on a page: local date and time, the exact instant in ``datetime``."""
    if value is None:
        return format_html("{}", "-")
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return format_html(
        '<time datetime="{}">{}</time>', value.isoformat(), date_format(local, "Y-m-d H:i:s")
    )


def _run_link(run_id: Any, text: str) -> SafeString:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:stepflows_run_change", args=[run_id]), text
    )


def linked_run(run: Run | None, run_id: Any = None) -> SafeString:
    """A link to a run's page: workflow, short id and status (or just the id if it is gone)."""
    if run is None:
        return _run_link(run_id, str(run_id)) if run_id else format_html("{}", "?")
    return format_html(
        "{} {}",
        _run_link(run.pk, f"{run.workflow_id} {str(run.pk)[:8]}"),
        status_badge(run.status),
    )


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def invoked_runs(steps: Iterable[Step]) -> dict[str, Run]:
    """The runs the invoke steps started, by id (one query, however many steps)."""
    ids = {
        child
        for s in steps
        if s.kind == StepKind.INVOKE and isinstance(s.wait, dict)
        for child in [_uuid(s.wait.get("child"))]
        if child is not None
    }
    if not ids:
        return {}
    return {str(r.pk): r for r in Run.objects.filter(pk__in=ids).only(*LINKED_RUN_FIELDS)}


def _details(step: Step | None) -> dict[str, Any]:
    return step.wait if step is not None and isinstance(step.wait, dict) else {}


def _event_text(wait: dict[str, Any]) -> SafeString:
    text = format_html("event <code>{}</code>", wait.get("event") or "?")
    if wait.get("match"):
        text = format_html(
            "{} with <code>{}</code> = <code>{}</code>",
            text,
            wait["match"],
            json.dumps(wait.get("value"), ensure_ascii=False, default=str),
        )
    if wait.get("filter"):
        text = format_html("{} {}", text, "(and an if_ filter)")
    return text


def _invoke_text(wait: dict[str, Any], children: dict[str, Run]) -> SafeString:
    child_id = _uuid(wait.get("child"))
    child = children.get(str(child_id)) if child_id else None
    link = linked_run(child, child_id)
    workflow = wait.get("workflow") or (child.workflow_id if child else "?")
    return format_html("run {} of workflow <code>{}</code>", link, workflow)


def current_wait(run: Run, steps: Sequence[Step]) -> Step | None:
    """The step a waiting run waits in: its last scheduled step of that kind."""
    mine = [s for s in steps if s.kind == run.waiting_for]
    pending = [s for s in mine if s.status == StepStatus.SCHEDULED]
    found = pending or mine
    return found[-1] if found else None


def waiting_line(run: Run, steps: Sequence[Step], children: dict[str, Run]) -> SafeString:
    """The run page's "Waiting for" line, while the run waits (or flow control holds it)."""
    if not run.waiting_for or run.is_finished:
        return EMPTY
    if is_held(run):
        return hold_line(run)
    step = current_wait(run, steps)
    wait = _details(step)
    until = run.wait_until or (step.wake_at if step is not None else None)
    if run.waiting_for == WaitKind.SLEEP:
        text = format_html("sleeping until {}", when(until))
    elif run.waiting_for == WaitKind.EVENT:
        text = _event_text(wait)
        if until is not None:
            text = format_html("{}; times out at {}", text, when(until))
    elif run.waiting_for == WaitKind.INVOKE:
        text = _invoke_text(wait, children)
        if until is not None:
            text = format_html("{}; times out at {}", text, when(until))
    else:
        text = format_html("{}", run.waiting_for)
    if step is not None:
        text = format_html(
            '{} <span class="sf-muted">(step <code>{}</code>)</span>', text, step.step_id
        )
    return text


def origin_line(run: Run) -> SafeString:
    """How a run started by another run came to be: invoked by a step, or handling a failure."""
    handler = run.event.name == FAILURE_EVENT
    if run.parent_id is None or not (handler or run.caller_step):
        return EMPTY
    parent = Run.objects.filter(pk=run.parent_id).only(*LINKED_RUN_FIELDS).first()
    link = linked_run(parent, run.parent_id)
    if handler:
        return format_html("handles the failure of run {}", link)
    return format_html("invoked by step <code>{}</code> of run {}", run.caller_step, link)


def failure_handlers(run: Run) -> list[SafeString]:
    """Links to the ``on_failure`` handler runs a failure of this run started."""
    handlers = (
        Run.objects.filter(parent=run, event__name=FAILURE_EVENT)
        .only(*LINKED_RUN_FIELDS)
        .order_by("created_at")
    )
    return [linked_run(h) for h in handlers]


def step_wait(step: Step, children: dict[str, Run]) -> SafeString:
    """What a wait step waits (or waited) for, and how it ended; empty for code."""
    wait = _details(step)
    if step.kind == StepKind.SLEEP:
        return format_html("until {}", when(step.wake_at or _parse(wait.get("until"))))
    if step.kind == StepKind.EVENT:
        text = _event_text(wait)
        if step.status == StepStatus.COMPLETED:
            text = format_html("{}: {}", text, _received(step.output))
        return text
    if step.kind == StepKind.INVOKE:
        return _invoke_text(wait, children)
    return EMPTY


def _received(output: Any) -> SafeString:
    if not isinstance(output, dict):
        return format_html('<span class="sf-muted">{}</span>', "timed out")
    event_id = output.get("id")
    if not event_id:
        return format_html("received {}", output.get("name") or "?")
    url = reverse("admin:stepflows_event_change", args=[quote(str(event_id))])
    return format_html('received <a href="{}">{}</a>', url, output.get("name") or event_id)


def _parse(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
