"""`manage.py stepflows retry|rerun|cancel|replay`: the admin's verbs on the command line."""

from __future__ import annotations

import io
import time

import pytest
from django.core.management import CommandError, call_command

import stepflows
from stepflows.models import Run, RunStatus
from stepflows.testing import runs_for, wait_for_run
from tests.testapp.marks import count

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("stepflows", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_retry_resumes_failed_runs_and_refuses_others(run_event, key, tmp_path):
    gate = tmp_path / "gate"
    failed = run_event("test/resumable", {"key": key, "gate": str(gate)})
    done = run_event("test/three-steps", {"key": key})
    gate.write_text("open")
    with pytest.raises(CommandError, match="1 of 2 could not be retried"):
        command("retry", str(failed.pk), str(done.pk))
    assert wait_for_run(failed.pk).status == RunStatus.COMPLETED
    assert Run.objects.get(pk=done.pk).resumes == 0
    assert count(f"{key}-first") == 1


def test_rerun_prints_the_new_run(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    out = command("rerun", str(run.pk))
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert f"new run {new.pk}" in out
    assert wait_for_run(new.pk).status == RunStatus.COMPLETED


def test_cancel_stops_a_running_run(celery_worker, key):
    [event_id] = stepflows.send("test/slow-steps", data={"key": key, "steps": 50})
    [run] = runs_for([event_id])
    deadline = time.monotonic() + 60
    while count(f"{key}-slow") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert f"cancelled {run.pk}" in command("cancel", str(run.pk))
    assert wait_for_run(run.pk).status == RunStatus.CANCELLED
    assert "already cancelled" in command("cancel", str(run.pk))


def test_replay_starts_fresh_runs(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    out = command("replay", run.event_id)
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert "started 1 run(s)" in out and str(new.pk) in out
    assert wait_for_run(new.pk).status == RunStatus.COMPLETED


def test_unknown_ids_are_reported():
    with pytest.raises(CommandError, match="1 of 1 could not be retried"):
        command("retry", "not-a-uuid")
    with pytest.raises(CommandError, match="1 of 1 could not be replayed"):
        command("replay", "no-such-event")
