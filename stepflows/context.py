"""What a workflow function gets besides its step tools."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from . import clock
from .events import Event


class StepLog:
    """The lines ``ctx.logger`` logs while a step's code runs, kept with the step.

    Stored in the step's row (``Step.logs``) by the statement that records the
    attempt, and shown on the run page. Bounded: at most :attr:`MAX_LINES`
    lines and :attr:`MAX_BYTES` of text per step over all its attempts, each
    line cut at :attr:`MAX_LINE_CHARS`; lines past the bound are counted in
    ``dropped``. Lines at INFO and above are kept whatever the logging
    configuration; DEBUG lines when the logger is enabled for them.
    """

    MAX_LINES = 50
    MAX_BYTES = 8 * 1024
    MAX_LINE_CHARS = 1000

    def __init__(self, stored: dict[str, Any] | None, attempt: int) -> None:
        stored = stored if isinstance(stored, dict) else {}
        self.lines: list[dict[str, Any]] = list(stored.get("lines") or [])
        self.dropped: int = int(stored.get("dropped") or 0)
        self.size = sum(len(str(line.get("message", ""))) for line in self.lines)
        self.attempt = attempt
        self.changed = False

    def add(self, level: int, msg: Any, args: tuple[Any, ...]) -> None:
        self.changed = True
        if len(self.lines) >= self.MAX_LINES:
            self.dropped += 1
            return
        try:
            message = str(msg) % args if args else str(msg)
        except Exception:
            message = f"{msg!r} % {args!r}"
        message = message[: self.MAX_LINE_CHARS]
        if self.size + len(message) > self.MAX_BYTES:
            self.dropped += 1
            return
        self.size += len(message)
        self.lines.append(
            {
                "at": clock.now().isoformat(),
                "level": logging.getLevelName(level),
                "attempt": self.attempt,
                "message": message,
            }
        )

    def value(self) -> dict[str, Any] | None:
        if not self.lines and not self.dropped:
            return None
        return {"lines": self.lines, "dropped": self.dropped}


class ReplayAwareLogger(logging.LoggerAdapter):
    """A logger that stays quiet while the workflow replays finished steps.

    Code outside steps runs again on every invocation; without this, each
    replay would log the same lines again. Lines logged while a step's code
    runs are also kept with the step (see :class:`StepLog`), and carry
    ``step_id`` and ``attempt`` in ``extra``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        extra: dict[str, Any],
        replaying: Callable[[], bool],
        step_log: Callable[[], StepLog | None] = lambda: None,
    ):
        super().__init__(logger, extra)
        self._replaying = replaying
        self._step_log = step_log

    def isEnabledFor(self, level: int) -> bool:
        if self._step_log() is None and self._replaying():
            return False
        return super().isEnabledFor(level)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        step_log = self._step_log()
        if step_log is None and self._replaying():
            return
        enabled = self.logger.isEnabledFor(level)
        if step_log is not None and (level >= logging.INFO or enabled):
            step_log.add(level, msg, args)
        if enabled:
            msg, options = self.process(msg, kwargs)
            options.setdefault("stacklevel", 2)
            self.logger.log(level, msg, *args, **options)

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = kwargs.setdefault("extra", {})
        extra.update(self.extra or {})
        step_log = self._step_log()
        if step_log is not None and "step_id" in (self.extra or {}):
            extra["attempt"] = step_log.attempt
        return msg, kwargs


class Context:
    """The run a workflow function is executing: its first argument, ``ctx``.

    A new one is made for each invocation of the workflow function. What a
    workflow reads on it is in :data:`ATTRIBUTES`, each documented below;
    the rest (:data:`ENGINE_HOOKS`) is the engine's.

    - ``event``: the triggering :class:`~stepflows.Event`.
    - ``events``: every event of a batched run; ``[event]`` otherwise.
    - ``run_id``: this run's id.
    - ``workflow_id``: the workflow's id.
    - ``attempt``: in a step's code, the 0-based attempt of that step.
    - ``logger``: a logger that does not repeat lines when the run replays.
    """

    event: Event
    """The event that started the run (``name``, ``data``, ``id``, ``ts``), as stored.

    ``data`` is the workflow's ``schema`` instance when it declares one, else the
    dict that was sent. In a batched run, the first event of the batch.
    """

    events: list[Event]
    """A batched run (``@workflow(batch=Batch(...))``): every event of its batch, in the
    order they were received. Any other run: ``[event]``."""

    run_id: str
    """This run's id (``Run.id``, a UUID, as text): the same on every replay and retry."""

    workflow_id: str
    """The id given to ``@stepflows.workflow(id=...)``."""

    attempt: int
    """Read in a step's code: the 0-based attempt of that step (0 on its first try, 1 on
    its first retry, ...). Outside steps it holds the attempt of the last step whose code
    ran in this invocation (0 before any), which says nothing about the run."""

    logger: logging.LoggerAdapter
    """A logger named ``stepflows.workflow.<workflow id>`` that stays quiet while the run
    replays finished steps. Its records carry ``run_id`` and ``workflow_id`` in
    ``extra``, and in a step's code ``step_id`` and ``attempt``; lines logged in a
    step's code are also kept with the step (:class:`StepLog`)."""

    def __init__(
        self,
        *,
        event: Event,
        run_id: str,
        workflow_id: str,
        replaying: Callable[[], bool],
    ) -> None:
        self.event = event
        # A batched run (Batch) gets every event of its batch, in order; others get theirs.
        self.events: list[Event] = [event]
        self.run_id = run_id
        self.workflow_id = workflow_id
        self.attempt = 0
        # The lines of the step whose code runs now (see begin_step), and of the last one.
        self.step_log: StepLog | None = None
        self._ended_log: StepLog | None = None
        self._extra: dict[str, Any] = {"run_id": run_id, "workflow_id": workflow_id}
        self.logger = ReplayAwareLogger(
            logging.getLogger(f"stepflows.workflow.{workflow_id}"),
            self._extra,
            replaying,
            lambda: self.step_log,
        )

    def begin_step(self, step_id: str, attempt: int, stored: dict[str, Any] | None) -> None:
        """A step's code starts: ``ctx.logger`` lines are kept with it (``stored``: its lines)."""
        self.attempt = attempt
        self._ended_log = None
        self.step_log = StepLog(stored, attempt)
        self._extra["step_id"] = step_id

    def end_step(self) -> None:
        """The step's code returned or raised; its lines wait for :meth:`step_lines`."""
        if self.step_log is not None:
            self._ended_log, self.step_log = self.step_log, None
        self._extra.pop("step_id", None)

    def step_lines(self, stored: dict[str, Any] | None) -> dict[str, Any] | None:
        """What the step's row keeps after this attempt: ``stored`` plus the new lines."""
        log, self._ended_log = self._ended_log, None
        if log is None or not log.changed:
            return stored
        return log.value()

    def __repr__(self) -> str:
        return f"<Context run={self.run_id} workflow={self.workflow_id} event={self.event.name}>"


ATTRIBUTES: tuple[str, ...] = ("event", "events", "run_id", "workflow_id", "attempt", "logger")
"""The attributes of :class:`Context` a workflow reads, each with a docstring there."""

ENGINE_HOOKS: tuple[str, ...] = ("step_log", "begin_step", "end_step", "step_lines")
"""The public names of :class:`Context` that only the engine uses (a step's lines)."""
