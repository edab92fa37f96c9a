"""Fan-out on real workers: many workflows per event, step.send_event, idempotency, replay."""

from __future__ import annotations

import pytest

import stepflows
from stepflows import api, sending
from stepflows.exceptions import EventValidationError, TriggerFilterError
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from stepflows.testing import runs_for, wait_for_run, wait_for_runs
from tests.testapp.marks import count

pytestmark = pytest.mark.django_db(transaction=True)


def finished(event_ids, timeout=180):
    return wait_for_runs([r.id for r in runs_for(event_ids)], timeout=timeout)


def by_workflow(runs):
    return {r.workflow_id: r for r in runs}


def children_of(run):
    return list(Run.objects.filter(parent=run))


def wait_for_children(run, n, timeout=240):
    """The parent may finish before its children do: wait for all n of them."""
    import time

    deadline = time.monotonic() + timeout
    while Run.objects.filter(parent=run).count() < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return wait_for_runs([r.id for r in children_of(run)], timeout=timeout)


# -- one event, many workflows ------------------------------------------------------------


def test_one_event_starts_every_matching_workflow(celery_worker, key):
    ids = stepflows.send("test/fan.order", data={"key": key, "amount": 500, "vip": True})
    runs = by_workflow(finished(ids))
    assert set(runs) == {"t-fan-all", "t-fan-big", "t-fan-vip"}
    assert all(r.status == RunStatus.COMPLETED for r in runs.values())
    assert runs["t-fan-vip"].output == "test/fan.order"
    assert all(r.event_id == ids[0] and r.parent_id is None for r in runs.values())
    assert [count(f"{key}-{s}") for s in ("all", "big", "vip")] == [1, 1, 1]


def test_trigger_filters_skip_events_that_do_not_match(celery_worker, key):
    [small] = stepflows.send("test/fan.order", data={"key": key, "amount": 5})
    [vip] = stepflows.send("test/fan.vip", data={"key": key})
    runs = finished([small, vip])
    assert sorted((r.event_id == small, r.workflow_id) for r in runs) == [
        (False, "t-fan-vip"),
        (True, "t-fan-all"),
    ]
    assert all(r.status == RunStatus.COMPLETED for r in runs)
    assert count(f"{key}-big") == 0


def test_an_event_no_workflow_wants_is_stored_without_runs(celery_worker):
    [event_id] = stepflows.send("test/fan.nobody-listens", data={"x": 1})
    assert Event.objects.filter(id=event_id).exists()
    assert not Run.objects.filter(event_id=event_id).exists()


def test_a_trigger_filter_that_raises_is_a_clear_error_and_stores_nothing(celery_worker):
    with pytest.raises(TriggerFilterError) as info:
        stepflows.send("test/fan.broken-filter", data={"other": 1})
    text = str(info.value)
    assert "t-fan-broken-filter" in text and "KeyError" in text and "missing" in text
    assert Event.objects.count() == 0 and Run.objects.count() == 0


# -- step.send_event ------------------------------------------------------------------------


def test_fifty_events_start_fifty_linked_children_and_a_replay_sends_none_again(celery_worker, key):
    [event_id] = stepflows.send("test/fan.parent", data={"key": key, "n": 50})
    [parent] = runs_for([event_id])
    parent = wait_for_run(parent.id, timeout=240)
    assert parent.status == RunStatus.COMPLETED, parent.error
    # The parallel group after send_event made the run replay the sending step.
    assert count(f"{key}-parent-invocations") >= 2
    assert parent.output["sent"] == 50 and parent.output["after"] == [1, 2]

    sent = list(Event.objects.filter(source_run=parent))
    assert len(sent) == 50
    assert sorted(e.id for e in sent) == sorted(parent.output["ids"])
    assert parent.output["ids"][0] == f"{parent.id}:fan-out:0"
    children = wait_for_children(parent, 50)
    assert len(children) == 50
    assert all(c.status == RunStatus.COMPLETED for c in children)
    assert all(c.workflow_id == "t-fan-child" and c.parent_id == parent.id for c in children)
    assert {c.event_id for c in children} == {e.id for e in sent}
    assert sorted(c.output for c in children) == [2 * i for i in range(50)]
    assert all(count(f"{key}-child-{i}") == 1 for i in range(50))
    assert Run.objects.count() == 51 and Event.objects.count() == 51
    fan_out = Step.objects.get(run=parent, step_id="fan-out")
    assert fan_out.status == StepStatus.COMPLETED and fan_out.attempt_count == 1
    assert set(parent.family()) == set(children)


def test_send_event_from_an_async_workflow_single_event_dict_or_list(celery_worker, key):
    [event_id] = stepflows.send("test/fan.async-parent", data={"key": key})
    parent = wait_for_run(runs_for([event_id])[0].id)
    assert parent.status == RunStatus.COMPLETED, parent.error
    assert count(f"{key}-async-invocations") >= 2
    ids = parent.output["ids"]
    assert ids == [
        f"{parent.id}:one-dict:0",
        f"{parent.id}:one-event:0",
        f"{parent.id}:dicts:0",
        f"{parent.id}:dicts:1",
    ]
    children = wait_for_children(parent, 4)
    assert sorted(c.output for c in children) == [0, 2, 4, 6]
    assert Event.objects.filter(source_run=parent).count() == 4
    assert all(count(f"{key}-child-{i}") == 1 for i in range(4))


def test_sending_again_from_the_same_step_starts_nothing_new(celery_worker, key):
    """What a step re-run after a crash does: same derived ids, no new events or runs."""
    [event_id] = stepflows.send("test/fan.parent", data={"key": key, "n": 3})
    parent = wait_for_run(runs_for([event_id])[0].id)
    wait_for_children(parent, 3)
    again = sending.send_from_run(
        [stepflows.Event(name="test/fan.child", data={"key": key, "i": i}) for i in range(3)],
        run_id=parent.id,
        step_id="fan-out",
    )
    assert again == parent.output["ids"]
    assert Event.objects.count() == 4 and Run.objects.count() == 4


def test_event_ids_given_by_a_step_are_idempotency_keys_across_runs(celery_worker, key):
    [first] = stepflows.send("test/fan.explicit-ids", data={"key": key})
    parent = wait_for_run(runs_for([first])[0].id)
    assert parent.output == [f"{key}-notify"]
    rerun = wait_for_run(api.rerun(parent).id)
    assert rerun.status == RunStatus.COMPLETED and rerun.output == [f"{key}-notify"]
    [child] = wait_for_children(parent, 1)
    assert Run.objects.filter(workflow_id="t-fan-child").count() == 1
    assert child.event_id == f"{key}-notify"
    # The event remembers its first sender; a rerun starts nothing new.
    assert Event.objects.get(id=f"{key}-notify").source_run_id == parent.id


def test_an_invalid_event_sent_by_a_step_fails_the_step_at_once(celery_worker):
    [event_id] = stepflows.send("test/fan.bad-event", data={})
    run = wait_for_run(runs_for([event_id])[0].id)
    assert run.status == RunStatus.FAILED
    step = Step.objects.get(run=run, step_id="bad")
    assert step.attempt_count == 1  # no retry can mend an invalid event
    assert step.error["type"] == "InvalidEventError" and "event name" in step.error["message"]
    assert Event.objects.count() == 1


def test_family_reaches_every_generation_with_one_query_per_generation(
    celery_worker, key, django_assert_max_num_queries
):
    [event_id] = stepflows.send("test/fan.tree", data={"key": key, "depth": 3})
    root = runs_for([event_id])[0]
    import time

    deadline = time.monotonic() + 240
    while Run.objects.count() < 15 and time.monotonic() < deadline:
        time.sleep(0.1)
    runs = wait_for_runs(Run.objects.values_list("id", flat=True), timeout=240)
    assert len(runs) == 15 and all(r.status == RunStatus.COMPLETED for r in runs)
    # 4 generation queries (3 levels + the empty one) and the final select.
    with django_assert_max_num_queries(5):
        family = list(Run.objects.family_of(root))
    assert len(family) == 14
    assert sorted(r.output for r in family) == [0] * 8 + [1] * 4 + [2] * 2
    [child] = [r for r in family if r.parent_id == root.id][:1]
    assert len(list(child.family())) == 6
    leaf = next(r for r in family if r.output == 0)
    assert list(leaf.family()) == []


# -- idempotency keys -----------------------------------------------------------------------


def test_duplicate_event_id_starts_no_second_run(celery_worker, key):
    first = stepflows.send("test/fan.order", data={"key": key, "amount": 1}, id=f"{key}-order")
    second = stepflows.send("test/fan.order", data={"key": key, "amount": 900}, id=f"{key}-order")
    assert first == second == [f"{key}-order"]
    runs = finished(first)
    assert [r.workflow_id for r in runs] == ["t-fan-all"]  # the first data decided
    assert Event.objects.get(id=f"{key}-order").data["amount"] == 1
    assert count(f"{key}-all") == 1 and count(f"{key}-big") == 0


def test_duplicate_ids_inside_one_batch_count_once(celery_worker, key):
    ids = stepflows.send(
        [
            stepflows.Event(name="test/fan.vip", data={"key": key}, id=f"{key}-same"),
            stepflows.Event(name="test/fan.vip", data={"key": key}, id=f"{key}-same"),
        ]
    )
    assert ids == [f"{key}-same", f"{key}-same"]
    assert len(finished(ids)) == 1
    assert Event.objects.count() == 1


# -- replay ---------------------------------------------------------------------------------


def test_replay_of_an_event_starts_new_runs_and_leaves_old_ones(celery_worker, key):
    ids = stepflows.send("test/fan.order", data={"key": key, "amount": 200})
    old = {r.id: r for r in finished(ids)}
    assert len(old) == 2
    new = api.replay_event(ids[0])
    assert {r.workflow_id for r in new} == {"t-fan-all", "t-fan-big"}
    new = wait_for_runs([r.id for r in new])
    assert all(r.status == RunStatus.COMPLETED and r.event_id == ids[0] for r in new)
    assert not set(old) & {r.id for r in new}
    for run in Run.objects.filter(id__in=old):
        before = old[run.id]
        assert (run.status, run.output, run.started_at, run.ended_at) == (
            before.status,
            before.output,
            before.started_at,
            before.ended_at,
        )
    assert Event.objects.count() == 1 and Run.objects.count() == 4
    assert count(f"{key}-all") == 2 and count(f"{key}-big") == 2
    with pytest.raises(Event.DoesNotExist) as info:
        api.replay_events([ids[0], f"{key}-unknown"])
    assert f"{key}-unknown" in str(info.value)
    assert Run.objects.count() == 4


def test_replay_of_a_sent_event_keeps_the_family_link(celery_worker, key):
    [event_id] = stepflows.send("test/fan.parent", data={"key": key, "n": 2})
    parent = wait_for_run(runs_for([event_id])[0].id)
    wait_for_children(parent, 2)
    sent = list(Event.objects.filter(source_run=parent).order_by("id"))
    replayed = wait_for_runs([r.id for r in api.replay_events(sent)])
    assert len(replayed) == 2
    assert all(r.parent_id == parent.id and r.status == RunStatus.COMPLETED for r in replayed)
    assert parent.family().count() == 4
    assert Event.objects.filter(source_run=parent).count() == 2


def test_replay_refuses_data_the_schema_now_rejects(celery_worker, key):
    [event_id] = stepflows.send("test/schema", data={"email": "a@b.c", "age": 3})
    finished([event_id])
    Event.objects.filter(id=event_id).update(data={"email": "a@b.c", "age": -1})
    with pytest.raises(EventValidationError) as info:
        api.replay_event(event_id)
    assert "t-schema" in str(info.value)
    assert Run.objects.count() == 2
