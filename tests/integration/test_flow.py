"""Flow control against real workers: concurrency slots, throttle, rate limit, debounce,
idempotency, singleton and batch, on the test database and broker.

Runs held by a throttle, a debounce or a batch timeout are started by the sweep,
which celery beat runs: this module adds a second worker process, with embedded
beat sweeping every second, next to the session's worker (both consume the
session's queue). Each step marks when its work began and ended
(tests/testapp/flows/flow.py); the tests compare those times.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings

import stepflows
from stepflows.models import Run, RunStatus, Slot, Step
from stepflows.testing import CeleryWorker, runs_for, wait_for_run, wait_for_runs
from tests.conftest import worker_env
from tests.faults.conftest import wait_for_marks
from tests.testapp.marks import count, lines, mark

pytestmark = pytest.mark.django_db(transaction=True)

SWEEP_INTERVAL = 1.0


@pytest.fixture(scope="module")
def beat_worker(celery_worker: Any) -> Iterator[CeleryWorker]:
    """A second worker on the session's queue, with celery beat sweeping every second."""
    from tests.settings import SESSION_DIR

    worker = CeleryWorker(
        "project",
        env={**worker_env(), "STEPFLOWS_TEST_RECOVERY_INTERVAL": str(SWEEP_INTERVAL)},
        concurrency=2,
        queues=settings.CELERY_TASK_DEFAULT_QUEUE,
        logfile=SESSION_DIR / "flow-beat.log",
        name="flow-beat",
        cwd=settings.BASE_DIR,
        beat=True,
    )
    with worker:
        yield worker


def send(name: str, **data: Any) -> Run | None:
    """Send one event; the run it created (perhaps held or skipped), or None."""
    [event_id] = stepflows.send(name, data=data)
    runs = runs_for([event_id])
    assert len(runs) <= 1, runs
    return runs[0] if runs else None


def spans(key: str) -> dict[str, tuple[float, float, int]]:
    """label -> (start, end, pid) of each run's work; each label started and ended once."""
    starts = [(note, float(t), int(pid)) for pid, t, note in lines(f"{key}-start")]
    ends = {note: float(t) for _, t, note in lines(f"{key}-end")}
    labels = [note for note, _, _ in starts]
    assert len(labels) == len(set(labels)), "a run's work started twice"
    assert sorted(ends) == sorted(labels), "a run's work started and never ended, or twice"
    assert len(lines(f"{key}-end")) == len(ends), "a run's work ended twice"
    return {note: (t, ends[note], pid) for note, t, pid in starts}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one ending as another starts: not both)."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def started(key: str) -> list[tuple[str, float]]:
    """(label, time) of each start mark, in the order they were written."""
    return [(note, float(t)) for _, t, note in lines(f"{key}-start")]


# -- concurrency --------------------------------------------------------------------------


def test_two_slots_per_key_hold_across_two_workers_and_other_keys_run_alongside(
    celery_worker, beat_worker, key
):
    """50 runs for one customer (Concurrency(2)), 10 for another, on two worker processes
    of two pool processes each: never more than 2 of a customer at once; the other
    customer's runs are not stuck behind the first one's line."""
    a, b = f"{key}-a", f"{key}-b"
    sent = [
        send("test/flow-limited", key=a, customer=a, label=f"a{n}", seconds=0.15) for n in range(50)
    ]
    sent += [
        send("test/flow-limited", key=b, customer=b, label=f"b{n}", seconds=0.15) for n in range(10)
    ]
    runs = wait_for_runs([r.id for r in sent], timeout=240)
    assert all(r.status == RunStatus.COMPLETED for r in runs), [
        (r.status, r.error) for r in runs if r.status != RunStatus.COMPLETED
    ]
    assert [r.output for r in runs] == [f"a{n}" for n in range(50)] + [f"b{n}" for n in range(10)]
    assert Step.objects.filter(run__in=runs, step_id="work").count() == 60

    span_a, span_b = spans(a), spans(b)
    assert len(span_a) == 50 and len(span_b) == 10
    over_a = max_overlap([(s, e) for s, e, _ in span_a.values()])
    over_b = max_overlap([(s, e) for s, e, _ in span_b.values()])
    assert over_a == 2, f"customer a had {over_a} runs at once (limit 2)"
    assert over_b <= 2, f"customer b had {over_b} runs at once (limit 2)"
    # b's runs ran while a's were running: more than 2 at once overall, and b was done
    # before a's line was through.
    both = [(s, e) for s, e, _ in [*span_a.values(), *span_b.values()]]
    assert max_overlap(both) >= 3, "customer b waited for customer a's slots"
    assert max(e for _, e, _ in span_b.values()) < max(e for _, e, _ in span_a.values())
    # Both worker processes ran customer a's runs: the limit held across them.
    pids = {pid for _, _, pid in span_a.values()}
    assert pids & set(celery_worker.child_pids()) and pids & set(beat_worker.child_pids()), pids
    assert not Slot.objects.filter(workflow_id="flow-limited").exists()


def test_a_sleeping_run_gives_its_slot_back_and_waits_in_line_when_it_wakes(beat_worker, key):
    """Concurrency(1): run a sleeps 2 s between two steps; run b takes the slot meanwhile
    and works 2.5 s; woken, a waits in line for b to end before it goes on."""
    first = send("test/flow-napping", key=key, customer=key, label="a", nap=2, seconds=0.2)
    wait_for_marks(f"{key}-end")  # a's first step is done: it sleeps next
    second = send("test/flow-napping", key=key, customer=key, label="b", nap=0, seconds=2.5)
    done = wait_for_runs([first.id, second.id], timeout=60)
    assert all(r.status == RunStatus.COMPLETED for r in done), [(r.status, r.error) for r in done]
    span = spans(key)
    assert max_overlap([(s, e) for s, e, _ in span.values()]) == 1, span
    # b started while a slept, and a's last step started only after b had ended.
    assert span["b-before"][0] < span["a-before"][1] + 1.5
    assert span["a-work"][0] >= span["b-work"][1], span
    assert not Slot.objects.filter(workflow_id="flow-napping").exists()


# -- throttle ------------------------------------------------------------------------------


def test_throttle_delays_runs_in_order_spaced_period_over_limit(beat_worker, key):
    """Throttle(2, 4 s): 5 runs of one key start in the order sent, 2 s apart (the sweep
    starts the held ones); a run for another key starts at once."""
    spacing = 2.0
    runs = [send("test/flow-throttled", key=key, k=key, label=f"t{n}") for n in range(5)]
    other = send("test/flow-throttled", key=f"{key}-other", k=f"{key}-other", label="o")
    assert [r.waiting_for for r in runs] == ["", "throttle", "throttle", "throttle", "throttle"]
    assert other.waiting_for == "" and other.wait_until is None
    planned = [r.wait_until for r in runs[1:]]
    for earlier, later in itertools.pairwise(planned):
        assert abs((later - earlier) - timedelta(seconds=spacing)) < timedelta(milliseconds=5)
    assert all(r.status == RunStatus.QUEUED for r in runs[1:])

    done = wait_for_runs([r.id for r in [*runs, other]], timeout=120)
    assert all(r.status == RunStatus.COMPLETED for r in done), [(r.status, r.error) for r in done]
    starts = started(key)
    assert [label for label, _ in starts] == [f"t{n}" for n in range(5)], starts
    times = [t for _, t in starts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= spacing - 0.5 for gap in gaps), f"starts {gaps} s apart (spacing 2 s)"
    # Never before its planned time (the database clock is this machine's).
    for (_, t), due in zip(starts[1:], planned, strict=True):
        assert t >= due.timestamp() - 0.1, (t, due)
    [(_, other_start)] = started(f"{key}-other")
    assert other_start < times[1], "the other key's run waited for this key's throttle"


# -- rate limit ------------------------------------------------------------------------------


def test_rate_limit_skips_and_records_the_excess(celery_worker, key):
    """RateLimit(3, 60 s): of 5 runs for one key, 3 run and 2 are recorded as skipped,
    never started; another key is not limited by it."""
    runs = [send("test/flow-rated", key=key, k=key, label=f"r{n}") for n in range(5)]
    other = send("test/flow-rated", key=f"{key}-other", k=f"{key}-other", label="o")
    # (the runs let through may already be running, or done, when read back)
    skipped = [r.status == RunStatus.SKIPPED for r in runs]
    assert skipped == [False] * 3 + [True] * 2, [r.status for r in runs]
    ran = wait_for_runs([r.id for r in [*runs[:3], other]], timeout=60)
    assert all(r.status == RunStatus.COMPLETED for r in ran)
    time.sleep(1.0)  # what a worker or the sweep would start meanwhile
    for run in runs[3:]:
        run.refresh_from_db()
        assert run.status == RunStatus.SKIPPED and run.ended_at is not None
        assert run.error["type"] == "Skipped"
        assert run.error["message"] == f"rate limit: over 3 runs per 60 s for key '{key}'"
        assert not Step.objects.filter(run=run).exists()
    assert sorted(label for label, _ in started(key)) == ["r0", "r1", "r2"]
    assert count(f"{key}-other-start") == 1


# -- debounce --------------------------------------------------------------------------------


def test_debounce_of_20_events_in_a_second_starts_one_run_with_the_last(beat_worker, key):
    """Debounce(2 s): 20 events 50 ms apart start one run, ~2 s after the last, with it."""
    ids: list[str] = []
    sent_at: list[float] = []
    began = time.monotonic()
    for n in range(20):
        # One every 50 ms (no pause when sending fell behind, on a loaded machine).
        time.sleep(max(0.0, began + n * 0.05 - time.monotonic()))
        sent_at.append(time.monotonic())
        data = {"key": key, "k": key, "label": n, "n": n}
        ids += stepflows.send("test/flow-debounced", data=data)
    last_sent = time.time()
    # What the test relies on: no pause between two events as long as the period.
    gaps = [b - a for a, b in itertools.pairwise([*sent_at, time.monotonic()])]
    assert max(gaps) < 1.5, f"a send took {max(gaps):.1f} s: as long as the debounce period"
    [pending] = Run.objects.filter(workflow_id="flow-debounced")
    assert pending.status == RunStatus.QUEUED and pending.waiting_for == "debounce"
    assert pending.event_id == ids[-1]
    run = wait_for_run(pending.id, timeout=60)
    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == 19 and run.event_id == ids[-1]
    [(label, at)] = started(key)
    assert label == "19"
    assert at >= last_sent + 2 - 0.3, f"started {at - last_sent:.2f} s after the last event"
    time.sleep(1.5)  # a second sweep starts nothing more
    assert Run.objects.filter(workflow_id="flow-debounced").count() == 1
    assert count(f"{key}-start") == 1


# -- idempotency -----------------------------------------------------------------------------


def test_an_idempotency_key_starts_one_run(celery_worker, key):
    """Two events with the same order id: one run; another order id: its own run."""
    first = send("test/flow-idem", key=key, order=key, label="first")
    assert send("test/flow-idem", key=key, order=key, label="second") is None
    other = send("test/flow-idem", key=key, order=f"{key}-2", label="other")
    done = wait_for_runs([first.id, other.id], timeout=60)
    assert [r.output for r in done] == [key, f"{key}-2"]
    # Still within the period after the first run ended: no run.
    assert send("test/flow-idem", key=key, order=key, label="third") is None
    assert sorted(label for label, _ in started(key)) == ["first", "other"]
    assert Run.objects.filter(workflow_id="flow-idem").count() == 2


# -- singleton -------------------------------------------------------------------------------


def release(key: str, label: str) -> None:
    mark(f"{key}-release-{label}")


def test_singleton_skip_while_a_run_is_active(celery_worker, key):
    """mode="skip": a second run while the first holds is skipped, with the first's id;
    once the first ended, a new one runs."""
    first = send("test/flow-single-skip", key=key, k=key, label="a")
    wait_for_marks(f"{key}-holding")
    second = send("test/flow-single-skip", key=key, k=key, label="b")
    assert second.status == RunStatus.SKIPPED
    assert second.error["message"] == f"singleton: run {first.id} is still active for key '{key}'"
    release(key, "a")
    first = wait_for_run(first.id, timeout=60)
    assert first.status == RunStatus.COMPLETED and first.output == "a"
    third = send("test/flow-single-skip", key=key, k=key, label="c")
    assert third.status != RunStatus.SKIPPED and not third.waiting_for
    release(key, "c")
    third = wait_for_run(third.id, timeout=60)
    assert third.status == RunStatus.COMPLETED and third.output == "c"
    assert [note for _, _, note in lines(f"{key}-holding")] == ["a", "c"]
    second.refresh_from_db()
    assert second.status == RunStatus.SKIPPED and not Step.objects.filter(run=second).exists()


def test_singleton_cancel_replaces_the_active_run(celery_worker, key):
    """mode="cancel": a second run cancels the first (mid-step) and runs; the first runs
    no further step."""
    first = send("test/flow-single-cancel", key=key, k=key, label="a")
    wait_for_marks(f"{key}-holding")
    second = send("test/flow-single-cancel", key=key, k=key, label="b")
    first.refresh_from_db()
    assert first.status == RunStatus.CANCELLED
    assert first.error["message"] == (
        f"replaced by run {second.id} for key '{key}' (Singleton mode 'cancel')"
    )
    assert second.status != RunStatus.SKIPPED and not second.waiting_for
    # The new run starts while the cancelled one's step code still runs.
    holding = wait_for_marks(f"{key}-holding", n=2)
    assert [note for _, _, note in holding] == ["a", "b"]
    release(key, "a")
    release(key, "b")
    second = wait_for_run(second.id, timeout=60)
    assert second.status == RunStatus.COMPLETED and second.output == "b"
    time.sleep(1.0)  # the cancelled run's worker returns from its step meanwhile
    first.refresh_from_db()
    assert first.status == RunStatus.CANCELLED
    assert [note for _, _, note in lines(f"{key}-after-start")] == ["b"]
    assert not Step.objects.filter(run=first, step_id="after").exists()


# -- batch -----------------------------------------------------------------------------------


def test_batch_by_size_at_once_and_by_timeout_from_the_sweep(beat_worker, key):
    """Batch(3, 3 s): 7 events make runs of [0, 1, 2] and [3, 4, 5] at once, and [6]
    when its timeout came (started by the sweep)."""
    ids: list[str] = []
    sent_at: list[float] = []
    for n in range(7):
        ids += stepflows.send("test/flow-batch", data={"key": key, "k": key, "n": n})
        sent_at.append(time.time())
    runs = runs_for(ids)
    assert [r.event_id for r in runs] == [ids[0], ids[3], ids[6]]
    assert [r.batch for r in runs] == [ids[0:3], ids[3:6], ids[6:7]]
    full = wait_for_runs([r.id for r in runs[:2]], timeout=60)
    assert [r.output for r in full] == [[0, 1, 2], [3, 4, 5]]
    rest = wait_for_run(runs[2].id, timeout=60)
    assert rest.status == RunStatus.COMPLETED and rest.output == [6]
    starts = dict(started(key))
    assert sorted(starts) == ["0,1,2", "3,4,5", "6"]
    # The full batches did not wait for their timeout; the last one did.
    assert starts["0,1,2"] < sent_at[0] + 3 and starts["3,4,5"] < sent_at[3] + 3
    assert starts["6"] >= sent_at[6] + 3 - 0.3, starts["6"] - sent_at[6]
    assert Run.objects.filter(workflow_id="flow-batch").count() == 3
