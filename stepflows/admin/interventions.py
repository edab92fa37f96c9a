"""The audit trail on the run page: who retried, reran, cancelled, replayed or forked it.

Also writes Django's own admin history (``LogEntry``) for each action taken in
the admin, so "Recent actions" and the run's history page show it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q
from django.http import HttpRequest
from django.urls import reverse

from ..models import Intervention, Run

#: Past-tense words for the admin history ("Retried (reason)").
DONE = {
    Intervention.Action.RETRY: "Retried",
    Intervention.Action.RERUN: "Reran",
    Intervention.Action.CANCEL: "Cancelled",
    Intervention.Action.REPLAY: "Replayed its event",
    Intervention.Action.FORK: "Forked",
}


def trail(run: Run) -> list[Intervention]:
    """The run's own entries plus the one that started it (a rerun, replay or fork), by time.

    One query, whatever the number of entries.
    """
    rows = Intervention.objects.filter(Q(run_id=run.pk) | Q(new_run_id=run.pk))
    return list(rows.order_by("at", "id"))


def trail_rows(run: Run, entries: Sequence[Intervention]) -> list[dict[str, Any]]:
    """What the audit trail table shows for each entry, seen from ``run``'s page."""
    rows = []
    for entry in entries:
        started_this = entry.new_run_id == run.pk and entry.run_id != run.pk
        other = entry.run_id if started_this else entry.new_run_id
        rows.append(
            {
                "entry": entry,
                "action": entry.get_action_display(),
                "started_this": started_this,
                # The run it started, or (on a started run's page) the run acted on.
                "other_id": other if other != run.pk else None,
                "other_url": _run_url(other) if other != run.pk else "",
                "from_step": (entry.detail or {}).get("from_step", ""),
            }
        )
    return rows


def origin(run: Run, entries: Sequence[Intervention]) -> dict[str, Any] | None:
    """How this run was started by a person, if it was: a fork, rerun or replay."""
    for entry in entries:
        if entry.new_run_id == run.pk:
            return {
                "entry": entry,
                "action": entry.action,
                "from_run_id": entry.run_id if entry.run_id != run.pk else None,
                "from_url": _run_url(entry.run_id) if entry.run_id != run.pk else "",
                "from_step": (entry.detail or {}).get("from_step", ""),
            }
    return None


def cancelled_by(run: Run, entries: Sequence[Intervention]) -> Intervention | None:
    """The entry that cancelled the run (the last cancel), if a person or code did."""
    cancels = [e for e in entries if e.run_id == run.pk and e.action == Intervention.Action.CANCEL]
    return cancels[-1] if cancels else None


def _run_url(run_id: Any) -> str:
    return reverse("admin:stepflows_run_change", args=[run_id]) if run_id else ""


def log_change(request: HttpRequest, objects: Sequence[Any], verb: str, reason: str = "") -> None:
    """Write one admin ``LogEntry`` (CHANGE) per object: "Retried (reason)"."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated or not objects:
        return
    message = f"{verb} ({reason})" if reason else verb
    content_type = ContentType.objects.get_for_model(type(objects[0]))
    LogEntry.objects.bulk_create(
        [
            LogEntry(
                user_id=user.pk,
                content_type_id=content_type.pk,
                object_id=str(obj.pk),
                object_repr=str(obj)[:200],
                action_flag=CHANGE,
                change_message=message,
            )
            for obj in objects
        ]
    )
