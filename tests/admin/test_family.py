"""The fan-out family and the parallel timeline, from runs real workers carried out."""

from __future__ import annotations

import itertools
import re
import uuid
import xml.etree.ElementTree as ET

import pytest
from django.urls import reverse

import stepflows
from stepflows.admin import compare
from stepflows.admin.family import fan_out_family
from stepflows.models import Run, RunStatus
from stepflows.testing import runs_for, wait_for_runs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.worker]

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def variants(celery_worker):
    """Both variants of one piece of work, finished, and the fan-out's child runs."""
    key = uuid.uuid4().hex[:12]
    [event_id] = stepflows.send(
        "test/admin-summarize", data={"key": key, "chunks": ["one", "two", "three"]}
    )
    parallel, fanout = wait_for_runs(r.pk for r in runs_for([event_id]))
    if parallel.workflow_id != "t-admin-parallel":
        parallel, fanout = fanout, parallel
    children = wait_for_runs(Run.objects.filter(parent=fanout).values_list("pk", flat=True))
    return parallel, fanout, children


def timeline_of(html: str) -> ET.Element:
    svg = re.search(
        r'<svg xmlns="http://www.w3.org/2000/svg" class="stepflows-timeline".*?</svg>', html, re.S
    )
    assert svg, "no timeline on the page"
    return ET.fromstring(svg.group(0))


def test_fan_out_family_of_a_real_run(variants):
    parallel, fanout, children = variants
    assert fanout.status == RunStatus.COMPLETED and len(children) == 3
    assert all(c.status == RunStatus.COMPLETED for c in children)
    family = fan_out_family(fanout)
    assert {r.pk for r in family.runs} == {c.pk for c in children}
    assert [row.depth for row in family.rows] == [1, 1, 1]
    assert not fan_out_family(parallel)


def test_run_page_of_a_fan_out_parent_lists_its_children(variants, admin_client_all):
    _, fanout, children = variants
    html = admin_client_all.get(
        reverse("admin:stepflows_run_change", args=[fanout.pk])
    ).content.decode()
    assert html.count('class="sf-family-row"') == 3
    for child in children:
        assert str(child.pk)[:8] in html
    assert "Compare with the 3 run(s) its fan-out started" in html


def test_parallel_steps_overlap_on_the_timeline_and_the_retry_is_marked(variants, admin_client_all):
    parallel, _, _ = variants
    html = admin_client_all.get(
        reverse("admin:stepflows_run_change", args=[parallel.pk])
    ).content.decode()
    svg = timeline_of(html)
    # One bar per attempt: a step's span runs from its first attempt's start to its last's end.
    bars = [r for r in svg.iter(f"{SVG}rect") if "attempt-bar" in r.get("class", "")]
    steps: dict[str, tuple[float, float]] = {}
    for b in bars:
        start, end = float(b.get("data-start")), float(b.get("data-end"))
        lo, hi = steps.get(b.get("data-step"), (start, end))
        steps[b.get("data-step")] = (min(lo, start), max(hi, end))
    chunks = [s for step_id, s in steps.items() if step_id.startswith("summarize-chunk")]
    assert len(chunks) == 3
    spans = chunks
    assert any(a[0] < b[1] and b[0] < a[1] for a, b in itertools.combinations(spans, 2)), spans
    failed = [r for r in svg.iter(f"{SVG}rect") if r.get("class") == "attempt-bar failed"]
    assert [f.get("data-step") for f in failed] == ["summarize-chunk"]
    assert "Compare the 2 runs of this event (and their fan-outs)" in html


def test_compare_the_two_variants_with_the_fan_out(variants, admin_client_all):
    parallel, fanout, children = variants
    html = admin_client_all.get(compare.url(event=parallel.event_id, fan_out=True)).content.decode()
    for run in (parallel, fanout, *children):
        assert f'data-run="{run.pk}"' in html
    assert "t-admin-fanout with its fan-out (4 runs)" in html
    svg = timeline_of(html)
    run_bars = [r for r in svg.iter(f"{SVG}rect") if "run-bar" in r.get("class", "")]
    assert len(run_bars) == 5
    assert svg.get("data-relative") == "true"  # each family from its own start
