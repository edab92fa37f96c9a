"""Flow control options of ``@stepflows.workflow`` and the cron trigger.

Each is a small frozen description, checked by :func:`problems` (reported by
the system check ``stepflows.E020``); the decisions are taken in the
database by :mod:`stepflows.store.admission`, so they hold across any number
of workers.

A *key* is a dotted path into the event (``"data.customer_id"``) or a
function of the :class:`~stepflows.Event` returning a string; without one,
the limit is one for the whole workflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

KeyArg = str | Callable[[Any], Any] | None


def _seconds(value: Any) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _check_period(value: Any, what: str, errors: list[str], *, required: bool = True) -> None:
    if value is None and not required:
        return
    seconds = _seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        errors.append(f"{what} must be a timedelta or a number of seconds above 0, not {value!r}")


def _check_limit(value: Any, what: str, errors: list[str]) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        errors.append(f"{what} must be a whole number of at least 1, not {value!r}")


def _check_key(value: Any, what: str, errors: list[str]) -> None:
    if value is None or callable(value):
        return
    if not isinstance(value, str) or not value.startswith(("data.", "name", "id")):
        errors.append(
            f"{what} is a dotted path into the event such as 'data.customer_id' (a string), "
            f"or a function of the event; not {value!r}"
        )


def key_of(key: KeyArg, event: Any) -> str:
    """The key value of ``event`` (an Event whose data is a dict) for one option."""
    if key is None:
        return ""
    if callable(key):
        return str(key(event))
    value: Any = event
    for i, part in enumerate(key.split(".")):
        if i == 0:
            value = getattr(event, part, None)
            continue
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class Concurrency:
    """At most ``limit`` runs per ``key`` value executing at once.

    A slot is held by a run from its start until it ends, except while it
    sleeps or waits for an event or an invoked run (then it holds none and
    takes a slot again to go on). Runs over the limit wait in the database
    and start in order (see :class:`Priority`) when a slot frees.
    """

    limit: int
    key: KeyArg = None


@dataclass(frozen=True)
class Throttle:
    """At most ``limit`` run starts per ``period`` per key, ``burst`` of them at once;
    the excess runs start later, in order. None is dropped."""

    limit: int
    period: timedelta | float
    burst: int = 1
    key: KeyArg = None


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` runs per ``period`` per key; the excess are not started
    and are recorded as skipped."""

    limit: int
    period: timedelta | float
    key: KeyArg = None


@dataclass(frozen=True)
class Debounce:
    """A burst of events starts one run, with the last event, ``period`` after the last
    one (and at most ``timeout`` after the first)."""

    period: timedelta | float
    key: KeyArg = None
    timeout: timedelta | float | None = None


@dataclass(frozen=True)
class Priority:
    """``run(event) -> seconds``: a run waiting for a concurrency slot goes ahead of
    runs created up to that many seconds before it (negative: behind)."""

    run: Callable[[Any], float]


@dataclass(frozen=True)
class Singleton:
    """One active run per key: a new one is skipped (``mode="skip"``) or replaces the
    active one, which is cancelled (``mode="cancel"``)."""

    key: KeyArg = None
    mode: str = "skip"


@dataclass(frozen=True)
class Batch:
    """Collect events into one run (``ctx.events``): it starts when ``max_size``
    events are in, or ``timeout`` after the first."""

    max_size: int
    timeout: timedelta | float
    key: KeyArg = None


@dataclass(frozen=True)
class Cron:
    """Trigger the workflow on a schedule: ``Cron("0 9 * * MON", tz="Europe/Paris")``.

    The five fields are Celery's ``crontab`` (minute, hour, day of month,
    month, day of week). Each tick sends an event ``stepflows/cron`` whose id
    is derived from the workflow and the tick, so two beat processes start
    one run per tick. A tick missed while nothing ran is started once when
    the sweep runs again (``catch_up=False`` skips it).
    """

    expression: str
    tz: str = "UTC"
    catch_up: bool = True

    def schedule(self) -> Any:
        from celery.schedules import crontab

        fields = self.expression.split()
        if len(fields) != 5:
            raise ValueError(
                f"a cron expression has 5 fields, {self.expression!r} has {len(fields)}"
            )
        minute, hour, dom, month, dow = fields
        return crontab(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow
        )

    def zone(self) -> Any:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.tz)

    def ticks_after(self, after: datetime, until: datetime) -> list[datetime]:
        """The ticks in (after, until], in the schedule's time zone (aware datetimes)."""
        cron = self.schedule()
        zone = self.zone()
        found: list[datetime] = []
        start = after.astimezone(zone).replace(second=0, microsecond=0) + timedelta(minutes=1)
        day = start.date()
        end = until.astimezone(zone)
        while day <= end.date() and len(found) < 10_000:
            if (
                day.month in cron.month_of_year
                and day.day in cron.day_of_month
                and (day.isoweekday() % 7) in cron.day_of_week
            ):
                for hour in sorted(cron.hour):
                    for minute in sorted(cron.minute):
                        tick = datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone)
                        if start <= tick <= end:
                            found.append(tick)
            day += timedelta(days=1)
        return found


# The event a cron trigger sends.
CRON_EVENT = "stepflows/cron"


@dataclass
class FlowOptions:
    """A workflow's flow control, as given to the decorator."""

    concurrency: list[Concurrency] = field(default_factory=list)
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    idempotency: KeyArg = None
    idempotency_period: timedelta | float = 24 * 3600
    singleton: Singleton | None = None
    batch: Batch | None = None
    crons: list[Cron] = field(default_factory=list)

    @property
    def at_send(self) -> bool:
        """Whether sending an event must consult this workflow's limits."""
        return any(
            (
                self.throttle,
                self.rate_limit,
                self.debounce,
                self.idempotency is not None,
                self.singleton,
                self.batch,
                self.priority,
            )
        )

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when nothing)."""
        errors: list[str] = []
        if not isinstance(self.concurrency, list) or len(self.concurrency) > 2:
            errors.append("concurrency takes a list of at most two Concurrency(...)")
        else:
            for i, c in enumerate(self.concurrency):
                if not isinstance(c, Concurrency):
                    errors.append(f"concurrency[{i}] must be a Concurrency(...), not {c!r}")
                    continue
                _check_limit(c.limit, f"concurrency[{i}].limit", errors)
                _check_key(c.key, f"concurrency[{i}].key", errors)
        if self.throttle is not None:
            t = self.throttle
            if not isinstance(t, Throttle):
                errors.append(f"throttle must be a Throttle(...), not {t!r}")
            else:
                _check_limit(t.limit, "throttle.limit", errors)
                _check_limit(t.burst, "throttle.burst", errors)
                _check_period(t.period, "throttle.period", errors)
                _check_key(t.key, "throttle.key", errors)
        if self.rate_limit is not None:
            r = self.rate_limit
            if not isinstance(r, RateLimit):
                errors.append(f"rate_limit must be a RateLimit(...), not {r!r}")
            else:
                _check_limit(r.limit, "rate_limit.limit", errors)
                _check_period(r.period, "rate_limit.period", errors)
                _check_key(r.key, "rate_limit.key", errors)
        if self.debounce is not None:
            d = self.debounce
            if not isinstance(d, Debounce):
                errors.append(f"debounce must be a Debounce(...), not {d!r}")
            else:
                _check_period(d.period, "debounce.period", errors)
                _check_period(d.timeout, "debounce.timeout", errors, required=False)
                _check_key(d.key, "debounce.key", errors)
        if self.priority is not None and not (
            isinstance(self.priority, Priority) and callable(self.priority.run)
        ):
            errors.append("priority must be Priority(run=lambda event: seconds)")
        _check_key(self.idempotency, "idempotency", errors)
        _check_period(self.idempotency_period, "idempotency_period", errors)
        if self.singleton is not None:
            s = self.singleton
            if not isinstance(s, Singleton):
                errors.append(f"singleton must be a Singleton(...), not {s!r}")
            else:
                _check_key(s.key, "singleton.key", errors)
                if s.mode not in ("skip", "cancel"):
                    errors.append(f"singleton.mode is 'skip' or 'cancel', not {s.mode!r}")
        if self.batch is not None:
            b = self.batch
            if not isinstance(b, Batch):
                errors.append(f"batch must be a Batch(...), not {b!r}")
            else:
                _check_limit(b.max_size, "batch.max_size", errors)
                _check_period(b.timeout, "batch.timeout", errors)
                _check_key(b.key, "batch.key", errors)
            if self.debounce is not None:
                errors.append("batch and debounce cannot be combined: choose one")
        for cron in self.crons:
            try:
                cron.schedule()
                cron.zone()
            except Exception as exc:
                errors.append(
                    f"the cron trigger {cron.expression!r} (tz {cron.tz!r}) is invalid: {exc}"
                )
        return errors


def seconds(value: timedelta | float) -> float:
    s = _seconds(value)
    assert s is not None
    return s
