"""Fixtures of the admin tests: users with chosen permissions, runs built from rows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from stepflows.models import Event, Run, Step

XSS = "<script>alert('x')</script>"

VIEW_PERMS = ["view_run", "view_event", "view_step"]
ACTION_PERMS = ["retry_run", "rerun_run", "cancel_run", "compare_runs", "replay_event"]


def make_staff(username: str, perms: list[str]) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="stepflows", codename__in=perms)
    )
    return user


@pytest.fixture
def staff_client() -> Any:
    """A logged-in staff client with the view permissions and the given action permissions."""

    def _client(*perms: str, csrf: bool = False) -> Client:
        user = make_staff(f"staff-{uuid.uuid4().hex[:8]}", [*VIEW_PERMS, *perms])
        client = Client(enforce_csrf_checks=csrf)
        client.force_login(user)
        return client

    return _client


@pytest.fixture
def admin_client_all(staff_client: Any) -> Client:
    """Staff with every stepflows permission."""
    return staff_client(*ACTION_PERMS)


def at(base: datetime, seconds: float) -> datetime:
    return base + timedelta(seconds=seconds)


def attempt(base: datetime, number: int, start: float, end: float, error: str = "") -> dict:
    return {
        "number": number,
        "started_at": at(base, start).isoformat(),
        "ended_at": at(base, end).isoformat(),
        "error": {"type": "ValueError", "message": error, "traceback": ""} if error else None,
        "worker": f"host:{100 + number}",
    }


def build_run(
    *,
    workflow: str = "t-three-steps",
    status: str = "completed",
    event_name: str = "test/three-steps",
    data: dict[str, Any] | None = None,
    steps: list[dict[str, Any]] | None = None,
    base: datetime | None = None,
    duration: float = 3.0,
    error: dict[str, Any] | None = None,
    output: Any = None,
    source_run: Run | None = None,
    event: Event | None = None,
) -> Run:
    """An event, a run and its steps, written as rows (to test pages, not the engine).

    Each step dict: step_id, start, end (seconds after base), group, status,
    attempts: list of (start, end, error), output.
    """
    base = base or timezone.now() - timedelta(minutes=5)
    if event is None:
        event = Event.objects.create(
            id=uuid.uuid4().hex,
            name=event_name,
            data=data if data is not None else {"key": "k"},
            source_run=source_run,
        )
    run = Run.objects.create(
        workflow_id=workflow,
        event=event,
        status=status,
        created_at=base,
        started_at=base,
        ended_at=at(base, duration) if status in ("completed", "failed", "cancelled") else None,
        error=error,
        output=output,
        parent=source_run,
    )
    for position, spec in enumerate(steps or []):
        tries = spec.get("attempts") or [(spec["start"], spec["end"], "")]
        Step.objects.create(
            run=run,
            step_id=spec["step_id"],
            position=position,
            group=spec.get("group"),
            status=spec.get("status", "completed"),
            output=spec.get("output", position),
            output_bytes=spec.get("output_bytes", 10),
            error=spec.get("error"),
            started_at=at(base, spec["start"]),
            ended_at=at(base, spec["end"]),
            attempts=[attempt(base, i, s, e, err) for i, (s, e, err) in enumerate(tries)],
            attempt_count=len(tries),
        )
    return run


PARALLEL_STEPS = [
    {"step_id": "prepare", "start": 0.0, "end": 0.2},
    {"step_id": "left", "start": 0.3, "end": 1.3, "group": 1},
    {
        "step_id": "right",
        "start": 0.3,
        "end": 1.6,
        "group": 1,
        "attempts": [(0.3, 0.5, "flaky <b>once</b>"), (0.8, 1.6, "")],
    },
    {"step_id": "after", "start": 1.7, "end": 2.0},
]
