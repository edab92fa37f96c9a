"""Posting admin actions the way the browser does: confirmation page, then confirm."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import helpers
from django.contrib.messages import get_messages
from django.urls import reverse

CHANGELIST = {
    "run": "admin:stepflows_run_changelist",
    "event": "admin:stepflows_event_changelist",
}


def post_action(
    client: Any, model: str, action: str, ids: list[Any], *, confirm: bool = True, **extra: Any
) -> Any:
    data = {"action": action, helpers.ACTION_CHECKBOX_NAME: [str(i) for i in ids], **extra}
    if confirm:
        data["post"] = "yes"
    return client.post(reverse(CHANGELIST[model]), data)


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]
