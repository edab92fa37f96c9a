"""What one step costs stepflows, counted, not timed: statements, commits, broker messages.

Timings move with the machine; these counts do not. :func:`measure` drives
one run of ``bench-parallel`` and one of ``bench-sequential`` to their end
with the in-process driver (:class:`stepflows.testing.InProcess`: the same
engine entry points the Celery tasks call, one message after another in this
process, no worker, no broker), and counts on the default database
connection:

- statements, by kind: SELECT, INSERT, UPDATE, DELETE, other (``BEGIN`` on
  SQLite, savepoints);
- commits: calls of the connection's ``commit`` (the end of an outermost
  ``transaction.atomic``), plus every INSERT, UPDATE or DELETE run outside a
  transaction in autocommit mode, which the database commits on its own
  (an implicit commit). A SELECT outside a transaction is not counted: it
  writes nothing to make durable;
- messages: what the engine hands the publisher (``stepflows.dispatch``),
  by task name.

The per-step cost is ``(cost at N - cost at N=1) / (N - 1)``, the fixed
cost of a run ``cost at N=1 - per-step cost``: so a run of N steps costs
``per_run + N * per_step``. The physical limit a parallel step is compared
with is one durable write (one commit) and one broker message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from stepflows import dispatch
from stepflows.testing import InProcess

#: The keys of one cost, in the order the table shows them.
KEYS = ("statements", "select", "insert", "update", "delete", "other", "commits", "messages")
KINDS = ("select", "insert", "update", "delete")
WRITES = frozenset({"insert", "update", "delete"})

#: Leading comments and parentheses before a statement's first word.
_LEAD = re.compile(r"^(?:\s+|/\*.*?\*/|--[^\n]*\n|\()*", re.DOTALL)

#: The event that starts each workflow the table has a row for.
WORKFLOWS = {"parallel": "bench/parallel", "sequential": "bench/sequential"}

_WORD = re.compile(r"[()]|[A-Za-z_]+")


def kind_of(sql: str) -> str:
    """The statement's kind: its first word (``WITH ...`` goes by its main verb), else other."""
    words = _LEAD.sub("", sql, count=1).split(None, 1)
    first = words[0].lower() if words else ""
    if first == "with":
        first = _main_verb(sql)
    return first if first in KINDS else "other"


def _main_verb(sql: str) -> str:
    """The verb of a statement with common table expressions: the first one outside them."""
    depth = 0
    for token in _WORD.findall(sql):
        if token in "()":
            depth += 1 if token == "(" else -1
        elif depth == 0 and token.lower() in KINDS:
            return token.lower()
    return "other"


class Tally:
    """Counts of one stretch of work on one connection; see the module's docstring."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.commits = 0
        self.messages: Counter[str] = Counter()

    def as_dict(self) -> dict[str, float]:
        return {
            "statements": float(sum(self.kinds.values())),
            **{k: float(self.kinds[k]) for k in (*KINDS, "other")},
            "commits": float(self.commits),
            "messages": float(sum(self.messages.values())),
        }


class CountingDriver(InProcess):
    """The in-process driver, counting what it is asked to publish, by task name."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def publish(self, messages: list[dispatch.Message]) -> None:
        self.tally.messages.update(m.task for m in messages)
        super().publish(messages)


@contextmanager
def counting(tally: Tally, alias: str = DEFAULT_DB_ALIAS) -> Iterator[Tally]:
    """Count statements and commits on this thread's ``alias`` connection inside the block.

    ``commit`` is wrapped on the connection object itself (``Atomic.__exit__``
    calls it there) and unwrapped after the block, whatever happens; blocks nest.
    """
    conn = connections[alias]
    conn.ensure_connection()

    def statement(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        kind = kind_of(sql)
        tally.kinds[kind] += 1
        if kind in WRITES and conn.get_autocommit() and not conn.in_atomic_block:
            tally.commits += 1  # autocommit: the database commits this statement on its own
        return execute(sql, params, many, ctx)

    # An instance attribute already there (an outer count) is put back afterwards.
    outer = vars(conn).get("commit")
    real_commit = conn.commit

    def commit() -> None:
        tally.commits += 1
        real_commit()

    conn.commit = commit  # type: ignore[method-assign]
    try:
        with conn.execute_wrapper(statement):
            yield tally
    finally:
        if outer is None:
            del conn.commit  # back to the class's method
        else:
            conn.commit = outer  # type: ignore[method-assign]


def drive(name: str, n: int) -> Tally:
    """Send one event starting a run of ``n`` steps and drive it to its end; its counts.

    Everything the run costs is counted: the send (event and run rows), every
    invocation and step task, the callback, the run's end.
    """
    import stepflows

    tally = Tally()
    with CountingDriver(tally) as driver, counting(tally):
        stepflows.send(name, data={"n": n})
        driver.run_until_idle()
    return tally


def _cost(name: str, n: int) -> tuple[dict[str, float], dict[str, float]]:
    """(per step, per run) of the workflow triggered by ``name``, from runs of ``n`` and 1."""
    big, one = drive(name, n).as_dict(), drive(name, 1).as_dict()
    per_step = {k: (big[k] - one[k]) / (n - 1) for k in KEYS}
    per_run = {k: one[k] - per_step[k] for k in KEYS}
    return _rounded(per_step), _rounded(per_run)


def _rounded(cost: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) + 0.0 for k, v in cost.items()}  # + 0.0: no -0.0


def measure(parallel_n: int = 100, sequential_n: int = 100) -> dict[str, Any]:
    """Count what a parallel and a sequential step cost, and each run's fixed part.

    Runs in the bench process (Django set up, the database migrated, the bench
    workflows registered). A warm-up run of each workflow goes first, uncounted,
    so that what a process does once (caches, compiled SQL) is in neither
    figure. The runs and events made are deleted afterwards. Returns::

        {"parallel": {"per_step": {...}, "per_run": {...}},
         "sequential": {...}, "n": {"parallel": N, "sequential": N}}

    each ``{...}`` with the keys of :data:`KEYS`, rounded to 2 decimals.
    """
    from .scenarios import cleanup

    sizes = {"parallel": parallel_n, "sequential": sequential_n}
    if min(sizes.values()) < 2:
        raise ValueError(f"the per-step cost needs runs of at least 2 steps, got {sizes}")
    result: dict[str, Any] = {}
    try:
        for shape, name in WORKFLOWS.items():
            drive(name, 2)  # warm-up
            per_step, per_run = _cost(name, sizes[shape])
            result[shape] = {"per_step": per_step, "per_run": per_run}
    finally:
        cleanup()
    result["n"] = sizes
    return result


# -- the bench table ---------------------------------------------------------------------

_COLUMNS = (("statements", 12), ("commits", 9), ("messages", 9))
_LIMITS = {"parallel": "(limit: 1 commit, 1 message)", "sequential": "(limit: 1 commit)"}


def _num(value: float) -> str:
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def table_lines(costs: dict[str, Any]) -> list[str]:
    """The lines the bench table ends with: per-step costs, then each run's fixed part."""
    n = costs["n"]
    title = f"cost per step (n={n['parallel']}/{n['sequential']})"
    if n["parallel"] == n["sequential"]:
        title = f"cost per step (n={n['parallel']})"
    head = "".join(f" {name:>{width}}" for name, width in _COLUMNS)
    lines = [f"{title:34}{head}"]
    for shape in WORKFLOWS:
        step = costs[shape]["per_step"]
        cells = "".join(f" {step[name]:>{width}.2f}" for name, width in _COLUMNS)
        lines.append(f"{shape + ' step':34}{cells}   {_LIMITS[shape]}")
    fixed = "".join(
        " "
        + f"{_num(costs['parallel']['per_run'][name])} / "
        f"{_num(costs['sequential']['per_run'][name])}".rjust(width)
        for name, width in _COLUMNS
    )
    lines.append(f"{'run, fixed (parallel / sequential)':34}{fixed}")
    return lines
