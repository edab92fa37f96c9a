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
"""

from __future__ import annotations

import os
from importlib import import_module

_base = import_module(os.environ.get("STEPFLOWS_BENCH_BASE_SETTINGS", "project.settings"))
globals().update({k: v for k, v in vars(_base).items() if k.isupper()})

# As in production: no query log, no debug cursor (the same for both sides).
DEBUG = False
INSTALLED_APPS = [
    *_base.INSTALLED_APPS,
    *[app for app in ["django_celery_results"] if app not in _base.INSTALLED_APPS],
    "bench",
]
CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("STEPFLOWS_BENCH_QUEUE", "stepflows-bench")
STEPFLOWS = {**getattr(_base, "STEPFLOWS", {}), "QUEUE": None}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
