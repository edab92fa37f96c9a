"""The benchmark runs end to end (tiny sizes) and prints one parseable JSON line.

A smoke test only, so the bench cannot rot: no timing is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import database_url

pytestmark = pytest.mark.django_db(transaction=True)


def test_quick_bench_prints_table_and_json(tmp_path):
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
