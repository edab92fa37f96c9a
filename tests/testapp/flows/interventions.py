"""Workflows of the audit trail and fork tests (tests/integration/test_interventions.py)."""

from __future__ import annotations

from typing import Any

import stepflows

from ..marks import mark


def _marked(key: str, value: Any) -> Any:
    mark(key)
    return value


@stepflows.workflow(id="t-fork-group", trigger="test/fork-group")
def fork_group(ctx: stepflows.Context, step: stepflows.StepSync) -> list[Any]:
    """A step, a parallel group of two, a step: forking inside the group reruns it whole."""
    key = ctx.event.data["key"]
    before = step.run("before", _marked, f"{key}-before", 1)
    left, right = step.parallel(
        lambda: step.run("left", _marked, f"{key}-left", before + 1),
        lambda: step.run("right", _marked, f"{key}-right", before + 2),
    )
    after = step.run("after", _marked, f"{key}-after", left + right)
    return [before, left, right, after]
