"""`manage.py stepflows retry|rerun|cancel|replay`: the admin's verbs on the command line."""

from __future__ import annotations

import io
import json
import time
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

import stepflows
from stepflows.management import runinfo
from stepflows.management.waiting import wait_for_runs
from stepflows.models import Event, Intervention, Run, RunStatus, Step
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
    assert f"cancelled {run.pk}" in command("cancel", str(run.pk), "--reason", "wrong order")
    run = wait_for_run(run.pk)
    assert run.status == RunStatus.CANCELLED
    assert run.error["message"].startswith("cancelled by command line at ")
    assert run.error["message"].endswith(" UTC: wrong order")
    [entry] = Intervention.objects.filter(run=run)
    assert (entry.action, entry.by, entry.reason) == ("cancel", "command line", "wrong order")
    assert "cancel by command line — wrong order" in command("show", str(run.pk))
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


# -- show, runs, --json, --wait: on rows written by hand ---------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def failed_run(run_id: str | None = None, workflow: str = "t-always-fails") -> Run:
    """A failed run of two steps, the second failed after two attempts, as rows."""
    now = timezone.now()
    event = Event.objects.create(id=uuid.uuid4().hex, name="test/always-fails", data={"k": 1})
    run = Run.objects.create(
        id=run_id or uuid.uuid4(),
        workflow_id=workflow,
        event=event,
        status=RunStatus.FAILED,
        created_at=now - timedelta(seconds=3),
        started_at=now - timedelta(seconds=3),
        ended_at=now - timedelta(seconds=1),
        error={"type": "StepError", "message": "step 'doomed' failed: ValueError: no\nmore"},
    )
    Step.objects.create(run=run, step_id="first", position=0, status="completed", output=1)
    attempts = [
        {
            "number": n,
            "started_at": (now - timedelta(seconds=3 - n)).isoformat(),
            "ended_at": (now - timedelta(seconds=2.5 - n)).isoformat(),
            "error": {"type": "ValueError", "message": f"no {n}\nsecond line"},
            "worker": "host:42",
        }
        for n in (1, 2)
    ]
    Step.objects.create(
        run=run,
        step_id="doomed",
        position=1,
        status="failed",
        attempts=attempts,
        attempt_count=2,
        error={"type": "ValueError", "message": "no 2"},
    )
    return run


def test_show_prints_steps_attempts_and_the_audit_trail():
    run = failed_run()
    Intervention.objects.create(run=run, action="retry", by="command line", reason="why\nnot")
    out = command("show", str(run.pk))
    assert out.startswith(f"run {run.pk}  t-always-fails  failed\n")
    assert "  error        step 'doomed' failed: ValueError: no\n" in out
    assert "took 2 s" in out
    assert "steps: 1 of 2 done" in out
    assert out.count("host:42  ValueError: no ") == 2 and "second line" not in out
    assert "retry by command line — why" in out


def test_show_json_keys_are_the_documented_ones():
    run = failed_run()
    doc = json.loads(command("show", str(run.pk), "--json"))
    assert set(doc) == {
        "id", "workflow", "status", "event", "parent", "created_at", "started_at",
        "ended_at", "duration", "steps_done", "steps_total", "error", "now", "output",
        "forked_from", "fork_step", "resumes", "steps", "children", "interventions",
        "version",
    }  # fmt: skip
    assert set(doc["steps"][1]) == {
        "step_id", "position", "group", "kind", "status", "started_at", "ended_at",
        "duration", "attempt_count", "retry_at", "worker", "error", "output", "attempts",
    }  # fmt: skip
    assert set(doc["steps"][1]["attempts"][0]) == {
        "number", "started_at", "ended_at", "worker", "error",
    }  # fmt: skip
    for key in [*doc, *doc["steps"][1]]:
        assert key in runinfo.RUN_KEYS_HELP, f"{key} is not documented in --help"
    [listed] = json.loads(command("runs", "--json"))["runs"]
    assert set(listed) <= set(doc) and listed["event"] == {
        "id": run.event_id,
        "name": run.event.name,
    }
    assert datetime.fromisoformat(listed["created_at"]) == run.created_at


def test_runs_on_a_terminal_fits_120_columns_and_short_ids_work():
    run = failed_run()
    queued = Run.objects.create(workflow_id="t-three-steps", event=run.event)
    out = Terminal()
    call_command("stepflows", "runs", stdout=out)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 120 for line in lines), lines
    assert lines[1].startswith(f"{str(queued.pk)[:8]}  t-three-steps")
    assert lines[2].startswith(f"{str(run.pk)[:8]}  t-always-fails     failed")
    assert lines[2].endswith(" 1/2  doomed: ValueError: no")
    assert command("show", str(run.pk)[:8]).startswith(f"run {run.pk}")
    assert command("show", str(run.pk)[:13]).startswith(f"run {run.pk}")


def test_unknown_and_ambiguous_run_ids_are_clear_errors():
    with pytest.raises(CommandError, match="run 1234abcd: not found; `manage"):
        command("show", "1234abcd")
    with pytest.raises(CommandError, match="not a run id"):
        command("show", "abc")
    failed_run("1234abcd-0000-4000-8000-000000000001")
    failed_run("1234abcd-0000-4000-8000-000000000002")
    with pytest.raises(CommandError, match="more than one run id starts with it"):
        command("show", "1234abcd")


def test_retry_of_a_run_that_did_not_fail_says_why():
    run = failed_run()
    Run.objects.filter(pk=run.pk).update(status=RunStatus.COMPLETED)
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 of 1 could not be retried"):
        call_command("stepflows", "retry", str(run.pk), stdout=io.StringIO(), stderr=err)
    assert "is completed; only failed runs can be retried" in err.getvalue()


def test_wait_for_runs_exit_statuses():
    done = failed_run()
    Run.objects.filter(pk=done.pk).update(status=RunStatus.COMPLETED, error=None)
    lines: list[str] = []
    wait_for_runs([done.pk], timeout=None, write=lines.append)
    assert lines == [f"completed  {done.pk}  t-always-fails  in 2 s"]
    failed = failed_run()
    with pytest.raises(CommandError) as raised:
        wait_for_runs([failed.pk, done.pk], timeout=None, write=lines.append)
    assert raised.value.returncode == 1
    assert (
        lines[-2]
        == f"failed     {failed.pk}  t-always-fails  in 2 s: step 'doomed' failed: ValueError: no"
    )
    queued = Run.objects.create(workflow_id="t-three-steps", event=done.event)
    with pytest.raises(CommandError, match="timed out after 0 s") as raised:
        wait_for_runs([queued.pk], timeout=0, write=lines.append, sleep=lambda s: None)
    assert raised.value.returncode == 2
    assert lines[-1] == f"still queued  {queued.pk}  t-three-steps"
