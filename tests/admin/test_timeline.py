"""The SVG timeline: a bar per run and per attempt; queued, waiting and backoff apart from
running; failures marked; parallel overlap; a readable scale; intervention markers.

Unit tests: plain objects stand in for rows, no database.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from stepflows import timeline

from .conftest import PARALLEL_STEPS, XSS, attempt

SVG = "{http://www.w3.org/2000/svg}"
BASE = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def fake_run(
    steps: list[dict[str, Any]],
    *,
    status: str = "completed",
    offset: float = 0.0,
    duration: float = 2.0,
    workflow: str = "wf",
    pk: str = "run-1",
    queued: float = 0.0,
) -> tuple[Any, list[Any]]:
    """A run and its steps as plain objects; ``queued``: seconds from created to started."""
    base = BASE + timedelta(seconds=offset)
    run = SimpleNamespace(
        pk=pk,
        workflow_id=workflow,
        status=status,
        created_at=base - timedelta(seconds=queued),
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
                attempt_count=len(tries),
                attempts_base=spec.get("attempts_base", 0),
                retry_at=spec.get("retry_at"),
            )
        )
    return run, rows


def draw(
    *runs: tuple[Any, list[Any]],
    relative: bool = False,
    interventions: list[Any] | None = None,
    now: datetime | None = None,
) -> ET.Element:
    tracks = [timeline.track_for_run(r, s, interventions=interventions) for r, s in runs]
    svg = timeline.render(tracks, relative=relative, now=now)
    return ET.fromstring(str(svg))  # well-formed XML, or this raises


def rects(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [r for r in svg.iter(f"{SVG}rect") if cls in r.get("class", "").split()]


def span(rect: ET.Element) -> tuple[float, float]:
    x = float(rect.get("x"))
    return x, x + float(rect.get("width"))


def texts(svg: ET.Element, cls: str | None = None) -> list[str]:
    return [
        t.text or ""
        for t in svg.iter(f"{SVG}text")
        if cls is None or cls in t.get("class", "").split()
    ]


def groups(svg: ET.Element, cls: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if cls in g.get("class", "").split()]


def step_spans(svg: ET.Element) -> dict[str, tuple[float, float]]:
    """Each step's extent: from its first attempt's start to its last attempt's end (s)."""
    found: dict[str, tuple[float, float]] = {}
    for bar in rects(svg, "attempt-bar"):
        start, end = float(bar.get("data-start")), float(bar.get("data-end"))
        lo, hi = found.get(bar.get("data-step"), (start, end))
        found[bar.get("data-step")] = (min(lo, start), max(hi, end))
    return found


def test_one_bar_per_run_and_per_attempt_and_no_step_bar():
    svg = draw(fake_run(PARALLEL_STEPS))
    assert len(rects(svg, "run-bar")) == 1
    assert rects(svg, "step-bar") == []  # no bar for the step on top of its attempts
    lanes = [g.get("data-step") for g in groups(svg, "lane") if "step" in g.get("class").split()]
    assert lanes == ["prepare", "left", "right", "after"]
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
    bars = step_spans(svg)
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
    steps[0].lease_owner = "host-b:42:token"
    svg = draw((run, steps))
    # The running step: its recorded attempt, then an open one on the worker holding it.
    assert [r.get("class") for r in rects(svg, "attempt-bar")] == [
        "attempt-bar ok",
        "attempt-bar open",
    ]
    tips = " ".join(t.text or "" for t in svg.iter(f"{SVG}title"))
    assert "a attempt 2 running" in tips and "host-b:42" in tips
    assert "not started" in " ".join(texts(svg))


def test_format_seconds():
    assert timeline.format_seconds(0.25) == "250 ms"
    assert timeline.format_seconds(1.5) == "1.5 s"
    assert timeline.format_seconds(125) == "2 min 5 s"


# -- queued, waiting, backoff ------------------------------------------------------------


def test_queued_time_is_drawn_apart_when_the_run_was_picked_up_later():
    svg = draw(fake_run(PARALLEL_STEPS, queued=0.5))
    [queued] = rects(svg, "queued-bar")
    assert (float(queued.get("data-start")), float(queued.get("data-end"))) == (0.0, 0.5)
    [run_bar] = rects(svg, "run-bar")
    assert float(run_bar.get("data-start")) == 0.5  # running from when a worker took it
    assert span(queued)[1] <= span(run_bar)[0] + 0.1
    tips = [t.text for t in svg.iter(f"{SVG}title")]
    assert "queued 500 ms: sent, not yet picked up by a worker" in tips


def test_no_queued_segment_when_picked_up_at_once():
    assert rects(draw(fake_run(PARALLEL_STEPS)), "queued-bar") == []


def test_parallel_steps_wait_from_their_scheduling_to_their_first_attempt():
    svg = draw(fake_run(PARALLEL_STEPS))
    waiting = {r.get("data-step"): r for r in rects(svg, "waiting-bar")}
    # Handed to Celery when "prepare" ended (0.2 s), started at 0.3 s; sequential steps run
    # inline and do not wait.
    assert sorted(waiting) == ["left", "right"]
    assert float(waiting["left"].get("data-start")) == 0.2
    assert float(waiting["left"].get("data-end")) == 0.3
    assert waiting["left"].get("data-pending") == "false"
    # The waiting outline is not an attempt: running starts at the attempt.
    assert step_spans(svg)["left"][0] == 0.3


def test_a_step_still_waiting_for_a_worker():
    run, steps = fake_run(PARALLEL_STEPS[:2], status="running")
    run.ended_at = None
    left = steps[1]
    left.status, left.started_at, left.ended_at, left.attempts = "scheduled", None, None, []
    svg = draw((run, steps), now=BASE + timedelta(seconds=1))
    [waiting] = rects(svg, "waiting-bar")
    assert waiting.get("data-pending") == "true"
    assert (float(waiting.get("data-start")), float(waiting.get("data-end"))) == (0.2, 1.0)
    assert "not started" not in " ".join(texts(svg))


def test_backoff_between_attempts_is_labelled_with_its_delay():
    svg = draw(fake_run(PARALLEL_STEPS))
    # "right" failed at 0.5 s and was tried again at 0.8 s.
    assert texts(svg, "backoff-label") == ["backoff 300 ms"]
    [gap] = groups(svg, "backoff")
    assert gap.find(f"{SVG}title").text == "right: backoff 300 ms, then attempt 2"
    assert float(gap.find(f"{SVG}line").get("data-seconds")) == 0.3


def test_a_pending_retry_shows_the_next_retry_time():
    retry_at = BASE + timedelta(seconds=3)
    run, steps = fake_run(
        [
            {
                "step_id": "flaky",
                "start": 0,
                "end": 1,
                "status": "scheduled",
                "attempts": [(0, 1, "boom")],
                "retry_at": retry_at,
            }
        ],
        status="waiting",
    )
    run.ended_at = None
    svg = draw((run, steps), now=BASE + timedelta(seconds=1.5))
    [label] = texts(svg, "backoff-label")
    assert label == f"next retry {timeline.local_time(retry_at)}"
    assert len(groups(svg, "pending")) == 1
    assert float(svg.get("data-span")) >= 3.0  # the axis reaches the retry


def test_a_persons_retry_is_not_labelled_as_a_backoff():
    steps = [
        {
            "step_id": "only",
            "start": 0,
            "end": 4,
            "attempts": [(0, 1, "no"), (3, 4, "")],
            "attempts_base": 1,  # the second attempt came after a manual retry
        }
    ]
    svg = draw(fake_run(steps, duration=4.0))
    assert texts(svg, "backoff-label") == []
    assert len(groups(svg, "retry-gap")) == 1


# -- scale ---------------------------------------------------------------------------------


def test_a_1_ms_step_in_a_1_s_run_keeps_a_minimum_width_and_says_how_long():
    steps = [{"step_id": f"tiny{i}", "start": 0.1 * i, "end": 0.1 * i + 0.001} for i in range(5)]
    svg = draw(fake_run(steps, duration=1.0))
    bars = rects(svg, "attempt-bar")
    assert len(bars) == 5
    for bar in bars:
        assert float(bar.get("width")) >= timeline.MIN_BAR
        assert bar.get("data-widened") == "true"
    assert texts(svg, "bar-duration") == ["1 ms"] * 5
    assert svg.get("data-min-bar") == f"{timeline.MIN_BAR:g}"


def test_the_legend_explains_the_new_styles_and_the_scale():
    from django.template.loader import render_to_string

    legend = render_to_string("admin/stepflows/includes/legend.html")
    for words in ("queued", "waiting", "backoff", "next retry", "cancelled", "replayed"):
        assert words in legend, words
    assert f"at least {timeline.MIN_BAR:g} px wide" in legend


# -- markers -------------------------------------------------------------------------------


def intervention(seconds: float, action: str = "retry", by: str = "alice", reason: str = "") -> Any:
    return SimpleNamespace(
        at=BASE + timedelta(seconds=seconds), action=action, by=by, reason=reason
    )


def test_a_marker_where_a_person_intervened():
    svg = draw(fake_run(PARALLEL_STEPS), interventions=[intervention(1.5, reason="flaky API")])
    [marker] = groups(svg, "intervention-marker")
    assert marker.get("data-action") == "retry" and marker.get("data-by") == "alice"
    assert float(marker.get("data-at")) == 1.5
    title = marker.find(f"{SVG}title").text
    assert title.startswith("retry by alice at 2024-05-01 ") and title.endswith(": flaky API")
    assert marker.find(f"{SVG}text").text == "retry (alice)"
    line = marker.find(f"{SVG}line")
    [run_bar] = rects(svg, "run-bar")
    x0, x1 = span(run_bar)
    assert float(line.get("x1")) == pytest.approx(x0 + (x1 - x0) * 1.5 / 2.0, abs=0.2)
    # The line crosses the run's lanes.
    assert float(line.get("y2")) - float(line.get("y1")) >= 5 * timeline.ROW


def test_markers_are_escaped_and_drawn_across_the_picture_from_render():
    run, steps = fake_run(PARALLEL_STEPS)
    svg_text = str(
        timeline.render(
            [timeline.track_for_run(run, steps)],
            interventions=[intervention(0.5, action="cancel", by=XSS, reason=XSS)],
        )
    )
    assert "<script>" not in svg_text and "&lt;script&gt;" in svg_text
    [marker] = groups(ET.fromstring(svg_text), "intervention-marker")
    assert marker.get("data-action") == "cancel"


def test_no_marker_without_interventions():
    assert groups(draw(fake_run(PARALLEL_STEPS)), "intervention-marker") == []
