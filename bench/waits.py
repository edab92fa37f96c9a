"""The durable-wait scenarios: how late a sleep wakes, what waiting runs cost a send, invoke.

None has a raw Celery floor. A sleep's lag is read from the rows the workers
wrote: the next step's start (the worker's clock) against the sleep's due
time (the database's clock; the same machine's, unless the database is on
another host). A send is timed in the bench process; an invoke is set
against the same number of inline no-op steps.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import stepflows
from stepflows.models import Run, RunStatus, Step

from .scenarios import (
    TIMEOUT,
    Options,
    Results,
    cleanup,
    median,
    send_runs,
    side_by_side,
    time_runs,
)

SLEEP_SECONDS = 1
# The bench process polls more gently here than when it times runs: these
# scenarios measure the workers (or one send), and the poll must not load them.
SLOW_POLL = 0.1
# Sleeping runs are topped up this often: often enough to keep the runs in flight.
SLEEP_POLL = 0.02


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): a value that occurred, never interpolated."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def sleep(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """N runs sleep 1 s, at most ``sleep_in_flight`` at a time; lag = next step's start - due.

    A new run is sent each time one completes, so the workers keep spare
    capacity: the lag is the wake-up's own (countdown message, claim, replay),
    not a queue of first invocations that the countdown message would sit behind.
    """
    n, width = opts.sleep_runs, max(1, opts.sleep_in_flight)
    start = time.perf_counter()
    deadline = time.monotonic() + TIMEOUT
    run_ids: list[Any] = []
    active: set[Any] = set()
    while len(run_ids) < n or active:
        more = min(width - len(active), n - len(run_ids))
        if more > 0:
            new = send_runs("bench/sleep", {"seconds": SLEEP_SECONDS}, more)
            run_ids += new
            active.update(new)
        time.sleep(SLEEP_POLL)
        for run_id, status, error in (
            Run.objects.filter(id__in=active).finished().values_list("id", "status", "error")
        ):
            if status != RunStatus.COMPLETED:
                raise RuntimeError(f"bench run {run_id} ended {status}: {error}")
            active.discard(run_id)
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {len(active)} sleeping runs unfinished after {TIMEOUT}s")
    wall = time.perf_counter() - start
    due = {
        run_id: wake_at
        for run_id, wake_at in Step.objects.filter(run_id__in=run_ids, step_id="nap").values_list(
            "run_id", "wake_at"
        )
        if wake_at is not None
    }
    started = Step.objects.filter(run_id__in=run_ids, step_id="after-nap").values_list(
        "run_id", "started_at"
    )
    lags = [
        (began - due[run_id]).total_seconds() * 1000
        for run_id, began in started
        if began is not None and run_id in due
    ]
    if len(lags) != n:
        raise RuntimeError(f"bench sleep: {len(lags)} of {n} runs have a due time and a next step")
    res.sleep = {
        "runs": n,
        "in_flight": width,
        "sleep_s": SLEEP_SECONDS,
        "p50_ms": percentile(lags, 0.5),
        "p99_ms": percentile(lags, 0.99),
        "min_ms": min(lags),
        "max_ms": max(lags),
        "wall_s": wall,
    }
    log(f"sleep {n} runs, {width} at a time: done in {wall:.1f}s, lag ms {rounded(res.sleep)}")
    cleanup()


def wait(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """Mean time of a send() that matches none of W waiting runs, for each W (smallest first)."""
    waiting = 0
    for size in sorted(set(opts.wait_sizes)):
        start = time.perf_counter()
        for first in range(waiting, size, opts.batch):
            stepflows.send(
                [
                    stepflows.Event(name="bench/wait", data={"key": f"waiting-{i}"})
                    for i in range(first, min(first + opts.batch, size))
                ]
            )
        waiting = size
        _wait_waiting(size)
        setup = time.perf_counter() - start
        for _ in range(opts.warmup):
            _send_unmatched()
        times = [_send_unmatched() for _ in range(opts.wait_sends)]
        res.wait[size] = {
            "sends": len(times),
            "mean_ms": statistics.fmean(times) * 1000,
            "p50_ms": percentile(times, 0.5) * 1000,
            "p99_ms": percentile(times, 0.99) * 1000,
            "setup_s": setup,
        }
        log(f"wait W={size}: waiting after {setup:.1f}s; send {rounded(res.wait[size])}")
    woken = Run.objects.filter(workflow_id="bench-wait").exclude(waiting_for="event").count()
    if woken:
        log(f"wait: {woken} waiting runs were woken by events that matched none of them")
    cleanup()


def invoke(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """N sequential step.invoke of a no-op child against N inline no-op steps, per step."""
    n = opts.invoke_steps
    inline, invoked = side_by_side(
        functools.partial(time_runs, "bench/sequential", {"n": n}),
        functools.partial(time_runs, "bench/invoke", {"n": n}),
        opts.repeats,
        opts.warmup,
    )
    per_inline = median(inline) * 1000 / n
    per_invoke = median(invoked) * 1000 / n
    res.invoke = {
        "n": n,
        "ms_per_invoke": per_invoke,
        "ms_per_inline_step": per_inline,
        "overhead_ms": per_invoke - per_inline,
    }
    log(f"invoke N={n}: inline {rounded(inline)} s, invoke {rounded(invoked)} s")
    cleanup()


# -- helpers ------------------------------------------------------------------------


def rounded(values: Any) -> Any:
    """Figures for a log line: three decimals."""
    if isinstance(values, dict):
        return {k: round(v, 3) for k, v in values.items()}
    return [round(v, 3) for v in values]


def _send_unmatched() -> float:
    """One send() of a bench/match event whose key no run waits for; seconds."""
    data = {"key": f"nobody-{uuid.uuid4().hex}"}
    start = time.perf_counter()
    stepflows.send("bench/match", data=data)
    return time.perf_counter() - start


def _wait_waiting(count: int) -> None:
    """Until ``count`` bench-wait runs wait for their event (their wait is registered)."""
    deadline = time.monotonic() + TIMEOUT
    runs = Run.objects.filter(workflow_id="bench-wait")
    while True:
        ready = runs.filter(status=RunStatus.WAITING, waiting_for="event").count()
        if ready >= count:
            return
        bad = list(runs.finished()[:1])
        if bad:
            raise RuntimeError(f"bench run {bad[0].id} ended {bad[0].status}: {bad[0].error}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {count - ready} runs not waiting after {TIMEOUT}s")
        time.sleep(SLOW_POLL)
