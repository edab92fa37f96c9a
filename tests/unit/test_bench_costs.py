"""The bench's cost counter: statements, commits and messages per step, on the test database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import connections

from bench import costs
from stepflows import dispatch
from stepflows.models import Run
from stepflows.registry import registry


@pytest.fixture
def bench_workflows() -> Iterator[None]:
    """The bench's workflows, registered for this test only (the bench app is not installed)."""
    saved = dict(registry._workflows)
    from bench import workflows

    for fn in (workflows.bench_parallel, workflows.bench_sequential):
        registry.register(fn.stepflows_workflow)
    yield
    registry._workflows.clear()
    registry._workflows.update(saved)


def test_statements_are_classified_by_their_verb():
    assert costs.kind_of('SELECT "id" FROM "stepflows_run"') == "select"
    assert costs.kind_of("  insert into t (a) select 1 from r where id = %s") == "insert"
    assert costs.kind_of("/* fenced */ UPDATE t SET a = 1 RETURNING a") == "update"
    assert costs.kind_of("(SELECT 1) UNION (SELECT 2)") == "select"
    assert costs.kind_of("DELETE FROM t") == "delete"
    assert costs.kind_of("WITH x AS (SELECT 1) UPDATE t SET a = 1") == "update"
    assert costs.kind_of("with x as (delete from t returning id) select * from x") == "select"
    assert costs.kind_of("WITH x AS (SELECT 1) UPDATE t SET a = (SELECT 2)") == "update"
    assert costs.kind_of("BEGIN IMMEDIATE") == "other"
    assert costs.kind_of('SAVEPOINT "s1"') == "other"


@pytest.mark.django_db(transaction=True)
def test_one_run_publishes_its_first_invocation_each_step_task_and_one_callback(
    bench_workflows: None,
) -> None:
    tally = costs.drive("bench/parallel", 3)

    assert dict(tally.messages) == {
        dispatch.EXECUTE_RUN: 1,
        dispatch.RUN_STEP: 3,
        dispatch.RESUME_RUN: 1,
    }
    assert Run.objects.get(workflow_id="bench-parallel").status == "completed"
    assert "commit" not in vars(connections["default"])  # unwrapped


@pytest.mark.django_db(transaction=True)
def test_measure_counts_each_step_and_each_run(bench_workflows: None) -> None:
    result = costs.measure(parallel_n=5, sequential_n=5)

    assert result["n"] == {"parallel": 5, "sequential": 5}
    for shape in ("parallel", "sequential"):
        assert set(result[shape]) == {"per_step", "per_run"}
        for part in result[shape].values():
            assert set(part) == set(costs.KEYS)
            assert all(v >= 0 for v in part.values()), (shape, part)
            kinds = sum(part[k] for k in ("select", "insert", "update", "delete", "other"))
            assert part["statements"] == pytest.approx(kinds, abs=0.05)
    parallel, sequential = result["parallel"], result["sequential"]
    # A sequential step is recorded inline: at least its row's INSERT, no message.
    assert sequential["per_step"]["insert"] >= 1
    assert sequential["per_step"]["messages"] == 0
    assert sequential["per_step"]["commits"] >= 1
    # A parallel step is its own task and its own transaction; the group has one callback.
    assert parallel["per_step"]["messages"] == 1
    assert parallel["per_run"]["messages"] == 2  # the first invocation and the callback
    assert parallel["per_step"]["commits"] >= 1
    assert parallel["per_step"]["update"] >= 1  # the step's outcome, at least
    # Every run the counting made is gone.
    assert not Run.objects.filter(workflow_id__startswith="bench-").exists()

    lines = costs.table_lines(result)
    assert len(lines) == 4
    assert all(len(line) < 100 for line in lines)
    assert lines[0].startswith("cost per step (n=5)")
    assert lines[1].startswith("parallel step")


def test_measure_needs_two_steps_at_least():
    with pytest.raises(ValueError, match="at least 2 steps"):
        costs.measure(parallel_n=1)


def test_table_lines_are_aligned_and_show_whole_numbers_plainly():
    step = dict.fromkeys(costs.KEYS, 1.0)
    costs_ = {
        "parallel": {"per_step": step | {"statements": 3.0}, "per_run": step | {"commits": 5.0}},
        "sequential": {"per_step": step, "per_run": step | {"statements": 8.5}},
        "n": {"parallel": 100, "sequential": 10},
    }
    lines = costs.table_lines(costs_)
    assert lines[0].startswith("cost per step (n=100/10)")
    assert "5 / 1" in lines[3] and "1 / 8.50" in lines[3]
    header_end = lines[0].index("messages") + len("messages")
    assert lines[1][header_end - 4 : header_end] == "1.00"
