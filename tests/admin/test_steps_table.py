"""The run page's steps table: each attempt with its start, end, worker, duration and error;
time running apart from time since the first attempt; tracebacks without stepflows' frames;
markers of interventions on the timeline, with a query count that does not grow.

Runs and steps are written as rows (see conftest.build_run): no workers needed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import stepflows
from stepflows.admin.steps import trim_traceback
from stepflows.models import Intervention, Run, Step

from .conftest import PARALLEL_STEPS, build_run

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
OURS = str(Path(stepflows.__file__).resolve().parent)


def run_page(client: Any, run: Run) -> str:
    response = client.get(reverse("admin:stepflows_run_change", args=[run.pk]))
    assert response.status_code == 200, response
    return response.content.decode()


def detail_row(html: str, step_id: str) -> str:
    found = re.search(
        rf'<tr class="sf-step-detail" data-step="{step_id}">(.*?)</td></tr>', html, re.S
    )
    assert found, f"no attempts row for step {step_id}"
    return found.group(1)


def cell(html: str, step_id: str, cls: str) -> str:
    row = re.search(rf'<tr class="sf-step" data-step="{step_id}">(.*?)</tr>', html, re.S)
    assert row, f"no row for step {step_id}"
    found = re.search(rf'<td class="{cls}">(.*?)</td>', row.group(1), re.S)
    assert found, f"no {cls} cell for {step_id}"
    return found.group(1).strip()


def traceback_text(*frames: tuple[str, str], error: str = "ValueError: boom") -> str:
    lines = ["Traceback (most recent call last):\n"]
    for path, code in frames:
        lines.append(f'  File "{path}", line 10, in fn\n    {code}\n')
    return "".join(lines) + error + "\n"


ENGINE = (f"{OURS}/engine/attempts.py", "value = call.fn(*call.args)")
INVOKE = (f"{OURS}/engine/invocation.py", "return self.run_step(call)")
USER = ("/srv/shop/workflows.py", "charge_card(order)")
USER_INNER = ("/srv/shop/payments.py", "raise ValueError('boom')")


# -- attempts ----------------------------------------------------------------------------


def test_each_attempt_has_a_row_with_start_end_worker_duration_and_error(admin_client_all):
    run = build_run(
        steps=[
            {"step_id": "first", "start": 0, "end": 0.5},
            {
                "step_id": "flaky",
                "start": 1,
                "end": 3.5,
                "attempts": [(1, 2, "gateway <b>timeout</b>"), (2.5, 3.5, "")],
            },
        ],
        duration=4.0,
    )
    html = run_page(admin_client_all, run)
    rows = detail_row(html, "flaky")
    attempts = re.findall(r'<tr class="sf-attempt sf-attempt-(\w+)" data-attempt="(\d)">', rows)
    assert attempts == [("failed", "1"), ("ok", "2")]
    assert "host:100" in rows and "host:101" in rows  # the worker of each attempt
    assert "ValueError: gateway &lt;b&gt;timeout&lt;/b&gt;" in rows  # its error, escaped
    assert "backoff 500 ms" in rows  # the wait before the second attempt
    step = Step.objects.get(run=run, step_id="flaky")
    started = timezone.localtime(step.started_at).strftime("%H:%M:%S.%f")
    assert started in rows  # start (and end) to the microsecond
    assert rows.count("<td>1 s</td>") == 2  # each attempt's duration
    # A step with one successful attempt says it all in its own row.
    assert 'class="sf-step-detail" data-step="first"' not in html


def test_running_time_leaves_out_the_backoff(admin_client_all):
    run = build_run(
        steps=[
            {"step_id": "flaky", "start": 1, "end": 4, "attempts": [(1, 2, "no"), (3, 4, "")]},
        ],
        duration=4.0,
    )
    html = run_page(admin_client_all, run)
    assert cell(html, "flaky", "sf-step-running") == "2 s"  # two attempts of 1 s
    assert cell(html, "flaky", "sf-step-since") == "3 s"  # from the first start to the end
    assert "since first attempt</th>" in html and "running</th>" in html


def test_a_pending_retry_shows_when_it_is_due(admin_client_all):
    run = build_run(
        status="waiting",
        steps=[
            {
                "step_id": "flaky",
                "start": 0,
                "end": 1,
                "status": "scheduled",
                "attempts": [(0, 1, "no")],
            },
        ],
    )
    retry_at = timezone.now() + timedelta(minutes=3)
    Step.objects.filter(run=run).update(retry_at=retry_at, ended_at=None)
    html = run_page(admin_client_all, run)
    rows = detail_row(html, "flaky")
    assert f'next retry at <time datetime="{retry_at.isoformat()}">' in rows
    assert 'class="backoff-label"' in html and "next retry" in html


# -- tracebacks --------------------------------------------------------------------------


def test_stepflows_frames_are_dropped_from_the_top_of_a_traceback():
    text = traceback_text(INVOKE, ENGINE, USER, USER_INNER)
    trimmed = trim_traceback(text)
    assert "engine/attempts.py" not in trimmed and "engine/invocation.py" not in trimmed
    assert "[2 frame(s) of stepflows hidden]" in trimmed
    assert trimmed.index("workflows.py") < trimmed.index("payments.py")
    assert trimmed.startswith("Traceback (most recent call last):\n")
    assert trimmed.endswith("ValueError: boom\n")


def test_frames_of_stepflows_below_the_users_and_installed_elsewhere():
    installed = ("/opt/app/.venv/lib/python3.12/site-packages/stepflows/engine/attempts.py", "x")
    below = (f"{OURS}/serialization.py", "json.dumps(value)")
    trimmed = trim_traceback(traceback_text(installed, USER, below))
    assert "site-packages/stepflows" not in trimmed  # a worker's install counts as ours
    assert "serialization.py" in trimmed  # only frames above the first user frame go


def test_a_traceback_of_stepflows_frames_only_is_kept_whole():
    text = traceback_text(INVOKE, ENGINE)
    assert trim_traceback(text) == text


def test_each_stack_of_a_chained_traceback_is_trimmed():
    first = traceback_text(ENGINE, USER)
    second = traceback_text(INVOKE, USER_INNER, error="RuntimeError: again")
    during = "\nDuring handling of the above exception, another exception occurred:\n\n"
    trimmed = trim_traceback(first + during + second)
    assert trimmed.count("[1 frame(s) of stepflows hidden]") == 2
    assert "During handling" in trimmed and "RuntimeError: again" in trimmed


def test_the_run_page_shows_tracebacks_trimmed_and_full_width(admin_client_all):
    tb = traceback_text(INVOKE, ENGINE, USER, USER_INNER)
    error = {"type": "ValueError", "message": "boom", "traceback": tb}
    run = build_run(
        status="failed",
        error=error,
        steps=[
            {
                "step_id": "charge",
                "start": 0,
                "end": 1,
                "status": "failed",
                "attempts": [(0, 1, "boom")],
                "error": error,
            },
        ],
        duration=1.0,
    )
    html = run_page(admin_client_all, run)
    assert "engine/attempts.py" not in html
    assert html.count("[2 frame(s) of stepflows hidden]") == 2  # the run's and the step's
    # The step's traceback sits in a row spanning the whole table, folded until opened.
    rows = detail_row(html, "charge")
    assert rows.startswith('<td colspan="11">')
    assert '<details class="sf-traceback-details"><summary>traceback</summary>' in rows
    assert "/srv/shop/payments.py" in rows


# -- markers and query counts ------------------------------------------------------------


def intervene(run: Run, seconds: float, action: str = "retry", **fields: Any) -> Intervention:
    return Intervention.objects.create(
        run=run,
        action=action,
        by=fields.pop("by", "alice"),
        reason=fields.pop("reason", ""),
        at=run.created_at + timedelta(seconds=seconds),
        **fields,
    )


def markers(html: str) -> list[ET.Element]:
    svg = re.search(r'<svg xmlns="http://www.w3.org/2000/svg".*?</svg>', html, re.S)
    assert svg, "no timeline"
    root = ET.fromstring(svg.group(0))
    return [g for g in root.iter(f"{SVG}g") if "intervention-marker" in g.get("class", "")]


def test_the_run_page_marks_interventions_on_its_timeline(admin_client_all):
    run = build_run(steps=PARALLEL_STEPS, duration=2.0)
    intervene(run, 1.0, reason="payment provider was down")
    html = run_page(admin_client_all, run)
    [marker] = markers(html)
    assert marker.get("data-action") == "retry" and marker.get("data-by") == "alice"
    assert "payment provider was down" in marker.find(f"{SVG}title").text


def test_query_count_stays_the_same_with_more_steps_and_interventions(admin_client_all):
    small = build_run(steps=PARALLEL_STEPS[:2])
    intervene(small, 0.1)
    steps = [
        {
            "step_id": f"s{i}",
            "start": i * 0.1,
            "end": i * 0.1 + 0.1,
            "group": 0,
            "attempts": [(i * 0.1, i * 0.1 + 0.05, "no"), (i * 0.1 + 0.06, i * 0.1 + 0.1, "")],
        }
        for i in range(40)
    ]
    big = build_run(steps=steps, duration=4.1)
    for i in range(6):
        intervene(big, 0.5 * i, action="cancel" if i % 2 else "retry", by=f"user{i}")
    counts = []
    for run in (small, big):
        with CaptureQueriesContext(connection) as ctx:
            html = run_page(admin_client_all, run)
        counts.append(len(ctx.captured_queries))
    assert len(markers(html)) == 6
    assert counts[0] == counts[1], counts
