"""The flow-control scenarios: what a concurrency limit costs, and how fast a slot changes hands.

Neither has a raw Celery floor. The cost of a limit is set against the same
workflow without one, in the same run (the two sides alternate which goes
first). A hand-over is read from the rows the workers wrote: a run's end
against the start of the next run's step (both on the workers' clocks).
``Run.started_at`` is not used for the second: it is stamped when a worker
first picks the run up, before the run finds the slot taken and goes in line.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from stepflows.models import Run, Slot, Step

from .scenarios import (
    TIMEOUT,
    Options,
    Results,
    cleanup,
    heavy,
    median,
    send_runs,
    side_by_side,
    time_runs,
    wait_runs,
)
from .waits import SLOW_POLL, percentile, rounded

WIDTH = 10
"""Steps per run of the concurrency-overhead scenario (the throughput scenario's runs)."""
TENANT = "bench-tenant"
"""Every limited run has this key: one key, one lock, the most contention a limit can add."""


def concurrency(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """R runs of a 10-step parallel workflow under Concurrency(1000, key="data.tenant")
    against the same R runs without a limit; runs per second of each, and their ratio."""
    runs = opts.concurrency_runs
    free, limited = side_by_side(
        lambda: time_runs("bench/parallel", {"n": WIDTH}, runs),
        lambda: time_runs("bench/parallel-limited", {"n": WIDTH, "tenant": TENANT}, runs),
        *heavy(opts),
    )
    res.concurrency = {
        "runs": runs,
        "width": WIDTH,
        "unlimited_runs_per_s": runs / median(free),
        "limited_runs_per_s": runs / median(limited),
    }
    res.concurrency["ratio"] = (
        res.concurrency["limited_runs_per_s"] / res.concurrency["unlimited_runs_per_s"]
    )
    log(f"concurrency {runs}x{WIDTH}: no limit {rounded(free)} s, limit {rounded(limited)} s")
    cleanup()


def handoff(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """N runs of a one-step workflow limited to one run at a time, sent at once behind a run
    that holds the slot until they are all in line: p50 and p99 of each run's end to the
    next run's step start, in ms (N hand-overs)."""
    n = opts.handoff_runs
    for _ in range(opts.warmup):
        wait_runs(send_runs("bench/handoff", {}, min(n, 5)), poll=SLOW_POLL)
    cleanup()
    [first] = send_runs("bench/handoff", {"line": n})
    _wait_holding(first)
    start = time.perf_counter()
    run_ids = [first, *send_runs("bench/handoff", {}, n)]
    wait_runs(run_ids, poll=SLOW_POLL)
    wall = time.perf_counter() - start
    ended = dict(Run.objects.filter(id__in=run_ids).values_list("id", "ended_at"))
    began = sorted(
        (started_at, run_id)
        for run_id, started_at in Step.objects.filter(
            run_id__in=run_ids, step_id="noop"
        ).values_list("run_id", "started_at")
        if started_at is not None
    )
    if len(began) != len(run_ids):
        raise RuntimeError(f"bench handoff: {len(began)} of {len(run_ids)} runs have a step")
    gaps = []
    for (_, before), (after_start, _) in itertools.pairwise(began):
        end = ended.get(before)
        if end is None:
            raise RuntimeError(f"bench handoff: run {before} has no end")
        gaps.append((after_start - end).total_seconds() * 1000)
    in_line = Run.objects.get(id=first).output
    res.handoff = {
        "runs": n,
        "in_line": float(in_line or 0),
        "p50_ms": percentile(gaps, 0.5),
        "p99_ms": percentile(gaps, 0.99),
        "min_ms": min(gaps),
        "max_ms": max(gaps),
        "wall_s": wall,
    }
    if (in_line or 0) < n:
        log(f"handoff: only {in_line} of {n} runs were in line when the first ended")
    log(f"handoff {n} runs: done in {wall:.2f}s, ms {rounded(res.handoff)}")
    cleanup()


def _wait_holding(run_id: Any) -> None:
    """Until the run holds the slot (the others, sent next, all go in line behind it)."""
    deadline = time.monotonic() + TIMEOUT
    while not Slot.objects.filter(run_id=run_id).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: handoff run {run_id} holds no slot after {TIMEOUT}s")
        time.sleep(SLOW_POLL / 10)
