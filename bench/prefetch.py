"""``worker_prefetch_multiplier`` 1 against 4, for short steps and for long ones.

stepflows recommends 1 (a killed worker takes at most one message per process
with it). Each multiplier gets a worker of its own, started after the other
scenarios with the same settings but that one, and runs:

- short: a parallel group of N no-op steps, and many 10-step groups at once
  (the throughput workload, smaller);
- long: runs whose parallel steps each sleep, several runs at once, so the
  pool is always busy and messages wait in the broker or in a prefetch buffer.

The guarantees hold with either value (messages are acknowledged late); what
changes is how fast, and how many messages a killed worker holds.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from .scenarios import Options, Results, cleanup, median, time_runs

MULTIPLIERS = (1, 4)


def prefetch(
    opts: Options,
    res: Results,
    log: Callable[[str], None],
    worker_with: Callable[[int], AbstractContextManager[Any]],
) -> None:
    """Measure each multiplier with a worker from ``worker_with(multiplier)``."""
    width = opts.prefetch_width
    for multiplier in MULTIPLIERS:
        with worker_with(multiplier):
            time_runs("bench/parallel", {"n": width})  # warm-up
            short = [time_runs("bench/parallel", {"n": width}) for _ in range(opts.repeats)]
            runs, rounds = opts.prefetch_runs, max(1, opts.repeats // 2)
            many = [time_runs("bench/parallel", {"n": 10}, runs) for _ in range(rounds)]
            long_data = {"n": opts.prefetch_long_steps, "seconds": opts.prefetch_long_seconds}
            long = [
                time_runs("bench/long", long_data, opts.prefetch_long_runs) for _ in range(rounds)
            ]
            cleanup()
        work = opts.prefetch_long_runs * opts.prefetch_long_steps * opts.prefetch_long_seconds
        res.prefetch[str(multiplier)] = {
            "width": width,
            "short_parallel_s": median(short),
            "short_steps_per_s": runs * 10 / median(many),
            "long_s": median(long),
            "long_ideal_s": work / opts.concurrency,
        }
        log(f"prefetch {multiplier}: short {short} many {many} long {long}")
