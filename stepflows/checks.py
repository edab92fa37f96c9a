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
    return errors
