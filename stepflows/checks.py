"""System checks: settings, workflow definitions, Celery configuration."""

from __future__ import annotations

import inspect
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from pydantic import ValidationError

from .registry import registry


@register(Tags.compatibility)
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    from .conf import StepflowsSettings, _raw

    try:
        StepflowsSettings(**_raw())
    except ValidationError as exc:
        return [
            Error(
                f"STEPFLOWS[{'.'.join(str(p) for p in err['loc'])!r}]: {err['msg']}",
                hint="See the Settings section of the stepflows README.",
                id="stepflows.E001",
            )
            for err in exc.errors(include_url=False)
        ]
    return []


@register(Tags.compatibility)
def check_workflows(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    for first, second in registry.duplicates:
        errors.append(
            Error(
                f"workflow id {first.id!r} is declared twice: by "
                f"{first.fn.__module__}.{first.fn.__qualname__} and "
                f"{second.fn.__module__}.{second.fn.__qualname__}",
                hint="Give each workflow a unique id.",
                obj=second.fn,
                id="stepflows.E002",
            )
        )
    for wf in registry.all():
        try:
            params = list(inspect.signature(wf.fn).parameters.values())
        except (TypeError, ValueError):
            continue
        positional = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
        if len(positional) != 2 and not (varargs and len(positional) < 2):
            errors.append(
                Error(
                    f"workflow {wf.id!r} ({wf.fn.__module__}.{wf.fn.__qualname__}) must take "
                    f"exactly two arguments, (ctx, step); it takes {len(positional)}",
                    hint="def my_workflow(ctx: stepflows.Context, step: stepflows.StepSync): ...",
                    obj=wf.fn,
                    id="stepflows.E003",
                )
            )
    for workflow_id, problems in sorted(registry.problems.items()):
        for problem in problems:
            errors.append(
                Error(
                    f"workflow {workflow_id!r}: {problem}",
                    hint="Fix the option in its @stepflows.workflow(...); see the README's "
                    "Flow control section.",
                    id="stepflows.E020",
                )
            )
    return errors


def _celery_conf() -> Any:
    from celery import current_app

    return current_app.conf


@register(Tags.compatibility)
def check_celery(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The worker settings stepflows' guarantees need (see stepflows.celery_config)."""
    from django.core.checks import Warning

    from .celery_config import REDIS_VISIBILITY_TIMEOUT
    from .conf import get_settings

    conf = _celery_conf()
    messages: list[CheckMessage] = []
    hint = "Apply stepflows.celery_config.RECOMMENDED to your Celery app (see the README)."
    serializers = {
        "task_serializer": [conf.task_serializer],
        "result_serializer": [conf.result_serializer],
        "accept_content": list(conf.accept_content or []),
        "result_accept_content": list(conf.result_accept_content or []),
    }
    for name, values in serializers.items():
        if any("pickle" in str(v) for v in values):
            messages.append(
                Error(
                    f"Celery {name} = {values!r} allows pickle: anyone who can write to the "
                    "broker could run code on your workers, and stepflows stores JSON only",
                    hint=hint,
                    id="stepflows.E010",
                )
            )
    wanted = [
        ("task_acks_late", True, "stepflows.W010", "a killed worker's message is lost"),
        (
            "task_reject_on_worker_lost",
            True,
            "stepflows.W011",
            "a task whose worker process died is not given back to the queue",
        ),
    ]
    for name, value, check_id, why in wanted:
        if conf.get(name) != value:
            messages.append(Warning(f"Celery {name} is not {value}: {why}", hint=hint, id=check_id))
    if conf.worker_prefetch_multiplier != 1:
        messages.append(
            Warning(
                f"Celery worker_prefetch_multiplier is {conf.worker_prefetch_multiplier}, not 1: "
                "a killed worker takes more messages with it (recovery resends them late)",
                hint=hint,
                id="stepflows.W012",
            )
        )
    broker = str(conf.broker_url or "")
    if broker.startswith(("redis://", "rediss://")):
        timeout = (conf.broker_transport_options or {}).get("visibility_timeout")
        lease = get_settings().LEASE_SECONDS
        if timeout is None or timeout < lease:
            messages.append(
                Warning(
                    f"Redis visibility_timeout is {timeout!r}: set it explicitly, longer than "
                    f"your longest step and than STEPFLOWS['LEASE_SECONDS'] = {lease} "
                    f"(e.g. {REDIS_VISIBILITY_TIMEOUT}), or running steps are delivered twice",
                    hint="broker_transport_options = {'visibility_timeout': 3600}",
                    id="stepflows.W013",
                )
            )
    return messages


def _recovery_in_beat_schedule(conf: Any) -> bool:
    """The Celery app's ``beat_schedule`` (CELERY_BEAT_SCHEDULE) runs the recovery task."""
    from .celery_config import RECOVERY_TASK

    schedule = conf.beat_schedule or {}
    return any(
        isinstance(entry, dict) and entry.get("task") == RECOVERY_TASK
        for entry in schedule.values()
    )


BEAT_PERIODIC_TASK: tuple[str, str] = ("django_celery_beat", "PeriodicTask")


def _recovery_in_periodic_tasks() -> bool | None:
    """django-celery-beat (installed) has an enabled PeriodicTask for the recovery task.

    None when its table cannot be read: checks also run before ``migrate``, and
    without a database server.
    """
    from django.apps import apps
    from django.db import DatabaseError, transaction

    from .celery_config import RECOVERY_TASK

    # By name: django-celery-beat is optional, and not a dependency to import.
    model = apps.get_model(*BEAT_PERIODIC_TASK)
    try:
        # A savepoint: a missing table must not break a transaction the caller is in.
        with transaction.atomic(using=model._default_manager.db):
            return bool(model._default_manager.filter(task=RECOVERY_TASK, enabled=True).exists())
    except DatabaseError:
        return None


@register(Tags.compatibility)
def check_recovery_schedule(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The periodic ``stepflows.recover`` task: without it nothing due by time ever happens."""
    from django.apps import apps
    from django.core.checks import Warning

    from .celery_config import RECOVERY_TASK

    if _recovery_in_beat_schedule(_celery_conf()):
        return []
    where = f"the Celery app's beat_schedule has no entry for the task {RECOVERY_TASK!r}"
    if apps.is_installed("django_celery_beat"):
        if _recovery_in_periodic_tasks() is not False:
            return []  # scheduled in the database, or its table cannot be read yet
        where += " and django-celery-beat has no enabled PeriodicTask for it"
    return [
        Warning(
            f"No periodic recovery is scheduled: {where}. Without it, runs left behind by a "
            "killed worker are never resumed, sleeps longer than 60 s never wake, wait and "
            "run timeouts never fire, held runs (debounce, batch, throttle) never start and "
            "cron ticks are never sent",
            hint="In settings: `from stepflows.celery_config import beat_schedule` and "
            "`CELERY_BEAT_SCHEDULE = beat_schedule()`; run `celery -A yourproject beat` "
            "(or a worker with -B). If cron runs `manage.py stepflows recover` instead, add "
            "'stepflows.W014' to SILENCED_SYSTEM_CHECKS.",
            id="stepflows.W014",
        )
    ]


@register(Tags.compatibility)
def check_connection_reuse(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Workers keep database connections across tasks (see stepflows.worker_connections)."""
    from django.core.checks import Warning
    from django.db import connections

    from .celery_config import DATABASE_RECOMMENDED, RECOMMENDED
    from .worker_connections import REUSE_SETTING

    reuse = RECOMMENDED[REUSE_SETTING]
    wanted = ", ".join(f"{k!r}: {v!r}" for k, v in DATABASE_RECOMMENDED.items())
    hint = (
        f"Set {REUSE_SETTING} = {reuse} (in stepflows.celery_config.RECOMMENDED) and, in "
        f"DATABASES['default'], {wanted}. stepflows then closes a connection between tasks "
        "only when it is too old or broken, as Django does between requests."
    )
    if not _celery_conf().get(REUSE_SETTING):
        return [
            Warning(
                f"Celery's {REUSE_SETTING} is not set: Celery closes every database connection "
                "before and after each task, so each step opens a new one (on PostgreSQL, "
                "a round trip and authentication that cost more than a short step)",
                hint=hint,
                id="stepflows.W015",
            )
        ]
    # A psycopg pool (OPTIONS["pool"], which needs CONN_MAX_AGE = 0) keeps the
    # connection itself: closing hands it back to the pool.
    closing = [
        alias
        for alias, db in connections.settings.items()
        if not db["CONN_MAX_AGE"] and not db.get("OPTIONS", {}).get("pool")
    ]
    if not closing:
        return []
    return [
        Warning(
            f"{REUSE_SETTING} is set, but DATABASES {closing!r} have CONN_MAX_AGE = 0: their "
            "connections are still closed after every task",
            hint=hint,
            id="stepflows.W015",
        )
    ]


@register(Tags.compatibility)
def check_prepared_statements(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """stepflows' step writes are prepared on PostgreSQL (see stepflows.store.statements)."""
    from django.core.checks import Warning
    from django.db import DEFAULT_DB_ALIAS, connections

    from .celery_config import POSTGRESQL_OPTIONS

    db = connections.settings[DEFAULT_DB_ALIAS]
    if not db["ENGINE"].endswith("postgresql"):
        return []
    if db.get("OPTIONS", {}).get("prepare_threshold") is not None:
        return []
    wanted = ", ".join(f"{k!r}: {v!r}" for k, v in POSTGRESQL_OPTIONS.items())
    return [
        Warning(
            "DATABASES['default'] has no OPTIONS['prepare_threshold'], so Django turns "
            "prepared statements off: PostgreSQL plans each step's write again at every "
            "step, which takes longer than the write itself",
            hint=f"Add {wanted} to DATABASES['default']['OPTIONS'] "
            "(stepflows.celery_config.POSTGRESQL_OPTIONS); Django's own queries are not "
            "prepared by it. Behind a pooler in transaction mode that does not keep "
            "prepared statements (PgBouncer before 1.21, or max_prepared_statements = 0), "
            "leave it out and add 'stepflows.W016' to SILENCED_SYSTEM_CHECKS.",
            id="stepflows.W016",
        )
    ]
