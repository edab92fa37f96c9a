"""The audit trail: who retried, reran, cancelled, replayed or forked a run.

:mod:`stepflows.api` records one :class:`~stepflows.models.Intervention` per
run acted on, inside the transaction that makes the change, so a change
that rolls back leaves no entry and no change goes unrecorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from .. import clock
from ..models import Intervention


@dataclass(frozen=True)
class Actor:
    """Who acts, and why: ``by`` is the label shown ("alice", "command line", "code")."""

    by: str = "code"
    user: Any = None
    reason: str = ""

    @classmethod
    def of(cls, by: str = "code", user: Any = None, reason: str = "") -> Actor:
        """An actor; a user given with the default label ``"code"`` is named by username."""
        label = (by or "code").strip() or "code"
        if user is not None and label == "code":
            label = user.get_username() if hasattr(user, "get_username") else str(user)
        return cls(by=label[:150], user=user, reason=(reason or "").strip())


@dataclass(frozen=True)
class Entry:
    """One intervention to record: the run acted on, and what came of it."""

    run_id: Any
    new_run_id: Any = None
    detail: dict[str, Any] = field(default_factory=dict)


def record(action: str, actor: Actor, entries: Sequence[Entry]) -> list[Intervention]:
    """Insert one intervention per entry, all with the same time, in the caller's transaction."""
    if not entries:
        return []
    at = clock.now()
    user_id = getattr(actor.user, "pk", None) if actor.user is not None else None
    rows = [
        Intervention(
            run_id=e.run_id,
            action=action,
            by=actor.by,
            user_id=user_id,
            reason=actor.reason,
            at=at,
            new_run_id=e.new_run_id,
            detail=e.detail,
        )
        for e in entries
    ]
    with transaction.atomic(savepoint=False):
        return Intervention.objects.bulk_create(rows)
