"""A run's fan-out family: the events it sent, the runs they started, at any depth."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..models import Event, Run

#: Levels of fan-out followed at most (a run whose events start runs that send events...).
MAX_DEPTH = 20
#: Runs collected at most; the family is marked truncated beyond that.
MAX_RUNS = 500


@dataclass
class FamilyRow:
    """An event sent inside the family, at its depth, with the runs it started."""

    event: Event
    depth: int
    runs: list[Run]


@dataclass
class Family:
    """Everything a run started by sending events, breadth first, two queries per level."""

    root: Run
    rows: list[FamilyRow] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    truncated: bool = False

    def __bool__(self) -> bool:
        return bool(self.rows)

    @property
    def event_count(self) -> int:
        return len(self.rows)


def fan_out_family(root: Run, *, max_runs: int = MAX_RUNS, max_depth: int = MAX_DEPTH) -> Family:
    """Events sent by ``root`` and the runs they started, then theirs, level by level.

    The query count grows with the depth of the fan-out, never with its width.
    Rows come in tree order (each event right after the run that sent it).
    """
    family = Family(root=root)
    events_by_source: dict[Any, list[Event]] = defaultdict(list)
    runs_by_event: dict[str, list[Run]] = defaultdict(list)
    seen = {root.pk}
    level = [root.pk]
    depth = 0
    while level and depth < max_depth:
        depth += 1
        events = list(Event.objects.filter(source_run_id__in=level).order_by("received_at", "id"))
        if not events:
            break
        for event in events:
            events_by_source[event.source_run_id].append(event)
        runs = list(
            Run.objects.filter(event_id__in=[e.id for e in events]).order_by("created_at", "id")
        )
        level = []
        for run in runs:
            if run.pk in seen:
                continue
            if len(family.runs) >= max_runs:
                family.truncated = True
                break
            seen.add(run.pk)
            runs_by_event[run.event_id].append(run)
            family.runs.append(run)
            level.append(run.pk)
    if level and depth >= max_depth:
        family.truncated = True
    _walk(family, root.pk, 1, events_by_source, runs_by_event)
    return family


def _walk(
    family: Family,
    run_id: Any,
    depth: int,
    events_by_source: dict[Any, list[Event]],
    runs_by_event: dict[str, list[Run]],
) -> None:
    # Iterative depth-first walk, so a deep family cannot hit the recursion limit.
    stack: list[tuple[Any, int] | FamilyRow] = [(run_id, depth)]
    while stack:
        item = stack.pop()
        if isinstance(item, FamilyRow):
            family.rows.append(item)
            stack.extend((r.pk, item.depth + 1) for r in reversed(item.runs))
            continue
        current, level = item
        for event in reversed(events_by_source.get(current, [])):
            stack.append(FamilyRow(event=event, depth=level, runs=runs_by_event.get(event.id, [])))
