"""The workflows page: every registered workflow, what starts it, what it accepts, its
options in words, how its runs went over the last day, and a "send a test event" form.

The page needs the view permission of runs; the form, ``stepflows.send_test_event``.
A test event is checked against the workflow's schema first (its error is shown on the
form, and nothing is stored), then sent with :func:`stepflows.api.send` like any other:
every workflow listening to that name starts a run, and the page then lists them.
The counts are one query for all workflows, so the page costs the same whatever
their number. Every text from users (ids, names, data, messages) is escaped.
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from .. import api
from ..conf import get_settings
from ..exceptions import InvalidEventError
from ..flow import CRON_EVENT
from ..models import Event, Run, RunStatus
from ..registry import Workflow, registry
from .common import status_badge
from .flow_control import cron_ticks
from .flow_text import flow_limits, period

#: The runs counted on the page: those created this long ago at most.
RECENT = timedelta(hours=24)
#: The permission of the "send a test event" form.
SEND_PERMISSION = "stepflows.send_test_event"
VIEW_PERMISSION = "stepflows.view_run"


# -- what the page says of a workflow ----------------------------------------------------


def type_text(annotation: Any) -> str:
    """A field's type as written in code: ``int``, ``list[str]``, ``str | None``."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin is typing.Annotated:
        return type_text(args[0])
    if origin is not None and args:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]"
    return str(annotation).replace("typing.", "")


@dataclass
class SchemaField:
    name: str
    type: str
    required: bool
    default: str = ""


def schema_fields(schema: type[BaseModel] | None) -> list[SchemaField]:
    """The fields of a workflow's schema, in declaration order."""
    if schema is None:
        return []
    found = []
    for name, info in schema.model_fields.items():
        default = ""
        if not info.is_required():
            value = info.get_default(call_default_factory=False)
            if info.default_factory is not None:
                default = "(computed)"
            elif value is not PydanticUndefined:
                default = json.dumps(value, default=str)
        found.append(
            SchemaField(info.alias or name, type_text(info.annotation), info.is_required(), default)
        )
    return found


def _sample(annotation: Any) -> Any:
    """A placeholder value of a type, for the form's starting data."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sample(args[0]) if args else None
    samples: dict[Any, Any] = {str: "", int: 0, float: 0.0, bool: False, list: [], dict: {}}
    if origin in samples:
        return samples[origin]
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return example_data(origin)
    return None


def example_data(schema: type[BaseModel] | None) -> dict[str, Any]:
    """Starting data for the form: each field's default, or a placeholder of its type."""
    if schema is None:
        return {}
    data: dict[str, Any] = {}
    for name, info in schema.model_fields.items():
        value = PydanticUndefined if info.is_required() else info.get_default()
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = PydanticUndefined
        data[info.alias or name] = _sample(info.annotation) if value is PydanticUndefined else value
    return data


def trigger_lines(wf: Workflow) -> list[str]:
    """What starts a workflow, in words: event names (with a filter), cron schedules."""
    lines = []
    for trigger in wf.triggers:
        if trigger.event == CRON_EVENT:
            continue  # said with its schedule below
        name = trigger.event
        if trigger.if_ is not None:
            fn = getattr(trigger.if_, "__name__", "")
            name += f" (if {fn}(event))" if fn.isidentifier() else " (if a filter says so)"
        lines.append(f"event {name}")
    for cron in wf.flow.crons:
        lines.append(f"cron {cron.expression} ({cron.tz})")
    return lines


def trigger_names(wf: Workflow) -> list[str]:
    """The event names the form can send to start this workflow."""
    names = [t.event for t in wf.triggers if t.event != CRON_EVENT]
    if wf.flow.crons:
        names.append(CRON_EVENT)
    return list(dict.fromkeys(names))


def option_lines(
    wf: Workflow, ticks: dict[tuple[str, str], tuple[Any, int]], handlers: dict[str, str]
) -> list[tuple[str, str]]:
    """A workflow's options in words, as (option, setting) pairs."""
    retries = wf.retries if wf.retries is not None else get_settings().RETRIES
    default = "" if wf.retries is not None else ", the default STEPFLOWS['RETRIES']"
    lines = [("retries", f"{retries}{default} (at most {retries + 1} attempts per step)")]
    if wf.version:
        lines.insert(0, ("version", f"{wf.version} (recorded on each run it starts)"))
    start, finish = wf.timeouts
    if start is not None:
        lines.append(("timeout to start", f"cancelled if still queued {period(start)} after sent"))
    if finish is not None:
        lines.append(
            ("timeout to finish", f"cancelled if still active {period(finish)} after start")
        )
    for cancel in wf.cancel_on:
        words = f"a later {cancel.event} event"
        if cancel.match:
            words += f" with the same {cancel.match}"
        if cancel.if_ is not None:
            words += " that its filter accepts"
        if cancel.timeout is not None:
            words += f", within {period(cancel.timeout)}"
        lines.append(("cancel on", words))
    if wf.on_failure:
        lines.append(("on failure", f"runs {wf.on_failure} for each failed run"))
    if wf.id in handlers:
        lines.append(("handles failures of", handlers[wf.id]))
    lines.extend(
        (row.limit, row.setting)
        for row, _ in flow_limits(wf.id, wf.flow, ticks)
        if row.limit != "cron"  # the schedule is among the triggers
    )
    for name, value in sorted(wf.options.items()):
        lines.append((name.replace("_", " "), str(value)))
    return lines


def recent_counts(since: Any) -> dict[str, dict[str, int]]:
    """Runs created since ``since``, by workflow and status: one query for all workflows."""
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    rows = (
        Run.objects.filter(created_at__gte=since)
        .order_by()
        .values_list("workflow_id", "status")
        .annotate(n=Count("pk"))
    )
    for workflow_id, status, n in rows:
        counts[workflow_id][status] = n
    return counts


def _runs_url(**params: str) -> str:
    return reverse("admin:stepflows_run_changelist") + "?" + urlencode(params)


def _count_cells(workflow_id: str, mine: dict[str, int], since: str) -> list[dict[str, Any]]:
    return [
        {
            "status": status,
            "badge": status_badge(status),
            "n": mine[status],
            "url": _runs_url(
                workflow_id__exact=workflow_id, status__exact=status, created_at__gte=since
            ),
        }
        for status in RunStatus.values
        if mine.get(status)
    ]


# -- the form ----------------------------------------------------------------------------


class TestEventForm(forms.Form):
    """A test event for one workflow: one of its trigger names, and JSON data."""

    workflow = forms.CharField(widget=forms.HiddenInput)
    name = forms.ChoiceField(label="event")
    payload = forms.CharField(
        label="data (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 6, "cols": 40, "spellcheck": "false"}),
    )

    def __init__(self, wf: Workflow, *args: Any, **kwargs: Any) -> None:
        self.wf = wf
        # Several forms share the page: each its own element ids.
        kwargs.setdefault("auto_id", "sf-" + re.sub(r"[^A-Za-z0-9_-]", "-", wf.id) + "-%s")
        super().__init__(*args, **kwargs)
        names = trigger_names(wf)
        name_field = self.fields["name"]
        assert isinstance(name_field, forms.ChoiceField)
        name_field.choices = [(n, n) for n in names]
        self.fields["workflow"].initial = wf.id
        if not self.is_bound:
            start = example_data(wf.schema)
            if CRON_EVENT in names and not wf.schema and len(names) == 1:
                start = {"workflow": wf.id}
            self.fields["payload"].initial = json.dumps(start, indent=2)

    def clean_payload(self) -> dict[str, Any]:
        text = (self.cleaned_data.get("payload") or "").strip() or "{}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"The data is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}). "
                "Nothing was sent."
            ) from None
        if not isinstance(data, dict):
            raise forms.ValidationError(
                f"The data must be a JSON object ({{...}}), not {type(data).__name__}. "
                "Nothing was sent."
            )
        schema = self.wf.schema
        if schema is not None:
            try:
                schema.model_validate(data)
            except ValidationError as exc:
                problems = [
                    f"{'.'.join(map(str, e['loc'])) or 'data'}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                ]
                raise forms.ValidationError(
                    [
                        f"The data does not match the schema of workflow {self.wf.id!r} "
                        f"({schema.__name__}); nothing was sent:",
                        *problems,
                    ]
                ) from None
        return data


# -- the page ----------------------------------------------------------------------------


@dataclass
class Card:
    """One workflow on the page (templates call callables: they never get the Workflow)."""

    wf: Workflow
    triggers: list[str]
    fields: list[SchemaField]
    options: list[tuple[str, str]]
    counts: list[dict[str, Any]]
    total: int
    runs_url: str
    form: TestEventForm | None
    also_started: dict[str, list[str]] = field(default_factory=dict)
    open: bool = False

    @property
    def id(self) -> str:
        return self.wf.id

    @property
    def is_async(self) -> bool:
        return self.wf.is_async

    @property
    def has_schema(self) -> bool:
        return self.wf.schema is not None

    @property
    def schema_name(self) -> str:
        return self.wf.schema.__name__ if self.wf.schema is not None else ""


def _listeners(workflows: list[Workflow]) -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = defaultdict(list)
    for wf in workflows:
        for name in trigger_names(wf):
            by_name[name].append(wf.id)
    return by_name


def cards(request: HttpRequest, bound: TestEventForm | None = None) -> list[Card]:
    """Every registered workflow, sorted by id, with the figures of the last day."""
    workflows = sorted(registry.all(), key=lambda wf: wf.id)
    since = timezone.now() - RECENT
    since_text = since.isoformat(timespec="seconds")
    counts = recent_counts(since)
    ticks = cron_ticks()
    listeners = _listeners(workflows)
    handlers = {wf.on_failure: wf.id for wf in workflows if wf.on_failure}
    can_send = request.user.has_perm(SEND_PERMISSION)
    found = []
    for wf in workflows:
        mine = counts.get(wf.id, {})
        form = None
        if can_send and trigger_names(wf):
            form = bound if bound is not None and bound.wf.id == wf.id else TestEventForm(wf)
        found.append(
            Card(
                wf=wf,
                triggers=trigger_lines(wf),
                fields=schema_fields(wf.schema),
                options=option_lines(wf, ticks, handlers),
                counts=_count_cells(wf.id, mine, since_text),
                total=sum(mine.values()),
                runs_url=_runs_url(workflow_id__exact=wf.id),
                form=form,
                also_started={
                    name: [other for other in listeners[name] if other != wf.id]
                    for name in trigger_names(wf)
                    if len(listeners[name]) > 1
                },
                open=bound is not None and bound.wf.id == wf.id,
            )
        )
    return found


def _sent(request: HttpRequest) -> dict[str, Any] | None:
    event_id = request.GET.get("sent")
    if not event_id:
        return None
    event = Event.objects.filter(pk=event_id).first()
    runs = list(Run.objects.filter(event_id=event_id).order_by("created_at", "id"))
    return {
        "event_id": event_id,
        "event": event,
        "event_url": reverse("admin:stepflows_event_change", args=[quote(event_id)]),
        "runs": [{"run": r, "status": status_badge(r.status)} for r in runs],
    }


def workflows_view(modeladmin: admin.ModelAdmin, request: HttpRequest) -> HttpResponse:
    """The workflows page (view permission of runs); POST sends a test event."""
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied
    bound = None
    if request.method == "POST":
        if not request.user.has_perm(SEND_PERMISSION):
            raise PermissionDenied
        bound, sent = _send(modeladmin, request)
        if sent is not None:
            here = reverse("admin:stepflows_workflows", current_app=modeladmin.admin_site.name)
            return HttpResponseRedirect(f"{here}?{urlencode({'sent': sent})}#sf-sent")
    context = {
        **modeladmin.admin_site.each_context(request),
        # The page needs the width (a form opens in a row); the index links here.
        "is_nav_sidebar_enabled": False,
        "opts": modeladmin.opts,
        "app_label": modeladmin.opts.app_label,
        "title": "Workflows",
        "cards": cards(request, bound),
        "sent": _sent(request),
        "recent_hours": int(RECENT.total_seconds() // 3600),
        "can_send": request.user.has_perm(SEND_PERMISSION),
        "runs_url": reverse("admin:stepflows_run_changelist"),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/stepflows/workflows/index.html", context)


def _send(
    modeladmin: admin.ModelAdmin, request: HttpRequest
) -> tuple[TestEventForm | None, str | None]:
    """Check and send the posted test event: (the form with its errors, or the event id)."""
    workflow_id = request.POST.get("workflow", "")
    wf = next((w for w in registry.all() if w.id == workflow_id), None)
    if wf is None:
        modeladmin.message_user(
            request,
            f"No workflow is registered with id {workflow_id!r}; nothing was sent. "
            "Reload the page to see the workflows registered now.",
            level=messages.ERROR,
        )
        return None, None
    form = TestEventForm(wf, request.POST)
    if not form.is_valid():
        return form, None
    name, data = form.cleaned_data["name"], form.cleaned_data["payload"]
    try:
        [event_id] = api.send(name, data)
    except InvalidEventError as exc:
        # Another workflow listening to the same name may reject the data.
        form.add_error("payload", f"{exc}")
        return form, None
    event = Event.objects.filter(pk=event_id).first()
    if event is not None:
        modeladmin.log_addition(
            request, event, f"Sent as a test event of workflow {wf.id} from the workflows page."
        )
    return None, event_id
