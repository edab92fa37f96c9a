"""The bench's plain-Celery chord: a real worker on this session's broker, timed, then gone.

A smoke test of ``bench.peers.plain_celery`` only: no timing is asserted beyond
a positive figure. It runs wherever the plain chord can: on this session's
broker (Redis, RabbitMQ or the embedded filesystem one), with a Redis to join
the chord in (``result_backend_for``); otherwise it is skipped, as the bench
skips the column.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from celery import current_app
from django.conf import settings

from bench.peers.plain_celery import PlainChords, result_backend_for
from tests.settings import SESSION_DIR

pytestmark = pytest.mark.worker


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes (zombies aside) in process group ``pgid``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # Fields after the command's closing parenthesis: state, ppid, pgrp.
            fields = (proc / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(proc.name))
    return found


def test_plain_chord_is_timed_and_its_worker_stopped() -> None:
    broker_url = settings.CELERY_BROKER_URL
    backend = result_backend_for(broker_url)
    if backend is None:
        pytest.skip("no Redis answers at 127.0.0.1:6379 to join the plain chord's results")
    plain = PlainChords(
        broker_url,
        settings.CELERY_BROKER_TRANSPORT_OPTIONS,
        backend,
        queue=f"stepflows-test-plain-{uuid.uuid4().hex[:8]}",
        concurrency=2,
        logfile=SESSION_DIR / "plain-worker.log",
        transport=settings.CELERY_BROKER_TRANSPORT,
    )
    with plain:
        assert plain.process is not None
        pid = plain.process.pid
        seconds = plain.time_chords(3)
    assert seconds > 0
    # The plain app never became this process's app: the project's tasks still resolve.
    assert current_app.main != "stepflows_bench_plain"
    assert plain.process is None
    assert pid not in group_members(pid)
    # The pool's children are reaped by init once their parent is gone: give it a moment.
    deadline = time.monotonic() + 10
    while group_members(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert group_members(pid) == []
