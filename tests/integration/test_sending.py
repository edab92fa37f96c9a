"""Storing sent events and their runs, and publishing the runs after commit (no workers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import transaction

import stepflows
from stepflows import api, dispatch
from stepflows.models import Event, Run
from stepflows.sending import send_from_run

pytestmark = pytest.mark.django_db(transaction=True)


class Recorder:
    """A publisher that keeps the messages instead of sending them."""

    def __init__(self) -> None:
        self.messages: list[dispatch.Message] = []

    def publish(self, messages: list[dispatch.Message]) -> None:
        self.messages.extend(messages)

    def run_ids(self) -> list[str]:
        assert all(m.task == dispatch.EXECUTE_RUN for m in self.messages)
        return [m.args[0] for m in self.messages]


@pytest.fixture
def published() -> Iterator[Recorder]:
    with dispatch.use(Recorder()) as recorder:
        yield recorder


def test_send_stores_the_event_and_its_run_and_publishes_the_run_on_commit(published):
    with transaction.atomic():
        [event_id] = stepflows.send("test/three-steps", data={"key": "k"}, id="order-1")
        assert published.messages == []  # not before commit
    run = Run.objects.get(event_id=event_id)
    assert (event_id, run.workflow_id) == ("order-1", "t-three-steps")
    assert published.run_ids() == [str(run.id)]


def test_an_id_already_received_starts_nothing_new(published):
    first = stepflows.send([{"name": "test/three-steps", "id": "dup"}] * 2)
    again = stepflows.send("test/three-steps", id="dup")
    assert first == ["dup", "dup"] and again == ["dup"]
    assert Event.objects.count() == 1 and Run.objects.count() == 1
    assert len(published.messages) == 1


def test_events_sent_from_a_run_record_it_and_get_derived_ids(published):
    [parent_event] = stepflows.send("test/three-steps", data={"key": "p"})
    parent = Run.objects.get(event_id=parent_event)
    ids = send_from_run(
        [{"name": "test/three-steps"}, {"name": "test/three-steps", "id": "given"}],
        run_id=parent.id,
        step_id="fan-out",
    )
    assert ids == [f"{parent.id}:fan-out:0", "given"]
    children = Run.objects.filter(parent=parent)
    assert children.count() == 2
    assert set(Event.objects.filter(source_run=parent).values_list("id", flat=True)) == set(ids)
    assert len(published.messages) == 3


def test_replay_and_rerun_publish_their_new_runs(published):
    [event_id] = stepflows.send("test/three-steps", data={"key": "r"})
    [first] = Run.objects.filter(event_id=event_id)
    replayed = api.replay_events([event_id])
    new = api.rerun(first)
    assert Run.objects.filter(event_id=event_id).count() == 3
    assert published.run_ids() == [str(first.id), str(replayed[0].id), str(new.id)]
