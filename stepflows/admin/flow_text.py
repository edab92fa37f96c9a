"""Flow control in plain words: what holds a run, and each workflow's limits.

Shared by the run page and the runs list, the Flow control page, and
``manage.py stepflows runs|limits``; plain text, escaped by whoever shows it.
The settings come from the registry; the figures of a concurrency line from
Slot and Run rows, the table's from ``stepflows.store.admission.counts()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, OuterRef, Q
from django.db.models.functions import Coalesce

from ..exceptions import WorkflowNotFoundError
from ..flow import FlowOptions
from ..models import Run, RunStatus, Slot, WaitKind
from ..registry import registry
from ..timeline import local_time
from .common import per_row

#: ``Run.waiting_for`` of a queued run held by flow control (stepflows.store.admission).
FLOW_HOLDS = ("concurrency", "throttle", "debounce", "batch")


def _flow(workflow_id: str) -> FlowOptions | None:
    try:
        return registry.get(workflow_id).flow
    except WorkflowNotFoundError:
        return None


def key_name(key: Any) -> str:
    """An option's key as declared: a dotted path, ``fn(event)`` for a function, or ''."""
    if key is None:
        return ""
    if not callable(key):
        return str(key)
    name = str(getattr(key, "__name__", ""))
    return f"{name}(event)" if name.isidentifier() else "a function of the event"


def _for_key(path: str, value: str) -> str:
    if not path and not value:
        return "for the whole workflow"
    return f"for key {path} = {value or repr('')}" if path else f"for key {value}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def held_key(run: Any) -> tuple[str, str, int | None]:
    """A held run's key path and key value, and its limit (slots per key, a batch's size)."""
    flow = _flow(run.workflow_id)
    value = str(run.flow_key or "")
    if run.waiting_for == "concurrency":
        # Concurrency keys are "<index of the Concurrency entry>:<key value>".
        index, _, value = value.partition(":")
        entries = flow.concurrency if flow is not None else []
        if index.isdigit() and int(index) < len(entries):
            return key_name(entries[int(index)].key), value, entries[int(index)].limit
        return "", value, None
    option = getattr(flow, str(run.waiting_for), None) if flow is not None else None
    if option is None:
        return "", value, None
    return key_name(option.key), value, getattr(option, "max_size", None)


def hold_text(
    run: Any,
    *,
    in_use: int | None = None,
    place: int | None = None,
    time: Callable[[datetime | None], str] = local_time,
) -> str:
    """What a queued run held by flow control waits for; '' for any other run.

    ``in_use`` (slots of its key held) and ``place`` (1: next) are a concurrency
    line's figures, when the caller counted them; ``time`` shows ``wait_until``.
    """
    kind = str(run.waiting_for or "")
    if str(run.status) != "queued" or kind not in FLOW_HOLDS:
        return ""
    path, value, limit = held_key(run)
    key = _for_key(path, value)
    if kind == "concurrency":
        figures = [] if in_use is None else [f"{in_use}/{limit or '?'} in use"]
        if place is not None:
            figures.append("next in line" if place <= 1 else f"{_ordinal(place)} in line")
        return f"slot {key}" + (f" ({', '.join(figures)})" if figures else "")
    until = time(run.wait_until) or "?"
    # A limit without a key holds runs of the whole workflow: no need to say so.
    notes = [] if path == value == "" else [key]
    if kind == "throttle":
        text = f"throttled until {until}"
    elif kind == "debounce":
        text = f"debounced until {until}"
        notes.insert(0, f"last event {run.event_id}")
    else:
        size = len(run.batch or [])
        text = (
            f"batch of {size} event{'' if size == 1 else 's'}, starts at {until} "
            f"or when {limit or '?'} are in"
        )
    return text + (f" ({'; '.join(notes)})" if notes else "")


def line_counts() -> dict[str, Coalesce]:
    """Annotations of runs in a concurrency line: ``hold_in_use``, the slots of its key
    held, and ``hold_ahead``, the runs before it in line (the order of hand-overs)."""
    slots = Slot.objects.filter(workflow_id=OuterRef("workflow_id"), key=OuterRef("flow_key"))
    ahead = Run.objects.filter(
        workflow_id=OuterRef("workflow_id"),
        status=RunStatus.QUEUED,
        waiting_for=WaitKind.CONCURRENCY,
        flow_key=OuterRef("flow_key"),
    ).filter(
        Q(priority_at__lt=OuterRef("priority_at"))
        | Q(priority_at=OuterRef("priority_at"), created_at__lt=OuterRef("created_at"))
    )
    return {
        "hold_in_use": per_row(slots, "key", Count("pk")),
        "hold_ahead": per_row(ahead, "flow_key", Count("pk")),
    }


def line_figures(run_ids: Iterable[Any]) -> dict[Any, tuple[int, int]]:
    """Runs in a concurrency line: slots of their key in use, and their place (1: next)."""
    counts = line_counts()
    rows = (
        Run.objects.filter(
            pk__in=list(run_ids), status=RunStatus.QUEUED, waiting_for=WaitKind.CONCURRENCY
        )
        .only("id")
        .annotate(hold_in_use=counts["hold_in_use"], hold_ahead=counts["hold_ahead"])
    )
    return {r.pk: (r.hold_in_use, r.hold_ahead + 1) for r in rows}


def skip_reason(run: Any) -> str:
    """Why a skipped run never started (its ``error["message"]``)."""
    error = run.error if isinstance(run.error, dict) else {}
    return str(error.get("message") or "no reason recorded")


def period(value: Any) -> str:
    """A period of an option (a timedelta or seconds): 30 s, 5 min, 24 h."""
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    # Days from two on: "24 h" reads better than "1 d".
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size * (2 if unit == "d" else 1) and s % size == 0:
            return f"{s / size:g} {unit}"
    return f"{s:g} s"


def _per(key: Any) -> str:
    return f"per {key_name(key)}" if key is not None else "for the whole workflow"


@dataclass
class LimitRow:
    """One line of the flow-control table: a limit of a workflow, and one key's figures.

    ``key`` None: no key holds or waits now (or the option keeps no count);
    ``running``: slots held (concurrency only); ``waiting``: runs in line or held.
    """

    workflow_id: str
    limit: str
    setting: str
    kind: str = ""
    key: str | None = None
    running: int | None = None
    waiting: int | None = None
    # The option's key as declared ("" when it limits the whole workflow).
    key_path: str = ""

    @property
    def key_text(self) -> str:
        """The key value as shown: ``-`` for none, an empty value as ``''``."""
        if self.key is None:
            return "-"
        if self.key == "":
            return repr("") if self.key_path else "(whole workflow)"
        return self.key


def has_flow_control(flow: FlowOptions) -> bool:
    return bool(flow.concurrency or flow.crons or flow.at_send)


def flow_limits(
    workflow_id: str, flow: FlowOptions, ticks: dict[tuple[str, str], tuple[Any, int]]
) -> list[tuple[LimitRow, str]]:
    """A workflow's options in words, each with the key prefix of its counted rows.

    ``ticks``: (workflow, cron expression) -> (last tick, ticks sent), from the
    FlowState rows of kind "cron".
    """
    found: list[tuple[LimitRow, str]] = []

    def add(limit: str, setting: str, kind: str = "", prefix: str = "", key: Any = None) -> None:
        found.append((LimitRow(workflow_id, limit, setting, kind, key_path=key_name(key)), prefix))

    for i, c in enumerate(flow.concurrency):
        name = "concurrency" if len(flow.concurrency) == 1 else f"concurrency[{i}]"
        add(name, f"at most {c.limit} running {_per(c.key)}", "concurrency", f"{i}:", c.key)
    if (t := flow.throttle) is not None:
        add(
            "throttle",
            f"{t.limit} starts per {period(t.period)} ({t.burst} at once) {_per(t.key)}; "
            "the rest start later, in order",
            "throttle",
            key=t.key,
        )
    if (r := flow.rate_limit) is not None:
        add("rate limit", f"{r.limit} runs per {period(r.period)} {_per(r.key)}; the rest skipped")
    if (d := flow.debounce) is not None:
        most = "" if d.timeout is None else f", at most {period(d.timeout)} after the first"
        add(
            "debounce",
            f"one run {period(d.period)} after the last event{most}, {_per(d.key)}",
            "debounce",
            key=d.key,
        )
    if (b := flow.batch) is not None:
        add(
            "batch",
            f"{b.max_size} events per run, or those in {period(b.timeout)} after the first, "
            f"{_per(b.key)}",
            "batch",
            key=b.key,
        )
    if (s := flow.singleton) is not None:
        then = "a new one is skipped" if s.mode == "skip" else "a new one cancels it"
        add("singleton", f"one active run {_per(s.key)}; {then}")
    if flow.idempotency is not None:
        add(
            "idempotency",
            f"one run per {key_name(flow.idempotency)} in {period(flow.idempotency_period)}",
        )
    if flow.priority is not None:
        ahead = key_name(flow.priority.run).replace("a function of the event", "priority(event)")
        add("priority", f"a run in a concurrency line goes ahead by {ahead} seconds")
    for cron in flow.crons:
        at, sent = ticks.get((workflow_id, cron.expression), (None, 0))
        if sent and at:
            last = f"last tick sent {local_time(at)}"
        else:
            last = "no tick sent yet" + (f" (schedule seen at {local_time(at)})" if at else "")
        catch_up = "" if cron.catch_up else ", no catch-up"
        add("cron", f"{cron.expression} ({cron.tz}{catch_up}); {last}")
    return found


def flow_table(
    flows: dict[str, FlowOptions],
    counts: list[dict[str, Any]],
    ticks: dict[tuple[str, str], tuple[Any, int]],
) -> list[LimitRow]:
    """The flow-control table: each workflow's limits, one row per key that holds
    slots or has runs waiting (``stepflows.store.admission.counts()`` rows)."""
    rows: list[LimitRow] = []
    left = list(counts)
    for workflow_id, flow in flows.items():
        for base, prefix in flow_limits(workflow_id, flow, ticks):
            mine = [
                c
                for c in left
                if base.kind
                and c["workflow_id"] == workflow_id
                and c["limit"] == base.kind
                and str(c["key"]).startswith(prefix)
            ]
            left = [c for c in left if c not in mine]
            running = 0 if base.kind == "concurrency" else None
            if base.kind and not mine:
                rows.append(replace(base, running=running, waiting=0))
            for c in mine:
                key = str(c["key"])[len(prefix) :]
                held = c["running"] if base.kind == "concurrency" else None
                rows.append(replace(base, key=key, running=held, waiting=c["waiting"]))
            if not base.kind:
                rows.append(base)
    for c in left:
        # Slots or held runs of a workflow (or a limit) no longer registered.
        rows.append(
            LimitRow(
                c["workflow_id"],
                str(c["limit"]),
                "not configured now (workflow or limit not registered)",
                str(c["limit"]),
                str(c["key"]),
                c["running"],
                c["waiting"],
            )
        )
    return rows
