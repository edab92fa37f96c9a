"""Settings of the stepflows example project, read from the environment.

DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY and DEBUG; when unset, the
embedded default (SQLite + a filesystem broker under ./var) needs no server.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path

from stepflows.celery_config import RECOMMENDED, beat_schedule

from .backends import broker_from_url, broker_transport, database_from_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("STEPFLOWS_VAR_DIR", BASE_DIR / "var"))
VAR_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = os.environ.get("DEBUG", "1").lower() in ("1", "true", "yes", "on")
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("set SECRET_KEY when DEBUG is off")
    SECRET_KEY = "insecure-dev-only-key"
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "stepflows",
    "project.demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'stepflows.sqlite3'}"
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

# Celery: JSON only, acknowledge after the task ran, give a killed worker's
# task back to the queue, and take one message at a time per process.
_broker_url = os.environ.get("CELERY_BROKER_URL") or f"filesystem://{VAR_DIR / 'broker'}"
CELERY_BROKER_URL, CELERY_BROKER_TRANSPORT_OPTIONS = broker_from_url(_broker_url)
CELERY_BROKER_TRANSPORT = broker_transport(_broker_url)
# Task results: stepflows stores none (its tasks ignore theirs; a parallel group joins
# on the run row), so the demo runs without a result backend. With django-celery-results
# installed (the dev tools), results go to this database, as in many Celery projects,
# and the admin tests see stepflows hide them.
if find_spec("django_celery_results"):
    INSTALLED_APPS.insert(INSTALLED_APPS.index("stepflows"), "django_celery_results")
    CELERY_RESULT_BACKEND = "django-db"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Keep database connections across tasks; DATABASES (project/backends.py) says for
# how long and checks them (stepflows.celery_config.DATABASE_RECOMMENDED).
CELERY_DB_REUSE_MAX = RECOMMENDED["CELERY_DB_REUSE_MAX"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# stepflows' periodic recovery of stuck runs; `make demo` embeds beat in its worker,
# production runs `celery -A project beat` next to the workers.
CELERY_BEAT_SCHEDULE = beat_schedule(float(os.environ.get("STEPFLOWS_RECOVERY_INTERVAL", "10")))

STEPFLOWS: dict[str, object] = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
