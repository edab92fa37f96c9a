"""Each action sits behind its own permission, and is a POST with CSRF."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from stepflows.admin import compare
from stepflows.models import Run, RunStatus

from .conftest import build_run
from .helpers import messages_of, post_action

pytestmark = pytest.mark.django_db

RUN_ACTIONS = {
    "retry_runs": "retry_run",
    "rerun_runs": "rerun_run",
    "cancel_runs": "cancel_run",
    "compare_runs": "compare_runs",
}


def action_options(client: Client, model: str) -> set[str]:
    html = client.get(reverse(f"admin:stepflows_{model}_changelist")).content.decode()
    return set(re.findall(r'<option value="([a-z_]+)"', html)) - {""}


def test_staff_with_only_view_permission_see_no_action(staff_client):
    client = staff_client()
    run = build_run(status="failed")
    assert action_options(client, "run") == set()
    assert action_options(client, "event") == set()
    html = client.get(reverse("admin:stepflows_run_change", args=[run.pk])).content.decode()
    assert 'name="action"' not in html and "sf-compare-link" not in html
    html = client.get(reverse("admin:stepflows_event_change", args=[run.event_id])).content.decode()
    assert 'name="action"' not in html


@pytest.mark.parametrize("action,perm", RUN_ACTIONS.items())
def test_each_run_action_shows_only_with_its_own_permission(staff_client, action, perm):
    client = staff_client(perm)
    assert action_options(client, "run") == {action}


def test_replay_shows_only_with_its_permission(staff_client):
    assert action_options(staff_client("replay_event"), "event") == {"replay_events"}
    assert action_options(staff_client("retry_run"), "event") == set()


def test_run_page_buttons_follow_permissions_and_status(staff_client):
    failed = build_run(status="failed")
    running = build_run(status="running")
    client = staff_client("retry_run", "cancel_run")
    html = client.get(reverse("admin:stepflows_run_change", args=[failed.pk])).content.decode()
    assert 'value="retry_runs"' in html
    assert 'value="rerun_runs"' not in html and 'value="cancel_runs"' not in html
    html = client.get(reverse("admin:stepflows_run_change", args=[running.pk])).content.decode()
    assert 'value="cancel_runs"' in html and 'value="retry_runs"' not in html


@pytest.mark.parametrize("action,perm", RUN_ACTIONS.items())
def test_posting_a_run_action_without_its_permission_does_nothing(staff_client, action, perm):
    others = [p for p in RUN_ACTIONS.values() if p != perm]
    client = staff_client(*others)
    run = build_run(status="failed")
    response = post_action(client, "run", action, [run.pk])
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:stepflows_run_changelist")
    assert messages_of(response) == ["No action selected."]
    assert Run.objects.count() == 1
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED


def test_posting_replay_without_its_permission_does_nothing(staff_client):
    client = staff_client(*RUN_ACTIONS.values())
    run = build_run()
    response = post_action(client, "event", "replay_events", [run.event_id])
    # With no action allowed at all, the POST just shows the list again.
    assert response.status_code == 200 and 'id="sf-confirm"' not in response.content.decode()
    assert Run.objects.count() == 1


def test_compare_page_needs_compare_permission(staff_client):
    run = build_run()
    assert staff_client("retry_run").get(compare.url(ids=[run.pk])).status_code == 403
    assert staff_client("compare_runs").get(compare.url(ids=[run.pk])).status_code == 200


def test_actions_are_refused_without_a_csrf_token(staff_client):
    client = staff_client(*RUN_ACTIONS.values(), "replay_event", csrf=True)
    run = build_run(status="failed")
    for model, action, pk in [
        ("run", "retry_runs", run.pk),
        ("run", "rerun_runs", run.pk),
        ("run", "cancel_runs", run.pk),
        ("event", "replay_events", run.event_id),
    ]:
        assert post_action(client, model, action, [pk], confirm=False).status_code == 403
        assert post_action(client, model, action, [pk]).status_code == 403
    assert Run.objects.count() == 1
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED


def test_actions_work_with_the_csrf_token_of_the_page(staff_client):
    client = staff_client("retry_run", csrf=True)
    run = build_run(status="failed")
    html = client.get(reverse("admin:stepflows_run_change", args=[run.pk])).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    page = post_action(
        client, "run", "retry_runs", [run.pk], confirm=False, csrfmiddlewaretoken=token
    )
    assert page.status_code == 200
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    response = post_action(
        client, "run", "retry_runs", [run.pk], csrfmiddlewaretoken=token.group(1)
    )
    assert response.status_code == 302
    assert Run.objects.get(pk=run.pk).status == RunStatus.QUEUED


def test_actions_are_post_only(admin_client_all):
    run = build_run(status="failed")
    url = reverse("admin:stepflows_run_changelist")
    response = admin_client_all.get(
        url, {"action": "retry_runs", "_selected_action": str(run.pk), "post": "yes"}
    )
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED
    assert response.status_code in (200, 302)
