"""Admin actions: retry, rerun, cancel, fork, compare runs; replay events.

Each action sits behind its own permission (``Run.Meta.permissions`` and
``Event.Meta.permissions``), is a POST with CSRF, asks for confirmation on a
page of its own (with an optional reason), then calls :mod:`stepflows.api`
(never writes rows) as the admin user, and says what it did in a message.
The api records who did it in the run's audit trail; the action also writes
Django's admin history (``LogEntry``), so "Recent actions" shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from .. import api
from ..exceptions import RunStateError, StepflowsError
from ..models import ACTIVE_RUN_STATUSES, RETRYABLE_RUN_STATUSES, Event, Run, RunStatus, Step
from .interventions import log_change

#: Objects one action handles at most, so a confirmation page stays readable.
MAX_SELECTED = 500
#: What the cancel action takes: active runs, and blocked ones.
CANCELLABLE = (*ACTIVE_RUN_STATUSES, RunStatus.BLOCKED)


def next_url(request: HttpRequest) -> str | None:
    """The page to go back to after an action (the run page it was started from)."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


def _back(request: HttpRequest) -> HttpResponse | None:
    target = next_url(request)
    return HttpResponseRedirect(target) if target else None


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("post") == "yes"


#: Longest reason kept (the confirmation page's field says so too).
MAX_REASON = 1000


def reason_of(request: HttpRequest) -> str:
    """The optional reason typed on the confirmation page."""
    return " ".join((request.POST.get("reason") or "").split())[:MAX_REASON]


def actor(request: HttpRequest) -> dict[str, Any]:
    """Who acts, for the api: the admin user (named by username) and the reason."""
    return {"user": request.user, "reason": reason_of(request)}


def confirmation(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    *,
    action: str,
    title: str,
    intro: str,
    rows: Sequence[tuple[Any, str]],
    button: str,
    extra: dict[str, Any] | None = None,
) -> TemplateResponse:
    """The page that lists what an action will touch and posts it back with ``post=yes``."""
    opts = modeladmin.model._meta
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "intro": intro,
        "rows": rows,
        "action": action,
        "button": button,
        "opts": opts,
        "app_label": opts.app_label,
        "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        "selected": [str(obj.pk) for obj, _ in rows],
        "next": next_url(request) or "",
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        "max_reason": MAX_REASON,
        **(extra or {}),
    }
    request.current_app = modeladmin.admin_site.name
    return TemplateResponse(request, "admin/stepflows/confirm_action.html", context)


def _ids(runs: Sequence[Run]) -> str:
    return ", ".join(str(r.pk) for r in runs)


def _selected_runs(queryset: QuerySet[Run]) -> list[Run]:
    return list(queryset.select_related("event").order_by("-created_at")[:MAX_SELECTED])


@admin.action(description="Retry selected failed or blocked runs", permissions=["retry"])
def retry_runs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]
) -> HttpResponse | None:
    runs = _selected_runs(queryset)
    if not confirmed(request):
        return confirmation(
            modeladmin,
            request,
            action="retry_runs",
            title="Retry failed runs",
            intro="Each failed run resumes where it failed: steps that succeeded keep their "
            "outputs, failed steps run again with a fresh retry budget. A blocked run "
            "replays its steps on the code deployed now: with the fix deployed it goes on, "
            "without one it is blocked again.",
            rows=[
                (r, "" if r.status in RETRYABLE_RUN_STATUSES else f"skipped: it is {r.status}")
                for r in runs
            ],
            button="Yes, retry",
        )
    retried: list[Run] = []
    refused: list[Run] = []
    for run in runs:
        try:
            api.retry_run(run, **actor(request))
            retried.append(run)
        except RunStateError:
            refused.append(run)
    log_change(request, retried, "Retried", reason_of(request))
    if retried:
        modeladmin.message_user(
            request,
            f"Retried {len(retried)} failed run(s), resuming where they failed: {_ids(retried)}.",
            messages.SUCCESS,
        )
    if refused:
        detail = ", ".join(f"{r.pk} ({r.status})" for r in refused)
        modeladmin.message_user(
            request,
            f"Refused {len(refused)} run(s) that did not fail and are not blocked; only "
            f"failed or blocked runs can be retried (rerun them instead): {detail}.",
            messages.WARNING,
        )
    return _back(request)


@admin.action(description="Rerun selected runs from the start", permissions=["rerun"])
def rerun_runs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]
) -> HttpResponse | None:
    runs = _selected_runs(queryset)
    if not confirmed(request):
        return confirmation(
            modeladmin,
            request,
            action="rerun_runs",
            title="Rerun from the start",
            intro="Each selected run gets a new run of the same workflow for the same event, "
            "from the top. The selected runs are left as they are.",
            rows=[(r, "") for r in runs],
            button="Yes, rerun",
        )
    started: list[Run] = []
    failed: list[str] = []
    for run in runs:
        try:
            new = api.rerun(run, **actor(request))
        except StepflowsError as exc:
            failed.append(f"{run.pk}: {exc}")
            continue
        started.append(new)
        log_change(request, [run], f"Reran from the start as run {new.pk}", reason_of(request))
    if started:
        modeladmin.message_user(
            request,
            f"Started {len(started)} new run(s) from the start: {_ids(started)}.",
            messages.SUCCESS,
        )
    for line in failed:
        modeladmin.message_user(request, f"Could not rerun {line}", messages.ERROR)
    if len(started) == 1 and next_url(request):
        opts = modeladmin.model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[started[0].pk])
        return HttpResponseRedirect(url)
    return _back(request)


@admin.action(description="Cancel selected runs", permissions=["cancel"])
def cancel_runs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]
) -> HttpResponse | None:
    runs = _selected_runs(queryset)
    if not confirmed(request):
        return confirmation(
            modeladmin,
            request,
            action="cancel_runs",
            title="Cancel runs",
            intro="A queued or running run stops before its next step; a step already "
            "running finishes. A blocked run is cancelled at once. Finished runs are left "
            "as they are.",
            rows=[
                (r, "" if r.status in CANCELLABLE else f"skipped: it is {r.status}") for r in runs
            ],
            button="Yes, cancel",
        )
    cancelled = [r for r in runs if api.cancel_run(r, **actor(request))]
    finished = [r for r in runs if r not in cancelled]
    log_change(request, cancelled, "Cancelled", reason_of(request))
    if cancelled:
        modeladmin.message_user(
            request, f"Cancelled {len(cancelled)} run(s): {_ids(cancelled)}.", messages.SUCCESS
        )
    if finished:
        modeladmin.message_user(
            request,
            f"{len(finished)} run(s) had already finished and were left as they are: "
            f"{_ids(finished)}.",
            messages.WARNING,
        )
    return _back(request)


@admin.action(description="Compare selected runs", permissions=["compare"])
def compare_runs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]
) -> HttpResponse:
    # Comparing changes nothing, so the compare page itself is the next page.
    ids = [str(pk) for pk in queryset.values_list("pk", flat=True)[:MAX_SELECTED]]
    url = reverse("admin:stepflows_run_compare") + "?" + urlencode({"ids": ",".join(ids)})
    return HttpResponseRedirect(url)


@admin.action(description="Replay selected events", permissions=["replay"])
def replay_events(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Event]
) -> HttpResponse | None:
    events = list(queryset.order_by("-received_at")[:MAX_SELECTED])
    if not confirmed(request):
        return confirmation(
            modeladmin,
            request,
            action="replay_events",
            title="Replay events",
            intro="Each event starts fresh runs of the workflows it triggers now. Earlier runs "
            "are left as they are.",
            rows=[(e, "") for e in events],
            button="Yes, replay",
        )
    try:
        runs = api.replay_events(events, **actor(request))
    except StepflowsError as exc:
        modeladmin.message_user(request, f"Nothing was replayed: {exc}", messages.ERROR)
        return _back(request)
    log_change(request, events, "Replayed", reason_of(request))
    log_change(request, runs, "Started by a replay of its event", reason_of(request))
    if runs:
        modeladmin.message_user(
            request,
            f"Replayed {len(events)} event(s): started {len(runs)} new run(s): {_ids(runs)}.",
            messages.SUCCESS,
        )
    else:
        modeladmin.message_user(
            request,
            f"Replayed {len(events)} event(s): no workflow is triggered by them now, "
            "so no run started.",
            messages.WARNING,
        )
    return _back(request)


@admin.action(description="Fork the selected run from a step", permissions=["fork"])
def fork_runs(
    modeladmin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet[Run]
) -> HttpResponse | None:
    runs = _selected_runs(queryset)
    if len(runs) != 1:
        modeladmin.message_user(
            request,
            f"Select exactly one run to fork ({len(runs)} selected): a fork starts from "
            "one of that run's steps.",
            messages.WARNING,
        )
        return _back(request)
    [run] = runs
    step_ids = list(
        Step.objects.filter(run=run).order_by("position").values_list("step_id", flat=True)
    )
    chosen = request.POST.get("from_step") or ""
    if not confirmed(request) or chosen not in step_ids:
        note = ""
        if run.status in ACTIVE_RUN_STATUSES:
            note = f"it is {run.status}: cancel it before forking"
        elif not step_ids:
            note = "it recorded no steps: rerun it instead"
        return confirmation(
            modeladmin,
            request,
            action="fork_runs",
            title="Fork a run from a step",
            intro="A new run of the same workflow for the same event keeps the outputs of "
            "the steps before the chosen step (their code does not run again) and executes "
            "from that step on. A step of a parallel group runs its whole group again. "
            "The selected run is left as it is.",
            rows=[(run, note)],
            button="Yes, fork",
            extra={"fork_steps": step_ids, "fork_chosen": chosen},
        )
    try:
        new = api.fork_run(run, from_step=chosen, **actor(request))
    except StepflowsError as exc:
        modeladmin.message_user(request, f"Could not fork run {run.pk}: {exc}", messages.ERROR)
        return _back(request)
    log_change(request, [run], f"Forked from step {chosen} as run {new.pk}", reason_of(request))
    modeladmin.message_user(
        request,
        f"Forked run {run.pk} from step {chosen!r}: new run {new.pk}.",
        messages.SUCCESS,
    )
    opts = modeladmin.model._meta
    return HttpResponseRedirect(
        reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[new.pk])
    )


RUN_ACTIONS: list[Callable[..., Any]] = [
    retry_runs,
    rerun_runs,
    cancel_runs,
    fork_runs,
    compare_runs,
]
EVENT_ACTIONS: list[Callable[..., Any]] = [replay_events]
