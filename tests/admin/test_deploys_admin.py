"""Blocked runs and workflow versions in the admin and on the command line."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse

from stepflows.models import Run, RunStatus, Step, StepKind

from .conftest import build_run
from .helpers import messages_of, post_action

pytestmark = pytest.mark.django_db

LIST = "admin:stepflows_run_changelist"

BLOCKED_ERROR = {
    "type": "NonDeterminismError",
    "message": "workflow 'wf-shop', run 1: recorded step 'charge' (position 1), code now "
    "calls 'charge-card'. The run is blocked: deploy code ...",
    "traceback": "",
}


def get(client: Any, url: str, **params: Any) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response
    return response.content.decode()


def blocked_run(**kwargs: Any) -> Run:
    run = build_run(
        workflow="wf-shop",
        status="blocked",
        error=BLOCKED_ERROR,
        steps=[{"step_id": "reserve", "start": 0, "end": 1}],
        **kwargs,
    )
    # A patch marker (step.patched's answer) shares the position of the next step.
    Step.objects.create(
        run=run, step_id="audit:patched", position=1, kind=StepKind.PATCH, status="completed"
    )
    return run


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("stepflows", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_a_blocked_run_has_its_own_badge_and_its_error_in_the_list(admin_client_all):
    blocked_run()
    html = get(admin_client_all, reverse(LIST))
    assert 'class="sf-status sf-blocked"' in html
    assert "recorded step &#x27;charge&#x27; (position 1), code now calls" in html
    # The patch marker is not a step of work.
    assert "1/1" in html


def test_the_run_page_says_how_to_resume_a_blocked_run(admin_client_all):
    run = blocked_run()
    html = get(admin_client_all, reverse("admin:stepflows_run_change", args=[run.pk]))
    assert "<h2>Blocked</h2>" in html and 'id="sf-run-blocked"' in html
    assert "then retry it" in html
    assert 'value="retry_runs"' in html and 'value="cancel_runs"' in html


def test_the_retry_action_takes_a_blocked_run(admin_client_all):
    run = blocked_run()
    response = post_action(admin_client_all, "run", "retry_runs", [run.pk])
    assert messages_of(response)[0].startswith("Retried 1 failed run(s)")
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED and run.resumes == 1 and run.error is None


def test_the_version_under_the_workflow_and_its_filter(admin_client_all):
    old = build_run(workflow="wf-versioned")
    new = build_run(workflow="wf-versioned")
    plain = build_run(workflow="wf-plain")
    Run.objects.filter(pk=old.pk).update(version="2026-11-01")
    Run.objects.filter(pk=new.pk).update(version="2026-11-27")

    html = get(admin_client_all, reverse(LIST))
    assert "<code" in html and ">2026-11-27</code>" in html and ">2026-11-01</code>" in html
    assert "?version=2026-11-27" in html and "?version=-" in html and "(none)" in html

    html = get(admin_client_all, reverse(LIST), version="2026-11-27")
    assert str(new.pk)[:8] in html
    assert str(old.pk)[:8] not in html and str(plain.pk)[:8] not in html
    html = get(admin_client_all, reverse(LIST), version="-")
    assert str(plain.pk)[:8] in html and str(new.pk)[:8] not in html

    page = get(admin_client_all, reverse("admin:stepflows_run_change", args=[new.pk]))
    assert 'id="sf-run-version"><code>2026-11-27</code>' in page


def test_runs_filters_by_version_and_show_prints_it():
    old = build_run(workflow="wf-versioned")
    new = build_run(workflow="wf-versioned")
    Run.objects.filter(pk=old.pk).update(version="v1")
    Run.objects.filter(pk=new.pk).update(version="v2")

    listed = json.loads(command("runs", "--version", "v2", "--json"))["runs"]
    assert [(r["id"], r["version"]) for r in listed] == [(str(new.pk), "v2")]
    assert "  version      v2\n" in command("show", str(new.pk))


def test_show_says_how_to_resume_a_blocked_run():
    run = blocked_run()
    out = command("show", str(run.pk))
    assert out.startswith(f"run {run.pk}  wf-shop  blocked\n")
    assert "code now calls 'charge-card'" in out
    assert "to resume    deploy code that matches its recorded steps, then retry it" in out
    assert "steps: 1 of 1 done" in out
