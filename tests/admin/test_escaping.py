"""Everything user-supplied is escaped on every stepflows admin page.

A `<script>` in the event payload, a step's output, an error message, a step id
and a workflow id must come out as text on the lists, the run and event pages,
the compare page and the confirmation pages of every action.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote
from django.urls import reverse

from stepflows.admin import compare
from stepflows.models import Event, Run

from .conftest import XSS, build_run

pytestmark = pytest.mark.django_db

RAW = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"


@pytest.fixture
def hostile_run() -> Run:
    error = {"type": "ValueError", "message": XSS, "traceback": f"Traceback\n  {XSS}"}
    parent = build_run(
        workflow=f"wf{XSS}",
        status="failed",
        data={"text": XSS, XSS: 1},
        output=None,
        error=error,
        steps=[
            {"step_id": "ok", "start": 0, "end": 1, "output": {"html": XSS}},
            {
                "step_id": f"step{XSS}",
                "start": 1,
                "end": 2,
                "status": "failed",
                "error": error,
                "attempts": [(1, 1.5, XSS), (1.6, 2, XSS)],
            },
        ],
    )
    build_run(workflow=f"child{XSS}", source_run=parent, data={"x": XSS})
    return parent


def assert_escaped(html: str) -> None:
    assert RAW not in html
    assert "<script>alert" not in html
    assert ESCAPED in html or "&lt;script&gt;" in html


def page(client: Any, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def test_runs_list(admin_client_all, hostile_run):
    assert_escaped(page(admin_client_all, reverse("admin:stepflows_run_changelist")))


def test_run_page(admin_client_all, hostile_run):
    html = page(admin_client_all, reverse("admin:stepflows_run_change", args=[hostile_run.pk]))
    assert_escaped(html)
    # payload, step output, run error, traceback, step id all present, escaped
    assert html.count("&lt;script&gt;") >= 6


def test_event_list_and_page(admin_client_all, hostile_run):
    assert_escaped(page(admin_client_all, reverse("admin:stepflows_event_changelist")))
    url = reverse("admin:stepflows_event_change", args=[hostile_run.event_id])
    assert_escaped(page(admin_client_all, url))


def test_step_list_and_page(admin_client_all, hostile_run):
    assert_escaped(page(admin_client_all, reverse("admin:stepflows_step_changelist")))
    step = hostile_run.steps.get(position=1)
    assert_escaped(page(admin_client_all, reverse("admin:stepflows_step_change", args=[step.pk])))


def test_compare_page(admin_client_all, hostile_run):
    assert_escaped(page(admin_client_all, compare.url(family=[hostile_run.pk])))


@pytest.mark.parametrize("action", ["retry_runs", "rerun_runs", "cancel_runs"])
def test_run_action_confirmation_pages(admin_client_all, hostile_run, action):
    response = admin_client_all.post(
        reverse("admin:stepflows_run_changelist"),
        {"action": action, helpers.ACTION_CHECKBOX_NAME: [str(hostile_run.pk)]},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="sf-confirm"' in html
    assert_escaped(html)


def test_replay_confirmation_page(admin_client_all, hostile_run):
    # An event id is the sender's: it may hold markup (and slashes) too.
    event = Event.objects.create(id=f"ev/{XSS}", name="test/three-steps", data={"t": XSS})
    build_run(event=event)
    url = reverse("admin:stepflows_event_change", args=[quote(event.pk)])
    assert_escaped(page(admin_client_all, url))
    response = admin_client_all.post(
        reverse("admin:stepflows_event_changelist"),
        {"action": "replay_events", helpers.ACTION_CHECKBOX_NAME: [event.pk]},
    )
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="sf-confirm"' in html
    assert RAW not in html
