"""The store, statement by statement (no workers needed).

The step-task memo cache, the inline step's fenced INSERT, the parallel
step's own lease, the group's join counter and the state limit it keeps.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from stepflows import dispatch
from stepflows.engine.memo import clear_cache, memo_for_step_task
from stepflows.models import Event, Run, RunStatus, Step, StepStatus
from stepflows.store import runs as run_store
from stepflows.store import statements
from stepflows.store import steps as step_store
from stepflows.store.fence import LeaseLost
from stepflows.store.records import PlannedStep, StepRecord

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "test-token"


class Capture:
    """A publisher that keeps the messages instead of sending them."""

    def __init__(self) -> None:
        self.messages: list[dispatch.Message] = []

    def publish(self, messages: list[dispatch.Message]) -> None:
        self.messages += messages


@pytest.fixture
def sent():
    with dispatch.use(Capture()) as capture:
        yield capture.messages


def make_run(status: str = RunStatus.RUNNING, token: str = TOKEN) -> Run:
    event = Event.objects.create(id=uuid.uuid4().hex, name="test/store", data={})
    return Run.objects.create(
        workflow_id="test-store",
        event=event,
        status=status,
        lease_owner=token if status == RunStatus.RUNNING else "",
        lease_expires_at=timezone.now() + timedelta(seconds=60),
    )


def done(step_id: str, position: int, group: int | None = None, output: object = 1) -> StepRecord:
    """A step's record after its first attempt completed."""
    return StepRecord(
        step_id,
        position,
        group,
        StepStatus.COMPLETED,
        output=output,
        output_bytes=1,
        attempt_count=1,
    )


def queries(fn):
    with CaptureQueriesContext(connection) as ctx:
        value = fn()
    return value, len(ctx.captured_queries)


def suspended_with_group(sent, names=("a", "b")) -> Run:
    run = make_run()
    planned = [PlannedStep(n, i, 0, is_new=True) for i, n in enumerate(names)]
    assert run_store.suspend_run(run.id, TOKEN, planned=planned, countdown=None)
    return run


def test_step_task_memo_is_cached_per_run_group_and_resumes():
    clear_cache()
    run = make_run()
    step_store.record_inline(run.id, TOKEN, done("first", 0, output="kept"), exists=False)
    a, b = (StepRecord(sid, pos, 1, StepStatus.SCHEDULED) for pos, sid in ((1, "a"), (2, "b")))
    memo, n = queries(lambda: memo_for_step_task(run.id, 1, 0, a))
    assert n == 1 and memo.get(0).output == "kept" and memo.get(1).step_id == "a"
    memo, n = queries(lambda: memo_for_step_task(run.id, 1, 0, b))
    assert n == 0, "the steps before the group come from the cache"
    assert memo.get(0).output == "kept" and memo.get(2).step_id == "b" and memo.count == 2
    # After api.retry_run (resumes + 1) the rows are read again.
    _, n = queries(lambda: memo_for_step_task(run.id, 1, 1, b))
    assert n == 1


def test_step_rows_have_no_index_on_run_alone():
    """Every step writes each of its indexes; the two that start with run_id serve run_id."""
    with connection.cursor() as cursor:
        found = connection.introspection.get_constraints(cursor, Step._meta.db_table)
    run_only = [
        name
        for name, c in found.items()
        if c["columns"] == ["run_id"] and (c["index"] or c["unique"]) and not c["foreign_key"]
    ]
    assert run_only == [], run_only
    leading = [c["columns"] for c in found.values() if c["columns"][:1] == ["run_id"]]
    assert ["run_id", "step_id"] in leading and ["run_id", "position"] in leading, found


def test_new_inline_step_is_one_statement_and_fenced_by_the_lease():
    run = make_run()
    _, n = queries(lambda: step_store.record_inline(run.id, TOKEN, done("one", 0), exists=False))
    assert n == 1 and Step.objects.get(run=run, step_id="one").output == 1
    # Another worker's token: nothing written, and it learns so.
    with pytest.raises(LeaseLost) as lost:
        step_store.record_inline(run.id, "other-token", done("two", 1), exists=False)
    assert not lost.value.cancelled
    # A retried step (UPDATE) is fenced too.
    Step.objects.filter(run=run, step_id="one").update(status=StepStatus.SCHEDULED)
    with pytest.raises(LeaseLost):
        step_store.record_inline(run.id, "other-token", done("one", 0, output=9), exists=True)
    assert Step.objects.get(run=run, step_id="one").output == 1
    Run.objects.filter(id=run.id).update(status=RunStatus.CANCELLED, lease_owner="")
    with pytest.raises(LeaseLost) as lost:
        step_store.record_inline(run.id, TOKEN, done("two", 1), exists=False)
    assert lost.value.cancelled
    assert not Step.objects.filter(run=run, step_id="two").exists()


def test_a_step_recorded_twice_keeps_the_first_record():
    """A redelivered invocation's INSERT hits the unique (run, step id): Django's
    IntegrityError, raised through stepflows' own cursor (prepared on PostgreSQL),
    is caught and the stored step is returned, not overwritten."""
    run = make_run()
    step_store.record_inline(run.id, TOKEN, done("one", 0, output="first"), exists=False)
    again = step_store.record_inline(run.id, TOKEN, done("one", 0, output="second"), exists=False)
    assert again.output == "first"
    assert list(Step.objects.filter(run=run).values_list("output", flat=True)) == ["first"]


def test_a_step_task_reads_its_step_run_and_event_as_the_orm_does():
    run = make_run()
    output = {"a": [1, "x"], "when": "2026-01-01"}
    step_store.record_inline(run.id, TOKEN, done("one", 0, output=output), exists=False)
    Run.objects.filter(id=run.id).update(resumes=3, progress_at=timezone.now())
    got, n = queries(lambda: step_store.step_for_task(run.id, "one"))
    assert n == 1 and got is not None
    want = Step.objects.select_related("run__event").get(run=run, step_id="one")

    def fields(obj):
        return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}

    with CaptureQueriesContext(connection) as ctx:
        pairs = [(got, want), (got.run, want.run), (got.run.event, want.run.event)]
    assert len(ctx.captured_queries) == 0, "the run and its event come with the step"
    for mine, orm in pairs:
        assert fields(mine) == fields(orm)
        assert not mine._state.adding and mine._state.db == "default"
    assert got.output == output and got.run.resumes == 3 and got.run.progress_at.tzinfo
    assert step_store.step_for_task(run.id, "missing") is None
    assert step_store.step_for_task(uuid.uuid4(), "one") is None


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


def test_step_writes_are_prepared_on_postgresql(sent):
    """With OPTIONS["prepare_threshold"] (POSTGRESQL_OPTIONS), each write is planned once."""
    if connection.vendor != "postgresql":
        # Nothing to prepare: the ordinary cursor, bound on the client.
        assert not statements.prepares(connections["default"])
        return
    assert statements.prepares(connections["default"])
    inline = make_run()
    for position, step_id in enumerate(("one", "two")):
        step_store.record_inline(inline.id, TOKEN, done(step_id, position), exists=False)
    run = suspended_with_group(sent)
    for step_id, position in {"a": 0, "b": 1}.items():
        step_store.record_parallel(run.id, TOKEN, done(step_id, position, group=0), max_state=10**6)
    found = prepared_statements()
    assert any(s.startswith('INSERT INTO "stepflows_step"') for s in found), found
    assert any(s.startswith('UPDATE "stepflows_step" SET') for s in found), found
    assert any("join_pending = join_pending - 1" in s for s in found), found
    assert Step.objects.filter(status=StepStatus.COMPLETED).count() == 4
    assert Run.objects.get(id=run.id).join_pending == 0


def test_step_writes_are_not_prepared_when_django_turns_them_off():
    """Django's default (no prepare_threshold) keeps connection poolers working: follow it."""
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    db = connections["default"]
    options = db.settings_dict["OPTIONS"]
    saved = options.pop("prepare_threshold")
    db.close()
    try:
        assert not statements.prepares(db)
        run = make_run()
        for position, step_id in enumerate(("one", "two", "three")):
            step_store.record_inline(run.id, TOKEN, done(step_id, position), exists=False)
        assert Step.objects.filter(run=run).count() == 3
        assert prepared_statements() == []
    finally:
        options["prepare_threshold"] = saved
        db.close()


def test_group_join_counts_each_step_once_and_the_last_resumes(sent):
    run = suspended_with_group(sent)
    assert Run.objects.values_list("join_group", "join_pending").get(id=run.id) == (0, 2)
    assert [m.task for m in sent] == [dispatch.RUN_STEP, dispatch.RUN_STEP]
    sent.clear()
    step_store.record_parallel(run.id, "t1", done("a", 0, group=0), max_state=100)
    # A redelivered task finds the step finished: no second count, the first output stays.
    step_store.record_parallel(run.id, "t2", done("a", 0, group=0, output=2), max_state=100)
    assert Run.objects.get(id=run.id).join_pending == 1 and sent == []
    assert Step.objects.get(run=run, step_id="a").output == 1
    step_store.record_parallel(run.id, "t3", done("b", 1, group=0), max_state=100)
    run.refresh_from_db()
    assert run.join_pending == 0
    # The callback names the wake-up the run suspended with.
    assert sent == [dispatch.resume_run(run.id, wake=run.wake)]


def test_suspend_counts_only_the_steps_still_unfinished(sent):
    """A step that finished after the invocation loaded its memo is not waited for again."""
    run = suspended_with_group(sent)
    # Recovery resumed the run; the new invocation saw a and b unfinished, then a finished.
    Run.objects.filter(id=run.id).update(status=RunStatus.RUNNING, lease_owner=TOKEN)
    step_store.record_parallel(run.id, "t1", done("a", 0, group=0), max_state=100)
    sent.clear()
    planned = [PlannedStep("a", 0, 0, is_new=False), PlannedStep("b", 1, 0, is_new=False)]
    assert run_store.suspend_run(run.id, TOKEN, planned=planned, countdown=None)
    assert Run.objects.get(id=run.id).join_pending == 1
    step_store.record_parallel(run.id, "t2", done("b", 1, group=0), max_state=100)
    run.refresh_from_db()
    assert run.join_pending == 0
    assert sent[-1] == dispatch.resume_run(run.id, wake=run.wake)


def test_suspend_with_every_step_finished_resumes_at_once(sent):
    run = suspended_with_group(sent)
    Run.objects.filter(id=run.id).update(status=RunStatus.RUNNING, lease_owner=TOKEN)
    for i, name in enumerate("ab"):
        step_store.record_parallel(run.id, "t", done(name, i, group=0), max_state=100)
    sent.clear()
    planned = [PlannedStep("a", 0, 0, is_new=False), PlannedStep("b", 1, 0, is_new=False)]
    assert run_store.suspend_run(run.id, TOKEN, planned=planned, countdown=None)
    run.refresh_from_db()
    assert run.join_pending == 0 and sent == [dispatch.resume_run(run.id, wake=run.wake)]


def test_suspend_without_the_lease_writes_and_sends_nothing(sent):
    run = make_run(token="someone-else")
    planned = [PlannedStep("a", 0, 0, is_new=True)]
    assert not run_store.suspend_run(run.id, TOKEN, planned=planned, countdown=None)
    assert not Step.objects.filter(run=run).exists() and sent == []


def test_parallel_step_is_fenced_by_its_own_lease(sent):
    run = suspended_with_group(sent)
    # Task t1 has been running "a" for a while: its heartbeat marked it.
    assert step_store.beat_steps([(run.id, "a", "t1", 0)]) == []
    assert Step.objects.get(run=run, step_id="a").status == StepStatus.RUNNING
    # A duplicate task may not take it while t1's heartbeat is fresh...
    assert not step_store.take_over_step(run.id, "a", "t2")
    with pytest.raises(LeaseLost):
        step_store.record_parallel(run.id, "t2", done("a", 0, group=0), max_state=100)
    # ...but may once it is stale (t1 paused or dead); then t1 can write nothing.
    Step.objects.filter(run=run, step_id="a").update(
        heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert step_store.take_over_step(run.id, "a", "t2")
    assert step_store.beat_steps([(run.id, "a", "t1", 0)]) == [(run.id, "a", "t1", 0)]
    with pytest.raises(LeaseLost):
        step_store.record_parallel(run.id, "t1", done("a", 0, group=0, output=7), max_state=100)
    step_store.record_parallel(run.id, "t2", done("a", 0, group=0, output=8), max_state=100)
    assert Step.objects.get(run=run, step_id="a").output == 8
    # Once its attempt is recorded, a late heartbeat cannot mark it running again.
    assert step_store.beat_steps([(run.id, "a", "t2", 0)]) == [(run.id, "a", "t2", 0)]
    assert Step.objects.get(run=run, step_id="a").status == StepStatus.COMPLETED


def test_a_late_heartbeat_does_not_mark_a_step_waiting_for_its_retry(sent):
    run = suspended_with_group(sent)
    retry = StepRecord("a", 0, 0, StepStatus.SCHEDULED, attempt_count=1, error={"type": "E"})
    step_store.record_parallel(run.id, "t1", retry, max_state=100)
    assert step_store.beat_steps([(run.id, "a", "t1", 0)]) == [(run.id, "a", "t1", 0)]
    step = Step.objects.get(run=run, step_id="a")
    assert step.status == StepStatus.SCHEDULED and step.lease_owner == ""


def test_group_outputs_cannot_pass_the_state_limit(sent):
    run = suspended_with_group(sent, names=("a", "b", "c"))
    big = StepRecord("a", 0, 0, StepStatus.COMPLETED, output="x", output_bytes=40, attempt_count=1)
    step_store.record_parallel(run.id, "t", big, max_state=100)
    big.step_id, big.position = "b", 1
    step_store.record_parallel(run.id, "t", big, max_state=100)
    big.step_id, big.position = "c", 2
    with pytest.raises(step_store.StateLimitExceeded):
        step_store.record_parallel(run.id, "t", big, max_state=100)
    assert Step.objects.get(run=run, step_id="c").status == StepStatus.SCHEDULED
    run.refresh_from_db()
    assert run.state_bytes == 80 and run.join_pending == 1


def test_recoveries_count_again_after_progress(settings, sent):
    long_ago = timezone.now() - timedelta(hours=1)
    run = make_run()
    Run.objects.filter(id=run.id).update(
        lease_expires_at=long_ago, recoveries=3, recovered_at=long_ago
    )
    args = {"status": RunStatus.RUNNING, "wake": 0, "limit": 3, "error": {"type": "X"}}
    # No step ended since the last recovery: the fourth one is over the limit.
    outcome, count = run_store.recover_run(run.id, recoveries=3, **args)
    assert (outcome, count) == ("failed", 4)
    run = make_run()
    Run.objects.filter(id=run.id).update(
        lease_expires_at=long_ago, recoveries=3, recovered_at=long_ago
    )
    Step.objects.create(
        run=run, step_id="s", position=0, status=StepStatus.COMPLETED, ended_at=timezone.now()
    )
    outcome, count = run_store.recover_run(run.id, recoveries=3, **args)
    assert (outcome, count) == ("resumed", 1)
    assert Run.objects.get(id=run.id).recoveries == 1
