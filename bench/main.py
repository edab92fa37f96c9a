"""Entry point of the bench: set the environment, migrate, start workers, run scenarios, report.

``python -m bench`` (``make bench``) from the repository's root. The environment
(settings module, embedded folder, queue) is set before Django starts, so the
bench process and the workers it starts share it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

SIZES = [10, 100, 1000]
SCENARIOS = (
    "costs",
    "parallel",
    "sequential",
    "throughput",
    "memory",
    "sleep",
    "wait",
    "invoke",
    "concurrency",
    "handoff",
    "prefetch",
)

#: What the bench compares stepflows with besides the raw chord in its own Django worker:
#: the same chord in a plain Celery app, and DBOS Transact (PostgreSQL only).
PEERS = ("celery", "dbos")

#: The repository's root: the embedded default's folder is ``var/bench`` under it.
ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "bench.settings"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark stepflows against raw Celery chords."
    )
    p.add_argument("--parallel-sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--sequential-sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--repeats", type=int, default=3, help="measured repeats per scenario")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured repeats first")
    p.add_argument("--throughput-runs", type=int, default=200)
    p.add_argument("--throughput-width", type=int, default=10)
    p.add_argument("--rss-runs", type=int, default=3000, help="runs between the two RSS readings")
    p.add_argument("--sleep-runs", type=int, default=1000, help="runs that sleep 1 s")
    p.add_argument(
        "--sleep-in-flight", type=int, default=50, help="sleeping runs at a time (of --sleep-runs)"
    )
    p.add_argument(
        "--wait-sizes", default="10,10000", help="runs left waiting while sends are timed"
    )
    p.add_argument("--wait-sends", type=int, default=200, help="timed sends per wait size")
    p.add_argument("--invoke-steps", type=int, default=50, help="invokes (and inline steps)")
    p.add_argument(
        "--concurrency-runs",
        type=int,
        default=200,
        help="10-step runs with a concurrency limit (and without)",
    )
    p.add_argument(
        "--handoff-runs", type=int, default=100, help="runs of a workflow limited to one at a time"
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    p.add_argument(
        "--peers",
        default=None,
        help=f"comma-separated subset of {','.join(PEERS)}, or none "
        "(default: all; with --quick: celery)",
    )
    p.add_argument("--concurrency", type=int, default=2, help="worker processes")
    p.add_argument("--celery-app", default=None, help="Celery app module (default: project's)")
    p.add_argument(
        "--quick", action="store_true", help="a tiny smoke run (N=3, one repeat, 20 runs)"
    )
    return p


def environment(environ: Mapping[str, str], root: Path = ROOT) -> dict[str, str]:
    """The variables the bench and its workers run with, given the caller's ``environ``.

    The settings are :mod:`bench.settings` around the project's: the caller's
    ``DJANGO_SETTINGS_MODULE``, else ``project.settings``. The queue is the
    bench's own. Without ``DATABASE_URL`` and ``CELERY_BROKER_URL`` (the embedded
    default) the database and broker folder are the bench's own too:
    ``STEPFLOWS_BENCH_DIR``, else ``var/bench``, emptied before each run.
    """
    current = environ.get("DJANGO_SETTINGS_MODULE")
    base = environ.get("STEPFLOWS_BENCH_BASE_SETTINGS") or (
        current if current and current != SETTINGS else "project.settings"
    )
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "STEPFLOWS_BENCH_BASE_SETTINGS": base,
        "STEPFLOWS_BENCH_QUEUE": environ.get("STEPFLOWS_BENCH_QUEUE")
        or f"stepflows-bench-{os.getpid()}",
    }
    if not (environ.get("DATABASE_URL") or environ.get("CELERY_BROKER_URL")):
        env["STEPFLOWS_VAR_DIR"] = environ.get("STEPFLOWS_BENCH_DIR") or str(root / "var" / "bench")
    return env


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def options(args: argparse.Namespace) -> Any:
    from .scenarios import Options

    if args.quick:
        return Options(
            [3],
            [3],
            1,
            1,
            4,
            3,
            20,
            batch=10,
            sleep_runs=20,
            sleep_in_flight=20,
            wait_sizes=[10, 200],
            wait_sends=20,
            invoke_steps=5,
            concurrency_runs=20,
            handoff_runs=10,
            concurrency=args.concurrency,
            prefetch_width=3,
            prefetch_runs=2,
            prefetch_long_runs=2,
            prefetch_long_steps=2,
            prefetch_long_seconds=0.05,
            costs_n=3,
            peer_repeats=1,
        )
    return Options(
        ints(args.parallel_sizes),
        ints(args.sequential_sizes),
        args.repeats,
        args.warmup,
        args.throughput_runs,
        args.throughput_width,
        args.rss_runs,
        sleep_runs=args.sleep_runs,
        sleep_in_flight=args.sleep_in_flight,
        wait_sizes=ints(args.wait_sizes),
        wait_sends=args.wait_sends,
        invoke_steps=args.invoke_steps,
        concurrency_runs=args.concurrency_runs,
        handoff_runs=args.handoff_runs,
        concurrency=args.concurrency,
        peer_repeats=min(args.repeats, 2),
    )


def chosen_scenarios(text: str) -> list[str]:
    """The scenarios named in ``--scenarios``, in running order; an unknown name is an error."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"stepflows bench: unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {','.join(SCENARIOS)}"
        )
    return [s for s in SCENARIOS if s in chosen]


def chosen_peers(text: str | None, quick: bool) -> list[str]:
    """The peers named in ``--peers`` (``none``: no peer); an unknown name is an error."""
    if text is None:
        return ["celery"] if quick else list(PEERS)
    chosen = [p.strip() for p in text.split(",") if p.strip() and p.strip() != "none"]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise SystemExit(
            f"stepflows bench: unknown peer(s) {', '.join(unknown)}; choose from "
            f"{','.join(PEERS)} or none"
        )
    return chosen


def backend_name() -> str:
    from django.conf import settings
    from django.db import connection

    broker = str(getattr(settings, "CELERY_BROKER_URL", "")).split(":", 1)[0] or "?"
    transport = getattr(settings, "CELERY_BROKER_TRANSPORT", None) or ""
    if "filesystem" in transport:
        broker = "filesystem"
    return f"{connection.vendor}+{broker}"


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def stop_on_sigterm() -> None:
    """Make SIGTERM (``timeout``, a CI runner, ``kill``) unwind like Ctrl-C does.

    Python's default for SIGTERM ends the process at once, skipping ``with`` blocks:
    the bench's worker would go on running, busy, with nobody to stop it. Raising
    ``SystemExit`` instead runs ``CeleryWorker.__exit__``, which stops it.
    """

    def unwind(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def plain_chords(
    stack: ExitStack, queue: str, concurrency: int, var: Path, res: Any
) -> Callable[[int, int], float] | None:
    """Start the plain Celery app's worker (stopped with ``stack``); None if it cannot join."""
    from django.conf import settings

    from .peers.plain_celery import PlainChords, result_backend_for

    broker = str(settings.CELERY_BROKER_URL)
    backend = result_backend_for(broker)
    if backend is None:
        res.peers["plain_celery"] = {"skipped": "no Redis to join the chord in"}
        return None
    plain = PlainChords(
        broker,
        dict(getattr(settings, "CELERY_BROKER_TRANSPORT_OPTIONS", None) or {}),
        backend,
        f"{queue}-plain",
        concurrency,
        var / f"plain-worker-{uuid.uuid4().hex[:6]}.log",
        transport=getattr(settings, "CELERY_BROKER_TRANSPORT", None),
    )
    stack.enter_context(plain)
    res.peers["plain_celery"] = {"result_backend": backend.split("://", 1)[0]}
    return plain.time_chords


def dbos_peer(opts: Any, chosen: list[str], log: Callable[[str], None]) -> dict[str, Any]:
    """DBOS Transact on this PostgreSQL server, or why not."""
    from .peers import dbos

    url = dbos.database_url_of_django()
    if url is None:
        return {"skipped": "DBOS needs PostgreSQL"}
    return dbos.measure(
        url,
        opts.parallel_sizes if "parallel" in chosen else [],
        opts.sequential_sizes if "sequential" in chosen else [],
        opts.peer_repeats,
        min(opts.warmup, 1),
        log,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stop_on_sigterm()
    chosen = chosen_scenarios(args.scenarios)
    peers = chosen_peers(args.peers, args.quick)
    env = environment(os.environ)
    if "STEPFLOWS_VAR_DIR" in env:
        shutil.rmtree(env["STEPFLOWS_VAR_DIR"], ignore_errors=True)
        Path(env["STEPFLOWS_VAR_DIR"]).mkdir(parents=True)
    os.environ.update(env)
    import django

    django.setup()
    from celery import current_app
    from django.conf import settings
    from django.core.management import call_command

    from stepflows.testing import CeleryWorker

    from . import costs, flow, prefetch, report, scenarios, waits
    from .settings import STEPFLOWS_BENCH_FLOOR_QUEUE

    opts = options(args)
    call_command("migrate", verbosity=0)
    scenarios.cleanup()
    var = Path(os.environ.get("STEPFLOWS_VAR_DIR") or ROOT / "var" / "bench")
    app = args.celery_app or current_app.main or "project"
    log_lines: list[str] = []

    def log(line: str) -> None:
        log_lines.append(line)
        print("  " + line, file=sys.stderr, flush=True)

    res = scenarios.Results()
    elapsed: dict[str, float] = {}

    def timed(name: str, scenario: Callable[[], None]) -> None:
        start = time.perf_counter()
        scenario()
        elapsed[name] = round(time.perf_counter() - start, 1)
        log(f"{name}: {elapsed[name]} s")

    def worker_for(name: str, queues: str, extra: dict[str, str]) -> CeleryWorker:
        return CeleryWorker(
            app,
            env={**env, **extra},
            concurrency=args.concurrency,
            queues=queues,
            logfile=var / f"{name}-{uuid.uuid4().hex[:6]}.log",
            name=name,
            cwd=Path.cwd(),
        )

    load_before = load()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if "costs" in chosen:
        # Counted in this process, with no worker running.
        timed("costs", lambda: res.costs.update(costs.measure(opts.costs_n, opts.costs_n)))
    # Two workers, each idle while the other's side is measured: stepflows' with its
    # recommended settings, the raw chords' with Celery's and Django's defaults.
    floor_worker = worker_for(
        "stepflows-bench-floor",
        STEPFLOWS_BENCH_FLOOR_QUEUE,
        {"STEPFLOWS_BENCH_PROFILE": "celery-defaults"},
    )
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    with ExitStack() as stack:
        stack.enter_context(floor_worker)
        worker = stack.enter_context(worker_for("stepflows-bench", queue, {}))
        plain = None
        if "celery" in peers and {"parallel", "throughput"} & set(chosen):
            plain = plain_chords(stack, queue, args.concurrency, var, res)
        steps: dict[str, Callable[[], None]] = {
            "parallel": lambda: scenarios.parallel(opts, res, log, plain),
            "sequential": lambda: scenarios.sequential(opts, res, log),
            "throughput": lambda: scenarios.throughput(opts, res, log, plain),
            "memory": lambda: scenarios.memory(opts, res, worker, log),
            "sleep": lambda: waits.sleep(opts, res, log),
            "wait": lambda: waits.wait(opts, res, log),
            "invoke": lambda: waits.invoke(opts, res, log),
            "concurrency": lambda: flow.concurrency(opts, res, log),
            "handoff": lambda: flow.handoff(opts, res, log),
        }
        for name in chosen:
            if name in steps:
                timed(name, steps[name])
    if "prefetch" in chosen:
        # After the others: each multiplier's worker alone on stepflows' queue.
        timed(
            "prefetch",
            lambda: prefetch.prefetch(
                opts,
                res,
                log,
                lambda m: worker_for(
                    f"stepflows-bench-prefetch{m}", queue, {"STEPFLOWS_BENCH_PREFETCH": str(m)}
                ),
            ),
        )
    if "dbos" in peers and {"parallel", "sequential"} & set(chosen):
        # Last, with every Celery worker stopped: DBOS runs its workflows in this
        # machine's cores too.
        timed("dbos", lambda: res.peers.update(dbos=dbos_peer(opts, chosen, log)))
    scenarios.cleanup()
    meta = {
        "backend": backend_name(),
        "date": started,
        "load_before": load_before,
        "load_after": load(),
        "cpus": os.cpu_count(),
        "workers": args.concurrency,
        "repeats": opts.repeats,
        "scenario_s": elapsed,
    }
    print(report.table(meta, res))
    print(json.dumps(report.summary(meta, res), sort_keys=False))
    return 0
