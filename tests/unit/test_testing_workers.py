"""stepflows.testing's real-worker helpers: readiness by ping, the worker's settings,
the overrides a test worker applies, stale pings on the filesystem broker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from queue import Empty

import pytest
from django.conf import settings as django_settings
from django.db import connections

from stepflows.conf import get_settings
from stepflows.filesystem_broker import PIDBOX_TTL_NS
from stepflows.testing import CeleryWorker, WorkerStartError, worker_settings
from stepflows.testing.live import apply_worker_overrides, private_queue


def test_a_worker_that_exits_at_start_fails_with_its_log(tmp_path) -> None:
    worker = CeleryWorker("no_such_celery_app", logfile=tmp_path / "w.log", ready_timeout=30)
    with pytest.raises(WorkerStartError, match=r"exited with status") as failed:
        worker.start()
    assert "no_such_celery_app" in str(failed.value)  # the tail of its stderr
    assert worker.process is None


def test_worker_settings_name_the_test_database_and_a_private_queue() -> None:
    one, two = worker_settings(), worker_settings()

    assert one.database_name == str(connections["default"].settings_dict["NAME"])
    assert one.app == "project"
    assert one.queue != two.queue and one.queue.startswith("stepflows-test-")
    assert one.env["STEPFLOWS_TEST_DATABASE_NAME"] == one.database_name
    assert one.env["STEPFLOWS_TEST_QUEUE"] == one.queue
    assert one.env["DJANGO_SETTINGS_MODULE"] == os.environ["DJANGO_SETTINGS_MODULE"]
    assert str(django_settings.BASE_DIR) in one.env["PYTHONPATH"].split(os.pathsep)
    worker = one.worker(logdir="/tmp", name="x")
    assert worker.queues == one.queue and worker.env["STEPFLOWS_TEST_QUEUE"] == one.queue


def test_an_in_memory_sqlite_test_database_is_refused_with_the_fix(monkeypatch) -> None:
    connection = connections["default"]
    if connection.vendor != "sqlite":
        pytest.skip("SQLite only")
    monkeypatch.setitem(connection.settings_dict, "NAME", "file:memorydb_default?mode=memory")
    with pytest.raises(Exception, match=r"in-memory SQLite.*\['TEST'\]"):
        worker_settings()


def test_private_queue_sends_stepflows_tasks_to_the_workers_queue() -> None:
    from celery import current_app

    before = get_settings().QUEUE
    settings = worker_settings()
    current_app.conf.task_always_eager = True
    try:
        with private_queue(settings):
            assert get_settings().QUEUE == settings.queue
            assert current_app.conf.task_always_eager is False
        assert current_app.conf.task_always_eager is True
    finally:
        current_app.conf.task_always_eager = False
    assert get_settings().QUEUE == before


def test_a_test_worker_applies_the_database_name_and_queue(monkeypatch, settings) -> None:
    connection = connections["default"]
    monkeypatch.setitem(
        settings.DATABASES["default"], "NAME", settings.DATABASES["default"]["NAME"]
    )
    monkeypatch.setitem(connection.settings_dict, "NAME", connection.settings_dict["NAME"])
    settings.STEPFLOWS = {**settings.STEPFLOWS, "QUEUE": "the-projects-queue"}
    monkeypatch.setenv("STEPFLOWS_TEST_DATABASE_NAME", "test_shop")
    monkeypatch.setenv("STEPFLOWS_TEST_QUEUE", "private-q")

    apply_worker_overrides()

    assert settings.DATABASES["default"]["NAME"] == "test_shop"
    assert connection.settings_dict["NAME"] == "test_shop"
    assert get_settings().QUEUE == "private-q"


def test_filesystem_broker_drops_stale_pings_only(tmp_path) -> None:
    from kombu import Connection

    from project.backends import FILESYSTEM_TRANSPORT, broker_from_url
    from stepflows.filesystem_broker import queue_folder

    url, options = broker_from_url(f"filesystem://{tmp_path}")
    folder = tmp_path / "queue"
    old = time.time_ns() - PIDBOX_TTL_NS - 10**9
    dead = Path(queue_folder(folder, "dead-worker@host.celery.pidbox"))
    dead.mkdir()
    stale = dead / f"{old}_a.dead-worker@host.celery.pidbox.msg"
    fresh = dead / f"{time.time_ns()}_b.dead-worker@host.celery.pidbox.msg"
    # Written by an earlier version, in the folder all queues shared.
    stale_shared = folder / f"{old}_a.dead-worker@host.celery.pidbox.msg"
    task = folder / f"{old}_c.other-queue.msg"
    for path in (stale, fresh, stale_shared, task):
        path.write_text("{}")
    with Connection(url, transport=FILESYSTEM_TRANSPORT, transport_options=options) as conn:
        channel = conn.default_channel
        with pytest.raises(Empty):
            channel._get("my-queue")
    assert not stale.exists() and not stale_shared.exists()
    assert fresh.exists() and task.exists()
