"""The ``workflow`` decorator, triggers, and the registry of workflows.

Workflows register themselves when their module is imported; the app config
imports the ``workflows`` module of every installed app at startup.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from .events import Event
from .exceptions import ConfigurationError, TriggerFilterError, WorkflowNotFoundError
from .flow import CRON_EVENT, Cron, FlowOptions

# Options of the decorator that are flow control (see stepflows.flow).
FLOW_OPTIONS = (
    "concurrency",
    "throttle",
    "rate_limit",
    "debounce",
    "priority",
    "idempotency",
    "idempotency_period",
    "singleton",
    "batch",
)

F = TypeVar("F", bound=Callable[..., Any])

# The width of the Run.workflow_id column (models cannot be imported here).
MAX_WORKFLOW_ID_LENGTH = 255
# The width of the Run.version column.
MAX_VERSION_LENGTH = 64


@dataclass(frozen=True)
class TriggerEvent:
    """Trigger a workflow on events named ``event``, optionally filtered by ``if_``.

    ``if_(event)`` gets the :class:`Event` as sent (its ``data`` the plain
    dict) and returns whether this workflow should start a run for it. It is
    called by :func:`stepflows.send` and by replays, so keep it quick and free
    of side effects.
    """

    event: str
    if_: Callable[[Event], bool] | None = None

    def matches(self, event: Event) -> bool:
        if event.name != self.event:
            return False
        return self.if_ is None or bool(self.if_(event))


def seconds_of(value: Any, what: str, *, allow_zero: bool = False) -> float:
    """``value`` (a timedelta or a number of seconds) in seconds, or ConfigurationError."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationError(
            f"{what} is a timedelta or a number of seconds, not {type(value).__name__} {value!r}"
        )
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        raise ConfigurationError(f"{what} must be above 0 seconds, got {value!r}")
    return seconds


def check_match_path(path: Any, what: str) -> str | None:
    """A match path is None or a dotted path into the event's data: ``"data.order_id"``."""
    if path is None:
        return None
    if not isinstance(path, str) or not path.startswith("data.") or "" in path.split("."):
        raise ConfigurationError(
            f"{what}: match is a dotted path into the event's data such as 'data.order_id', "
            f"not {path!r}"
        )
    return path


@dataclass(frozen=True)
class Timeouts:
    """Cancel a run that waits too long to start, or takes too long to finish.

    ``start``: a run still queued this long after it was created is cancelled.
    ``finish``: a run still active this long after it started is cancelled;
    a step that is running then is not interrupted (the run stops before its
    next step). Each is a ``timedelta`` or seconds, or None for no limit.
    """

    start: timedelta | float | None = None
    finish: timedelta | float | None = None

    def seconds(self, workflow_id: str) -> tuple[float | None, float | None]:
        where = f"workflow {workflow_id!r}: Timeouts"
        start = None if self.start is None else seconds_of(self.start, f"{where}(start=...)")
        finish = None if self.finish is None else seconds_of(self.finish, f"{where}(finish=...)")
        return start, finish


@dataclass(frozen=True)
class CancelOn:
    """Cancel a run when a later event named ``event`` matches it.

    ``match``: a path such as ``"data.order_id"``; the event matches when its
    value there equals the trigger event's. ``if_(trigger, candidate)``: a
    further test, given both events (their data as dicts). ``timeout``: only
    events within this long after the run was created cancel it.
    """

    event: str
    match: str | None = None
    if_: Callable[[Any, Any], bool] | None = None
    timeout: timedelta | float | None = None


@dataclass
class Workflow:
    """A registered workflow: its function and options."""

    id: str
    fn: Callable[..., Any]
    triggers: list[TriggerEvent]
    retries: int | None = None
    schema: type[BaseModel] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Durable-wait options (see Timeouts, CancelOn, on_failure).
    timeouts: tuple[float | None, float | None] = (None, None)
    cancel_on: list[CancelOn] = field(default_factory=list)
    on_failure: str | None = None
    """Id of the workflow that handles this one's failed runs."""
    flow: FlowOptions = field(default_factory=FlowOptions)
    version: str | None = None
    """The code's version (``@workflow(version=...)``), stored on each run it starts."""

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)

    @property
    def experimental_execution(self) -> bool:
        return bool(self.options.get("experimental_execution", False))

    def matches(self, event: Event) -> bool:
        for trigger in self.triggers:
            try:
                if trigger.matches(event):
                    return True
            except Exception as exc:
                raise TriggerFilterError(
                    f"workflow {self.id!r}: the if_ filter of its trigger {trigger.event!r} "
                    f"raised {type(exc).__name__}: {exc} for event {event.name!r}. Fix the "
                    "filter (it gets the Event with its data as a dict); nothing was stored."
                ) from exc
        return False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


class Registry:
    """Workflows by id. Duplicates are kept aside for the system check to report."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}
        self.duplicates: list[tuple[Workflow, Workflow]] = []
        # Workflow id -> what is wrong with its options (the system check reports them).
        self.problems: dict[str, list[str]] = {}

    def register(self, wf: Workflow) -> None:
        check_workflow_id(wf.id)
        existing = self._workflows.get(wf.id)
        if existing is not None and existing.fn is not wf.fn:
            same_place = (
                existing.fn.__module__ == wf.fn.__module__
                and existing.fn.__qualname__ == wf.fn.__qualname__
            )
            if not same_place:
                self.duplicates.append((existing, wf))
                return
        self._workflows[wf.id] = wf

    def unregister(self, workflow_id: str) -> None:
        self._workflows.pop(workflow_id, None)

    def get(self, workflow_id: str) -> Workflow:
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise WorkflowNotFoundError(
                f"no workflow is registered with id {workflow_id!r}; registered: "
                f"{sorted(self._workflows) or 'none'}. Is its workflows.py in an installed app?"
            ) from None

    def find(self, workflow_id: str) -> Workflow | None:
        """The workflow registered as ``workflow_id``, or None."""
        return self._workflows.get(workflow_id)

    def all(self) -> list[Workflow]:
        return list(self._workflows.values())

    def matching(self, event: Event) -> list[Workflow]:
        return [wf for wf in self._workflows.values() if wf.matches(event)]


registry = Registry()


def check_workflow_id(workflow_id: str) -> None:
    """Raise :class:`ConfigurationError` unless a run can store ``workflow_id``."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ConfigurationError(f"a workflow id is a non-empty string, not {workflow_id!r}")
    if len(workflow_id) > MAX_WORKFLOW_ID_LENGTH:
        raise ConfigurationError(
            f"workflow id {workflow_id[:40]!r}... is {len(workflow_id)} characters long; "
            f"the limit is {MAX_WORKFLOW_ID_LENGTH} (the width of Run.workflow_id). "
            "Choose a shorter id."
        )
    # Neither could be stored: PostgreSQL text cannot hold NUL, and a lone
    # surrogate is not encodable text on any backend.
    if "\x00" in workflow_id:
        raise ConfigurationError(
            f"workflow id {workflow_id!r} contains the NUL character (U+0000); remove it"
        )
    try:
        workflow_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"workflow id {workflow_id!r} contains a lone surrogate "
            f"(U+{ord(workflow_id[exc.start]):04X}), which is not valid Unicode; remove it"
        ) from None


def check_version(version: Any, workflow_id: str) -> None:
    """Raise :class:`ConfigurationError` unless a run can store ``version``."""
    if version is None:
        return
    if not isinstance(version, str) or not version.strip():
        raise ConfigurationError(
            f"workflow {workflow_id!r}: version is a non-empty string such as '2026-11-27', "
            f"not {version!r}"
        )
    if len(version) > MAX_VERSION_LENGTH:
        raise ConfigurationError(
            f"workflow {workflow_id!r}: version {version[:20]!r}... is {len(version)} characters "
            f"long; the limit is {MAX_VERSION_LENGTH}"
        )
    if version != version.strip() or any(
        ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in version
    ):
        raise ConfigurationError(
            f"workflow {workflow_id!r}: version {version!r} has a control character, a lone "
            "surrogate or spaces at its ends; use printable text such as '2026-11-27'"
        )


def _cron_filter(workflow_id: str) -> Callable[[Event], bool]:
    return lambda event: isinstance(event.data, dict) and event.data.get("workflow") == workflow_id


def _triggers(trigger: Any, workflow_id: str) -> list[TriggerEvent]:
    items = trigger if isinstance(trigger, list | tuple) else [trigger]
    result: list[TriggerEvent] = []
    for item in items:
        if isinstance(item, Cron):
            result.append(TriggerEvent(CRON_EVENT, if_=_cron_filter(workflow_id)))
        elif isinstance(item, str):
            result.append(TriggerEvent(item))
        elif isinstance(item, TriggerEvent):
            result.append(item)
        else:
            raise ConfigurationError(
                f"workflow {workflow_id!r}: a trigger is an event name or a TriggerEvent, "
                f"not {item!r}"
            )
    if not result:
        raise ConfigurationError(f"workflow {workflow_id!r} needs at least one trigger")
    return result


@overload
def workflow(
    *,
    id: str,
    trigger: str | TriggerEvent | list[str | TriggerEvent],
    retries: int | None = None,
    schema: type[BaseModel] | None = None,
    timeouts: Timeouts | None = None,
    cancel_on: CancelOn | list[CancelOn] | None = None,
    on_failure: Callable[..., Any] | None = None,
    version: str | None = None,
    **options: Any,
) -> Callable[[F], F]: ...


@overload
def workflow(*args: Any, **kwargs: Any) -> Callable[[F], F]: ...


def workflow(
    *args: Any,
    id: str | None = None,
    trigger: Any = None,
    retries: int | None = None,
    schema: type[BaseModel] | None = None,
    timeouts: Timeouts | None = None,
    cancel_on: CancelOn | list[CancelOn] | None = None,
    on_failure: Callable[..., Any] | None = None,
    version: str | None = None,
    **options: Any,
) -> Callable[[F], F]:
    """Declare a workflow triggered by events.

    A plain ``def fn(ctx, step)`` gets a :class:`StepSync`; an ``async def``
    gets a :class:`Step`. ``retries`` overrides ``STEPFLOWS["RETRIES"]`` for
    this workflow's steps; ``schema`` (a pydantic model) validates event data
    at :func:`stepflows.send` and is what ``ctx.event.data`` holds in the run.
    The decorated function is returned unchanged, so it stays testable.

    ``timeouts=Timeouts(start=..., finish=...)`` cancels runs that wait too
    long to start or run too long; ``cancel_on=[CancelOn(event=..., match=...)]``
    cancels a run when a matching later event arrives; ``on_failure=handler``
    (a workflow function, ``def handler(ctx, step)``) runs, as a run of its
    own with id ``"<id>.on_failure"``, for each failed run (not for cancelled
    ones), its event named ``stepflows/run.failed``.

    ``version="2026-11-27"`` (any short text) is stored on each run the
    workflow starts (``Run.version``), so admin and ``manage.py stepflows runs
    --version`` tell which code started a run.
    """
    if args:
        raise ConfigurationError(
            "use @stepflows.workflow(id=..., trigger=...) with keyword arguments"
        )
    if not isinstance(id, str) or not id:
        raise ConfigurationError("@stepflows.workflow needs id='a-non-empty-string'")
    check_workflow_id(id)
    triggers = _triggers(trigger, id)
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ConfigurationError(f"workflow {id!r}: retries must be a whole number >= 0")
    if schema is not None and not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        raise ConfigurationError(f"workflow {id!r}: schema must be a pydantic BaseModel class")

    limits = (timeouts or Timeouts()).seconds(id)
    if timeouts is not None and not isinstance(timeouts, Timeouts):
        raise ConfigurationError(f"workflow {id!r}: timeouts must be a stepflows.Timeouts(...)")
    cancels = _cancel_on(cancel_on, id)
    if on_failure is not None and not callable(on_failure):
        raise ConfigurationError(f"workflow {id!r}: on_failure must be a workflow function")
    check_version(version, id)

    flow_args = {name: options.pop(name) for name in FLOW_OPTIONS if name in options}
    if "concurrency" in flow_args and not isinstance(flow_args["concurrency"], list | tuple):
        flow_args["concurrency"] = [flow_args["concurrency"]]
    if "concurrency" in flow_args:
        flow_args["concurrency"] = list(flow_args["concurrency"])
    items = trigger if isinstance(trigger, list | tuple) else [trigger]
    flow = FlowOptions(**flow_args, crons=[t for t in items if isinstance(t, Cron)])
    problems = flow.problems()

    def decorator(fn: F) -> F:
        handler_id = None
        if on_failure is not None:
            handler_id = f"{id}.on_failure"
            registry.register(
                Workflow(
                    id=handler_id, fn=on_failure, triggers=[], retries=retries, version=version
                )
            )
        wf = Workflow(
            id=id,
            fn=fn,
            triggers=triggers,
            retries=retries,
            schema=schema,
            options=options,
            timeouts=limits,
            cancel_on=cancels,
            on_failure=handler_id,
            flow=flow,
            version=version,
        )
        registry.register(wf)
        if problems:
            registry.problems[id] = problems
        fn.stepflows_workflow = wf  # type: ignore[attr-defined]
        return fn

    return decorator


def _cancel_on(value: Any, workflow_id: str) -> list[CancelOn]:
    if value is None:
        return []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for i, item in enumerate(items):
        where = f"workflow {workflow_id!r}: cancel_on[{i}]"
        if not isinstance(item, CancelOn):
            raise ConfigurationError(f"{where} must be a stepflows.CancelOn(...), not {item!r}")
        if not isinstance(item.event, str) or not item.event:
            raise ConfigurationError(f"{where}: event is an event name")
        check_match_path(item.match, where)
        if item.if_ is not None and not callable(item.if_):
            raise ConfigurationError(f"{where}: if_ must be a function (trigger, candidate)")
        if item.timeout is not None:
            seconds_of(item.timeout, f"{where}: timeout")
    return items
