"""Flow control, driven in process on the test database: concurrency slots, throttle,
rate limit, debounce, idempotency, singleton, batch, cron and the system check."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import checks

import stepflows
from stepflows import Concurrency, Cron, Throttle, api
from stepflows.engine.sweep import sweep, tick_event_id
from stepflows.models import Event, FlowState, Run, RunStatus, Slot
from stepflows.registry import registry
from stepflows.store.waits import database_now
from stepflows.testing import InProcess, runs_for
from tests.testapp.flows import flow_in_process as flows

pytestmark = pytest.mark.django_db


def send(name: str, **data: object) -> Run:
    [event_id] = stepflows.send(name, data=data)
    runs = runs_for([event_id])
    return runs[0] if runs else None


def first_invocations(driver: InProcess, n: int) -> None:
    """Run only the first ``n`` queued invocations: a run holding a slot suspends for
    its parallel step, and the next one finds the key full."""
    from stepflows.engine import runner
    from stepflows.testing import run_on_commit_callbacks

    run_on_commit_callbacks()
    for message in [m for m in driver.pending if m.task == "stepflows.execute_run"][:n]:
        runner.execute_run(*message.args, **message.kwargs)


# -- concurrency -------------------------------------------------------------------------


def test_a_full_key_holds_runs_in_the_database_and_hands_the_slot_over_in_line(key):
    flows.order.clear()
    with InProcess() as driver:
        first = send("test/fip-limited", customer=key, n=1)
        second = send("test/fip-limited", customer=key, n=2)
        third = send("test/fip-limited", customer=key, n=3, ahead=3600)
        other = send("test/fip-limited", customer=f"{key}-b", n=4)
        driver.run_until_idle()
        for run in (first, second, third, other):
            run.refresh_from_db()
            assert run.status == RunStatus.COMPLETED, (run.status, run.error)
    starts = [o for o in flows.order if o.startswith(("start-", "end-"))]
    mine = [s for s in starts if s[-1] in "123"]
    # One at a time for the key, the prioritized third before the second.
    assert mine == ["start-1", "end-1", "start-3", "end-3", "start-2", "end-2"]
    assert not Slot.objects.filter(run__in=[first, second, third]).exists()


def test_a_sleeping_run_gives_its_slot_back(key):
    flows.order.clear()
    with InProcess() as driver:
        sleeper = send("test/fip-limited", customer=key, n=1, nap=True)
        driver.run_until_idle()
        sleeper.refresh_from_db()
        assert sleeper.waiting_for == "sleep"
        assert not Slot.objects.filter(run=sleeper).exists()
        runner = send("test/fip-limited", customer=key, n=2)
        driver.run_until_idle()
        runner.refresh_from_db()
        assert runner.status == RunStatus.COMPLETED
        driver.run_until_finished(sleeper)
    assert flows.order.index("end-2") < flows.order.index("end-1")


def test_held_runs_show_in_the_counts(key):
    from stepflows.store.admission import counts

    with InProcess() as driver:
        send("test/fip-limited", customer=key, n=1)
        send("test/fip-limited", customer=key, n=2)
        first_invocations(driver, 2)
        rows = [r for r in counts("fip-limited") if r["key"] == f"0:{key}"]
        assert rows == [
            {
                "workflow_id": "fip-limited",
                "limit": "concurrency",
                "key": f"0:{key}",
                "running": 1,
                "waiting": 1,
            }
        ]
        driver.run_until_idle()


# -- throttle, rate limit, debounce, idempotency, singleton, batch ---------------------------


def test_throttle_delays_the_excess_in_order_and_drops_none(key):
    with InProcess() as driver:
        runs = [send("test/fip-throttled", k=key, n=n) for n in range(5)]
        held = [r.waiting_for for r in runs]
        assert held == ["", "throttle", "throttle", "throttle", "throttle"]
        starts = [r.wait_until for r in runs[1:]]
        assert starts == sorted(starts)
        assert timedelta(seconds=29) < starts[1] - starts[0] <= timedelta(seconds=31)
        driver.run_until_idle(wake_waits=True)
    assert [Run.objects.get(pk=r.pk).status for r in runs] == [RunStatus.COMPLETED] * 5


def test_rate_limit_skips_and_records_the_excess(key):
    runs = [send("test/fip-rated", n=n, key=key) for n in range(4)]
    statuses = [r.status for r in runs]
    assert statuses.count(RunStatus.SKIPPED) >= 2
    skipped = next(r for r in runs if r.status == RunStatus.SKIPPED)
    assert skipped.error["message"].startswith("rate limit: over 2 runs per 60 s")


def test_debounce_starts_one_run_with_the_last_event(key):
    with InProcess() as driver:
        ids = [stepflows.send("test/fip-debounced", data={"k": key, "n": n})[0] for n in range(20)]
        runs = list(Run.objects.filter(event_id__in=ids))
        assert len(runs) == 1 and runs[0].waiting_for == "debounce"
        driver.run_until_idle(wake_waits=True)
        run = Run.objects.get(pk=runs[0].pk)
    assert run.status == RunStatus.COMPLETED and run.output == 19
    assert run.event_id == ids[-1]


def test_an_idempotency_key_starts_one_run(key):
    first = stepflows.send("test/fip-idem", data={"order": key})
    second = stepflows.send("test/fip-idem", data={"order": key})
    assert len(runs_for(first)) == 1 and runs_for(second) == []


def test_singleton_skip_and_cancel(key):
    with InProcess() as driver:
        a = send("test/fip-single-skip", k=key)
        driver.run_until_idle()
        b = send("test/fip-single-skip", k=key)
        assert b.status == RunStatus.SKIPPED and str(a.pk) in b.error["message"]
        c = send("test/fip-single-cancel", k=key)
        driver.run_until_idle()
        d = send("test/fip-single-cancel", k=key)
        c.refresh_from_db()
        assert c.status == RunStatus.CANCELLED and "Singleton" in c.error["message"]
        assert d.status == RunStatus.QUEUED


def test_batch_by_size_and_by_timeout(key):
    with InProcess() as driver:
        ids = [stepflows.send("test/fip-batch", data={"k": key, "n": n})[0] for n in range(4)]
        driver.run_until_idle()
        [full] = Run.objects.filter(event_id=ids[0])
        assert full.status == RunStatus.COMPLETED and full.output == [0, 1, 2]
        [rest] = Run.objects.filter(event_id=ids[3])
        assert rest.status == RunStatus.QUEUED and rest.waiting_for == "batch"
        driver.run_until_idle(wake_waits=True)
        rest.refresh_from_db()
    assert rest.status == RunStatus.COMPLETED and rest.output == [3]


# -- cron ----------------------------------------------------------------------------------


def test_cron_sends_each_tick_once_and_catches_up_a_missed_one_once():
    now = database_now()
    FlowState.objects.filter(workflow_id="fip-cron").delete()
    assert sweep(now)["cron_ticks"] == 0  # first sight: the schedule starts now
    later = now + timedelta(minutes=5)
    assert sweep(later)["cron_ticks"] == 1
    assert sweep(later)["cron_ticks"] == 0  # a second beat process: nothing more
    much_later = later + timedelta(hours=2)
    assert sweep(much_later)["cron_ticks"] == 1  # 24 ticks missed: one run
    runs = Run.objects.filter(workflow_id="fip-cron")
    assert runs.count() == 2
    [tick] = Cron("*/5 * * * *").ticks_after(much_later - timedelta(minutes=5), much_later)
    assert Event.objects.filter(id=tick_event_id("fip-cron", tick)).exists()


# -- configuration -----------------------------------------------------------------------------


def test_invalid_flow_options_are_system_check_errors():
    @stepflows.workflow(
        id="fip-bad",
        trigger=[Cron("not a cron"), "test/fip-bad"],
        concurrency=[Concurrency(0, key=42)],
        throttle=Throttle(1, -1),
    )
    def bad(ctx, step):  # pragma: no cover - never run
        return None

    try:
        messages = [m for m in checks.run_checks() if m.id == "stepflows.E020"]
        text = "\n".join(m.msg for m in messages)
        assert "'fip-bad'" in text
        assert "concurrency[0].limit" in text and "concurrency[0].key" in text
        assert "throttle.period" in text and "cron trigger 'not a cron'" in text
    finally:
        registry.unregister("fip-bad")
        registry.problems.pop("fip-bad", None)


def test_cancel_frees_the_slot_for_the_next_in_line(key):
    with InProcess() as driver:
        first = send("test/fip-limited", customer=key, n=1, nap=False)
        second = send("test/fip-limited", customer=key, n=2)
        first_invocations(driver, 2)
        second.refresh_from_db()
        assert second.waiting_for == "concurrency"
        api.cancel_run(first)
        second.refresh_from_db()
        assert second.waiting_for == "" and Slot.objects.filter(run=second).exists()
        driver.run_until_idle()
        second.refresh_from_db()
    assert second.status == RunStatus.COMPLETED


def test_events_of_one_send_debounce_and_batch_together(key):
    ids = stepflows.send(
        [{"name": "test/fip-debounced", "data": {"k": key, "n": n}} for n in range(5)]
    )
    assert Run.objects.filter(event_id__in=ids, workflow_id="fip-debounced").count() == 1
    ids = stepflows.send([{"name": "test/fip-batch", "data": {"k": key, "n": n}} for n in range(3)])
    [run] = Run.objects.filter(workflow_id="fip-batch", event_id__in=ids)
    assert run.batch == ids and run.waiting_for == ""


def test_a_run_in_line_has_not_started(key):
    with InProcess() as driver:
        send("test/fip-limited", customer=key, n=1)
        second = send("test/fip-limited", customer=key, n=2)
        first_invocations(driver, 2)
        second.refresh_from_db()
        assert second.waiting_for == "concurrency" and second.started_at is None
        driver.run_until_idle()
