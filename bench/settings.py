"""Settings of the bench process and of the workers it starts.

The project's settings (``STEPFLOWS_BENCH_BASE_SETTINGS``, by default the
module that was active when the bench started) plus this package as an app,
and a queue of the bench's own so that other workers never take its messages.
The database and broker are the project's: the bench sets
``STEPFLOWS_VAR_DIR`` to ``var/bench`` for the embedded default, or leaves
``DATABASE_URL`` / ``CELERY_BROKER_URL`` as they are.

The raw-chord baseline needs a result backend that joins chords and that the
bench can poll: django-celery-results' database backend. stepflows itself
stores no task results, so only the bench adds it.

Two profiles (``STEPFLOWS_BENCH_PROFILE``), one per worker the bench starts:

- ``stepflows``: stepflows' recommended settings
  (:mod:`stepflows.celery_config`: ``RECOMMENDED``, ``DATABASE_RECOMMENDED``
  and, on PostgreSQL, ``POSTGRESQL_OPTIONS``);
- ``celery-defaults``: the raw chord's worker, a Django project with Celery's
  and Django's defaults (early acknowledgement, prefetch 4, a new database
  connection per task, no prepared statements), on a queue of its own.

``STEPFLOWS_BENCH_CONNECTIONS`` (``close``, ``reuse``, ``reuse-checked``,
``pool``), ``STEPFLOWS_BENCH_PREFETCH`` and ``STEPFLOWS_BENCH_PREPARE=off``
(Django's default: no prepared statements) override the ``stepflows``
profile, to measure the alternatives the recommendation was chosen from.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from stepflows.celery_config import DATABASE_RECOMMENDED, django_settings

_base = import_module(os.environ.get("STEPFLOWS_BENCH_BASE_SETTINGS", "project.settings"))
globals().update({k: v for k, v in vars(_base).items() if k.isupper()})

PROFILE = os.environ.get("STEPFLOWS_BENCH_PROFILE", "stepflows")
QUEUE = os.environ.get("STEPFLOWS_BENCH_QUEUE", "stepflows-bench")
#: The raw chords' queue, served by the ``celery-defaults`` worker.
STEPFLOWS_BENCH_FLOOR_QUEUE = QUEUE + "-floor"

# As in production: no query log, no debug cursor (the same for both sides).
DEBUG = False
INSTALLED_APPS = [
    *_base.INSTALLED_APPS,
    *[app for app in ["django_celery_results"] if app not in _base.INSTALLED_APPS],
    "bench",
]
CELERY_RESULT_BACKEND = "django-db"
STEPFLOWS = {**getattr(_base, "STEPFLOWS", {}), "QUEUE": None}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# What the profiles change: the Celery worker's settings and the database's.
_CELERY_KEYS = [
    "CELERY_TASK_ACKS_LATE",
    "CELERY_TASK_REJECT_ON_WORKER_LOST",
    "CELERY_WORKER_PREFETCH_MULTIPLIER",
    "CELERY_DB_REUSE_MAX",
]
_CONNECTIONS: dict[str, dict[str, Any]] = {
    "close": {"CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False},
    "reuse": {"CONN_MAX_AGE": 600, "CONN_HEALTH_CHECKS": False},
    "reuse-checked": {"CONN_MAX_AGE": 600, "CONN_HEALTH_CHECKS": True},
    "pool": {"CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False},
}


def _database(
    overrides: dict[str, Any], pool: bool = False, prepare: bool = True
) -> dict[str, Any]:
    db = {**_base.DATABASES["default"], **overrides}
    options = dict(db.get("OPTIONS", {}))
    if pool and db["ENGINE"].endswith("postgresql"):
        options["pool"] = {"min_size": 1, "max_size": 4}
    if not prepare:
        options.pop("prepare_threshold", None)
    db["OPTIONS"] = options
    return db


for _key in _CELERY_KEYS:
    globals().pop(_key, None)
if PROFILE == "celery-defaults":
    CELERY_TASK_DEFAULT_QUEUE = STEPFLOWS_BENCH_FLOOR_QUEUE
    DATABASES = {**_base.DATABASES, "default": _database(_CONNECTIONS["close"], prepare=False)}
else:
    CELERY_TASK_DEFAULT_QUEUE = QUEUE
    globals().update({k: v for k, v in django_settings().items() if k in _CELERY_KEYS})
    _conn = os.environ.get("STEPFLOWS_BENCH_CONNECTIONS", "")
    if _conn == "close":
        CELERY_DB_REUSE_MAX = None
    DATABASES = {
        **_base.DATABASES,
        "default": _database(
            _CONNECTIONS.get(_conn, DATABASE_RECOMMENDED),
            pool=_conn == "pool",
            prepare=os.environ.get("STEPFLOWS_BENCH_PREPARE") != "off",
        ),
    }
    if os.environ.get("STEPFLOWS_BENCH_PREFETCH"):
        CELERY_WORKER_PREFETCH_MULTIPLIER = int(os.environ["STEPFLOWS_BENCH_PREFETCH"])
