"""Admin pages: runs list, run page, event page, compare page; content and query counts."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html import unescape
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from stepflows.admin import compare
from stepflows.models import Run

from .conftest import PARALLEL_STEPS, build_run

pytestmark = pytest.mark.django_db

LIST = "admin:stepflows_run_changelist"


def run_url(run: Run) -> str:
    return reverse("admin:stepflows_run_change", args=[run.pk])


def get(client: Any, url: str, **params: Any) -> str:
    response = client.get(url, params)
    assert response.status_code == 200, response
    return response.content.decode()


# -- runs list ---------------------------------------------------------------------------


@pytest.mark.smoke
def test_runs_list_shows_workflow_status_event_steps_and_attempts(admin_client_all):
    build_run(workflow="wf-parallel", steps=PARALLEL_STEPS, event_name="app/parallel")
    html = get(admin_client_all, reverse(LIST))
    assert "wf-parallel" in html and "app/parallel" in html
    assert 'class="sf-status sf-completed"' in html
    assert "4/4" in html  # steps done/total
    assert '<td class="field-attempts_display">5</td>' in html  # 1 + 1 + 2 + 1


def test_runs_list_counts_only_completed_steps_as_done(admin_client_all):
    steps = [
        {"step_id": "a", "start": 0, "end": 1},
        {"step_id": "b", "start": 1, "end": 2, "status": "failed"},
    ]
    build_run(status="failed", steps=steps)
    html = get(admin_client_all, reverse(LIST))
    assert "1/2" in html and 'class="sf-status sf-failed"' in html


def _list_queries(client: Any) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as ctx:
        html = get(client, reverse(LIST))
    return len(ctx.captured_queries), html


def test_runs_list_query_count_does_not_grow_with_the_page(admin_client_all):
    for _ in range(3):
        build_run(steps=PARALLEL_STEPS)
    small, html_small = _list_queries(admin_client_all)
    for _ in range(27):
        build_run(steps=PARALLEL_STEPS)
    large, html_large = _list_queries(admin_client_all)
    assert html_small.count('class="action-select"') == 3
    assert html_large.count('class="action-select"') == 30
    assert small == large, f"{small} queries for 3 rows, {large} for 30"


def test_runs_list_query_count_is_the_same_at_two_page_sizes(admin_client_all, monkeypatch):
    from stepflows.admin.runs import RunAdmin

    for _ in range(30):
        build_run(steps=PARALLEL_STEPS)
    counts = []
    for size in (5, 25):
        monkeypatch.setattr(RunAdmin, "list_per_page", size)
        queries, html = _list_queries(admin_client_all)
        assert html.count('class="action-select"') == size
        counts.append(queries)
    assert counts[0] == counts[1], counts


def test_runs_list_filters_by_status_workflow_and_date(admin_client_all):
    failed = build_run(workflow="wf-a", status="failed", base=datetime(2024, 1, 2, tzinfo=UTC))
    done = build_run(workflow="wf-b", status="completed", base=datetime(2024, 3, 5, tzinfo=UTC))
    html = get(admin_client_all, reverse(LIST), status__exact="failed")
    assert str(failed.pk)[:8] in html and str(done.pk)[:8] not in html
    html = get(admin_client_all, reverse(LIST), workflow_id="wf-b")
    assert str(done.pk)[:8] in html and str(failed.pk)[:8] not in html
    html = get(
        admin_client_all,
        reverse(LIST),
        created_at__gte="2024-01-01T00:00:00+00:00",
        created_at__lt="2024-02-01T00:00:00+00:00",
    )
    assert str(failed.pk)[:8] in html and str(done.pk)[:8] not in html


def test_runs_list_search_by_run_id_short_id_and_event_name(admin_client_all):
    one = build_run(event_name="shop/order.paid")
    two = build_run(event_name="app/text.summarize")
    for term in (str(one.pk), str(one.pk)[:8], "order.paid"):
        html = get(admin_client_all, reverse(LIST), q=term)
        assert str(one.pk)[:8] in html and str(two.pk)[:8] not in html, term


# -- run page ----------------------------------------------------------------------------


@pytest.mark.smoke
def test_run_page_shows_payload_output_steps_and_timeline(admin_client_all):
    run = build_run(
        workflow="wf-parallel",
        steps=PARALLEL_STEPS,
        data={"text": "hello", "n": 3},
        output={"done": True},
    )
    html = get(admin_client_all, run_url(run))
    assert "&quot;text&quot;: &quot;hello&quot;" in html  # pretty JSON, escaped
    assert "&quot;done&quot;: true" in html
    for step_id in ("prepare", "left", "right", "after"):
        assert f'data-step="{step_id}"' in html
    assert '<svg xmlns="http://www.w3.org/2000/svg" class="stepflows-timeline"' in html
    assert html.count('class="attempt-bar failed"') == 1
    assert "(1 failed)" in html and "host:101" in html  # failed attempts, last worker
    assert "uses step.parallel" in html


def test_run_page_shows_error_and_traceback(admin_client_all):
    error = {"type": "StepError", "message": "doomed failed", "traceback": "Traceback: line 7"}
    run = build_run(status="failed", error=error)
    html = get(admin_client_all, run_url(run))
    assert "doomed failed" in html and "Traceback: line 7" in html and "StepError" in html


def test_run_page_shows_its_fan_out_family_at_any_depth(admin_client_all):
    parent = build_run(workflow="fan-parent")
    child = build_run(workflow="fan-child", source_run=parent, event_name="fan/child")
    grandchild = build_run(workflow="fan-grandchild", source_run=child, event_name="fan/leaf")
    html = get(admin_client_all, run_url(parent))
    assert "fan/child" in html and "fan/leaf" in html
    assert str(child.pk)[:8] in html and str(grandchild.pk)[:8] in html
    assert 'data-depth="1"' in html and 'data-depth="2"' in html
    assert compare.url(family=[parent.pk]).replace("&", "&amp;") in html


def test_run_page_query_count_does_not_grow_with_steps_or_family(admin_client_all):
    small = build_run(steps=PARALLEL_STEPS[:2])
    build_run(source_run=small)
    big_steps = [
        {"step_id": f"s{i}", "start": i * 0.1, "end": i * 0.1 + 0.1, "group": 0} for i in range(40)
    ]
    big = build_run(steps=big_steps)
    for _ in range(12):
        build_run(source_run=big)
    counts = []
    for run in (small, big):
        with CaptureQueriesContext(connection) as ctx:
            get(admin_client_all, run_url(run))
        counts.append(len(ctx.captured_queries))
    assert counts[0] == counts[1], counts


# -- event page --------------------------------------------------------------------------


def test_event_list_and_page_show_payload_and_runs_started(admin_client_all):
    run = build_run(workflow="wf-e", data={"email": "a@b.c"}, event_name="shop/mail")
    html = get(admin_client_all, reverse("admin:stepflows_event_changelist"))
    assert "shop/mail" in html and "a@b.c" in html
    assert '<td class="field-runs_started">1</td>' in html
    html = get(admin_client_all, reverse("admin:stepflows_event_change", args=[run.event_id]))
    assert "&quot;email&quot;: &quot;a@b.c&quot;" in html
    assert str(run.pk) in html and "wf-e" in html


# -- compare page ------------------------------------------------------------------------


def test_compare_page_shows_figures_and_timelines_on_one_axis(admin_client_all):
    parallel = build_run(workflow="wf-parallel", steps=PARALLEL_STEPS, duration=2.0)
    failing = build_run(
        workflow="wf-seq",
        status="failed",
        steps=[
            {"step_id": "only", "start": 0, "end": 4, "attempts": [(0, 1, "no"), (2, 4, "no")]},
        ],
        duration=4.0,
    )
    html = get(admin_client_all, compare.url(ids=[parallel.pk, failing.pk]))
    rows = html.split('class="sf-compare-row"')[1:]
    assert len(rows) == 2
    assert "wf-parallel" in rows[0] and "2 s" in rows[0]
    assert "<td>4</td>" in rows[0] and "<td>5</td>" in rows[0]  # steps, attempts
    assert "wf-seq" in rows[1] and "4 s" in rows[1]
    assert '<span class="sf-error">2</span>' in rows[1]  # failed attempts
    assert html.count('class="stepflows-timeline"') == 1  # one picture, one axis
    assert html.count('class="run-bar') == 2


def test_compare_family_shows_parent_and_fan_out_runs_with_total(admin_client_all):
    parent = build_run(workflow="fan-parent", duration=1.0)
    children = [build_run(workflow="fan-child", source_run=parent) for _ in range(3)]
    html = get(admin_client_all, compare.url(family=[parent.pk]))
    assert html.count('class="sf-compare-row"') == 4
    for child in children:
        assert f'data-run="{child.pk}" data-depth="1"' in html
    assert "fan-parent with its fan-out (4 runs)" in html
    # The default axis of every compare page; a family keeps its shape on it.
    assert 'data-relative="true"' in html


def test_compare_event_variants_from_a_parallel_run(admin_client_all):
    parallel = build_run(workflow="summarize-text", steps=PARALLEL_STEPS)
    fanout = build_run(workflow="summarize-text-fanout", event=parallel.event)
    child = build_run(workflow="summarize-chunk", source_run=fanout)
    html = get(admin_client_all, run_url(parallel))
    link = compare.url(event=parallel.event_id, fan_out=True)
    assert link.replace("&", "&amp;") in html
    html = get(admin_client_all, link)
    for run in (parallel, fanout, child):
        assert f'data-run="{run.pk}"' in html


def test_a_lone_parallel_run_links_to_recent_runs_of_its_workflow(admin_client_all):
    older = build_run(workflow="wf-parallel", steps=PARALLEL_STEPS)
    run = build_run(workflow="wf-parallel", steps=PARALLEL_STEPS)
    html = get(admin_client_all, run_url(run))
    link = compare.url(workflow_of=run.pk)
    assert link.replace("&", "&amp;") in html
    html = get(admin_client_all, link)
    assert f'data-run="{run.pk}"' in html and f'data-run="{older.pk}"' in html


def test_compare_needs_its_permission(staff_client):
    run = build_run(steps=PARALLEL_STEPS)
    client = staff_client()  # view permissions only
    assert client.get(compare.url(ids=[run.pk])).status_code == 403
    html = get(client, run_url(run))
    assert "sf-compare-link" not in html


def test_compare_ignores_unknown_ids_with_a_message(admin_client_all):
    run = build_run()
    html = get(admin_client_all, compare.url(ids=[run.pk]) + ",nonsense")
    assert "Not found, left out: nonsense" in html
    assert html.count('class="sf-compare-row"') == 1


# -- runs list: columns, top-level filter (issue 14) -------------------------------------


def _row_of(html: str, run: Run) -> str:
    """The runs list's row of one run."""
    start = html.index(f'value="{run.pk}"')
    return html[start : html.index("</tr>", start)]


def test_runs_list_shows_parent_start_to_the_second_and_error_summary(admin_client_all):
    from django.utils import timezone

    base = datetime(2026, 11, 27, 19, 4, 5, tzinfo=UTC)
    parent = build_run(workflow="fan-parent", base=base)
    child = build_run(workflow="fan-child", source_run=parent, base=base)
    message = "card declined <b>twice</b>\nsecond line of the message " + "x" * 200
    failed = build_run(
        status="failed",
        base=base,
        error={"type": "StepError", "message": message, "traceback": "Traceback ..."},
    )
    html = get(admin_client_all, reverse(LIST))
    columns = re.findall(r'<th scope="col" class="[^"]*column-(\w+)', html)
    assert columns == [
        "run_link",
        "workflow_cell",
        "status_display",
        "trigger_event",
        "parent_link",
        "started",
        "duration_display",
        "steps_display",
        "attempts_display",
        "error_summary",
    ]
    row = _row_of(html, child)
    assert f'class="sf-parent" href="{run_url(parent)}" title="parent run {parent.pk}">' in row
    day, time = timezone.localtime(base).strftime("%Y-%m-%d %H:%M:%S").split()
    assert f'nowrap">{day}</span> <span style="white-space:nowrap">{time}</span>' in row
    row = _row_of(html, failed)
    summary = re.search(r'class="sf-one-line sf-error-summary"[^>]*title="([^"]*)">([^<]*)<', row)
    assert summary, row
    title, shown = summary.groups()
    assert shown.startswith("StepError: card declined &lt;b&gt;twice&lt;/b&gt;")
    assert "second line" not in shown  # the first line only
    assert "second line of the message" in title and title.endswith("x" * 10)  # all of it
    assert "sf-error-summary" not in _row_of(html, parent)  # no error, no summary


def test_runs_list_error_summary_is_cut_to_one_short_line(admin_client_all):
    from stepflows.admin.run_columns import ERROR_CHARS

    run = build_run(status="failed", error={"type": "ValueError", "message": "y" * 500})
    row = _row_of(get(admin_client_all, reverse(LIST)), run)
    shown = re.search(r'sf-error-summary"[^>]*>([^<]*)<', row).group(1)
    assert len(shown) == ERROR_CHARS and shown.endswith("\u2026")


def test_runs_list_top_level_filter_hides_fan_out_children(admin_client_all):
    parent = build_run(workflow="fan-parent")
    children = [build_run(workflow="fan-child", source_run=parent) for _ in range(3)]
    html = get(admin_client_all, reverse(LIST))
    assert "Top-level runs only" in html
    html = get(admin_client_all, reverse(LIST), top_level="yes")
    assert f'value="{parent.pk}"' in html
    assert not any(f'value="{c.pk}"' in html for c in children)
    html = get(admin_client_all, reverse(LIST), top_level="no")
    assert f'value="{parent.pk}"' not in html
    assert all(f'value="{c.pk}"' in html for c in children)


def test_runs_list_query_count_is_constant_with_parents_and_errors(admin_client_all):
    error = {"type": "ValueError", "message": "no", "traceback": ""}
    parent = build_run()
    build_run(source_run=parent, status="failed", error=error)
    small, _ = _list_queries(admin_client_all)
    for _ in range(10):
        p = build_run()
        build_run(source_run=p, status="failed", error=error)
    large, html = _list_queries(admin_client_all)
    assert html.count('class="sf-parent"') == 11
    assert small == large, f"{small} queries for 2 rows, {large} for 22"


# -- events list: one line per value (issue 14) ------------------------------------------


def test_events_list_cuts_ids_and_payloads_to_one_line_with_the_whole_on_hover(admin_client_all):
    from stepflows.admin.events import ID_CHARS, PREVIEW_CHARS
    from stepflows.models import Event

    long_id = "order-" + "9" * 60
    data = {"text": "line one\nline two <i>" + "z" * 300, "n": 1}
    event = Event.objects.create(id=long_id, name="shop/long", data=data)
    build_run(event=event)
    build_run(event=event)
    html = get(admin_client_all, reverse("admin:stepflows_event_changelist"))
    start = html.index(f'value="{long_id}"')
    row = html[start : html.index("</tr>", start)]
    ids = re.search(r'field-id_display"><code[^>]*title="([^"]*)">([^<]*)</code>', row)
    assert ids.group(1) == long_id and len(ids.group(2)) == ID_CHARS
    payload = re.search(r'field-payload_preview"><code[^>]*title="([^"]*)">([^<]*)</code>', row)
    title, shown = payload.groups()
    assert "z" * 300 in title and "line two &lt;i&gt;" in title  # the whole, escaped
    assert len(unescape(shown)) == PREVIEW_CHARS and shown.endswith("\u2026")
    assert "white-space:nowrap" in row
    assert '<td class="field-runs_started">2</td>' in row


# -- the admin index (issue 14) ----------------------------------------------------------


def test_index_hides_celery_results_unless_asked(admin_client_all, settings):
    from django.contrib.auth.models import User

    boss = User.objects.create_superuser("boss", "boss@example.com", "pw")
    admin_client_all.force_login(boss)
    html = get(admin_client_all, reverse("admin:index"))
    assert "app-django_celery_results" not in html
    assert "Task results" not in html and "Group results" not in html
    assert "app-stepflows" in html and ">Workflows</a>" in html
    settings.STEPFLOWS = {"ADMIN_SHOW_CELERY_RESULTS": True}
    html = get(admin_client_all, reverse("admin:index"))
    assert "app-django_celery_results" in html and "Task results" in html


def test_celery_results_registered_on_purpose_stay_on_the_index(admin_client_all):
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django_celery_results.models import TaskResult

    boss = User.objects.create_superuser("boss", "boss@example.com", "pw")
    admin_client_all.force_login(boss)
    original = admin.site._registry[TaskResult]

    class ProjectTaskResultAdmin(admin.ModelAdmin):
        pass

    admin.site.unregister(TaskResult)
    admin.site.register(TaskResult, ProjectTaskResultAdmin)
    try:
        html = get(admin_client_all, reverse("admin:index"))
    finally:
        admin.site.unregister(TaskResult)
        admin.site.register(TaskResult, type(original))
    assert "Task results" in html and "Group results" not in html


# -- compare links (issue 14) ------------------------------------------------------------


def test_event_page_compares_its_runs_and_offers_their_families(admin_client_all):
    parallel = build_run(workflow="summarize-text", steps=PARALLEL_STEPS)
    fanout = build_run(workflow="summarize-text-fanout", event=parallel.event)
    child = build_run(workflow="summarize-chunk", source_run=fanout)
    html = get(admin_client_all, reverse("admin:stepflows_event_change", args=[parallel.event_id]))
    runs_only = compare.url(event=parallel.event_id)
    families = compare.url(event=parallel.event_id, fan_out=True)
    assert f'href="{runs_only}">Compare the 2 runs of this event</a>' in html
    assert f'href="{families.replace("&", "&amp;")}">Compare the 2 runs' in html
    html = get(admin_client_all, runs_only)
    assert html.count('class="sf-compare-row"') == 2
    assert f'data-run="{child.pk}"' not in html
    html = get(admin_client_all, families)
    assert html.count('class="sf-compare-row"') == 3
    assert f'data-run="{child.pk}" data-depth="1"' in html


def test_event_page_shows_no_compare_link_without_the_permission(staff_client):
    run = build_run()
    build_run(event=run.event)
    html = get(staff_client(), reverse("admin:stepflows_event_change", args=[run.event_id]))
    assert "sf-compare-link" not in html


def test_every_compare_page_has_the_same_default_axis(admin_client_all):
    parent = build_run(workflow="fan-parent")
    build_run(workflow="fan-child", source_run=parent)
    other = build_run(workflow="fan-parent", event=parent.event)
    links = [
        compare.url(ids=[parent.pk, other.pk]),
        compare.url(family=[parent.pk]),
        compare.url(event=parent.event_id),
        compare.url(event=parent.event_id, fan_out=True),
        compare.url(workflow_of=parent.pk),
    ]
    for link in links:
        html = get(admin_client_all, link)
        assert 'data-relative="true"' in html, link
        assert "Show on the wall clock" in html, link
    html = get(admin_client_all, compare.url(ids=[parent.pk], axis="wall"))
    assert 'data-relative="false"' in html


def test_a_fan_out_run_keeps_its_place_after_its_parent_on_the_default_axis(admin_client_all):
    from datetime import timedelta

    base = datetime(2026, 1, 1, tzinfo=UTC)
    parent = build_run(workflow="fan-parent", base=base, duration=4.0)
    build_run(workflow="fan-child", source_run=parent, base=base + timedelta(seconds=2))
    html = get(admin_client_all, compare.url(family=[parent.pk]))
    starts = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'class="run-bar[^"]*"[^>]*data-run="([^"]+)"[^>]*data-start="([^"]+)"', html
        )
    }
    assert starts, "no run bars with a start"
    assert starts[str(parent.pk)] == 0 and min(starts.values()) == 0
    assert max(starts.values()) == pytest.approx(2.0)
