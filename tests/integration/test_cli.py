"""`manage.py stepflows` against real workers: --wait and its exit status, show, --json, fork."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from stepflows import api
from stepflows.models import Intervention, Run, RunStatus
from stepflows.testing import wait_for_run
from tests.conftest import worker_env
from tests.testapp.marks import count

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("stepflows", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def failing(*args: str) -> tuple[int, str]:
    """The exit status a CommandError gives ``manage.py``, and what was printed before it."""
    out = io.StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("stepflows", *args, stdout=out, stderr=io.StringIO())
    return raised.value.returncode, out.getvalue() + f"\n{raised.value}"


def only_run(output: str) -> Run:
    [run] = [r for r in Run.objects.all() if str(r.pk) in output]
    return run


# -- --wait and the exit status -------------------------------------------------------------


def test_send_wait_prints_the_outcome_and_exits_0(celery_worker, key):
    out = command("send", "test/three-steps", "--data", json.dumps({"key": key}), "--wait")
    run = only_run(out)
    assert run.status == RunStatus.COMPLETED
    assert f"completed  {run.pk}  t-three-steps  in " in out


def test_send_wait_exits_1_when_the_run_fails(celery_worker, key):
    status, out = failing("send", "test/always-fails", "--data", json.dumps({"key": key}), "--wait")
    assert status == 1
    run = only_run(out)
    assert run.status == RunStatus.FAILED
    assert f"failed     {run.pk}  t-always-fails" in out
    assert "ValueError: this step always fails <b>bold</b>" in out
    assert "1 of 1 run(s) did not complete (1 failed)" in out


def test_send_wait_exits_2_on_timeout_and_the_run_goes_on(celery_worker, key):
    data = json.dumps({"key": key, "steps": 500})
    status, out = failing("send", "test/slow-steps", "--data", data, "--wait", "--timeout", "0.3")
    assert status == 2
    run = only_run(out)
    assert "timed out after 0.3 s with 1 of 1 run(s) not finished" in out
    assert not Run.objects.get(pk=run.pk).is_finished
    api.cancel_run(run)
    assert wait_for_run(run.pk).status == RunStatus.CANCELLED


MANAGE = [sys.executable, "manage.py", "stepflows"]


def test_manage_py_exits_with_the_outcome(celery_worker, key):
    """The exit status itself, from a real ``manage.py`` process."""
    env = {**os.environ, **worker_env()}
    data = json.dumps({"key": key})
    done = subprocess.run(
        [*MANAGE, "send", "test/always-fails", "--data", data, "--wait"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "failed" in done.stdout and "did not complete" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [*MANAGE, "send", "test/three-steps", "--data", data, "--wait"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout


def test_retry_wait_resumes_and_records_who(run_event, key, tmp_path):
    gate = tmp_path / "gate"
    failed = run_event("test/resumable", {"key": key, "gate": str(gate)})
    assert failed.status == RunStatus.FAILED
    gate.write_text("open")
    out = command("retry", str(failed.pk), "--reason", "gate opened", "--wait")
    assert f"completed  {failed.pk}  t-resumable" in out
    assert count(f"{key}-first") == 1
    [entry] = Intervention.objects.filter(run=failed)
    assert (entry.action, entry.by, entry.reason) == ("retry", "command line", "gate opened")


def test_rerun_and_replay_wait(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    out = command("rerun", str(run.pk), "--wait")
    new = Run.objects.filter(event_id=run.event_id).exclude(pk=run.pk).get()
    assert f"completed  {new.pk}  t-three-steps" in out
    out = command("replay", run.event_id, "--wait", "--reason", "again")
    assert out.count("completed  ") == 1
    assert Run.objects.filter(event_id=run.event_id).count() == 3
    replayed = Intervention.objects.get(action="replay")
    assert (replayed.by, replayed.reason) == ("command line", "again")


# -- show and --json --------------------------------------------------------------------------


def iso(value: Any) -> datetime:
    return datetime.fromisoformat(value)


def test_show_json_of_a_failed_run(run_event, key):
    run = run_event("test/always-fails", {"key": key})
    doc = json.loads(command("show", str(run.pk), "--json"))
    assert doc["id"] == str(run.pk) and doc["workflow"] == "t-always-fails"
    assert doc["status"] == "failed"
    assert doc["event"]["name"] == "test/always-fails" and doc["event"]["data"]["key"] == key
    assert doc["error"]["type"] == "StepError"
    assert doc["error"]["message"] == (
        "step 'doomed' failed: ValueError: this step always fails <b>bold</b>"
    )
    assert "Traceback" in doc["error"]["traceback"]
    assert iso(doc["started_at"]) <= iso(doc["ended_at"]) and doc["duration"] >= 0
    assert (doc["steps_done"], doc["steps_total"]) == (1, 2)
    first, doomed = doc["steps"]
    assert (first["step_id"], first["status"], first["output"]) == ("first", "completed", 1)
    assert doomed["status"] == "failed" and doomed["error"]["type"] == "ValueError"
    assert len(doomed["attempts"]) == doomed["attempt_count"] > 1
    for attempt in doomed["attempts"]:
        assert iso(attempt["started_at"]) <= iso(attempt["ended_at"])
        assert attempt["worker"] and attempt["error"]["message"].startswith("this step")
    assert doc["children"] == [] and doc["interventions"] == []


def test_show_text_of_a_failed_run(run_event, key):
    run = run_event("test/always-fails", {"key": key})
    out = command("show", str(run.pk)[:8])
    assert out.startswith(f"run {run.pk}  t-always-fails  failed")
    assert (
        "error        step 'doomed' failed: ValueError: this step always fails <b>bold</b>" in out
    )
    assert "steps: 1 of 2 done" in out
    assert "attempt 1: " in out and "ValueError: this step always fails" in out


def test_show_lists_children(run_event, key):
    parent = run_event("test/fan.parent", {"key": key, "n": 2})
    children = list(Run.objects.filter(parent=parent))
    assert len(children) == 2
    out = command("show", str(parent.pk))
    assert "children: 2 run(s)" in out
    for child in children:
        assert f"  {child.pk}  t-fan-child" in out
    doc = json.loads(command("show", str(children[0].pk), "--json"))
    assert doc["parent"] == str(parent.pk)
    assert "(the run that sent its event)" in command("show", str(children[0].pk))


def test_runs_json_and_text(run_event, key):
    done = run_event("test/three-steps", {"key": key})
    failed = run_event("test/always-fails", {"key": key})
    doc = json.loads(command("runs", "--json"))
    by_id = {r["id"]: r for r in doc["runs"]}
    assert [r["id"] for r in doc["runs"][:2]] == [str(failed.pk), str(done.pk)]
    assert (by_id[str(done.pk)]["steps_done"], by_id[str(done.pk)]["steps_total"]) == (3, 3)
    assert by_id[str(done.pk)]["error"] is None
    assert by_id[str(failed.pk)]["error"]["type"] == "StepError"
    assert by_id[str(failed.pk)]["event"] == {"id": failed.event_id, "name": "test/always-fails"}
    lines = command("runs").splitlines()
    [line] = [line for line in lines if line.startswith(str(failed.pk))]
    assert line.endswith(" 1/2  doomed: ValueError: this step always fails <b>bold</b>")
    [line] = [line for line in lines if line.startswith(str(done.pk))]
    assert line.endswith(" 3/3")


# -- fork ---------------------------------------------------------------------------------------


def test_fork_from_a_step_keeps_the_steps_before_it(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    out = command("fork", str(run.pk), "--from", "b", "--reason", "try b again", "--wait")
    new = Run.objects.get(forked_from=run)
    assert f"new run {new.pk}" in out and f"completed  {new.pk}" in out
    assert (count(f"{key}-a"), count(f"{key}-b"), count(f"{key}-c")) == (1, 2, 2)
    shown = command("show", str(new.pk))
    assert f"forked from  {run.pk}  at step 'b'" in shown
    assert "fork by command line" not in shown
    assert f"started by a fork of run {run.pk} by command line (from step 'b')" in shown
    assert "try b again" in shown
    original = json.loads(command("show", str(run.pk), "--json"))
    [entry] = original["interventions"]
    assert entry["action"] == "fork" and entry["new_run"] == str(new.pk)
    assert entry["detail"] == {"from_step": "b"} and entry["by"] == "command line"


def test_fork_errors_are_clear(run_event, key):
    run = run_event("test/three-steps", {"key": key})
    with pytest.raises(CommandError, match="has no step 'nope'; fork from one of its steps: a, b"):
        command("fork", str(run.pk), "--from", "nope")
    with pytest.raises(CommandError, match="run 0123abcd: not found"):
        command("fork", "0123abcd", "--from", "a")


def test_an_event_no_workflow_listens_to_gets_a_hint(celery_worker):
    out = command("send", "test/three-step", "--wait")
    assert "no workflow listens to 'test/three-step'; nothing started" in out
    assert "Did you mean: test/three-steps" in out
    assert not Run.objects.exists()
