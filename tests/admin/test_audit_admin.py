"""The audit trail in the admin: actions record the staff user and a reason, write
Django's admin history, and the run page shows who did what; forking from a step.
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from stepflows import api
from stepflows.models import Intervention, Run, RunStatus
from stepflows.testing import wait_for_run
from tests.testapp.marks import count

from .conftest import ACTION_PERMS, VIEW_PERMS, build_run, make_staff
from .helpers import messages_of, post_action

pytestmark = pytest.mark.django_db(transaction=True)

THREE = [
    {"step_id": "a", "start": 0.0, "end": 0.1},
    {"step_id": "b", "start": 0.2, "end": 0.3},
    {"step_id": "c", "start": 0.4, "end": 0.5},
]


def client_of(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def run_page(client: Client, run: Run) -> str:
    response = client.get(reverse("admin:stepflows_run_change", args=[run.pk]))
    assert response.status_code == 200
    return response.content.decode()


@pytest.mark.worker
def test_admin_retry_records_the_staff_user_the_reason_and_a_log_entry(run_event, key, tmp_path):
    alice = make_staff("alice", [*VIEW_PERMS, "retry_run"])
    client = client_of(alice)
    gate = tmp_path / "gate"
    run = run_event("test/resumable", {"key": key, "gate": str(gate)})
    page = post_action(client, "run", "retry_runs", [run.pk], confirm=False)
    assert 'name="reason"' in page.content.decode()
    gate.write_text("open")
    response = post_action(client, "run", "retry_runs", [run.pk], reason="gate  fixed <b>now</b>")
    assert messages_of(response)[0].startswith("Retried 1 failed run(s)")
    [entry] = Intervention.objects.filter(run=run)
    assert (entry.action, entry.by, entry.user_id) == ("retry", "alice", alice.pk)
    assert entry.reason == "gate fixed <b>now</b>"
    [log] = LogEntry.objects.filter(object_id=str(run.pk))
    assert (log.user_id, log.action_flag) == (alice.pk, CHANGE)
    assert log.get_change_message() == "Retried (gate fixed <b>now</b>)"
    assert wait_for_run(run.pk).status == RunStatus.COMPLETED

    html = run_page(client, run)
    assert 'id="sf-audit"' in html and 'data-action="retry"' in html
    assert "alice" in html
    assert "gate fixed &lt;b&gt;now&lt;/b&gt;" in html and "<b>now</b>" not in html
    history = client.get(reverse("admin:stepflows_run_history", args=[run.pk])).content.decode()
    assert "Retried (gate fixed &lt;b&gt;now&lt;/b&gt;)" in history and "alice" in history
    # Django's "Recent actions" on the index lists it for alice.
    index = client.get(reverse("admin:index")).content.decode()
    assert str(run)[:40] in index


def test_a_cancelled_run_says_who_cancelled_it_and_when():
    run = build_run(status="queued", steps=THREE[:1])
    erin = make_staff("erin", [*VIEW_PERMS, "cancel_run"])
    response = post_action(client_of(erin), "run", "cancel_runs", [run.pk], reason="wrong data")
    assert messages_of(response) == [f"Cancelled 1 run(s): {run.pk}."]
    html = run_page(client_of(erin), run)
    entry = Intervention.objects.get(run=run)
    assert "Cancelled: cancelled" not in html and "<strong>Cancelled</strong>" not in html
    assert 'id="sf-run-cancelled"' in html
    when = entry.at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert f"cancelled by <strong>erin</strong> at {when}: wrong data" in html
    [log] = LogEntry.objects.filter(object_id=str(run.pk))
    assert log.get_change_message() == "Cancelled (wrong data)"


def test_the_run_page_shows_the_trail_and_what_started_a_run():
    original = build_run(steps=THREE)
    new = build_run(event=original.event, steps=THREE[:1])
    Run.objects.filter(pk=new.pk).update(forked_from=original, fork_step="b")
    Intervention.objects.create(
        run=original,
        action="fork",
        by="frank",
        reason="b was wrong",
        new_run=new,
        detail={"from_step": "b"},
    )
    Intervention.objects.create(run=original, action="rerun", by="code")
    client = client_of(make_staff("viewer", VIEW_PERMS))
    html = run_page(client, original)
    assert html.count('class="sf-intervention ') == 2
    assert "frank" in html and "b was wrong" in html
    assert reverse("admin:stepflows_run_change", args=[new.pk]) in html
    html = run_page(client, new)
    assert 'id="sf-run-forked-from"' in html
    assert reverse("admin:stepflows_run_change", args=[original.pk]) in html
    assert "at step <code>b</code>" in html and "by frank" in html
    # A run nobody touched has no trail.
    assert 'id="sf-audit"' not in run_page(client, build_run(steps=THREE))


def test_the_trail_costs_one_query_whatever_its_length():
    run = build_run(steps=THREE)
    client = client_of(make_staff("counter", VIEW_PERMS))
    url = reverse("admin:stepflows_run_change", args=[run.pk])
    client.get(url)
    Intervention.objects.create(run=run, action="retry", by="code")
    with CaptureQueriesContext(connection) as one:
        client.get(url)
    for _ in range(5):
        Intervention.objects.create(run=run, action="cancel", by="code")
    with CaptureQueriesContext(connection) as six:
        client.get(url)
    assert len(six) == len(one)


def test_fork_needs_its_permission():
    run = build_run(steps=THREE)
    without = client_of(make_staff("nofork", [*VIEW_PERMS, *ACTION_PERMS]))
    assert 'id="sf-fork_runs"' not in run_page(without, run)
    response = post_action(without, "run", "fork_runs", [run.pk], from_step="b")
    assert Run.objects.count() == 1
    assert response.status_code in (200, 302)
    with_perm = client_of(make_staff("forker", [*VIEW_PERMS, "fork_run"]))
    assert 'id="sf-fork_runs"' in run_page(with_perm, run)
    page = post_action(with_perm, "run", "fork_runs", [run.pk], confirm=False)
    html = page.content.decode()
    assert 'id="sf-from-step"' in html and 'name="reason"' in html
    assert [f'<option value="{s}"' in html for s in "abc"] == [True] * 3
    # An active run cannot be forked: the button is not offered.
    active = build_run(status="running", steps=THREE[:1])
    assert 'id="sf-fork_runs"' not in run_page(with_perm, active)


@pytest.mark.worker
def test_fork_from_the_admin_opens_the_new_run(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    gina = make_staff("gina", [*VIEW_PERMS, "fork_run"])
    client = client_of(gina)
    response = post_action(client, "run", "fork_runs", [run.pk], from_step="b", reason="redo b")
    new = Run.objects.get(forked_from=run)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:stepflows_run_change", args=[new.pk])
    assert messages_of(response) == [f"Forked run {run.pk} from step 'b': new run {new.pk}."]
    entry = Intervention.objects.get(run=run)
    assert (entry.action, entry.by, entry.reason, entry.new_run_id) == (
        "fork",
        "gina",
        "redo b",
        new.pk,
    )
    log = LogEntry.objects.get(object_id=str(run.pk))
    assert log.get_change_message() == f"Forked from step b as run {new.pk} (redo b)"
    assert wait_for_run(new.pk).status == RunStatus.COMPLETED
    assert [count(f"{key}-{s}") for s in "abc"] == [1, 2, 2]
    # Two runs selected: fork asks for one.
    response = post_action(client, "run", "fork_runs", [run.pk, new.pk], from_step="b")
    assert messages_of(response)[-1].startswith("Select exactly one run to fork (2 selected)")


def test_fork_of_an_unknown_step_shows_the_page_again():
    run = build_run(steps=THREE)
    client = client_of(make_staff("henry", [*VIEW_PERMS, "fork_run"]))
    page = post_action(client, "run", "fork_runs", [run.pk], from_step="zzz")
    assert page.status_code == 200 and 'id="sf-from-step"' in page.content.decode()
    assert Run.objects.count() == 1


def test_api_cancel_keeps_working_for_reasonless_callers():
    run = build_run(status="waiting", steps=THREE[:1])
    assert api.cancel_run(run.pk)
    assert Run.objects.get(pk=run.pk).error["message"].startswith("cancelled by code at ")
