"""Admin actions on real workers: retry, rerun, cancel, replay, compare.

Each goes through its confirmation page, then calls stepflows.api; the run is
then carried out by real Celery worker processes.
"""

from __future__ import annotations

import time

import pytest
from django.urls import reverse

import stepflows
from stepflows.models import Intervention, Run, RunStatus, Step
from stepflows.testing import runs_for, wait_for_run, wait_for_runs
from tests.testapp.marks import count

from .helpers import messages_of, post_action

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def test_retry_confirms_then_resumes_a_failed_run_to_completion(
    run_event, key, tmp_path, admin_client_all
):
    gate = tmp_path / "gate"
    run = run_event("test/resumable", {"key": key, "gate": str(gate)})
    assert run.status == RunStatus.FAILED
    page = post_action(admin_client_all, "run", "retry_runs", [run.pk], confirm=False)
    assert page.status_code == 200
    html = page.content.decode()
    assert str(run.pk) in html and 'id="sf-confirm"' in html
    assert Run.objects.get(pk=run.pk).status == RunStatus.FAILED  # nothing done yet

    gate.write_text("open")
    response = post_action(admin_client_all, "run", "retry_runs", [run.pk])
    assert response.status_code == 302
    assert messages_of(response) == [
        f"Retried 1 failed run(s), resuming where they failed: {run.pk}."
    ]
    [entry] = Intervention.objects.filter(run=run)
    assert (entry.action, entry.by) == ("retry", response.wsgi_request.user.username)
    run = wait_for_run(run.id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == [1, "through"]
    assert count(f"{key}-first") == 1  # the succeeded step was kept
    assert Step.objects.get(run=run, step_id="gated").attempt_count == 3


def test_retry_refuses_runs_that_did_not_fail(run_event, key, admin_client_all):
    run = run_event("test/three-steps", {"key": key})
    page = post_action(admin_client_all, "run", "retry_runs", [run.pk], confirm=False)
    assert "skipped: it is completed" in page.content.decode()
    response = post_action(admin_client_all, "run", "retry_runs", [run.pk])
    [message] = messages_of(response)
    assert message.startswith("Refused 1 run(s) that did not fail")
    assert f"{run.pk} (completed)" in message
    again = Run.objects.get(pk=run.pk)
    assert again.status == RunStatus.COMPLETED and again.resumes == 0


def test_rerun_starts_a_new_run_that_completes(run_event, key, admin_client_all):
    run = run_event("test/three-steps", {"key": key})
    response = post_action(admin_client_all, "run", "rerun_runs", [run.pk])
    [message] = messages_of(response)
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert message == f"Started 1 new run(s) from the start: {new.pk}."
    new = wait_for_run(new.pk)
    assert new.status == RunStatus.COMPLETED
    assert count(f"{key}-a") == 2


def test_rerun_from_the_run_page_opens_the_new_run(run_event, key, admin_client_all):
    run = run_event("test/three-steps", {"key": key})
    here = reverse("admin:stepflows_run_change", args=[run.pk])
    response = post_action(admin_client_all, "run", "rerun_runs", [run.pk], next=here)
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert response["Location"] == reverse("admin:stepflows_run_change", args=[new.pk])
    wait_for_run(new.pk)


def test_cancel_stops_a_running_run(celery_worker, key, admin_client_all):
    [event_id] = stepflows.send("test/slow-steps", data={"key": key, "steps": 50})
    [run] = runs_for([event_id])
    deadline = time.monotonic() + 60
    while count(f"{key}-slow") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    page = post_action(admin_client_all, "run", "cancel_runs", [run.pk], confirm=False)
    assert str(run.pk) in page.content.decode()
    response = post_action(admin_client_all, "run", "cancel_runs", [run.pk], reason="stop it")
    assert messages_of(response) == [f"Cancelled 1 run(s): {run.pk}."]
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.CANCELLED
    # The error says who cancelled it, when and why (not "Cancelled: cancelled").
    username = response.wsgi_request.user.username
    assert run.error["message"].startswith(f"cancelled by {username} at ")
    assert run.error["message"].endswith(" UTC: stop it")
    assert count(f"{key}-slow") < 50
    # A second cancel says the run had finished.
    response = post_action(admin_client_all, "run", "cancel_runs", [run.pk])
    assert messages_of(response)[-1].startswith("1 run(s) had already finished")


def test_replay_starts_fresh_runs_of_the_event(run_event, key, admin_client_all):
    run = run_event("test/three-steps", {"key": key})
    page = post_action(admin_client_all, "event", "replay_events", [run.event_id], confirm=False)
    assert run.event_id in page.content.decode()
    response = post_action(admin_client_all, "event", "replay_events", [run.event_id])
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert messages_of(response) == [f"Replayed 1 event(s): started 1 new run(s): {new.pk}."]
    [new] = wait_for_runs([new.pk])
    assert new.status == RunStatus.COMPLETED
    assert Run.objects.get(pk=run.pk).ended_at == run.ended_at  # the old run is untouched


def test_compare_action_opens_the_compare_page(run_event, key, admin_client_all):
    one = run_event("test/three-steps", {"key": key})
    two = run_event("test/parallel-sleep", {"key": key})
    response = post_action(admin_client_all, "run", "compare_runs", [one.pk, two.pk])
    assert response.status_code == 302
    page = admin_client_all.get(response["Location"])
    html = page.content.decode()
    assert f'data-run="{one.pk}"' in html and f'data-run="{two.pk}"' in html
    assert html.count('class="stepflows-timeline"') == 1
