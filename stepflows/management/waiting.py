"""``--wait``: follow runs until they end, and the exit status their outcomes give.

Exit status 0 when every run completed, 1 when any failed, was blocked, was
cancelled or skipped, 2 when the timeout came first (the runs go on; only the waiting stops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from django.core.management.base import CommandError

from ..models import FINISHED_RUN_STATUSES, Run, RunStatus
from .runinfo import duration_text, error_line

EXIT_FAILED = 1
EXIT_TIMEOUT = 2

#: Seconds between two looks at the runs: quick at first, then once a second.
FIRST_POLL = 0.1
MAX_POLL = 1.0

WAIT_HELP = (
    "wait for the run(s) to end and print each outcome; exit status 0 when all completed, "
    "1 when any failed, was blocked, cancelled or skipped, 2 on timeout"
)
TIMEOUT_HELP = "with --wait: stop waiting after this many seconds (default: no limit)"


def outcome_line(run: Run) -> str:
    """``completed  <id>  <workflow>  in 1.2 s`` or ``failed ...: ValueError: ...``."""
    took = duration_text(run.duration) if run.started_at else ""
    line = f"{run.status:9}  {run.id}  {run.workflow_id}"
    if took:
        line += f"  in {took}"
    if run.status != RunStatus.COMPLETED and run.error:
        line += f": {error_line(run.error, 100)}"
    return line


def wait_for_runs(
    run_ids: Sequence[Any],
    *,
    timeout: float | None,
    write: Callable[[str], Any],
    sleep: Callable[[float], Any] = time.sleep,
) -> None:
    """Print each run's outcome as it ends; raise CommandError unless all completed.

    The CommandError's ``returncode`` is the exit status of ``manage.py``:
    1 when a run did not complete, 2 when ``timeout`` seconds passed first.
    """
    pending = [str(r) for r in dict.fromkeys(str(r) for r in run_ids)]
    if not pending:
        return
    total = len(pending)
    deadline = None if timeout is None else time.monotonic() + timeout
    unsuccessful: dict[str, int] = {}
    interval = FIRST_POLL
    try:
        while pending:
            ended = Run.objects.filter(id__in=pending, status__in=FINISHED_RUN_STATUSES)
            for run in sorted(ended, key=lambda r: pending.index(str(r.id))):
                pending.remove(str(run.id))
                write(outcome_line(run))
                if run.status != RunStatus.COMPLETED:
                    unsuccessful[run.status] = unsuccessful.get(run.status, 0) + 1
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                _timed_out(pending, timeout or 0, total, write)
            wait = interval if deadline is None else min(interval, deadline - time.monotonic())
            sleep(max(0.0, wait))
            interval = min(MAX_POLL, interval * 1.5)
    except KeyboardInterrupt:
        raise CommandError(
            f"stopped waiting for {len(pending)} run(s); they go on running "
            "(`manage.py stepflows show RUN_ID` tells how they are doing)",
            returncode=130,
        ) from None
    if unsuccessful:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(unsuccessful.items()))
        raise CommandError(
            f"{sum(unsuccessful.values())} of {total} run(s) did not complete ({counts}); "
            "`manage.py stepflows show RUN_ID` shows why",
            returncode=EXIT_FAILED,
        )


def _timed_out(pending: list[str], timeout: float, total: int, write: Callable[[str], Any]) -> None:
    runs = Run.objects.filter(id__in=pending)
    for run in sorted(runs, key=lambda r: pending.index(str(r.id))):
        write(f"{'still ' + run.status:9}  {run.id}  {run.workflow_id}")
    raise CommandError(
        f"timed out after {timeout:g} s with {len(pending)} of {total} run(s) not finished; "
        "they go on running (`manage.py stepflows show RUN_ID` tells how they are doing)",
        returncode=EXIT_TIMEOUT,
    )
