"""The benchmark runs end to end (tiny sizes) and prints one parseable JSON line.

A smoke test only, so the bench cannot rot: no timing is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import database_url

pytestmark = pytest.mark.django_db(transaction=True)


def bench_env(tmp_path):
    """The bench's environment: this session's backends (the test database), or its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPFLOWS_TEST")}
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    env["DJANGO_SETTINGS_MODULE"] = "project.settings"
    env["STEPFLOWS_BENCH_DIR"] = str(tmp_path / "bench")
    if os.environ.get("STEPFLOWS_TEST_DATABASE_URL") or os.environ.get("STEPFLOWS_TEST_BROKER_URL"):
        # Same backends as this session: the test database, the session's broker.
        env["DATABASE_URL"] = database_url(connection.settings_dict)
        env["CELERY_BROKER_URL"] = os.environ.get(
            "STEPFLOWS_TEST_BROKER_URL", f"filesystem://{tmp_path / 'broker'}"
        )
    return env


def test_quick_bench_prints_table_and_json(tmp_path):
    env = bench_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stdout
    result = json.loads(lines[0])
    expected_backend = connection.vendor
    assert result["backend"].startswith(expected_backend)
    assert set(result["parallel_ratio"]) == {"3"}
    assert set(result["sequential_ms_per_step"]) == {"3"}
    assert result["throughput_ratio"] > 0
    assert isinstance(result["rss_growth"], float)
    assert "parallel N=3" in done.stdout and "throughput" in done.stdout
    # Counted, not timed: a parallel step is one commit and one message.
    assert result["costs"]["parallel"]["per_step"]["messages"] == 1
    assert set(result["prefetch"]) == {"1", "4"}
    assert result["sequential_marginal_ms_per_step"].keys() == {"3"}
    # --quick brings the plain Celery peer only (DBOS would install a venv).
    assert "dbos" not in result["peers"]
    plain = result["peers"]["plain_celery"]
    assert "skipped" in plain or plain["parallel_ratio"]["3"] > 0


def workers_on(queue, exact=False):
    """Pids of processes whose command line names ``queue`` or one after it (the bench's
    workers: stepflows', the raw chords' on ``<queue>-floor``)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = [
            a for a in cmdline if (a == queue.encode() if exact else a.startswith(queue.encode()))
        ]
        if b"worker" in cmdline and named:
            found.append(int(proc.name))
    return found


def wait_for(condition, what, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_bench_stopped_by_sigterm_stops_its_workers(tmp_path):
    queue = f"stepflows-bench-sigterm-{uuid.uuid4().hex[:8]}"
    env = {**bench_env(tmp_path), "STEPFLOWS_BENCH_QUEUE": queue}
    bench = subprocess.Popen(
        [sys.executable, "-m", "bench", "--quick", "--scenarios", "memory"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # stepflows' worker starts last: once it runs, both are up.
        wait_for(
            lambda: workers_on(queue, exact=True) or bench.poll() is not None, "no worker started"
        )
        assert bench.poll() is None, "the bench ended before it could be stopped"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=120) == 128 + signal.SIGTERM
        wait_for(lambda: not workers_on(queue), "the bench's worker outlived it")
    finally:
        bench.kill()
        for pid in workers_on(queue):
            os.kill(pid, signal.SIGKILL)
