"""The Celery configuration stepflows' guarantees rely on.

Apply it to the project's Celery app::

    from stepflows.celery_config import RECOMMENDED, beat_schedule

    app.conf.update(RECOMMENDED)
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}

or, with ``config_from_object("django.conf:settings", namespace="CELERY")``,
in Django settings::

    globals().update(django_settings())

``manage.py check`` warns when the app lacks one of these
(``stepflows.W010``-``W013``) or schedules no recovery (``stepflows.W014``),
when workers close database connections after every task (``stepflows.W015``)
or PostgreSQL statements are not prepared (``stepflows.W016``), and reports an
error when pickle is accepted (``stepflows.E010``).
"""

from __future__ import annotations

from typing import Any

RECOMMENDED: dict[str, Any] = {
    # JSON only: a pickle message from anyone who can write to the broker runs code.
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    # Acknowledge a message after its task ran, and give it back to the queue when
    # the worker process running it dies: a killed worker's step runs again.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # One message at a time per process: a killed worker takes few messages with it.
    "worker_prefetch_multiplier": 1,
    # Keep database connections across tasks (Celery's Django fixup otherwise closes
    # them before and after each one): stepflows then closes a connection only when
    # the database's CONN_MAX_AGE or a failed health check says so, as Django does
    # between requests (see stepflows.worker_connections and DATABASE_RECOMMENDED).
    "CELERY_DB_REUSE_MAX": 10_000,
}

DATABASE_RECOMMENDED: dict[str, Any] = {
    # Seconds a worker keeps a database connection open, across tasks.
    "CONN_MAX_AGE": 600,
    # Before a task's first query on a kept connection, check that it still works,
    # and reconnect if not (a database restart): the task never sees a dead connection.
    "CONN_HEALTH_CHECKS": True,
}
"""Keys for ``DATABASES["default"]`` (and any database stepflows' models use).

With ``CONN_MAX_AGE = 0`` (Django's default) connections are still closed
after every task, whatever ``CELERY_DB_REUSE_MAX`` says.
"""

POSTGRESQL_OPTIONS: dict[str, Any] = {
    # Prepare stepflows' own statements (a step's write) once per connection instead
    # of planning them at every step (see stepflows.store.statements). Leave it out
    # behind a pooler in transaction mode that does not track prepared statements
    # (PgBouncer before 1.21, or max_prepared_statements = 0).
    "prepare_threshold": 5,
}
"""Keys for ``DATABASES["default"]["OPTIONS"]`` on PostgreSQL (psycopg 3).

Django binds its own queries' parameters on the client and never prepares
them, so this changes only stepflows' statements (and those of cursors with
``server_side_binding``, which psycopg then prepares after five uses).
"""

REDIS_VISIBILITY_TIMEOUT = 3600
"""Seconds before Redis gives an unacknowledged message to another worker.

A message redelivered while its step still runs finds the step's heartbeat
fresh and does nothing; messages of a worker killed outright come back after
it, or earlier through ``stepflows recover``.
"""

RECOVERY_TASK = "stepflows.recover"
"""The periodic task: the sweep of what is due by time, then the recovery of stuck runs."""

RECOVERY_INTERVAL = 10.0
"""Seconds between recovery passes: with LEASE_SECONDS = 30, a dead worker's run is
resumed within about 40 s."""


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    """Transport options for the broker (Redis: an explicit visibility timeout)."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT}
    return {}


def beat_schedule(interval: float = RECOVERY_INTERVAL, queue: str | None = None) -> dict[str, Any]:
    """The periodic recovery of stuck runs, for ``beat_schedule`` (run ``celery beat``)."""
    # A late recovery pass is useless once the next one is due.
    options: dict[str, Any] = {"expires": interval}
    if queue:
        options["queue"] = queue
    return {"stepflows-recover": {"task": RECOVERY_TASK, "schedule": interval, "options": options}}


def django_settings(
    namespace: str = "CELERY", interval: float = RECOVERY_INTERVAL
) -> dict[str, Any]:
    """RECOMMENDED and the recovery schedule as Django settings (``CELERY_TASK_ACKS_LATE``...)."""
    values = {
        # CELERY_DB_REUSE_MAX is read under that name by Celery's Django fixup.
        k if k.isupper() else f"{namespace}_{k.upper()}": v
        for k, v in RECOMMENDED.items()
    }
    values[f"{namespace}_BEAT_SCHEDULE"] = beat_schedule(interval)
    return values
