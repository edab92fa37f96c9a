"""Parallel, sequential, throughput, memory: stepflows next to raw Celery in the same run.

The durable waits (sleep, wait for an event, invoke) are measured in :mod:`.waits`,
flow control (a concurrency limit's cost, a slot's hand-over) in :mod:`.flow`.

Timings go from the moment the bench sends work (``stepflows.send`` / publishing
the chord) to the moment the database says it is done (run finished / chord
callback's result stored); both sides are polled the same way.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import chord
from django.db.models import Q
from django.utils import timezone
from django_celery_results.models import GroupResult, TaskResult

import stepflows
from stepflows.models import Event, Run

POLL = 0.005
TIMEOUT = 900.0


@dataclass
class Options:
    parallel_sizes: list[int]
    sequential_sizes: list[int]
    repeats: int
    warmup: int
    throughput_runs: int
    throughput_width: int
    rss_runs: int
    batch: int = 500
    sleep_runs: int = 1000
    sleep_in_flight: int = 50
    wait_sizes: list[int] = field(default_factory=lambda: [10, 10_000])
    wait_sends: int = 200
    invoke_steps: int = 50
    concurrency_runs: int = 200
    handoff_runs: int = 100
    concurrency: int = 2
    costs_n: int = 100
    peer_repeats: int = 3
    prefetch_width: int = 100
    prefetch_runs: int = 50
    prefetch_long_runs: int = 4
    prefetch_long_steps: int = 5
    prefetch_long_seconds: float = 0.2


@dataclass
class Results:
    parallel: dict[int, dict[str, float]] = field(default_factory=dict)
    sequential: dict[int, dict[str, float]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    rss: dict[str, float] = field(default_factory=dict)
    sleep: dict[str, float] = field(default_factory=dict)
    wait: dict[int, dict[str, float]] = field(default_factory=dict)
    invoke: dict[str, float] = field(default_factory=dict)
    concurrency: dict[str, float] = field(default_factory=dict)
    handoff: dict[str, float] = field(default_factory=dict)
    prefetch: dict[str, dict[str, float]] = field(default_factory=dict)
    costs: dict[str, Any] = field(default_factory=dict)
    peers: dict[str, Any] = field(default_factory=dict)


def heavy(opts: Options) -> tuple[int, int]:
    """Repeats and warm-ups of the scenarios that send hundreds of runs at a time.

    Each of their repeats takes tens of seconds, and they come after the parallel
    scenario has warmed the workers: two repeats (one with ``--repeats 1``), with
    the two sides alternating, and no warm-up round.
    """
    return max(1, min(opts.repeats, 2)), 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- waiting ----------------------------------------------------------------


def wait_runs(run_ids: list[Any], poll: float = POLL) -> None:
    deadline = time.monotonic() + TIMEOUT
    ids = [str(r) for r in run_ids]
    while True:
        done = Run.objects.filter(id__in=ids).finished().count()
        if done == len(ids):
            bad = list(Run.objects.filter(id__in=ids).exclude(status="completed")[:1])
            if bad:
                raise RuntimeError(f"bench run {bad[0].id} ended {bad[0].status}: {bad[0].error}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {len(ids) - done} runs unfinished after {TIMEOUT}s")
        time.sleep(poll)


def wait_tasks(task_ids: list[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        done = TaskResult.objects.filter(task_id__in=task_ids, status="SUCCESS").count()
        if done == len(task_ids):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"bench: {len(task_ids) - done} chords unfinished")
        time.sleep(POLL)


# -- one measurement ------------------------------------------------------


def send_runs(name: str, data: dict[str, Any], count: int = 1) -> list[Any]:
    event_ids = stepflows.send([stepflows.Event(name=name, data=data) for _ in range(count)])
    return list(Run.objects.filter(event_id__in=event_ids).values_list("id", flat=True))


def time_runs(name: str, data: dict[str, Any], count: int = 1) -> float:
    start = time.perf_counter()
    run_ids = send_runs(name, data, count)
    wait_runs(run_ids)
    return time.perf_counter() - start


def time_chords(width: int, count: int = 1) -> float:
    # Imported here: the bench app registers its workflows; importing this module must not.
    from .settings import STEPFLOWS_BENCH_FLOOR_QUEUE as queue
    from .workflows import callback_task, noop_task

    start = time.perf_counter()
    callbacks = []
    for _ in range(count):
        header = [noop_task.si().set(queue=queue) for _ in range(width)]
        callbacks.append(chord(header)(callback_task.si().set(queue=queue)).id)
    wait_tasks(callbacks)
    return time.perf_counter() - start


def in_run_seconds(name: str, data: dict[str, Any]) -> tuple[float, float]:
    """(send to completed, started to ended as recorded on the run)."""
    start = time.perf_counter()
    [run_id] = send_runs(name, data)
    wait_runs([run_id])
    wall = time.perf_counter() - start
    run = Run.objects.get(id=run_id)
    assert run.started_at and run.ended_at
    return wall, (run.ended_at - run.started_at).total_seconds()


def side_by_side(
    floor: Callable[[], float], ours: Callable[[], float], repeats: int, warmup: int
) -> tuple[list[float], list[float]]:
    """Alternate which side goes first, so drift in machine load hits both."""
    for _ in range(warmup):
        floor()
        ours()
    floors, oursl = [], []
    for i in range(repeats):
        if i % 2:
            oursl.append(ours())
            floors.append(floor())
        else:
            floors.append(floor())
            oursl.append(ours())
    return floors, oursl


# -- scenarios ----------------------------------------------------------------


#: Times ``count`` chords of a width on a peer (the plain Celery app), or None.
PeerChords = Callable[[int, int], float] | None


def parallel(
    opts: Options, res: Results, log: Callable[[str], None], plain: PeerChords = None
) -> None:
    for i, n in enumerate(opts.parallel_sizes):
        # Warm-up rounds before the first size only: by the next, every worker process
        # has its imports, caches and connections (a round at N = 1000 takes ~30 s).
        warmup = opts.warmup if i == 0 else 0
        floors, ours = side_by_side(
            functools.partial(time_chords, n),
            functools.partial(time_runs, "bench/parallel", {"n": n}),
            opts.repeats,
            warmup,
        )
        res.parallel[n] = {"chord_s": median(floors), "stepflows_s": median(ours)}
        res.parallel[n]["ratio"] = res.parallel[n]["stepflows_s"] / res.parallel[n]["chord_s"]
        log(f"parallel N={n}: chord {floors} stepflows {ours}")
        if plain is not None:
            # Measured next to the same N, after the pair: the plain worker is idle
            # while the others run, and they are while it runs.
            plains = [plain(n, 1) for _ in range(warmup + opts.repeats)][warmup:]
            res.parallel[n]["plain_s"] = median(plains)
            log(f"parallel N={n}: plain celery {plains}")
        cleanup()


def sequential(opts: Options, res: Results, log: Callable[[str], None]) -> None:
    """N inline steps in one run; also a run of no step, the fixed cost each size pays.

    ``ms_per_step`` is the whole run over N (the fixed cost included, so it falls
    with N); ``marginal_ms_per_step`` is what each step adds: (run of N - run of
    none) / N, which stays flat when nothing grows with the run's length.
    """
    empty: list[float] = []
    for n in [0, *opts.sequential_sizes]:
        for _ in range(opts.warmup):
            in_run_seconds("bench/sequential", {"n": n})
        walls, inside = [], []
        for _ in range(opts.repeats):
            wall, run_s = in_run_seconds("bench/sequential", {"n": n})
            walls.append(wall)
            inside.append(run_s)
        log(f"sequential N={n}: {walls}")
        cleanup()
        if n == 0:
            empty = walls
            continue
        res.sequential[n] = {
            "wall_s": median(walls),
            "ms_per_step": median(walls) * 1000 / n,
            "marginal_ms_per_step": (median(walls) - median(empty)) * 1000 / n,
            "in_run_ms_per_step": median(inside) * 1000 / n,
        }


def throughput(
    opts: Options, res: Results, log: Callable[[str], None], plain: PeerChords = None
) -> None:
    runs, width = opts.throughput_runs, opts.throughput_width
    repeats, warmup = heavy(opts)
    floors, ours = side_by_side(
        lambda: time_chords(width, runs),
        lambda: time_runs("bench/parallel", {"n": width}, runs),
        repeats,
        warmup,
    )
    if plain is not None:
        plains = [plain(width, runs) for _ in range(repeats)]
        res.throughput["plain_steps_per_s"] = runs * width / median(plains)
    steps = runs * width
    res.throughput.update(
        {
            "chord_steps_per_s": steps / median(floors),
            "stepflows_steps_per_s": steps / median(ours),
        }
    )
    res.throughput["ratio"] = (
        res.throughput["stepflows_steps_per_s"] / res.throughput["chord_steps_per_s"]
    )
    log(f"throughput {runs}x{width}: chord {floors} stepflows {ours}")
    cleanup()


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def memory(opts: Options, res: Results, worker: Any, log: Callable[[str], None]) -> None:
    pids = sorted(worker.child_pids())

    def many(count: int) -> None:
        # Four in five runs are one inline step, the fifth an inline step and a parallel
        # pair: every path is taken thousands of times, and 10,000 runs take a minute
        # or two rather than the bench's whole budget.
        left = count
        while left > 0:
            batch = min(opts.batch, left)
            small = max(1, batch // 5)
            runs = send_runs("bench/small", {}, small)
            if batch > small:
                runs += send_runs("bench/tiny", {}, batch - small)
            wait_runs(runs)
            left -= batch
            cleanup()

    many(max(opts.batch, opts.rss_runs // 20))  # warm-up: imports, caches, connections
    before = rss_kib(pids)
    start = time.perf_counter()
    many(opts.rss_runs)
    elapsed = time.perf_counter() - start
    after = rss_kib(pids)
    if sorted(worker.child_pids()) != pids:
        log("memory: the pool replaced a child process; RSS figures are not comparable")
    res.rss = {
        "runs": opts.rss_runs,
        "before_kib": before,
        "after_kib": after,
        "growth": (after - before) / before,
        "runs_per_s": opts.rss_runs / elapsed,
    }


# -- housekeeping -------------------------------------------------------------

BENCH_STARTED = timezone.now()


def cleanup() -> None:
    """Delete what the bench made: its runs and events, and the Celery results since it began."""
    runs = Run.objects.filter(workflow_id__startswith="bench-")
    # The events of invoked runs are named by stepflows, not by the bench.
    invoked = list(
        Event.objects.filter(runs__in=runs.exclude(caller_step=""))
        .values_list("id", flat=True)
        .distinct()
    )
    runs.delete()
    Event.objects.filter(Q(name__startswith="bench/") | Q(id__in=invoked)).delete()
    TaskResult.objects.filter(date_created__gte=BENCH_STARTED).delete()
    GroupResult.objects.filter(date_created__gte=BENCH_STARTED).delete()
