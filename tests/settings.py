"""Test settings: the project's, plus test workflows, quick retries, isolated backends.

STEPFLOWS_TEST_DATABASE_URL / STEPFLOWS_TEST_BROKER_URL choose the backends
(default: SQLite and the filesystem broker under var/test-runs/). Each test
session uses its own queue and folders, so sessions never share messages.
"""

from __future__ import annotations

import os
import uuid

from project.backends import broker_from_url, broker_transport, database_from_url
from project.settings import *  # noqa: F403
from project.settings import BASE_DIR, INSTALLED_APPS
from stepflows.celery_config import beat_schedule

SESSION = os.environ.setdefault("STEPFLOWS_TEST_SESSION", uuid.uuid4().hex[:10])
SESSION_DIR = BASE_DIR / "var" / "test-runs" / SESSION
SESSION_DIR.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("STEPFLOWS_TEST_MARKS", str(SESSION_DIR / "marks"))

INSTALLED_APPS = [*INSTALLED_APPS, "tests.testapp"]

_db_url = os.environ.get("STEPFLOWS_TEST_DATABASE_URL") or f"sqlite:///{SESSION_DIR / 'db.sqlite3'}"
DATABASES = {"default": database_from_url(_db_url)}
if os.environ.get("STEPFLOWS_TEST_WORKER"):
    # A worker process connects to the test database the test session created.
    DATABASES["default"]["TEST"] = {}

_broker_url = (
    os.environ.get("STEPFLOWS_TEST_BROKER_URL") or f"filesystem://{SESSION_DIR / 'broker'}"
)
CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = broker_from_url(_broker_url)
CELERY_BROKER_TRANSPORT = broker_transport(_broker_url)
CELERY_TASK_DEFAULT_QUEUE = f"stepflows-test-{SESSION}"

STEPFLOWS = {
    "RETRY_BASE_DELAY": 0.05,
    "RETRY_MAX_DELAY": 0.4,
    # The fault-injection suite (tests/faults/) starts its workers with a short
    # lease and its own queue, and recovers runs after seconds, not minutes.
    "LEASE_SECONDS": float(os.environ.get("STEPFLOWS_TEST_LEASE_SECONDS", "60")),
    "QUEUE": os.environ.get("STEPFLOWS_TEST_QUEUE") or None,
    "RECOVERY_STALL_SECONDS": 8,
    "RECOVERY_JOIN_SECONDS": 2,
    "MAX_RECOVERIES": 20,
}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"stepflows": {"level": "INFO"}},
}

if os.environ.get("STEPFLOWS_TEST_WORKER") and os.environ.get("STEPFLOWS_TEST_SPANS"):
    # A worker whose OpenTelemetry spans a test reads (tests/testapp/spans.py).
    from tests.testapp.spans import install as _install_span_file

    _install_span_file(os.environ["STEPFLOWS_TEST_SPANS"])

# The fault-injection suite's workers with embedded beat recover runs every second.
CELERY_BEAT_SCHEDULE = beat_schedule(
    float(os.environ.get("STEPFLOWS_TEST_RECOVERY_INTERVAL", "30")), queue=STEPFLOWS["QUEUE"]
)
