"""The memo: a run's recorded steps, loaded in one query, looked up by position."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from django.db.models import Q

from ..models import Step, StepKind
from ..store.records import FIELDS, StepRecord

# A patch marker's step id: the patch id and this suffix, which no step id can
# have (a step id's only ':' is before its counter, a number).
PATCH_SUFFIX = ":patched"


def marker_id(patch: str) -> str:
    return patch + PATCH_SUFFIX


def patch_id(marker: str) -> str:
    return marker.removesuffix(PATCH_SUFFIX)


class Memo:
    """Recorded steps of one run, by position (the order the workflow calls them).

    ``base`` is a shared, read-only memo underneath (the cached steps before a
    parallel group, see :func:`memo_for_step_task`); writes go to this memo only.
    """

    def __init__(self, records: list[StepRecord], base: Memo | None = None) -> None:
        # step.patched's answers: by patch id, apart from the positions, so a marker
        # never shifts the steps the determinism check compares.
        self.patches: dict[str, bool] = dict(base.patches) if base is not None else {}
        for r in records:
            if r.kind == StepKind.PATCH:
                self.patches[patch_id(r.step_id)] = bool(r.output)
        records = [r for r in records if r.kind != StepKind.PATCH]
        self.base: dict[int, StepRecord] = base.by_position if base is not None else {}
        self.by_position: dict[int, StepRecord] = {r.position: r for r in records}
        self.state_bytes: int = (base.state_bytes if base else 0) + sum(
            r.output_bytes for r in records
        )
        self.count: int = (base.count if base else 0) + len(records)
        self.top: int = max((r.position for r in records), default=-1)
        if base is not None:
            self.top = max(self.top, base.top)

    def get(self, position: int) -> StepRecord | None:
        record = self.by_position.get(position)
        return record if record is not None else self.base.get(position)

    def recorded_from(self, position: int) -> bool:
        """Whether a step is recorded at ``position`` or after it."""
        return self.top >= position

    def put(self, record: StepRecord) -> None:
        if record.kind == StepKind.PATCH:
            self.patches[patch_id(record.step_id)] = bool(record.output)
            return
        self.top = max(self.top, record.position)
        old = self.get(record.position)
        if old is None:
            self.count += 1
        else:
            self.state_bytes -= old.output_bytes
        self.state_bytes += record.output_bytes
        self.by_position[record.position] = record

    def is_replaying(self, position: int) -> bool:
        """True while the workflow is still going over steps it already finished."""
        record = self.get(position)
        return record is not None and record.is_finished


def load_memo(
    run_id: Any, *, before_group: int | None = None, plus_step: str | None = None
) -> Memo:
    """All steps of a run in one query.

    A step task passes ``before_group`` (and its own ``plus_step``): it only
    replays up to its parallel group, so later rows are not its concern.
    """
    qs = Step.objects.filter(run_id=run_id)
    if before_group is not None:
        cond = Q(position__lt=before_group) | Q(kind=StepKind.PATCH)
        if plus_step is not None:
            cond |= Q(step_id=plus_step)
        qs = qs.filter(cond)
    rows = qs.order_by("position").values(*FIELDS)
    return Memo([StepRecord.from_row(row) for row in rows])


# -- the per-process cache of step tasks ------------------------------------------

# Steps before a parallel group are all finished when the group is dispatched,
# and a finished step's output is never rewritten: the only change is
# api.retry_run resetting failed steps, which bumps Run.resumes (part of the
# key). So every step task of a group after the first one in this process
# replays from memory instead of reloading O(position) rows.
CACHE_ENTRIES = 64
CACHE_BYTES = 64 * 1024 * 1024
_before_group: OrderedDict[tuple[str, int, int], Memo] = OrderedDict()


def _cached_base(run_id: Any, group: int, resumes: int) -> Memo:
    key = (str(run_id), group, resumes)
    memo = _before_group.get(key)
    if memo is not None:
        _before_group.move_to_end(key)
        return memo
    # Every patch marker too: the one step.patched met just before the group sits at
    # the group's position.
    rows = (
        Step.objects.filter(Q(position__lt=group) | Q(kind=StepKind.PATCH), run_id=run_id)
        .order_by("position")
        .values(*FIELDS)
    )
    memo = Memo([StepRecord.from_row(row) for row in rows])
    _before_group[key] = memo
    total = sum(m.state_bytes for m in _before_group.values())
    while len(_before_group) > CACHE_ENTRIES or (total > CACHE_BYTES and len(_before_group) > 1):
        _, dropped = _before_group.popitem(last=False)
        total -= dropped.state_bytes
    return memo


def memo_for_step_task(run_id: Any, group: int, resumes: int, own: StepRecord) -> Memo:
    """The memo a step task replays with: cached steps before its group, plus its own row.

    No query once the group is cached in this process (the step task reads
    its own row together with the run).
    """
    return Memo([own], base=_cached_base(run_id, group, resumes))


def clear_cache() -> None:
    _before_group.clear()
