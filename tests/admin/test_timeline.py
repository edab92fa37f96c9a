"""The SVG timeline: bars per run, step and attempt; failures marked; parallel overlap.

Unit tests: plain objects stand in for rows, no database.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from stepflows import timeline

from .conftest import PARALLEL_STEPS, XSS, attempt

NS = {"svg": "http://www.w3.org/2000/svg"}
BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def fake_run(
    steps: list[dict[str, Any]],
    *,
    status: str = "completed",
    offset: float = 0.0,
    duration: float = 2.0,
    workflow: str = "wf",
    pk: str = "run-1",
) -> tuple[Any, list[Any]]:
    base = BASE + timedelta(seconds=offset)
    run = SimpleNamespace(
        pk=pk,
        workflow_id=workflow,
        status=status,
        created_at=base,
        started_at=base,
        ended_at=base + timedelta(seconds=duration),
    )
    rows = []
    for position, spec in enumerate(steps):
        tries = spec.get("attempts") or [(spec["start"], spec["end"], "")]
        rows.append(
            SimpleNamespace(
                step_id=spec["step_id"],
                position=position,
                group=spec.get("group"),
                status=spec.get("status", "completed"),
                started_at=base + timedelta(seconds=spec["start"]),
                ended_at=base + timedelta(seconds=spec["end"]),
                attempts=[attempt(base, i, s, e, err) for i, (s, e, err) in enumerate(tries)],
            )
        )
    return run, rows


def draw(*runs: tuple[Any, list[Any]], relative: bool = False) -> ET.Element:
    svg = timeline.render([timeline.track_for_run(r, s) for r, s in runs], relative=relative)
    return ET.fromstring(str(svg))  # well-formed XML, or this raises


def rects(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [
        r for r in svg.iter("{http://www.w3.org/2000/svg}rect") if cls in r.get("class", "").split()
    ]


def span(rect: ET.Element) -> tuple[float, float]:
    x = float(rect.get("x"))
    return x, x + float(rect.get("width"))


def test_one_bar_per_run_step_and_attempt():
    svg = draw(fake_run(PARALLEL_STEPS))
    assert len(rects(svg, "run-bar")) == 1
    assert [r.get("data-step") for r in rects(svg, "step-bar")] == [
        "prepare",
        "left",
        "right",
        "after",
    ]
    attempts = rects(svg, "attempt-bar")
    assert [(a.get("data-step"), a.get("data-attempt")) for a in attempts] == [
        ("prepare", "1"),
        ("left", "1"),
        ("right", "1"),
        ("right", "2"),
        ("after", "1"),
    ]


def test_failed_attempts_are_red_and_marked():
    svg = draw(fake_run(PARALLEL_STEPS))
    failed = rects(svg, "failed")
    assert [
        (a.get("data-step"), a.get("data-attempt"))
        for a in failed
        if "attempt-bar" in a.get("class")
    ] == [("right", "1")]
    assert failed[0].get("fill") == timeline.ATTEMPT_FAILED
    marks = [
        p for p in svg.iter("{http://www.w3.org/2000/svg}path") if p.get("class") == "failed-mark"
    ]
    assert len(marks) == 1
    tips = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}title"))
    assert "right attempt 1 failed: ValueError: flaky <b>once</b>" in tips


def test_parallel_steps_overlap_in_time_and_sequential_ones_do_not():
    svg = draw(fake_run(PARALLEL_STEPS))
    bars = {r.get("data-step"): span(r) for r in rects(svg, "step-bar")}
    left, right, prepare, after = bars["left"], bars["right"], bars["prepare"], bars["after"]
    assert left[0] < right[1] and right[0] < left[1]  # side by side in time
    assert prepare[1] <= left[0] and max(left[1], right[1]) <= after[0]
    groups = rects(svg, "parallel-group")
    assert len(groups) == 1 and groups[0].get("data-group") == "1"
    # The band covers exactly the two parallel lanes.
    assert float(groups[0].get("height")) == 2 * timeline.ROW


def test_bars_sit_on_a_shared_time_axis():
    svg = draw(fake_run(PARALLEL_STEPS))
    run_bar = rects(svg, "run-bar")[0]
    assert float(run_bar.get("data-start")) == 0.0
    assert float(run_bar.get("data-end")) == 2.0
    right = [r for r in rects(svg, "attempt-bar") if r.get("data-step") == "right"]
    assert [float(r.get("data-start")) for r in right] == [0.3, 0.8]
    labels = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "0 ms" in labels and "1 s" in labels


def test_several_runs_share_one_axis_on_the_wall_clock_or_relative():
    first = fake_run(PARALLEL_STEPS, pk="a")
    later = fake_run(PARALLEL_STEPS, pk="b", offset=10.0)
    wall = draw(first, later)
    starts = {r.get("data-run"): float(r.get("data-start")) for r in rects(wall, "run-bar")}
    assert starts == {"a": 0.0, "b": 10.0}
    relative = draw(first, later, relative=True)
    starts = {r.get("data-run"): float(r.get("data-start")) for r in rects(relative, "run-bar")}
    assert starts == {"a": 0.0, "b": 0.0}


def test_user_text_is_escaped():
    steps = [{"step_id": XSS, "start": 0, "end": 1, "attempts": [(0, 1, XSS)]}]
    svg = str(timeline.render([timeline.track_for_run(*fake_run(steps, workflow=XSS))]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    ET.fromstring(svg)


def test_a_running_step_and_an_unstarted_one():
    run, steps = fake_run([{"step_id": "a", "start": 0, "end": 1}], status="running")
    run.ended_at = None
    steps[0].status, steps[0].ended_at = "running", None
    steps.append(
        SimpleNamespace(
            step_id="later",
            position=1,
            group=None,
            status="scheduled",
            started_at=None,
            ended_at=None,
            attempts=[],
        )
    )
    svg = draw((run, steps))
    assert len(rects(svg, "step-bar")) == 1
    assert "not started" in " ".join(
        t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text")
    )


def test_format_seconds():
    assert timeline.format_seconds(0.25) == "250 ms"
    assert timeline.format_seconds(1.5) == "1.5 s"
    assert timeline.format_seconds(125) == "2 min 5 s"
