"""The bench's workloads written for DBOS Transact, run by the DBOS virtual environment's python.

:mod:`bench.peers.dbos` starts this script as a subprocess of its own virtual
environment (DBOS is no dependency of stepflows), so it imports only the
standard library and ``dbos``: no Django, no stepflows. It prints one JSON line
on stdout; DBOS's own log goes to stderr.

The workloads are the bench's:

- parallel: a workflow enqueues N child workflows on a DBOS queue and waits
  for all their results; each child runs one no-op step.
- gather: an async workflow starts N no-op async steps with ``asyncio.gather``.
- sequential: a workflow runs N no-op steps one after the other.

Each figure is the median of ``--repeats`` timed rounds after ``--warmup``
unmeasured ones, timed from the call to the workflow's result.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _without_own_folder() -> None:
    """Drop this script's folder from ``sys.path``.

    Run as a script, its folder comes first on the path, and that folder holds
    ``bench/peers/dbos.py``, which would shadow the ``dbos`` package. The bench
    runs it with ``-I`` (no script folder on the path); this covers a run by hand.
    """
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]


_without_own_folder()

import argparse  # noqa: E402
import asyncio  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from importlib.metadata import version  # noqa: E402
from typing import Any  # noqa: E402

from dbos import DBOS, DBOSConfig  # noqa: E402

QUEUE = "stepflows-bench-parallel"
APP_NAME = "stepflows-bench-peer"

#: How often a waiting parent polls its children's results (DBOS's default is 1 s);
#: set from ``--result-polling`` before launch.
RESULT_POLLING_S = 0.005


# -- workflows ----------------------------------------------------------------


@DBOS.step()
def noop() -> int:
    return 1


@DBOS.step()
async def noop_async() -> int:
    return 1


@DBOS.workflow()
def child() -> int:
    return noop()


@DBOS.workflow()
def fan_out(n: int) -> int:
    """Enqueue ``n`` children, then wait for each result in turn."""
    handles = [DBOS.enqueue_workflow(QUEUE, child) for _ in range(n)]
    return sum(h.get_result(polling_interval_sec=RESULT_POLLING_S) for h in handles)


@DBOS.workflow()
async def gather(n: int) -> int:
    results = await asyncio.gather(*(noop_async() for _ in range(n)))
    return sum(results)


@DBOS.workflow()
def sequence(n: int) -> int:
    return sum(noop() for _ in range(n))


# -- setup --------------------------------------------------------------------


def config(database_url: str) -> DBOSConfig:
    """DBOS on the given system database, quiet, with nothing sent anywhere.

    No conductor key (no DBOS Conductor connection), OTLP off, and a fixed
    application version so that DBOS does not hash this file's source for one.
    """
    return {
        "name": APP_NAME,
        "system_database_url": database_url,
        "application_version": "bench",
        "enable_otlp": False,
        "log_level": "WARNING",
    }


def wait_for_queue_worker(timeout: float = 5.0) -> None:
    """Wait until DBOS polls the queue, so the first timed round does not pay for that.

    DBOS looks for newly registered queues once a second and starts a thread
    per queue; the thread's name is DBOS's own convention.
    """
    name = f"queue-worker-{QUEUE}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(t.name == name for t in threading.enumerate()):
            return
        time.sleep(0.01)


def forget_runs() -> None:
    """Delete the finished workflows, as the bench deletes its runs between sizes."""
    top = DBOS.list_workflows(has_parent=False, load_input=False, load_output=False)
    ids = [w.workflow_id for w in top]
    if ids:
        DBOS.delete_workflows(ids, delete_children=True)


# -- timing -------------------------------------------------------------------


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def rounds(call: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Seconds of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    return [timed(call) for _ in range(repeats)]


def measure_sizes(
    sizes: list[int], run: Callable[[int], object], repeats: int, warmup: int
) -> dict[int, list[float]]:
    samples: dict[int, list[float]] = {}
    for i, n in enumerate(sizes):
        # Warm-up before the first size only, as the bench does for stepflows.
        samples[n] = rounds(functools.partial(run, n), repeats, warmup if i == 0 else 0)
        forget_runs()
    return samples


def medians(samples: dict[int, list[float]], scale: Callable[[int, float], float]) -> dict:
    return {str(n): scale(n, statistics.median(s)) for n, s in samples.items()}


# -- main ---------------------------------------------------------------------


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The bench's workloads on DBOS Transact.")
    p.add_argument("--database-url", required=True, help="DBOS's system database")
    p.add_argument("--parallel-sizes", type=ints, default=[10, 100, 1000])
    p.add_argument("--sequential-sizes", type=ints, default=[10, 100, 1000])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--queue-polling",
        type=float,
        default=0.005,
        help="seconds between DBOS's polls of the queue (DBOS's default is 1)",
    )
    p.add_argument(
        "--result-polling",
        type=float,
        default=0.005,
        help="seconds between a parent's polls of a child's result (DBOS's default is 1)",
    )
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.new_event_loop()
    parallel = measure_sizes(args.parallel_sizes, fan_out, args.repeats, args.warmup)
    gather_samples: dict[int, list[float]] = {}
    gather_error = None
    try:
        gather_samples = measure_sizes(
            args.parallel_sizes,
            lambda n: loop.run_until_complete(gather(n)),
            args.repeats,
            args.warmup,
        )
    except Exception as e:  # the second figure is optional: keep the others
        gather_error = f"{type(e).__name__}: {e}"
    finally:
        loop.close()
    sequential = measure_sizes(args.sequential_sizes, sequence, args.repeats, args.warmup)
    return {
        "version": version("dbos"),
        "parallel_s": medians(parallel, lambda n, s: s),
        "gather_s": medians(gather_samples, lambda n, s: s),
        "sequential_ms_per_step": medians(sequential, lambda n, s: s * 1000 / n),
        "gather_error": gather_error,
        "samples": {
            "parallel": {str(n): s for n, s in parallel.items()},
            "gather": {str(n): s for n, s in gather_samples.items()},
            "sequential": {str(n): s for n, s in sequential.items()},
        },
        "settings": {
            "queue_polling_s": args.queue_polling,
            "result_polling_s": args.result_polling,
        },
    }


def main(argv: list[str] | None = None) -> int:
    global RESULT_POLLING_S
    args = parser().parse_args(argv)
    RESULT_POLLING_S = args.result_polling
    DBOS(config=config(args.database_url))
    DBOS.launch()
    try:
        DBOS.register_queue(QUEUE, polling_interval_sec=args.queue_polling)
        wait_for_queue_worker()
        result = run(args)
    finally:
        DBOS.destroy()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
