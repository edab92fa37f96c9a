"""The system check stepflows.W014: a periodic recovery must be scheduled."""

from __future__ import annotations

from typing import Any

import pytest
from celery import current_app
from django.db import DatabaseError

from stepflows import checks
from stepflows.celery_config import RECOVERY_TASK, beat_schedule, django_settings
from stepflows.checks import check_recovery_schedule


@pytest.fixture
def conf() -> Any:
    saved = current_app.conf.beat_schedule
    yield current_app.conf
    current_app.conf.beat_schedule = saved


@pytest.fixture
def beat_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """django-celery-beat in INSTALLED_APPS (as far as the check can tell)."""
    from django.apps import apps

    installed = apps.is_installed
    monkeypatch.setattr(
        apps, "is_installed", lambda label: label == "django_celery_beat" or installed(label)
    )


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_the_repository_settings_schedule_the_recovery() -> None:
    assert check_recovery_schedule() == []


def test_beat_schedule_and_django_settings_schedule_the_recovery(conf: Any) -> None:
    conf.beat_schedule = beat_schedule()
    assert check_recovery_schedule() == []
    conf.beat_schedule = django_settings()["CELERY_BEAT_SCHEDULE"]
    assert check_recovery_schedule() == []


def test_an_entry_of_any_name_for_the_task_counts(conf: Any) -> None:
    conf.beat_schedule = {
        "cleanup": {"task": "shop.cleanup", "schedule": 60.0},
        "my-recovery": {"task": RECOVERY_TASK, "schedule": 30.0},
    }
    assert check_recovery_schedule() == []


def test_no_schedule_warns_with_what_is_lost_and_the_fix(conf: Any) -> None:
    conf.beat_schedule = {"cleanup": {"task": "shop.cleanup", "schedule": 60.0}}
    [warning] = check_recovery_schedule()
    assert warning.id == "stepflows.W014" and not warning.is_serious()
    message = warning.msg
    assert "beat_schedule has no entry for the task 'stepflows.recover'" in message
    for lost in ("killed worker are never resumed", "longer than 60 s never wake", "timeouts"):
        assert lost in message
    assert "django-celery-beat" not in message
    assert "CELERY_BEAT_SCHEDULE = beat_schedule()" in warning.hint
    assert "from stepflows.celery_config import beat_schedule" in warning.hint
    assert "SILENCED_SYSTEM_CHECKS" in warning.hint


def test_an_empty_schedule_warns(conf: Any) -> None:
    conf.beat_schedule = {}
    assert ids(check_recovery_schedule()) == ["stepflows.W014"]


def test_a_periodic_task_in_django_celery_beat_counts(
    conf: Any, beat_installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf.beat_schedule = {}
    monkeypatch.setattr(checks, "_recovery_in_periodic_tasks", lambda: True)
    assert check_recovery_schedule() == []

    monkeypatch.setattr(checks, "_recovery_in_periodic_tasks", lambda: False)
    [warning] = check_recovery_schedule()
    assert "django-celery-beat has no enabled PeriodicTask for it" in warning.msg

    # Its table cannot be read (before migrate, or no database server): no guess.
    monkeypatch.setattr(checks, "_recovery_in_periodic_tasks", lambda: None)
    assert check_recovery_schedule() == []


class FakePeriodicTasks:
    db = "default"

    def __init__(self, rows: list[dict[str, Any]] | None) -> None:
        self.rows = rows
        self.asked: dict[str, Any] = {}

    def filter(self, **lookups: Any) -> FakePeriodicTasks:
        self.asked = lookups
        return self

    def exists(self) -> bool:
        if self.rows is None:
            raise DatabaseError('no such table: "django_celery_beat_periodictask"')
        return any(all(row[k] == v for k, v in self.asked.items()) for row in self.rows)


# The lookup runs in a savepoint, on the test database.
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"task": RECOVERY_TASK, "enabled": True}], True),
        ([{"task": RECOVERY_TASK, "enabled": False}], False),
        ([{"task": "shop.cleanup", "enabled": True}], False),
        (None, None),
    ],
)
def test_the_periodic_task_lookup(
    monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]] | None, expected: bool | None
) -> None:
    from django.apps import apps

    manager = FakePeriodicTasks(rows)
    model = type("PeriodicTask", (), {"_default_manager": manager})
    wanted = ("django_celery_beat", "PeriodicTask")
    monkeypatch.setattr(apps, "get_model", lambda *name: model if name == wanted else None)
    assert checks._recovery_in_periodic_tasks() is expected
    assert manager.asked == {"task": RECOVERY_TASK, "enabled": True}
