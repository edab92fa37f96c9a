"""The workflows page: every registered workflow with its triggers, schema, options and
recent runs, and the "send a test event" form behind its own permission."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import stepflows
from stepflows.models import Event, Run
from stepflows.registry import registry

from .conftest import build_run

pytestmark = pytest.mark.django_db

PAGE = "admin:stepflows_workflows"
SEND = "send_test_event"


def page(client: Any, **params: Any) -> str:
    response = client.get(reverse(PAGE), params)
    assert response.status_code == 200, response
    return response.content.decode()


def card(html: str, workflow_id: str) -> str:
    """The row of one workflow on the page."""
    found = re.search(
        rf'<tr class="sf-workflow" data-workflow="{re.escape(workflow_id)}">(.*?)</tr>'
        r'\s*(?=<tr class="sf-workflow"|</tbody>)',
        html,
        re.S,
    )
    assert found, f"no row of {workflow_id} on the page"
    return found.group(1)


def send(client: Any, workflow: str, name: str, data: str) -> Any:
    return client.post(reverse(PAGE), {"workflow": workflow, "name": name, "payload": data})


# -- what the page shows -----------------------------------------------------------------


def test_the_page_lists_every_registered_workflow(admin_client_all):
    html = page(admin_client_all)
    for wf in registry.all():
        assert f'data-workflow="{wf.id}"' in html, wf.id


def test_a_card_shows_triggers_schema_options_and_runs_link(admin_client_all):
    row = card(page(admin_client_all), "wp-order")
    assert "event test/wp-order.created" in row
    assert "event test/wp-order.updated (if big_total(event))" in row
    # The schema's fields, with their types and defaults.
    assert "Order" in row
    assert '<tr data-field="order_id"><td><code>order_id</code></td><td><code>int</code>' in row
    assert "<code>list[str]</code>" in row and "= []" in row
    assert "<code>str | None</code>" in row and "= null" in row
    # Options in words.
    assert "retries</span>: 2 (at most 3 attempts per step)" in row
    assert "cancelled if still queued 1 min after sent" in row
    assert "cancelled if still active 1 h after start" in row
    assert "a later test/wp-order.cancelled event with the same data.order_id" in row
    assert "runs wp-order.on_failure for each failed run" in row
    assert "at most 2 running per data.email" in row
    assert "?workflow_id__exact=wp-order" in row


def test_cron_triggers_and_failure_handlers_are_described(admin_client_all):
    html = page(admin_client_all)
    assert "cron */5 * * * * (UTC)" in card(html, "fip-cron")
    handler = card(html, "wp-order.on_failure")
    assert "no trigger of its own" in handler and "handles failures of</span>: wp-order" in handler
    plain = card(html, "wp-plain")
    assert "none (any JSON object)" in plain
    assert "4, the default STEPFLOWS[&#x27;RETRIES&#x27;] (at most 5 attempts" in plain


def test_counts_by_status_over_the_last_day(admin_client_all):
    for status in ("completed", "completed", "failed"):
        build_run(workflow="wp-plain", status=status)
    build_run(workflow="wp-plain", status="failed", base=timezone.now() - timedelta(days=2))
    row = card(page(admin_client_all), "wp-plain")
    counts = dict(re.findall(r'data-status="(\w+)">.*?</span> (\d+)</a>', row))
    assert counts == {"completed": "2", "failed": "1"}
    assert "status__exact=failed" in row and "workflow_id__exact=wp-plain" in row
    assert "no runs" in card(page(admin_client_all), "wp-shared-too")


def test_the_index_links_to_the_page(admin_client_all, staff_client):
    html = admin_client_all.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse(PAGE)}"' in html and ">Workflows</a>" in html
    nobody = staff_client()
    nobody.force_login(_user_without_view_run())
    assert reverse(PAGE) not in nobody.get(reverse("admin:index")).content.decode()


def _user_without_view_run() -> Any:
    from .conftest import make_staff

    return make_staff("events-only", ["view_event"])


def test_the_page_needs_the_view_permission_of_runs(client):
    from django.test import Client

    viewer = Client()
    viewer.force_login(_user_without_view_run())
    assert viewer.get(reverse(PAGE)).status_code == 403
    assert client.get(reverse(PAGE)).status_code == 302  # not logged in: the login page


def test_query_count_does_not_grow_with_the_number_of_workflows(admin_client_all, staff_client):
    client = staff_client(SEND)
    build_run(workflow="wp-plain")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            page(client)
        return len(ctx.captured_queries)

    few = count()
    extra = []
    try:
        for i in range(15):
            fn = stepflows.workflow(id=f"wp-extra-{i}", trigger=f"test/wp-extra-{i}")(
                lambda ctx, step: None
            )
            extra.append(fn.stepflows_workflow.id)
            build_run(workflow=f"wp-extra-{i}")
        many = count()
    finally:
        for workflow_id in extra:
            registry.unregister(workflow_id)
    assert few == many, f"{few} queries, then {many} with 15 more workflows"


# -- the send form -----------------------------------------------------------------------


def test_the_form_needs_its_permission(admin_client_all, staff_client):
    html = page(admin_client_all)  # every action permission, but not this one
    assert "sf-send-form" not in html
    assert "Can send test events from the workflows page" in html
    response = send(admin_client_all, "wp-plain", "test/wp-shared", "{}")
    assert response.status_code == 403
    assert not Event.objects.filter(name="test/wp-shared").exists()
    html = page(staff_client(SEND))
    assert card(html, "wp-order").count('class="sf-send-form"') == 1


def test_the_form_is_posted_with_a_csrf_token(staff_client):
    client = staff_client(SEND, csrf=True)
    html = page(client)
    assert 'name="csrfmiddlewaretoken"' in card(html, "wp-plain")
    response = send(client, "wp-plain", "test/wp-shared", "{}")
    assert response.status_code == 403  # no token
    assert not Event.objects.filter(name="test/wp-shared").exists()


def test_invalid_data_shows_the_schema_error_and_stores_nothing(staff_client):
    client = staff_client(SEND)
    events = Event.objects.count()
    response = send(client, "wp-order", "test/wp-order.created", '{"order_id": 0}')
    assert response.status_code == 200
    row = card(response.content.decode(), "wp-order")
    assert "does not match the schema of workflow &#x27;wp-order&#x27; (Order)" in row
    assert "order_id: Input should be greater than or equal to 1" in row
    assert "email: Field required" in row
    assert "<details open>" in row  # the form stays open, with what was typed
    assert "\n{&quot;order_id&quot;: 0}</textarea>" in row
    response = send(client, "wp-order", "test/wp-order.created", "{not json")
    assert "The data is not valid JSON" in response.content.decode()
    response = send(client, "wp-order", "test/wp-order.created", "[1, 2]")
    assert "must be a JSON object" in response.content.decode()
    response = send(client, "wp-order", "test/not-its-trigger", "{}")
    assert "Select a valid choice" in response.content.decode()
    assert Event.objects.count() == events and not Run.objects.exists()


def test_valid_data_is_sent_and_the_page_lists_the_runs_it_started(staff_client):
    client = staff_client(SEND)
    response = send(client, "wp-plain", "test/wp-shared", '{"hello": "<b>world</b>"}')
    assert response.status_code == 302
    event = Event.objects.get(name="test/wp-shared")
    assert event.data == {"hello": "<b>world</b>"}
    assert response["Location"].startswith(reverse(PAGE) + f"?sent={event.pk}")
    runs = {r.workflow_id: r for r in Run.objects.filter(event=event)}
    assert set(runs) == {"wp-plain", "wp-shared-too"}
    html = client.get(response["Location"]).content.decode()
    sent = html.split('id="sf-sent"', 1)[1].split("</div>", 1)[0]
    assert "It started 2 runs" in sent
    for run in runs.values():
        assert reverse("admin:stepflows_run_change", args=[run.pk]) in sent
    # The form said beforehand that the event starts the other workflow too.
    assert "test/wp-shared also starts: wp-shared-too" in card(html, "wp-plain")
    # Recorded in the admin's history, under the event.
    from django.contrib.admin.models import LogEntry

    entry = LogEntry.objects.get(object_id=event.pk)
    assert "test event of workflow wp-plain" in entry.get_change_message()


def test_a_valid_event_with_a_schema_starts_its_run(staff_client):
    client = staff_client(SEND)
    data = '{"order_id": 7, "email": "a@b.c"}'
    response = send(client, "wp-order", "test/wp-order.created", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    [run] = Run.objects.filter(event__name="test/wp-order.created")
    assert run.workflow_id == "wp-order"


def test_an_unknown_workflow_says_so(staff_client):
    client = staff_client(SEND)
    response = send(client, "wp-gone", "test/wp-shared", "{}")
    assert "No workflow is registered with id &#x27;wp-gone&#x27;" in response.content.decode()
    assert not Event.objects.exists()
