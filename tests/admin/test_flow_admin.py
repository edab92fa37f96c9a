"""Flow control in the admin and in `manage.py stepflows runs|limits`.

Runs, slots and flow states are written as rows (the fields of migration
0004), for the registered workflows of tests/testapp/flows/flow_in_process.py,
so these tests check what the pages and commands show, not the admission.
"""

from __future__ import annotations

import io
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from stepflows import timeline
from stepflows.admin import compare
from stepflows.admin.common import STATUS_COLOURS
from stepflows.models import Event, FlowState, Run, Slot

from .conftest import XSS, make_staff

pytestmark = pytest.mark.django_db

LIST = "admin:stepflows_run_changelist"
PAGE = "admin:stepflows_flow_control"
RATE_REASON = "rate limit: over 2 runs per 60 s for key ''"


def get(client: Any, url: str, **params: Any) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response
    return response.content.decode()


def run_page(client: Any, run: Run) -> str:
    return get(client, reverse("admin:stepflows_run_change", args=[run.pk]))


def cell(html: str, element_id: str) -> str:
    found = re.search(rf'<td id="{element_id}"[^>]*>(.*?)</td>', html, re.S)
    assert found, f"no #{element_id} on the page"
    return found.group(1)


def list_row(html: str, run: Run) -> str:
    """The runs list's row of ``run`` (from its link to the end of the row)."""
    found = re.search(rf'title="{run.pk}".*?</tr>', html, re.S)
    assert found, f"run {run.pk} is not listed"
    return found.group(0)


def local(value: datetime, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return timezone.localtime(value).strftime(fmt)


def make_run(
    workflow: str,
    *,
    status: str = "queued",
    data: dict[str, Any] | None = None,
    event_id: str | None = None,
    created: datetime | None = None,
    **fields: Any,
) -> Run:
    """A run of a registered flow workflow, written as a row (held runs never started)."""
    event = Event.objects.create(
        id=event_id or uuid.uuid4().hex, name=f"test/{workflow}", data=data or {}
    )
    created = created or timezone.now() - timedelta(minutes=1)
    started = None if status in ("queued", "skipped") else created
    ended = created if status == "skipped" else None
    return Run.objects.create(
        workflow_id=workflow,
        event=event,
        status=status,
        created_at=created,
        started_at=started,
        ended_at=ended,
        **fields,
    )


def concurrency_line() -> tuple[Run, Run, Run]:
    """fip-limited (one slot per data.customer): c42's slot held, two runs in line."""
    now = timezone.now()
    holder = make_run("fip-limited", status="running", data={"customer": "c42"})
    Slot.objects.create(workflow_id="fip-limited", key="0:c42", run=holder)
    first, second = (
        make_run(
            "fip-limited",
            data={"customer": "c42"},
            waiting_for="concurrency",
            flow_key="0:c42",
            priority_at=now - timedelta(seconds=30 - i),
            created=now - timedelta(seconds=30 - i),
        )
        for i in range(2)
    )
    return holder, first, second


def skipped_run(reason: str = RATE_REASON, workflow: str = "fip-rated") -> Run:
    return make_run(
        workflow,
        status="skipped",
        error={"type": "Skipped", "message": reason, "traceback": ""},
    )


def command(*args: str) -> str:
    out = io.StringIO()
    call_command("stepflows", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def line_of(output: str, run: Run) -> str:
    [line] = [line for line in output.splitlines() if line.startswith(str(run.pk))]
    return line


# -- what holds a run ----------------------------------------------------------------------


def test_run_page_shows_the_slot_its_key_and_its_place_in_line(admin_client_all):
    _, first, second = concurrency_line()
    html = run_page(admin_client_all, second)
    waiting = cell(html, "sf-run-waiting")
    assert "slot for key data.customer = c42 (1/1 in use, 2nd in line)" in waiting
    assert "next in line" in cell(run_page(admin_client_all, first), "sf-run-waiting")


def test_runs_list_shows_the_hold_of_each_queued_run(admin_client_all):
    holder, first, second = concurrency_line()
    throttled = make_run(
        "fip-throttled",
        waiting_for="throttle",
        flow_key="a",
        wait_until=timezone.now() + timedelta(seconds=40),
    )
    html = get(admin_client_all, reverse(LIST))
    assert "waiting: slot for key data.customer = c42 (1/1 in use, next in line)" in list_row(
        html, first
    )
    assert "(1/1 in use, 2nd in line)" in list_row(html, second)
    assert f"waiting: throttled until {local(throttled.wait_until, '%H:%M:%S')}" in list_row(
        html, throttled
    )
    assert "sf-held" not in list_row(html, holder)


def test_runs_list_costs_the_same_queries_with_more_held_runs(admin_client_all):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    concurrency_line()
    admin_client_all.get(reverse(LIST))
    with CaptureQueriesContext(connection) as few:
        admin_client_all.get(reverse(LIST))
    concurrency_line()
    concurrency_line()
    with CaptureQueriesContext(connection) as more:
        admin_client_all.get(reverse(LIST))
    assert len(more) == len(few)


def test_throttled_debounced_and_batched_runs_say_until_when(admin_client_all):
    until = timezone.now() + timedelta(minutes=2)
    throttled = make_run("fip-throttled", waiting_for="throttle", flow_key="a", wait_until=until)
    debounced = make_run(
        "fip-debounced",
        event_id="ev-last",
        waiting_for="debounce",
        flow_key="k1",
        wait_until=until,
    )
    batched = make_run(
        "fip-batch", waiting_for="batch", flow_key="b", wait_until=until, batch=["e1", "e2"]
    )
    assert cell(run_page(admin_client_all, throttled), "sf-run-waiting").endswith(
        f"throttled until {local(until)} (for key data.k = a)</span>"
    )
    assert f"debounced until {local(until)} (last event ev-last; for key data.k = k1)" in cell(
        run_page(admin_client_all, debounced), "sf-run-waiting"
    )
    assert (
        f"batch of 2 events, starts at {local(until)} or when 3 are in (for key data.k = b)"
        in cell(run_page(admin_client_all, batched), "sf-run-waiting")
    )
    html = get(admin_client_all, reverse(LIST), waiting_for="debounce")
    assert "waiting: debounced until" in html and str(throttled.pk) not in html


def test_a_hold_escapes_the_key_value(admin_client_all):
    run = make_run(
        "fip-throttled",
        waiting_for="throttle",
        flow_key=XSS,
        wait_until=timezone.now() + timedelta(seconds=5),
    )
    for html in (run_page(admin_client_all, run), get(admin_client_all, reverse(LIST))):
        assert XSS not in html
        assert "&lt;script&gt;" in html


# -- skipped runs --------------------------------------------------------------------------


def test_a_skipped_run_shows_its_reason_not_an_error(admin_client_all):
    run = skipped_run()
    html = run_page(admin_client_all, run)
    assert "sf-skipped" in cell(html, "sf-run-status")
    assert cell(html, "sf-run-skipped") == "rate limit: over 2 runs per 60 s for key &#x27;&#x27;"
    assert 'id="sf-run-error"' not in html and '<pre class="sf-traceback">' not in html
    fg, bg = STATUS_COLOURS["skipped"]
    row = list_row(get(admin_client_all, reverse(LIST)), run)
    assert f"color:{fg};background:{bg}" in row and ">skipped</span>" in row
    assert "rate limit: over 2 runs per 60 s" in row


def test_a_skipped_run_has_its_colour_on_the_timeline_and_the_compare_page(admin_client_all):
    run = skipped_run("singleton: run 1234 is still active for key 'k'", "fip-single-skip")
    other = skipped_run()
    bar = re.search(r'<rect class="run-bar skipped"[^>]*>', run_page(admin_client_all, run))
    assert bar and f'fill="{timeline.RUN_FILL["skipped"]}"' in bar.group(0)
    html = get(admin_client_all, compare.url(ids=[run.pk, other.pk]))
    assert html.count(f"color:{STATUS_COLOURS['skipped'][0]}") == 2
    assert "still active for key" in html  # the run's lane title says why


def test_a_skip_reason_is_escaped(admin_client_all):
    run = skipped_run(f"singleton: run 1 is still active for key {XSS!r}", "fip-single-skip")
    for html in (run_page(admin_client_all, run), get(admin_client_all, reverse(LIST))):
        assert XSS not in html and "&lt;script&gt;" in html


# -- the Flow control page -----------------------------------------------------------------


def flow_table(html: str, workflow: str) -> str:
    found = re.search(
        rf'<table class="sf-table sf-flow" data-workflow="{workflow}">(.*?)</table>', html, re.S
    )
    assert found, f"no table of {workflow}"
    return found.group(1)


def rows_of(table: str) -> list[list[str]]:
    rows = re.findall(r'<tr class="sf-flow-row"[^>]*>(.*?)</tr>', table, re.S)
    return [
        [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)]
        for r in rows
    ]


def test_flow_control_page_shows_limits_and_counts_per_key(admin_client_all):
    concurrency_line()
    make_run("fip-throttled", waiting_for="throttle", flow_key="a", wait_until=timezone.now())
    tick = timezone.now() - timedelta(minutes=3)
    FlowState.objects.create(
        workflow_id="fip-cron", kind="cron", key="*/5 * * * *", at=tick, count=4
    )
    html = get(admin_client_all, reverse(PAGE))

    limited = rows_of(flow_table(html, "fip-limited"))
    assert ["concurrency", "at most 1 running per data.customer", "c42", "1", "2"] in limited
    assert any(r[0] == "priority" for r in limited)
    waiting_link = reverse(LIST) + "?workflow_id__exact=fip-limited&amp;waiting_for=concurrency"
    assert waiting_link in flow_table(html, "fip-limited")

    throttled = rows_of(flow_table(html, "fip-throttled"))
    assert [
        "throttle",
        "2 starts per 1 min (1 at once) per data.k; the rest start later, in order",
        "a",
        "",
        "1",
    ] in throttled
    [rated] = rows_of(flow_table(html, "fip-rated"))
    assert rated[:2] == ["rate limit", "2 runs per 1 min for the whole workflow; the rest skipped"]
    assert rows_of(flow_table(html, "fip-debounced"))[0][:4] == [
        "debounce",
        "one run 10 s after the last event, at most 1 min after the first, per data.k",
        "-",
        "",
    ]
    assert rows_of(flow_table(html, "fip-idem"))[0][:2] == [
        "idempotency",
        "one run per data.order in 24 h",
    ]
    assert "a new one is skipped" in flow_table(html, "fip-single-skip")
    assert "a new one cancels it" in flow_table(html, "fip-single-cancel")
    assert "3 events per run, or those in 30 s after the first" in flow_table(html, "fip-batch")
    [cron] = rows_of(flow_table(html, "fip-cron"))
    assert cron[:2] == ["cron", f"*/5 * * * * (UTC); last tick sent {timeline.local_time(tick)}"]
    assert "t-three-steps" not in html  # no flow control


def test_flow_control_page_lists_skipped_runs_and_unregistered_workflows(admin_client_all):
    skipped_run()
    skipped_run()
    gone = make_run("fip-limited", status="running")
    Slot.objects.create(workflow_id=XSS, key="0:x", run=gone)
    html = get(admin_client_all, reverse(PAGE))
    link = reverse(LIST) + "?workflow_id__exact=fip-rated&amp;status__exact=skipped"
    assert f'<a href="{link}">2 skipped runs</a>' in html
    assert XSS not in html
    assert (
        '&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; <span class="sf-muted">(not registered)'
        in html
    )


def test_flow_control_page_is_linked_and_needs_the_view_permission_of_runs(client):
    user = make_staff("flow-viewer", ["view_run"])
    client.force_login(user)
    runs_list = get(client, reverse(LIST))
    assert f'href="{reverse(PAGE)}" id="sf-flow-control-link"' in runs_list
    index = get(client, reverse("admin:index"))
    entry = reverse("admin:stepflows_flowstate_changelist")
    assert f'href="{entry}"' in index
    assert client.get(entry).url == reverse(PAGE)

    client.force_login(make_staff("event-viewer", ["view_event"]))
    assert client.get(reverse(PAGE)).status_code == 403
    assert reverse("admin:stepflows_flowstate_changelist") not in get(
        client, reverse("admin:index")
    )


# -- manage.py stepflows -------------------------------------------------------------------


def test_runs_command_shows_skipped_runs_and_holds():
    _, first, second = concurrency_line()
    until = timezone.now() + timedelta(seconds=90)
    throttled = make_run("fip-throttled", waiting_for="throttle", flow_key="a", wait_until=until)
    skipped = skipped_run()
    out = command("runs")
    assert line_of(out, first).endswith(
        "waiting: slot for key data.customer = c42 (1/1 in use, next in line)"
    )
    assert line_of(out, second).endswith("(1/1 in use, 2nd in line)")
    assert line_of(out, throttled).endswith(
        f"waiting: throttled until {timeline.local_time(until)} (for key data.k = a)"
    )
    assert " skipped    test/fip-rated" in line_of(out, skipped)
    assert line_of(out, skipped).endswith(f"skipped: {RATE_REASON}")
    assert str(skipped.pk) in command("runs", "--status", "skipped")


def test_limits_command_prints_each_limit_and_key():
    concurrency_line()
    FlowState.objects.create(
        workflow_id="fip-cron", kind="cron", key="*/5 * * * *", at=timezone.now(), count=0
    )
    out = command("limits")
    header, *lines = out.splitlines()
    assert header.split()[:5] == ["workflow", "limit", "key", "running", "waiting"]
    [limited] = [line for line in lines if line.startswith("fip-limited") and " c42 " in line]
    assert limited.split()[:5] == ["fip-limited", "concurrency", "c42", "1", "2"]
    assert any(
        line.startswith("fip-throttled") and "throttle" in line and line.split()[3:5] == ["-", "0"]
        for line in lines
    )
    assert any("fip-rated" in line and "the rest skipped" in line for line in lines)

    only = command("limits", "--workflow", "fip-cron").splitlines()[1:]
    assert len(only) == 1 and "*/5 * * * * (UTC); no tick sent yet" in only[0]
    with pytest.raises(CommandError, match="t-three-steps"):
        command("limits", "--workflow", "t-three-steps")
