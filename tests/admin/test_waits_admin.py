"""Durable waits in the admin and in `manage.py stepflows runs`.

Runs and steps are written as rows (the fields of migration 0003), so these
tests check what the pages show, not the engine that fills the fields.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from stepflows import timeline
from stepflows.admin import compare
from stepflows.models import Event, Run, Step

from .conftest import XSS, build_run

pytestmark = pytest.mark.django_db

LIST = "admin:stepflows_run_changelist"
SVG = "{http://www.w3.org/2000/svg}"
FAILURE_EVENT = "stepflows/run.failed"


def run_url(run: Any) -> str:
    return reverse("admin:stepflows_run_change", args=[run.pk])


def get(client: Any, url: str, **params: Any) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response
    return response.content.decode()


def cell(html: str, element_id: str) -> str:
    found = re.search(rf'<td id="{element_id}">(.*?)</td>', html, re.S)
    assert found, f"no #{element_id} on the page"
    return found.group(1)


def step_row(html: str, step_id: str) -> str:
    found = re.search(rf'<tr class="sf-step" data-step="{step_id}">(.*?)</tr>', html, re.S)
    assert found, f"no row for step {step_id}"
    return found.group(1)


def local(value: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return timezone.localtime(value).strftime(fmt)


def short(value: datetime) -> str:
    """A wake-up time in a list: the time of day, with the date when it is not today."""
    today = timezone.localtime(value).date() == timezone.localdate()
    return local(value, "%H:%M:%S") if today else local(value)


def add_step(run: Run, step_id: str, kind: str = "run", **fields: Any) -> Step:
    fields.setdefault("position", run.steps.count())
    fields.setdefault("status", "scheduled")
    return Step.objects.create(run=run, step_id=step_id, kind=kind, **fields)


def waiting_run(kind: str, until: datetime | None = None, **fields: Any) -> Run:
    """A run waiting in a durable wait, after one finished code step ``before``."""
    run = build_run(status="waiting", steps=[{"step_id": "before", "start": 0, "end": 1}], **fields)
    Run.objects.filter(pk=run.pk).update(waiting_for=kind, wait_until=until)
    run.refresh_from_db()
    return run


def sleeping(until: datetime, **fields: Any) -> Run:
    run = waiting_run("sleep", until, **fields)
    add_step(run, "nap", "sleep", wake_at=until, wait={"until": until.isoformat()})
    return run


def waiting_for_event(
    name: str = "shop/paid", value: Any = "A-1", timeout: datetime | None = None, **fields: Any
) -> Run:
    run = waiting_run("event", timeout, **fields)
    since = run.started_at + timedelta(seconds=1)
    add_step(
        run,
        "paid",
        "event",
        wake_at=timeout,
        wait={
            "event": name,
            "match": "data.order_id",
            "value": value,
            "since": since.isoformat(),
            "timeout": 600 if timeout else None,
            "filter": False,
        },
    )
    return run


def invoking(child_workflow: str = "wf-child", caller: str = "charge") -> tuple[Run, Run]:
    parent = waiting_run("invoke", workflow="wf-parent")
    child = build_run(workflow=child_workflow, status="running", event_name="wf-child/invoked")
    Run.objects.filter(pk=child.pk).update(parent=parent, caller_step=caller)
    child.refresh_from_db()
    add_step(parent, caller, "invoke", wait={"workflow": child_workflow, "child": str(child.pk)})
    return parent, child


# -- run page ------------------------------------------------------------------------------


def test_run_page_says_until_when_a_run_sleeps(admin_client_all):
    until = timezone.now() + timedelta(hours=2)
    run = sleeping(until)
    html = get(admin_client_all, run_url(run))
    waiting = cell(html, "sf-run-waiting")
    assert "sleeping until" in waiting
    assert local(until) in waiting and f'datetime="{until.isoformat()}"' in waiting
    assert "(step <code>nap</code>)" in waiting
    row = step_row(html, "nap")
    assert 'class="sf-step-kind sf-wait-sleep">sleep</td>' in row
    assert local(until) in row  # until, and when it wakes up
    assert 'class="sf-step-kind">code</td>' in step_row(html, "before")


def test_run_page_shows_the_event_match_and_timeout_of_an_event_wait(admin_client_all):
    timeout = timezone.now() + timedelta(minutes=10)
    run = waiting_for_event("shop/paid", "A-1", timeout)
    html = get(admin_client_all, run_url(run))
    waiting = cell(html, "sf-run-waiting")
    assert "event <code>shop/paid</code> with <code>data.order_id</code> = " in waiting
    assert "<code>&quot;A-1&quot;</code>" in waiting
    assert f'times out at <time datetime="{timeout.isoformat()}">{local(timeout)}' in waiting
    assert 'class="sf-step-kind sf-wait-event">wait for event</td>' in step_row(html, "paid")


def test_an_event_wait_without_timeout_says_nothing_about_one(admin_client_all):
    run = waiting_for_event("shop/paid", 42)
    waiting = cell(get(admin_client_all, run_url(run)), "sf-run-waiting")
    assert "= <code>42</code>" in waiting and "times out" not in waiting


def test_invoked_run_and_its_caller_link_to_each_other(admin_client_all):
    parent, child = invoking()
    html = get(admin_client_all, run_url(parent))
    waiting = cell(html, "sf-run-waiting")
    assert f'<a href="{run_url(child)}">wf-child {str(child.pk)[:8]}</a>' in waiting
    assert "of workflow <code>wf-child</code>" in waiting
    assert 'class="sf-status sf-running"' in waiting
    assert run_url(child) in step_row(html, "charge")
    assert 'class="sf-step-kind sf-wait-invoke">invoke</td>' in step_row(html, "charge")

    origin = cell(get(admin_client_all, run_url(child)), "sf-run-origin")
    assert "invoked by step <code>charge</code> of run" in origin
    assert f'<a href="{run_url(parent)}">wf-parent {str(parent.pk)[:8]}</a>' in origin


def test_failed_run_and_its_on_failure_handler_link_to_each_other(admin_client_all):
    failed = build_run(workflow="wf-doomed", status="failed", error={"type": "E", "message": "m"})
    handler = build_run(
        workflow="wf-doomed.on_failure",
        event_name=FAILURE_EVENT,
        data={"run_id": str(failed.pk), "workflow_id": "wf-doomed"},
        source_run=failed,
    )
    handlers = cell(get(admin_client_all, run_url(failed)), "sf-run-handlers")
    assert f'<a href="{run_url(handler)}">wf-doomed.on_failure {str(handler.pk)[:8]}</a>' in (
        handlers
    )
    origin = cell(get(admin_client_all, run_url(handler)), "sf-run-origin")
    assert "handles the failure of run" in origin and run_url(failed) in origin


def test_a_run_started_by_a_sent_event_keeps_its_plain_parent_link(admin_client_all):
    parent = build_run(workflow="fan-parent")
    child = build_run(
        workflow="fan-child", source_run=parent, steps=[{"step_id": "s", "start": 0, "end": 1}]
    )
    html = get(admin_client_all, run_url(child))
    assert 'class="sf-step-kind">code</td>' in step_row(html, "s")
    assert "<th>started by run</th>" in html and 'id="sf-run-origin"' not in html
    assert 'id="sf-run-waiting"' not in html and 'id="sf-run-handlers"' not in html


def test_steps_table_says_how_each_finished_wait_ended(admin_client_all):
    run = build_run(status="completed", steps=[{"step_id": "code", "start": 0, "end": 1}])
    base = run.started_at
    received = Event.objects.create(id="evt-paid-1", name="shop/paid", data={"order_id": "A-1"})
    wait = {"event": "shop/paid", "match": "data.order_id", "value": "A-1"}
    add_step(run, "slept", "sleep", status="completed", wake_at=base, ended_at=base)
    add_step(
        run,
        "got-it",
        "event",
        status="completed",
        wait=wait,
        output={"id": received.pk, "name": "shop/paid", "data": {}, "ts": base.isoformat()},
    )
    add_step(run, "gave-up", "event", status="completed", wait=wait, output=None)
    html = get(admin_client_all, run_url(run))
    assert 'id="sf-run-waiting"' not in html  # a finished run waits for nothing
    event_url = reverse("admin:stepflows_event_change", args=[quote(received.pk)])
    assert f'received <a href="{event_url}">shop/paid</a>' in step_row(html, "got-it")
    assert "timed out" in step_row(html, "gave-up")
    assert ">sleep</td>" in step_row(html, "slept")


def test_run_page_query_count_does_not_grow_with_invoked_runs(admin_client_all):
    counts = []
    for n in (1, 8):
        parent = waiting_run("invoke")
        for i in range(n):
            child = build_run(workflow="wf-child", status="completed")
            Run.objects.filter(pk=child.pk).update(parent=parent, caller_step=f"call-{i}")
            add_step(
                parent, f"call-{i}", "invoke", status="completed", wait={"child": str(child.pk)}
            )
        with CaptureQueriesContext(connection) as ctx:
            html = get(admin_client_all, run_url(parent))
        assert html.count('class="sf-step-kind sf-wait-invoke"') == n
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


def test_wait_details_are_escaped(admin_client_all):
    timeout = timezone.now() + timedelta(minutes=5)
    run = waiting_for_event(f"shop/{XSS}", XSS, timeout)
    parent, child = invoking(child_workflow=f"wf{XSS}", caller=f"call{XSS}")
    for url in (run_url(run), run_url(parent), run_url(child), reverse(LIST)):
        html = get(admin_client_all, url)
        assert "<script>alert" not in html, url
        assert "&lt;script&gt;" in html, url


# -- timeline ------------------------------------------------------------------------------


def bars(html_or_svg: str, cls: str) -> list[ET.Element]:
    svg = re.search(r'<svg xmlns="http://www.w3.org/2000/svg".*?</svg>', html_or_svg, re.S)
    assert svg, "no timeline"
    root = ET.fromstring(svg.group(0))
    return [r for r in root.iter(f"{SVG}rect") if cls in r.get("class", "").split()]


def test_waits_have_bars_of_their_own_and_the_legend_names_them(admin_client_all):
    run = sleeping(timezone.now() + timedelta(days=30))
    html = get(admin_client_all, run_url(run))
    [nap] = bars(html, "wait-bar")
    assert nap.get("class") == "wait-bar wait-sleep pending"
    assert nap.get("data-step") == "nap" and nap.get("data-pending") == "true"
    assert nap.get("fill") == timeline.WAIT_FILL["sleep"]
    # The code step keeps its bar: one per attempt.
    assert [b.get("data-step") for b in bars(html, "attempt-bar")] == ["before"]
    for name in ("sleep", "waiting for event", "invoked run"):
        assert f"</i>{name}</span>" in html
    for kind in timeline.WAIT_KINDS:
        assert timeline.WAIT_FILL[kind] in html.split('class="sf-legend"')[1]


def test_compare_page_draws_waits_too(admin_client_all):
    run = waiting_for_event(timeout=timezone.now() + timedelta(minutes=5))
    parent, _child = invoking()
    html = get(admin_client_all, compare.url(ids=[run.pk, parent.pk]))
    assert [b.get("class") for b in bars(html, "wait-bar")] == [
        "wait-bar wait-event pending",
        "wait-bar wait-invoke pending",
    ]


BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def fake_step(step_id: str, position: int, kind: str = "run", **fields: Any) -> Any:
    values: dict[str, Any] = {
        "step_id": step_id,
        "position": position,
        "group": None,
        "status": "completed",
        "started_at": None,
        "ended_at": None,
        "attempts": [],
        "kind": kind,
        "wake_at": None,
        "wait": None,
    }
    return SimpleNamespace(**(values | fields))


def draw(steps: list[Any], *, status: str = "waiting", now: datetime) -> ET.Element:
    run = SimpleNamespace(
        pk="r1", workflow_id="wf", status=status, created_at=BASE, started_at=BASE, ended_at=None
    )
    return ET.fromstring(str(timeline.render([timeline.track_for_run(run, steps)], now=now)))


def at(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def code_step(step_id: str, position: int, start: float, end: float) -> Any:
    attempt = {"number": 0, "started_at": at(start).isoformat(), "ended_at": at(end).isoformat()}
    return fake_step(step_id, position, started_at=at(start), ended_at=at(end), attempts=[attempt])


def wait_rects(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        r.get("data-step"): r
        for r in svg.iter(f"{SVG}rect")
        if "wait-bar" in r.get("class", "").split()
    }


def test_a_wait_starts_at_its_since_or_when_the_steps_before_it_ended():
    steps = [
        code_step("a", 0, 0, 2),
        # No start recorded: began when "a" ended.
        fake_step("nap", 1, "sleep", ended_at=at(5), wake_at=at(5)),
        # Its own "since" wins over the previous end.
        fake_step(
            "paid",
            2,
            "event",
            ended_at=at(9),
            wait={"event": "e", "since": at(6).isoformat()},
        ),
        fake_step("call", 3, "invoke", started_at=at(9), ended_at=at(10), status="failed"),
    ]
    svg = draw(steps, status="completed", now=at(10))
    waits = wait_rects(svg)
    spans = {k: (float(r.get("data-start")), float(r.get("data-end"))) for k, r in waits.items()}
    assert spans == {"nap": (2.0, 5.0), "paid": (6.0, 9.0), "call": (9.0, 10.0)}
    assert waits["nap"].get("class") == "wait-bar wait-sleep completed"
    assert waits["paid"].get("class") == "wait-bar wait-event completed"
    assert waits["call"].get("class") == "wait-bar wait-invoke failed"
    assert {r.get("fill") for r in waits.values()} == set(timeline.WAIT_FILL.values())
    titles = " ".join(t.text or "" for t in svg.iter(f"{SVG}title"))
    assert "waiting for event paid: event e" in titles and "invoked run call" in titles


def test_a_pending_wait_runs_to_now_and_marks_a_near_wake_up():
    steps = [
        code_step("a", 0, 0, 2),
        fake_step("nap", 1, "sleep", status="scheduled", wake_at=at(15)),
    ]
    svg = draw(steps, now=at(10))
    nap = wait_rects(svg)["nap"]
    assert nap.get("class") == "wait-bar wait-sleep pending"
    assert nap.get("stroke-dasharray")  # drawn dashed while pending
    assert (float(nap.get("data-start")), float(nap.get("data-end"))) == (2.0, 10.0)
    assert float(nap.get("data-due")) == 15.0
    assert float(svg.get("data-span")) == 15.0  # the axis reaches the wake-up
    assert [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "wait-due"]
    assert [line for line in svg.iter(f"{SVG}line") if line.get("class") == "wake-mark"]


def test_a_far_wake_up_does_not_squash_the_timeline():
    steps = [
        code_step("a", 0, 0, 2),
        fake_step("nap", 1, "sleep", status="scheduled", wake_at=at(30 * 86400)),
    ]
    svg = draw(steps, now=at(10))
    assert float(svg.get("data-span")) == 10.0
    later = [t for t in svg.iter(f"{SVG}text") if t.get("class") == "wake-later"]
    assert len(later) == 1 and later[0].text.startswith("wakes ")


# -- runs list -----------------------------------------------------------------------------


def test_runs_list_filters_by_what_runs_wait_for(admin_client_all):
    nap = sleeping(timezone.now() + timedelta(minutes=1))
    paid = waiting_for_event()
    caller, child = invoking()
    done = build_run()
    expected = {
        "sleep": {nap},
        "event": {paid},
        "invoke": {caller},
        "nothing": {child, done},
    }
    everyone = {nap, paid, caller, child, done}
    for value, runs in expected.items():
        html = get(admin_client_all, reverse(LIST), waiting_for=value)
        for run in everyone:
            listed = f'title="{run.pk}"' in html  # the run column's link
            assert listed == (run in runs), (value, run.workflow_id)
    html = get(admin_client_all, reverse(LIST))
    assert "By waiting for" in html and "invoked run" in html


def test_runs_list_status_says_what_a_run_waits_for(admin_client_all):
    until = timezone.now() + timedelta(minutes=3)
    sleeping(until)
    waiting_for_event("shop/paid")
    _caller, child = invoking()
    html = get(admin_client_all, reverse(LIST))
    assert f"waiting: sleep until {short(until)}" in html
    assert "waiting: event shop/paid" in html
    assert f'waiting: run <a href="{run_url(child)}">{str(child.pk)[:8]}</a>' in html


def test_runs_list_query_count_does_not_grow_with_waiting_runs(admin_client_all):
    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            get(admin_client_all, reverse(LIST))
        return len(ctx.captured_queries)

    waiting_for_event()
    invoking()
    few = queries()
    for _ in range(5):
        waiting_for_event()
        invoking()
        sleeping(timezone.now())
    assert queries() == few


# -- the runs command ----------------------------------------------------------------------


def runs_command(*args: str) -> str:
    out = io.StringIO()
    call_command("stepflows", "runs", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def line_of(output: str, run: Run) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(str(run.pk))]
    return line


def test_runs_command_says_what_waiting_runs_wait_for():
    until = timezone.now() + timedelta(minutes=3)
    nap = sleeping(until)
    paid = waiting_for_event("shop/paid", "A-1", until)
    caller, child = invoking()
    retrying = build_run(status="waiting")
    out = runs_command("--limit", "50")
    assert line_of(out, nap).endswith(f"waiting: sleep until {short(until)}")
    assert line_of(out, paid).endswith(
        f'waiting: event shop/paid with data.order_id = "A-1", times out at {short(until)}'
    )
    assert line_of(out, caller).endswith(f"waiting: run {child.pk} (wf-child)")
    assert line_of(out, retrying).endswith("waiting for a retry")
    assert "waiting:" not in line_of(out, child)


def test_a_wake_up_on_another_day_shows_its_date():
    until = timezone.now() + timedelta(days=3)
    nap = sleeping(until)
    assert line_of(runs_command(), nap).endswith(f"waiting: sleep until {short(until)}")
    assert short(until) == local(until)
