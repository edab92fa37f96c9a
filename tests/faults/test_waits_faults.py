"""Durable waits under faults: workers stopped mid-sleep, a long sleep kept out of the
broker, a duplicated wake-up message, and events sent while runs register their waits.

The workers run on the fault suite's queue (see conftest.py); a worker that must
wake sleeping runs on its own embeds celery beat, whose ``stepflows.recover``
task runs the wake-up sweep every SWEEP_INTERVAL seconds.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

import stepflows
from stepflows import dispatch
from stepflows.models import Run, RunStatus, Step, StepStatus, Waiter
from stepflows.testing import runs_for
from tests.faults.conftest import FAULT_QUEUE, record_figures, wait_until
from tests.testapp.flows.waits import SIGNAL
from tests.testapp.marks import count, lines

pytestmark = pytest.mark.django_db(transaction=True)

SWEEP_INTERVAL = "1"
# tests/settings.py builds the beat schedule from the first, project/settings.py from the second.
SWEEPING = {
    "STEPFLOWS_TEST_RECOVERY_INTERVAL": SWEEP_INTERVAL,
    "STEPFLOWS_RECOVERY_INTERVAL": SWEEP_INTERVAL,
}
RACE_RUNS = 200


def sleeping(run_id: str, timeout: float = 60) -> Run:
    """Wait until the run sleeps (status waiting, waiting for "sleep"); return it."""

    def check() -> Run | None:
        run = Run.objects.get(id=run_id)
        assert not run.is_finished, f"run finished instead of sleeping: {run.status} {run.error}"
        return run if (run.status, run.waiting_for) == (RunStatus.WAITING, "sleep") else None

    return wait_until(check, f"run {run_id} sleeping", timeout)


def step_of(run_id: Any, step_id: str) -> Step:
    return Step.objects.get(run_id=run_id, step_id=step_id)


def assert_slept_once(run: Run, key: str, *, on_time: bool = True) -> None:
    """The run completed; each step's code ran once; the sleep ended as a completed step
    (``on_time``: not before it was due)."""
    assert run.status == RunStatus.COMPLETED, (run.status, run.error)
    assert run.output == "slept"
    assert (count(f"{key}-before"), count(f"{key}-after")) == (1, 1)
    steps = {s.step_id: s for s in Step.objects.filter(run=run)}
    assert sorted(steps) == ["after", "before", "nap"]
    nap = steps["nap"]
    assert nap.kind == "sleep" and nap.status == StepStatus.COMPLETED and nap.output is None
    assert steps["after"].attempt_count == 1 and steps["before"].attempt_count == 1
    if on_time:
        assert steps["after"].started_at >= nap.wake_at, "woken before the sleep was due"
    assert run.waiting_for == "" and run.wait_until is None


# Workers with it mark each run message they receive, ETA ones too (tests/testapp/flows/waits.py).
MARK_RECEIVED = {"STEPFLOWS_TEST_MARK_RECEIVED": "1"}


def received(run_id: str) -> list[str]:
    """The run's messages the workers received: task name and eta of each."""
    return [note for _pid, _at, note in lines(f"received-{run_id}")]


# -- what the broker holds -------------------------------------------------------------------


def _about(run_id: str, raw: Any) -> bool:
    """Whether a message (its JSON text, or a payload dict) names the run."""
    text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    if run_id in text:
        return True
    payload = raw
    if isinstance(raw, str):
        try:
            payload = json.loads(raw)
        except ValueError:
            return False
    body = payload.get("body") if isinstance(payload, dict) else None
    if isinstance(body, str):
        try:
            return run_id in base64.b64decode(body).decode(errors="replace")
        except ValueError:
            return False
    return False


def broker_messages(queue: str) -> list[Any]:
    """Every message the broker holds for ``queue``: ready, delayed or unacknowledged.

    Filesystem: the message files in the broker's folder. Redis: the queue's lists (one
    per priority step) and its entries of the ``unacked`` hash. RabbitMQ: the queue's
    ready messages (``queue_declare(passive=True).message_count``; unacknowledged ones
    go back to it when their consumer closes, so stop the workers first).
    """
    url = django_settings.CELERY_BROKER_URL
    if url.startswith("filesystem"):
        from stepflows.filesystem_broker import message_files

        folder = django_settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"]
        found = []
        for path in message_files(folder, queue):
            try:
                found.append(Path(path).read_text())
            except FileNotFoundError:
                continue  # claimed meanwhile
        return found
    if url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url)
        try:
            found = []
            for name in [queue] + [f"{queue}\x06\x16{p}" for p in (1, 2, 3, 4, 5, 6, 7, 8, 9)]:
                found += [raw.decode() for raw in client.lrange(name, 0, -1)]
            for raw in client.hvals("unacked"):
                payload, _exchange, routing_key = json.loads(raw)
                if routing_key == queue:
                    found.append(payload)
            return found
        finally:
            client.close()
    from kombu import Connection

    with Connection(url) as conn:
        channel = conn.channel()
        try:
            _name, ready, _consumers = channel.queue_declare(queue=queue, passive=True)
            found = []
            for _ in range(ready):
                message = channel.basic_get(queue=queue, no_ack=False)
                if message is None:
                    break
                headers = getattr(message, "headers", None) or {}
                body = message.body.decode() if isinstance(message.body, bytes) else message.body
                found.append(json.dumps({"headers": headers, "raw": body}, default=str))
            return found
        finally:
            channel.close()  # the messages taken with basic_get go back, unacknowledged


# -- 1. a sleep across a worker restart ------------------------------------------------------


def test_sleep_across_a_worker_restart(faults, key):
    """Every worker killed while the run sleeps 5 s; a worker started after the due time
    (with the sweep in its embedded beat) wakes it; each step runs once."""
    faults.worker("waits-restart-1", concurrency=2)
    run_id = faults.send("test/waits-sleep", {"key": key, "seconds": 5})
    run = sleeping(run_id)
    due = run.wait_until
    assert due is not None
    faults.stop_all()
    # Start again after the due time (whatever the killed worker held is gone with it).
    time.sleep(max(0.0, (due - timezone.now()).total_seconds()) + 1.0)
    assert Run.objects.get(id=run_id).status == RunStatus.WAITING
    faults.worker("waits-restart-2", concurrency=2, env=SWEEPING, beat=True)
    [run] = faults.wait([run_id], timeout=60, recover=False)
    assert_slept_once(run, key)
    record_figures(
        "sleep of 5 s across a worker restart",
        runs=1,
        steps=3,
        faults=1,
        lost=0,
        doubled=0,
        recoveries=run.recoveries,
    )


# -- 2. a 30-day sleep is not in the broker --------------------------------------------------


def test_a_thirty_day_sleep_is_not_in_the_broker(faults, key):
    """While the run sleeps 30 days no message waits for it anywhere: the worker received
    one message (the run's start) and, once it stopped, the broker holds none for the run.
    The sweep, run 31 days ahead, wakes it; a new worker finishes it."""
    from stepflows.engine.waits import wake_due_runs

    first = faults.worker("waits-long-1", concurrency=1, env=MARK_RECEIVED)
    run_id = faults.send("test/waits-sleep", {"key": key, "seconds": 30 * 86400})
    run = sleeping(run_id)
    nap = step_of(run_id, "nap")
    assert nap.wake_at == run.wait_until
    assert timedelta(days=29) < nap.wake_at - timezone.now() <= timedelta(days=30)
    time.sleep(1.0)  # a countdown message published with the sleep would be received by now
    # One message: the one that started the run. None published with the sleep.
    assert len(received(run_id)) == 1, received(run_id)
    first.stop(timeout=10)  # unacknowledged messages (a countdown held by it) go back
    # Only this run's messages count: the queue may hold earlier tests' (a worker killed
    # with a countdown message leaves it unacknowledged in Redis for the visibility timeout).
    held = broker_messages(FAULT_QUEUE)
    about = [m for m in held if _about(run_id, m)]
    assert not about, f"the broker holds {len(about)} message(s) for the sleeping run: {about}"

    faults.worker("waits-long-2", concurrency=1)
    assert Run.objects.get(id=run_id).status == RunStatus.WAITING  # nothing woke it
    woken = wake_due_runs(now=timezone.now() + timedelta(days=31))
    assert isinstance(woken, dict)
    [run] = faults.wait([run_id], timeout=60, recover=False)
    assert_slept_once(run, key, on_time=False)  # the sweep's clock was 31 days ahead
    record_figures(
        "30-day sleep: nothing in the broker, woken by the sweep 31 days ahead",
        runs=1,
        steps=3,
        faults=0,
        lost=0,
        doubled=0,
        recoveries=run.recoveries,
        broker_messages_for_run=len(about),
        broker_messages_in_queue=len(held),
    )


# -- 3. a duplicated wake-up message ---------------------------------------------------------


class Recorder:
    """A publisher that keeps the messages instead of sending them."""

    def __init__(self) -> None:
        self.messages: list[dispatch.Message] = []

    def publish(self, messages: list[dispatch.Message]) -> None:
        self.messages.extend(messages)


def test_a_duplicated_wake_up_message_does_nothing(faults, key):
    """The sweep's wake-up message of a sleeping run, published twice: each step runs once
    and the run completes once."""
    from stepflows.engine.waits import wake_due_runs

    faults.worker("waits-dup", concurrency=2, env=MARK_RECEIVED)
    run_id = faults.send("test/waits-sleep", {"key": key, "seconds": 3600})
    sleeping(run_id)
    recorder = Recorder()
    with dispatch.use(recorder):
        wake_due_runs(now=timezone.now() + timedelta(hours=2))
    wake = [
        m for m in recorder.messages if m.task == dispatch.EXECUTE_RUN and str(m.args[0]) == run_id
    ]
    assert len(wake) == 1, f"the sweep published {recorder.messages} to wake the run"
    assert wake[0] == dispatch.execute_run(run_id, wake=wake[0].kwargs.get("wake"))
    dispatch.publish([wake[0], wake[0]])
    [run] = faults.wait([run_id], timeout=60, recover=False)
    assert_slept_once(run, key, on_time=False)  # the sweep's clock was 2 hours ahead
    # Both copies were delivered (with the message that started the run: 3).
    wait_until(lambda: len(received(run_id)) >= 3, "both wake-ups delivered", 30)
    before = (run.status, run.output, run.ended_at, run.wake)
    time.sleep(1.0)
    run = Run.objects.get(id=run_id)
    assert (run.status, run.output, run.ended_at, run.wake) == before
    assert (count(f"{key}-before"), count(f"{key}-after")) == (1, 1)
    record_figures(
        "sleep wake-up message delivered twice",
        runs=1,
        steps=3,
        faults=1,
        lost=0,
        doubled=0,
        recoveries=run.recoveries,
    )


# -- 4. events sent while the runs register their waits -------------------------------------


@pytest.mark.timeout(420)
def test_events_sent_right_after_the_step_before_the_wait_are_not_lost(faults, key):
    """200 runs do step "ready", then wait for SIGNAL with their own key. This process
    sends each run's event as soon as it sees "ready" completed, often before the run
    registered its wait: every run completes with its event."""
    faults.worker("waits-race", concurrency=4)
    keys = [f"{key}-{i}" for i in range(RACE_RUNS)]
    event_ids = stepflows.send([{"name": "test/waits-event", "data": {"key": k}} for k in keys])
    key_of_event = dict(zip(event_ids, keys, strict=True))
    runs = runs_for(event_ids)
    assert len(runs) == RACE_RUNS
    key_of = {str(r.id): key_of_event[r.event_id] for r in runs}
    run_ids = list(key_of)

    sent: dict[str, str] = {}  # run id -> the id of its SIGNAL event
    unregistered = 0  # events sent before their run's wait was registered
    deadline = time.monotonic() + 240
    while len(sent) < RACE_RUNS:
        ready = Step.objects.filter(
            run_id__in=run_ids, step_id="ready", status=StepStatus.COMPLETED
        ).values_list("run_id", flat=True)
        new = [str(r) for r in ready if str(r) not in sent]
        if not new:
            assert time.monotonic() < deadline, f"only {len(sent)} runs got to 'ready'"
            time.sleep(0.002)
            continue
        registered = {
            str(r)
            for r in Waiter.objects.filter(run_id__in=new, kind="wait").values_list(
                "run_id", flat=True
            )
        }
        unregistered += sum(1 for r in new if r not in registered)
        ids = stepflows.send([{"name": SIGNAL, "data": {"key": key_of[r]}} for r in new])
        sent.update(zip(new, ids, strict=True))

    deadline = time.monotonic() + 120
    while Run.objects.filter(id__in=run_ids).active().exists():
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    runs = list(Run.objects.filter(id__in=run_ids))
    lost = [
        (str(r.id), r.status, r.waiting_for)
        for r in runs
        if r.status != RunStatus.COMPLETED or (r.output or {}).get("id") != sent[str(r.id)]
    ]
    record_figures(
        "events sent right after the step before the wait",
        runs=RACE_RUNS,
        steps=3 * RACE_RUNS,
        faults=unregistered,
        lost=len(lost),
        doubled=0,
        recoveries=sum(r.recoveries for r in runs),
    )
    assert not lost, (
        f"{len(lost)} of {RACE_RUNS} runs lost their event ({unregistered} events were sent "
        f"before their run's wait was registered): {lost[:5]}"
    )
    for r in runs:
        k = key_of[str(r.id)]
        assert r.output["data"] == {"key": k}
        assert (count(f"{k}-ready"), count(f"{k}-after")) == (1, 1), k
