"""Worker logs, Django signals and ctx.logger lines kept with their step.

Most tests drive the engine in the test process (stepflows.testing), which runs
the same engine code a worker does, so ``caplog`` sees each record's ``extra``;
the last ones run real workers and read the worker's log file. Workflows:
tests/testapp/flows/logs_signals.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.urls import reverse

from stepflows import signals
from stepflows.context import StepLog
from stepflows.engine import runner
from stepflows.models import RunStatus, Step
from stepflows.testing import run_workflow
from tests.testapp.flows import logs_signals as flows


@pytest.fixture
def key() -> str:
    return uuid.uuid4().hex[:12]


def records(caplog: Any, logger: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == level]


# -- worker logs ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_failed_step_writes_warning_and_error_records_with_the_ids_in_extra(caplog, key):
    with caplog.at_level(logging.INFO, logger="stepflows"):
        run = run_workflow(flows.doomed, {"key": key})
    assert run.status == RunStatus.FAILED
    ids = {"run_id": str(run.id), "workflow_id": "logs-doomed"}

    [retrying] = records(caplog, "stepflows.steps", logging.WARNING)
    assert {k: getattr(retrying, k) for k in ids} == ids
    assert retrying.step_id == "doomed" and retrying.attempt == 0
    assert retrying.retry_in >= 0
    message = retrying.getMessage()
    assert "attempt 1 of 2 failed (ValueError: card declined)" in message
    assert "next retry in" in message and str(run.id) in message

    [failed] = records(caplog, "stepflows.steps", logging.ERROR)
    assert {k: getattr(failed, k) for k in ids} == ids
    assert failed.step_id == "doomed" and failed.attempt == 1
    assert "failed for good after attempt 2: ValueError: card declined" in failed.getMessage()

    started, *_ = records(caplog, "stepflows.runs", logging.INFO)
    assert started.getMessage().endswith("started") and started.run_id == str(run.id)
    [run_failed] = records(caplog, "stepflows.runs", logging.ERROR)
    assert run_failed.run_id == str(run.id) and run_failed.status == "failed"
    assert run_failed.duration is not None and "StepError" in run_failed.getMessage()
    # The step's failure is logged after it was stored: the retry before the failure.
    assert caplog.records.index(retrying) < caplog.records.index(failed)


@pytest.mark.django_db
def test_a_run_that_completes_logs_its_start_and_end_at_info(caplog, key):
    with caplog.at_level(logging.INFO, logger="stepflows"):
        run = run_workflow(flows.flaky, {"key": key})
    assert run.status == RunStatus.COMPLETED
    lines = [r for r in records(caplog, "stepflows.runs", logging.INFO) if r.run_id == str(run.id)]
    assert [r.getMessage().split(": ")[1].split(" ")[0] for r in lines] == ["started", "completed"]
    assert lines[1].status == "completed" and lines[1].duration >= 0
    assert len(records(caplog, "stepflows.steps", logging.WARNING)) == 1
    assert not records(caplog, "stepflows.steps", logging.ERROR)


@pytest.mark.django_db
def test_a_message_for_a_run_not_in_this_database_is_a_warning(caplog):
    missing = uuid.uuid4()
    with caplog.at_level(logging.INFO, logger="stepflows"):
        runner.execute_run(missing)
        runner.execute_step_task(missing, "s", 0, 0)
    warnings = records(caplog, "stepflows.runs", logging.WARNING)
    assert [w.run_id for w in warnings] == [str(missing)] * 2
    assert all("another database" in w.getMessage() for w in warnings)


# -- ctx.logger lines kept with the step ---------------------------------------------------


@pytest.mark.django_db
def test_ctx_logger_lines_are_stored_with_their_step_and_attempt(key):
    run = run_workflow(flows.flaky, {"key": key})
    step = Step.objects.get(run=run, step_id="flaky")
    lines = step.logs["lines"]
    assert [(line["level"], line["attempt"], line["message"]) for line in lines] == [
        ("INFO", 0, f"trying {key}, attempt 0"),
        ("INFO", 1, f"trying {key}, attempt 1"),
    ]
    assert step.logs["dropped"] == 0 and all(line["at"] for line in lines)


@pytest.mark.django_db
def test_ctx_logger_lines_are_bounded_per_step():
    run = run_workflow(flows.chatty, {"lines": StepLog.MAX_LINES + 10})
    logs = Step.objects.get(run=run).logs
    assert len(logs["lines"]) == StepLog.MAX_LINES and logs["dropped"] == 10
    assert logs["lines"][-1]["message"] == f"line {StepLog.MAX_LINES - 1} "

    run = run_workflow(flows.chatty, {"lines": 20, "size": 1000})
    logs = Step.objects.get(run=run).logs
    assert sum(len(line["message"]) for line in logs["lines"]) <= StepLog.MAX_BYTES
    assert len(logs["lines"]) + logs["dropped"] == 20 and logs["dropped"] > 0


@pytest.mark.django_db
def test_a_step_that_logs_nothing_stores_nothing():
    run = run_workflow(flows.chatty, {"lines": 0})
    assert Step.objects.get(run=run).logs is None


@pytest.mark.django_db
def test_the_run_page_shows_the_lines_of_each_step(admin_client):
    run = run_workflow(flows.chatty, {"lines": StepLog.MAX_LINES + 3})
    page = admin_client.get(reverse("admin:stepflows_run_change", args=[run.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'class="sf-step-logs"' in html
    assert "INFO [attempt 0] line 0 " in html and "line 49" in html and "line 50" not in html
    assert "3 more lines dropped" in html


@pytest.mark.django_db
def test_the_run_page_escapes_logged_lines(admin_client):
    run = run_workflow(flows.chatty, {"lines": 1})
    Step.objects.filter(run=run).update(
        logs={"lines": [{"at": "x", "level": "INFO", "attempt": 0, "message": "<b>hi</b>"}]}
    )
    html = admin_client.get(reverse("admin:stepflows_run_change", args=[run.pk])).content.decode()
    assert "&lt;b&gt;hi&lt;/b&gt;" in html and "<b>hi</b>" not in html


# -- signals ----------------------------------------------------------------------------


class Received:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def handler(self, name: str) -> Any:
        def receive(sender: Any, signal: Any, **kwargs: Any) -> None:
            self.calls.append((name, sender, kwargs))

        return receive

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


@pytest.fixture
def received() -> Iterator[Received]:
    got = Received()
    handlers = {
        name: got.handler(name)
        for name in ("run_started", "run_finished", "step_retrying", "step_failed")
    }
    for name, handler in handlers.items():
        getattr(signals, name).connect(handler)
    try:
        yield got
    finally:
        for name, handler in handlers.items():
            getattr(signals, name).disconnect(handler)


@pytest.mark.django_db
def test_signals_of_a_failing_run(received, key):
    run = run_workflow(flows.doomed, {"key": key})
    assert received.names() == ["run_started", "step_retrying", "step_failed", "run_finished"]
    assert all(sender is flows.doomed for _, sender, _ in received.calls)
    kwargs = [k for _, _, k in received.calls]
    assert all(k["run_id"] == str(run.id) and k["workflow_id"] == "logs-doomed" for k in kwargs)
    retrying, failed, finished = kwargs[1:]
    assert retrying["step_id"] == "doomed" and retrying["attempt"] == 0
    assert retrying["error"]["type"] == "ValueError" and retrying["retry_in"] >= 0
    assert failed["attempt"] == 1 and failed["error"]["message"] == "card declined"
    assert finished["status"] == "failed" and finished["error"]["type"] == "StepError"


@pytest.mark.django_db
def test_signals_of_a_run_that_completes(received, key):
    run_workflow(flows.flaky, {"key": key})
    assert received.names() == ["run_started", "step_retrying", "run_finished"]
    assert received.calls[-1][2]["status"] == "completed"


@pytest.mark.django_db
def test_a_receiver_can_listen_to_one_workflow(key):
    got: list[str] = []

    def receive(sender: Any, run_id: str, **kwargs: Any) -> None:
        got.append(run_id)

    signals.run_finished.connect(receive, sender=flows.flaky)
    try:
        doomed = run_workflow(flows.doomed, {"key": key})
        flaky = run_workflow(flows.flaky, {"key": key + "-f"})
    finally:
        signals.run_finished.disconnect(receive, sender=flows.flaky)
    assert got == [str(flaky.id)] and str(doomed.id) not in got


@pytest.mark.django_db(transaction=True)
def test_a_signal_is_sent_after_commit_and_never_for_a_rollback(received):
    with transaction.atomic():
        signals.send_after_commit(signals.run_started, None, run_id="a", workflow_id="w")
        assert received.calls == []  # not before the commit
    assert [k["run_id"] for _, _, k in received.calls] == ["a"]

    with pytest.raises(RuntimeError), transaction.atomic():
        signals.send_after_commit(signals.run_started, None, run_id="b", workflow_id="w")
        raise RuntimeError("rolled back")
    assert [k["run_id"] for _, _, k in received.calls] == ["a"]


@pytest.mark.django_db(transaction=True)
def test_nothing_is_scheduled_when_nobody_listens():
    assert not signals.step_failed.has_listeners()
    with transaction.atomic():
        signals.send_after_commit(signals.step_failed, None, run_id="a")
        assert connection.run_on_commit == []


@pytest.mark.django_db
def test_a_receiver_that_raises_breaks_nothing(caplog, key):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver bug")

    signals.step_retrying.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="stepflows.signals"):
            run = run_workflow(flows.flaky, {"key": key})
    finally:
        signals.step_retrying.disconnect(broken)
    assert run.status == RunStatus.COMPLETED
    [logged] = records(caplog, "stepflows.signals", logging.ERROR)
    assert "receiver bug" in logged.getMessage() and logged.run_id == str(run.id)
    assert logged.step_id == "flaky"


# -- real workers -------------------------------------------------------------------------


def worker_log_lines(run_id: Any) -> list[str]:
    from tests.settings import SESSION_DIR

    # The worker's own log file and its stderr (where the project's console handler writes).
    text = "".join(path.read_text(errors="replace") for path in SESSION_DIR.glob("worker.log*"))
    return [line for line in text.splitlines() if str(run_id) in line]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_worker_logs_the_retry_and_the_failure_of_a_step(run_event, key):
    run = run_event("test/logs-doomed", {"key": key})
    assert run.status == RunStatus.FAILED
    lines = worker_log_lines(run.id)
    assert any("step 'doomed': attempt 1 of 2 failed (ValueError" in line for line in lines)
    assert any("step 'doomed': failed for good after attempt 2" in line for line in lines)
    assert any(line.endswith(": started") for line in lines)
    assert any(": failed after " in line for line in lines)
    step = Step.objects.get(run=run)
    assert [line["attempt"] for line in step.logs["lines"]] == [0, 1]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_parallel_steps_on_workers_keep_their_lines(run_event):
    run = run_event("test/logs-parallel", {})
    assert run.status == RunStatus.COMPLETED, run.error
    parts = Step.objects.filter(run=run, group__isnull=False).order_by("position")
    assert [s.logs["lines"][0]["message"] for s in parts] == ["part 0", "part 1", "part 2"]


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_spans_made_by_workers_link_a_parallel_group_to_its_invocation(settings, tmp_path):
    """The trace context crosses real task messages: spans exported by the worker processes."""
    from django.conf import settings as django_settings
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    import stepflows
    from stepflows.testing import CeleryWorker, runs_for, wait_for_run
    from tests.conftest import worker_env
    from tests.settings import SESSION_DIR
    from tests.testapp import spans
    from tests.unit.test_tracing import _reset_global_provider

    queue = f"{django_settings.CELERY_TASK_DEFAULT_QUEUE}-spans"
    span_file = str(tmp_path / "spans.jsonl")
    settings.STEPFLOWS = {**settings.STEPFLOWS, "QUEUE": queue}
    _reset_global_provider()
    trace.set_tracer_provider(TracerProvider())
    try:
        with CeleryWorker(
            "project",
            env={**worker_env(), "STEPFLOWS_TEST_QUEUE": queue, "STEPFLOWS_TEST_SPANS": span_file},
            concurrency=2,
            queues=queue,
            logfile=SESSION_DIR / "spans-worker.log",
            name="spans",
            cwd=django_settings.BASE_DIR,
        ):
            with trace.get_tracer("test").start_as_current_span("web request") as root:
                [event_id] = stepflows.send("test/logs-parallel", data={})
            [run] = runs_for([event_id])
            run = wait_for_run(run.id)
    finally:
        _reset_global_provider()
    assert run.status == RunStatus.COMPLETED, run.error

    found = spans.read(span_file)
    invocations = sorted(
        (s for s in found if s["name"] == "stepflows.run logs-parallel"), key=lambda s: s["start"]
    )
    parts = [s for s in found if s["name"].startswith("stepflows.step part")]
    [total] = [s for s in found if s["name"] == "stepflows.step total"]
    assert len(invocations) == 2 and len(parts) == 3
    first, second = invocations
    assert {s["trace_id"] for s in found} == {format(root.get_span_context().trace_id, "032x")}
    assert first["parent_id"] == format(root.get_span_context().span_id, "016x")
    assert {s["parent_id"] for s in parts} == {first["span_id"]}
    assert second["parent_id"] == first["span_id"]
    assert total["parent_id"] == second["span_id"]
    assert {s["attributes"]["stepflows.run_id"] for s in found} == {str(run.id)}
