"""Durable waits against real workers: sleeps, waits for events, invoke, run timeouts,
cancel_on, on_failure, and cancelling an invoked child.

The module's worker (4 prefork processes) consumes a queue of its own and embeds
celery beat, whose ``stepflows.recover`` task runs the wake-up sweep every
SWEEP_INTERVAL seconds (event-wait, invoke and run timeouts rely on it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connections
from django.utils import timezone

import stepflows
from stepflows import api
from stepflows.models import Run, RunStatus, Step, StepStatus, Waiter
from stepflows.testing import runs_for, wait_for_run, wait_for_runs
from tests.faults.conftest import assert_nothing_recorded_after_cancel, wait_for_marks, wait_until
from tests.testapp.flows.waits import CANCEL, OFFER, SIGNAL
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)

WAITS_QUEUE = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-waits"
SWEEP_INTERVAL = 1
FAN_RUNS = int(os.environ.get("STEPFLOWS_WAITS_FAN_RUNS", "1000"))


@pytest.fixture(scope="module")
def waits_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """4 worker processes with embedded beat (the sweep every SWEEP_INTERVAL s), own queue."""
    from stepflows.testing import CeleryWorker
    from tests.conftest import worker_env
    from tests.settings import SESSION_DIR

    interval = str(SWEEP_INTERVAL)
    worker = CeleryWorker(
        "project",
        env={
            **worker_env(),
            "STEPFLOWS_TEST_QUEUE": WAITS_QUEUE,
            # tests/settings.py builds the beat schedule from the first,
            # project/settings.py from the second.
            "STEPFLOWS_TEST_RECOVERY_INTERVAL": interval,
            "STEPFLOWS_RECOVERY_INTERVAL": interval,
        },
        concurrency=4,
        queues=WAITS_QUEUE,
        logfile=SESSION_DIR / "waits.log",
        name="waits",
        cwd=django_settings.BASE_DIR,
        beat=True,
    )
    worker.start()
    try:
        yield worker
    finally:
        # With embedded beat, the warm shutdown (SIGTERM to the whole process group) hangs
        # until CeleryWorker.stop's 30 s default: don't wait that long.
        worker.stop(timeout=5)


@pytest.fixture(autouse=True)
def on_waits_queue(settings: Any, waits_worker: Any) -> None:
    """This test's messages go to the module worker's queue."""
    settings.STEPFLOWS = {**settings.STEPFLOWS, "QUEUE": WAITS_QUEUE}


# -- helpers -------------------------------------------------------------------------------


def start(name: str, data: dict[str, Any]) -> str:
    """Send an event that starts one run; return the run's id."""
    [event_id] = stepflows.send(name, data=data)
    [run] = runs_for([event_id])
    return str(run.id)


def send(name: str, data: dict[str, Any]) -> str:
    [event_id] = stepflows.send(name, data=data)
    return event_id


def waiting(run_id: str, kind: str, timeout: float = 60) -> Run:
    """Wait until the run waits for ``kind`` ("sleep", "event", "invoke"); return it."""

    def check() -> Run | None:
        run = Run.objects.get(id=run_id)
        assert not run.is_finished, f"run finished instead of waiting: {run.status} {run.error}"
        ok = run.status == RunStatus.WAITING and run.waiting_for == kind
        return run if ok else None

    return wait_until(check, f"run {run_id} waiting for {kind}", timeout)


def step_of(run_id: Any, step_id: str) -> Step:
    return Step.objects.get(run_id=run_id, step_id=step_id)


def child_of(parent_id: str, timeout: float = 60) -> Run:
    return wait_until(
        lambda: Run.objects.filter(parent_id=parent_id, caller_step="get-quote").first(),
        f"the child run of {parent_id}",
        timeout,
    )


def assert_done_once(run: Run, key: str, *names: str) -> None:
    assert run.status == RunStatus.COMPLETED, (run.status, run.error)
    for name in names:
        assert count(f"{key}-{name}") == 1, name
    assert run.waiting_for == "" and run.wait_until is None
    assert not Waiter.objects.filter(run_id=run.id).exists()


# -- sleep ---------------------------------------------------------------------------------


def test_a_short_sleep_wakes_within_the_sweep_interval(key):
    run_id = start("test/waits-sleep", {"key": key, "seconds": 2})
    run = waiting(run_id, "sleep", timeout=30)
    nap = step_of(run_id, "nap")
    assert nap.kind == "sleep" and nap.status == StepStatus.SCHEDULED
    assert nap.wake_at is not None and run.wait_until == nap.wake_at
    assert nap.wait and datetime.fromisoformat(nap.wait["until"]) == nap.wake_at
    assert run.lease_owner == "", "a sleeping run holds no worker"

    run = wait_for_run(run_id, timeout=60)
    assert_done_once(run, key, "before", "after")
    assert run.output == "slept"
    nap, after = step_of(run_id, "nap"), step_of(run_id, "after")
    assert nap.status == StepStatus.COMPLETED and nap.output is None
    late = (after.started_at - nap.wake_at).total_seconds()
    assert late >= 0, f"woken {-late:.2f} s before the sleep was due"
    assert late <= SWEEP_INTERVAL + 1, f"the step after the sleep started {late:.2f} s late"


@pytest.mark.smoke
def test_sleep_until_a_time(key):
    until = timezone.now() + timedelta(seconds=2)
    run = wait_for_run(start("test/waits-sleep", {"key": key, "until": until.isoformat()}))
    assert_done_once(run, key, "before", "after")
    nap = step_of(run.id, "nap")
    assert abs((nap.wake_at - until).total_seconds()) < 0.001
    assert step_of(run.id, "after").started_at >= until


# -- wait_for_event ------------------------------------------------------------------------


@pytest.mark.smoke
def test_wait_for_event_is_resumed_by_the_matching_event_only(key):
    run_id = start("test/waits-event", {"key": key})
    waiting(run_id, "event")
    [waiter] = Waiter.objects.filter(run_id=run_id)
    assert (waiter.kind, waiter.step_id, waiter.event_name) == ("wait", "signal", SIGNAL)
    wait = step_of(run_id, "signal").wait
    assert wait["event"] == SIGNAL and wait["match"] == "data.key" and wait["value"] == key

    send(SIGNAL, {"key": f"{key}-other", "n": 0})  # another match value
    send("test/waits-other", {"key": key, "n": 0})  # another name
    run = Run.objects.get(id=run_id)
    assert (run.status, run.waiting_for) == (RunStatus.WAITING, "event")
    assert count(f"{key}-after") == 0

    matching = send(SIGNAL, {"key": key, "n": 1})
    run = wait_for_run(run_id)
    assert_done_once(run, key, "ready", "after")
    assert run.output == {"id": matching, "name": SIGNAL, "data": {"key": key, "n": 1}}
    signal = step_of(run_id, "signal")
    assert signal.kind == "event" and signal.status == StepStatus.COMPLETED
    assert signal.output["id"] == matching and signal.output["data"] == {"key": key, "n": 1}


def test_wait_for_event_times_out_with_none(key):
    run_id = start("test/waits-event", {"key": key, "timeout": 1})
    waiting(run_id, "event")
    send(SIGNAL, {"key": f"{key}-other"})
    run = wait_for_run(run_id, timeout=60)
    assert_done_once(run, key, "ready", "after")
    assert run.output is None
    signal = step_of(run_id, "signal")
    assert signal.status == StepStatus.COMPLETED and signal.output is None
    assert signal.wake_at is not None and step_of(run_id, "after").started_at >= signal.wake_at


def test_wait_for_event_with_if(key):
    run_id = start("test/waits-event-if", {"key": key, "min": 10})
    waiting(run_id, "event")
    assert Waiter.objects.get(run_id=run_id).has_filter
    send(OFFER, {"key": key, "amount": 5})  # matches, but if_ says no
    send(OFFER, {"key": f"{key}-other", "amount": 100})  # if_ would say yes, no match
    # The first offer may wake the run to call if_, which sends it back to waiting.
    waiting(run_id, "event")
    assert count(f"{key}-after") == 0

    good = send(OFFER, {"key": key, "amount": 12})
    run = wait_for_run(run_id)
    assert_done_once(run, key, "after")
    assert run.output == {"id": good, "name": OFFER, "data": {"key": key, "amount": 12}}


def test_an_event_resumes_a_waiting_run_at_most_once(key):
    run_id = start("test/waits-event", {"key": key})
    waiting(run_id, "event")
    first = send(SIGNAL, {"key": key, "n": 1})
    second = send(SIGNAL, {"key": key, "n": 2})
    assert first != second
    run = wait_for_run(run_id)
    assert_done_once(run, key, "ready", "after")
    assert run.output["id"] == first and run.output["data"]["n"] == 1
    assert step_of(run_id, "signal").output["id"] == first
    assert Step.objects.filter(run_id=run_id).count() == 3  # ready, signal, after: once each
    assert all(s.attempt_count <= 1 for s in Step.objects.filter(run_id=run_id))


def test_two_matching_events_sent_at_once_resume_each_run_once(key):
    """Two threads each send one matching event to each of 20 waiting runs at the same
    time: each run takes exactly one of its two events, and completes once."""
    keys = [f"{key}-{i}" for i in range(20)]
    run_ids = [start("test/waits-event", {"key": k}) for k in keys]
    for run_id in run_ids:
        waiting(run_id, "event")
    barrier = threading.Barrier(2)
    sent: dict[str, list[str]] = {}

    def sender(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            events = [{"name": SIGNAL, "data": {"key": k, "n": n}} for k in keys]
            sent[str(n)] = stepflows.send(events)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sender, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(sent) == ["1", "2"], "a sender failed"
    runs = wait_for_runs(run_ids)
    for i, (run, k) in enumerate(zip(runs, keys, strict=True)):
        assert_done_once(run, k, "ready", "after")
        assert run.output["id"] in (sent["1"][i], sent["2"][i]), run.output
        assert step_of(run.id, "signal").output["id"] == run.output["id"]


@pytest.mark.timeout(600)
def test_one_event_resumes_a_thousand_waiting_runs(key):
    events = [
        {"name": "test/waits-event", "data": {"key": key, "marks": False}} for _ in range(FAN_RUNS)
    ]
    run_ids = [str(r.id) for r in runs_for(stepflows.send(events))]
    assert len(run_ids) == FAN_RUNS

    def registered() -> bool:
        return Run.objects.filter(id__in=run_ids, waiting_for="event").count() == FAN_RUNS

    wait_until(registered, f"{FAN_RUNS} runs waiting for the event", timeout=300)
    assert Waiter.objects.filter(run_id__in=run_ids, kind="wait").count() == FAN_RUNS

    signal = send(SIGNAL, {"key": key})
    runs = wait_for_runs(run_ids, timeout=300)
    bad = [(str(r.id), r.status, r.output) for r in runs if r.status != RunStatus.COMPLETED]
    assert not bad, f"{len(bad)} of {FAN_RUNS} runs did not complete: {bad[:5]}"
    assert all(r.output["id"] == signal for r in runs)
    assert not Waiter.objects.filter(run_id__in=run_ids).exists()


# -- invoke ----------------------------------------------------------------------------------


@pytest.mark.parametrize("by_id", [False, True], ids=["by-function", "by-id"])
def test_invoke_returns_the_childs_typed_output(key, by_id):
    run_id = start("test/waits-invoke", {"key": key, "by_id": by_id, "child": {"amount": 7}})
    run = wait_for_run(run_id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"type": "Quote", "amount": 7, "note": f"for {key}"}
    child = child_of(run_id)
    assert child.workflow_id == "waits-quote" and child.status == RunStatus.COMPLETED
    assert child.output == {"amount": 7, "note": f"for {key}"}
    invoke = step_of(run_id, "get-quote")
    assert invoke.kind == "invoke" and invoke.status == StepStatus.COMPLETED
    assert invoke.output == child.output
    assert invoke.wait["workflow"] == "waits-quote" and invoke.wait["child"] == str(child.id)
    assert Run.objects.filter(parent_id=run_id).count() == 1
    assert count(f"{key}-child-done") == 1 and count(f"{key}-parent-end") == 1


def test_invoke_of_a_failing_child_raises_step_error(key):
    run_id = start("test/waits-invoke", {"key": key, "child": {"mode": "fail"}})
    run = wait_for_run(run_id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["error"] == "ChildRunFailed", run.output
    child = child_of(run_id)
    assert child.status == RunStatus.FAILED
    invoke = step_of(run_id, "get-quote")
    assert invoke.status == StepStatus.FAILED and invoke.error["type"] == "ChildRunFailed"
    assert count(f"{key}-boom") == 1 and count(f"{key}-child-done") == 0


def test_invoke_timeout_raises_while_the_child_goes_on(key):
    data = {"key": key, "timeout": 1, "child": {"seconds": 6}}
    run = wait_for_run(start("test/waits-invoke", data), timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output["error"] == "InvokeTimeoutError", run.output
    child = child_of(str(run.id))
    assert not child.is_finished, "the child finished before its parent's invoke timed out"
    invoke = step_of(run.id, "get-quote")
    assert invoke.status == StepStatus.FAILED and invoke.error["type"] == "InvokeTimeoutError"
    child = wait_for_run(child.id, timeout=60)
    assert child.status == RunStatus.COMPLETED, child.error
    assert count(f"{key}-child-work") == 1 and count(f"{key}-child-done") == 1
    assert Run.objects.get(id=run.id).output == run.output  # the late child changed nothing


def test_invoke_replays_without_a_second_child(key):
    run_id = start("test/waits-invoke", {"key": key, "fail_once": True, "child": {"amount": 3}})
    run = wait_for_run(run_id)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"type": "Quote", "amount": 3, "note": f"for {key}", "after": "ok"}
    assert count(f"{key}-after") == 2 and step_of(run_id, "after").attempt_count == 2
    assert Run.objects.filter(parent_id=run_id).count() == 1, "the replay invoked a second child"
    assert count(f"{key}-child-done") == 1


# -- run timeouts ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sleep", "loop"])
def test_finish_timeout_cancels_a_run_past_it(key, mode):
    run = wait_for_run(start("test/waits-finish-timeout", {"key": key, "mode": mode}), timeout=60)
    assert run.status == RunStatus.CANCELLED, (run.status, run.error)
    assert run.error["message"].startswith("timed out"), run.error
    # Finish timeout 2 s, sweep every second; the sleep would last 30 s, the loop 20 s.
    assert run.duration is not None and run.duration < 15, run.duration
    ticks = count(f"{key}-tick")
    time.sleep(1.0)  # what a worker that missed the cancel would do meanwhile: ~5 more ticks
    assert count(f"{key}-tick") <= ticks + 1
    assert count(f"{key}-next") == 0
    if mode == "loop":
        assert ticks < 100
    # The step running at the cancel may finish; it is recorded as after the cancel.
    assert_nothing_recorded_after_cancel(run)


def test_finish_timeout_does_not_interrupt_a_running_step(key):
    run = wait_for_run(start("test/waits-finish-timeout", {"key": key, "mode": "step"}))
    assert run.status == RunStatus.CANCELLED, (run.status, run.error)
    assert run.error["message"].startswith("timed out"), run.error
    # The 5 s step runs to its end, after the run was cancelled; the next step never starts.
    [[_, ended, _]] = wait_for_marks(f"{key}-long", timeout=30)
    assert float(ended) > run.ended_at.timestamp(), "the run was cancelled after the step ended"
    assert count(f"{key}-long-start") == 1
    time.sleep(1.0)
    assert count(f"{key}-next") == 0


# -- cancel_on -------------------------------------------------------------------------------


def test_cancel_on_during_a_sleep_cancels_at_once(key):
    run_id = start("test/waits-cancel-on", {"key": key, "nap": 60})
    waiting(run_id, "sleep")
    assert Waiter.objects.filter(run_id=run_id, kind="cancel", event_name=CANCEL).count() == 1
    send(CANCEL, {"key": f"{key}-other"})
    assert Run.objects.get(id=run_id).status == RunStatus.WAITING
    send(CANCEL, {"key": key})
    run = wait_for_run(run_id, timeout=15)  # the sleep has 60 s left
    assert run.status == RunStatus.CANCELLED, (run.status, run.error)
    assert run.error["message"].startswith("cancelled by event"), run.error
    assert count(f"{key}-work") == 1 and count(f"{key}-after") == 0
    assert not Waiter.objects.filter(run_id=run_id).exists()


def test_cancel_on_during_a_step_stops_before_the_next_step(key):
    run_id = start("test/waits-cancel-on", {"key": key, "seconds": 3})
    wait_for_marks(f"{key}-work-start")
    send(CANCEL, {"key": key})
    run = wait_for_run(run_id, timeout=30)
    assert run.status == RunStatus.CANCELLED, (run.status, run.error)
    assert run.error["message"].startswith("cancelled by event"), run.error
    wait_for_marks(f"{key}-work", timeout=30)  # the running step finishes
    time.sleep(1.0)
    assert count(f"{key}-after") == 0
    assert not Waiter.objects.filter(run_id=run_id).exists()


# -- on_failure ------------------------------------------------------------------------------


def handlers_of(run_id: Any) -> Any:
    return Run.objects.filter(parent_id=run_id, workflow_id="waits-fails.on_failure")


def test_on_failure_runs_once_per_failure(key):
    run = wait_for_run(start("test/waits-fails", {"key": key}))
    assert run.status == RunStatus.FAILED, run.status
    handler = wait_until(lambda: handlers_of(run.id).first(), "the on_failure run")
    handler = wait_for_run(handler.id)
    assert handler.status == RunStatus.COMPLETED, handler.error
    assert handlers_of(run.id).count() == 1
    assert Run.objects.filter(workflow_id="waits-fails.on_failure").count() == 1
    assert count(f"{key}-on-failure") == 1
    event = handler.event
    assert event.name == "stepflows/run.failed"
    assert event.data["run_id"] == str(run.id) and event.data["workflow_id"] == "waits-fails"
    assert event.data["error"]["type"] == run.error["type"]
    assert event.data["error"]["message"] == run.error["message"]
    assert event.data["event"]["name"] == "test/waits-fails"
    assert event.data["event"]["data"] == {"key": key}
    assert handler.output == {"run_id": str(run.id), "error": run.error["type"]}


def test_on_failure_is_not_called_for_a_cancelled_run(key):
    cancelled_id = start("test/waits-fails", {"key": f"{key}-c", "nap": 60})
    waiting(cancelled_id, "sleep")
    assert api.cancel_run(cancelled_id)
    assert wait_for_run(cancelled_id).status == RunStatus.CANCELLED
    # A run that fails after it: once its handler ran, one for the cancel would exist too.
    failed = wait_for_run(start("test/waits-fails", {"key": key}))
    assert failed.status == RunStatus.FAILED
    wait_for_run(wait_until(lambda: handlers_of(failed.id).first(), "the on_failure run").id)
    assert not handlers_of(cancelled_id).exists()
    assert Run.objects.filter(workflow_id="waits-fails.on_failure").count() == 1
    assert count(f"{key}-c-on-failure") == 0 and count(f"{key}-on-failure") == 1


def test_on_failure_runs_again_when_the_retried_run_fails_again(key):
    run = wait_for_run(start("test/waits-fails", {"key": key}))
    assert run.status == RunStatus.FAILED
    first = wait_for_run(wait_until(lambda: handlers_of(run.id).first(), "the first handler").id)
    api.retry_run(run.id)
    run = wait_for_run(run.id)
    assert run.status == RunStatus.FAILED and count(f"{key}-boom") == 2
    second = wait_until(
        lambda: handlers_of(run.id).exclude(id=first.id).first(), "the second handler"
    )
    assert wait_for_run(second.id).status == RunStatus.COMPLETED
    assert handlers_of(run.id).count() == 2 and first.event_id != second.event_id
    assert count(f"{key}-on-failure") == 2


# -- cancelling an invoking run --------------------------------------------------------------


def test_cancel_run_cancels_the_invoked_child(key):
    parent_id = start("test/waits-invoke", {"key": key, "child": {"nap": 60}})
    child = child_of(parent_id)
    waiting(str(child.id), "sleep")
    waiting(parent_id, "invoke")
    assert api.cancel_run(parent_id)
    assert Run.objects.get(id=parent_id).status == RunStatus.CANCELLED
    child = wait_for_run(child.id, timeout=15)
    assert child.status == RunStatus.CANCELLED
    assert count(f"{key}-child-done") == 0 and count(f"{key}-parent-end") == 0


def test_cancel_run_with_children_false_keeps_the_child(key):
    parent_id = start("test/waits-invoke", {"key": key, "child": {"nap": 3}})
    child = child_of(parent_id)
    waiting(str(child.id), "sleep")
    assert api.cancel_run(parent_id, children=False)
    child = wait_for_run(child.id, timeout=60)
    assert child.status == RunStatus.COMPLETED, (child.status, child.error)
    assert count(f"{key}-child-done") == 1
    parent = Run.objects.get(id=parent_id)
    assert parent.status == RunStatus.CANCELLED
    time.sleep(1.0)  # the child's completion does not bring the cancelled parent back
    assert Run.objects.get(id=parent_id).status == RunStatus.CANCELLED
    assert count(f"{key}-parent-end") == 0
