"""Events, runs and steps: the durable state of stepflows.

Every change of their state is made by :mod:`stepflows.store`; the engine and
:mod:`stepflows.api` call it, and admin pages and commands call the api.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("queued")
    """Created; waiting for a worker to pick it up."""
    RUNNING = "running", _("running")
    """A worker is executing the workflow function."""
    WAITING = "waiting", _("waiting")
    """Waiting for parallel steps to finish, or for a retry to come due."""
    COMPLETED = "completed", _("completed")
    """Finished; ``output`` holds the workflow's return value."""
    FAILED = "failed", _("failed")
    """Failed for good; ``error`` says why."""
    CANCELLED = "cancelled", _("cancelled")
    """Stopped by a person before it finished."""
    SKIPPED = "skipped", _("skipped")
    """Not started: a rate limit or a singleton said no (``error`` says which)."""
    BLOCKED = "blocked", _("blocked")
    """Stopped by a change of workflow code that does not match its recorded steps;
    deploy a fix and retry (``error`` names both steps)."""


ACTIVE_RUN_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING)
# No longer active: the run holds no worker, lease or concurrency slot. A failed
# or blocked run can still be retried (stepflows.api.retry_run).
FINISHED_RUN_STATUSES = (
    RunStatus.COMPLETED,
    RunStatus.FAILED,
    RunStatus.CANCELLED,
    RunStatus.SKIPPED,
    RunStatus.BLOCKED,
)
# What stepflows.api.retry_run resumes.
RETRYABLE_RUN_STATUSES = (RunStatus.FAILED, RunStatus.BLOCKED)


class WaitKind(models.TextChoices):
    """What a waiting run (``Run.waiting_for``) or a waiting step (``Step.kind``) waits for."""

    SLEEP = "sleep", _("sleep")
    EVENT = "event", _("event")
    INVOKE = "invoke", _("invoked run")
    # A queued run held by flow control (stepflows.store.admission).
    CONCURRENCY = "concurrency", _("concurrency slot")
    THROTTLE = "throttle", _("throttle")
    DEBOUNCE = "debounce", _("debounce")
    BATCH = "batch", _("batch")


class StepKind(models.TextChoices):
    RUN = "run", _("code")
    SLEEP = "sleep", _("sleep")
    EVENT = "event", _("wait for event")
    INVOKE = "invoke", _("invoke")
    # The answer of step.patched(id) for this run (its output, a bool): not a step
    # of the determinism check, so it takes no position of its own.
    PATCH = "patch", _("patch marker")


class StepStatus(models.TextChoices):
    SCHEDULED = "scheduled", _("scheduled")
    """Waiting for a worker: a parallel step not yet started, or a retry not yet due."""
    RUNNING = "running", _("running")
    """A worker is running the step's code."""
    COMPLETED = "completed", _("completed")
    """Finished; ``output`` is stored and returned on every replay."""
    FAILED = "failed", _("failed")
    """Failed for good, after all its retries."""


class Event(models.Model):
    """An event received by :func:`stepflows.send`, or sent by a run's step."""

    id = models.CharField(primary_key=True, max_length=255)
    name = models.CharField(_("name"), max_length=255)
    data = models.JSONField(_("data"), default=dict)
    ts = models.DateTimeField(_("timestamp"), default=timezone.now)
    source_run = models.ForeignKey(
        "stepflows.Run",
        verbose_name=_("source run"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="sent_events",
    )
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    # The sender's W3C trace context (traceparent), when OpenTelemetry tracing is on:
    # the runs it starts are its children (see stepflows.tracing).
    trace = models.CharField(_("trace context"), max_length=128, blank=True, default="")

    class Meta:
        verbose_name = _("event")
        verbose_name_plural = _("events")
        ordering = ["-received_at"]
        # Admin actions, each behind its own permission (stepflows.admin).
        permissions = [
            ("replay_event", _("Can replay events")),
            ("send_test_event", _("Can send test events from the workflows page")),
        ]
        indexes = [
            models.Index(fields=["name", "-received_at"], name="stepflows_event_name_idx"),
            models.Index(fields=["-received_at"], name="stepflows_event_recv_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"


class RunQuerySet(models.QuerySet["Run"]):
    def active(self) -> RunQuerySet:
        return self.filter(status__in=ACTIVE_RUN_STATUSES)

    def failed(self) -> RunQuerySet:
        return self.filter(status=RunStatus.FAILED)

    def finished(self) -> RunQuerySet:
        return self.filter(status__in=FINISHED_RUN_STATUSES)

    def lease_free(self, now: datetime) -> RunQuerySet:
        """Runs no live worker holds: never leased, released, or with an expired lease."""
        return self.filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now))

    def family_of(self, run: Run | Any) -> RunQuerySet:
        """The fan-out family below ``run``: runs started by events it sent, at any depth.

        Children are runs whose ``parent`` is the run (started by an event one
        of its steps sent, or a rerun/replay of such a run), grandchildren the
        same below them, and so on. One query per generation, not per run; the
        run itself is not included.
        """
        return self.filter(id__in=descendant_ids(run.pk if isinstance(run, Run) else run))


def descendant_ids(run_id: Any, *, batch: int = 5000) -> list[Any]:
    """Ids of every run below ``run_id`` in its fan-out family, generation by generation."""
    found: list[Any] = []
    seen = {str(run_id)}
    level = [run_id]
    while level:
        children: list[Any] = []
        for i in range(0, len(level), batch):
            children += Run._base_manager.filter(parent_id__in=level[i : i + batch]).values_list(
                "id", flat=True
            )
        # A cycle cannot be built through the api, but a hand-edited row must not loop forever.
        level = [c for c in children if str(c) not in seen]
        seen.update(str(c) for c in level)
        found += level
    return found


class Run(models.Model):
    """One execution of one workflow, started by one event."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    workflow_id = models.CharField(_("workflow"), max_length=255)
    event = models.ForeignKey(
        Event, verbose_name=_("event"), on_delete=models.PROTECT, related_name="runs"
    )
    status = models.CharField(
        _("status"), max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED
    )
    output = models.JSONField(_("output"), null=True, blank=True)
    error = models.JSONField(_("error"), null=True, blank=True)
    parent = models.ForeignKey(
        "self",
        verbose_name=_("parent run"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="children",
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    # Failed attempts of the workflow code itself (outside steps).
    attempts = models.PositiveIntegerField(_("workflow attempts"), default=0)
    # Times staff resumed this run after it failed (stepflows.api.retry_run).
    resumes = models.PositiveIntegerField(_("resumes"), default=0)
    # The worker executing the run holds the lease until it expires; another
    # invocation of the same run leaves it alone until then.
    lease_owner = models.CharField(max_length=100, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    # Bumped each time the run is suspended or recovered. Messages carry the
    # value they were sent for; a duplicate or stale message finds another
    # value and does nothing (see stepflows.engine.recovery).
    wake = models.PositiveIntegerField(_("wake-up number"), default=0)
    # Last time the run made progress (claimed, suspended, recovered); for a
    # delayed retry, the time it is due. Recovery looks for runs idle too long.
    progress_at = models.DateTimeField(_("last progress"), null=True, blank=True)
    # Times the recovery found this run stuck and resumed it since it last made
    # progress (a step that ended after the last recovery starts the count again).
    recoveries = models.PositiveIntegerField(_("recoveries"), default=0)
    recovered_at = models.DateTimeField(_("last recovered"), null=True, blank=True)
    # Bytes of stored step outputs: summed when the run suspends, then grown by
    # each parallel step of the group, so a group cannot pass MAX_STATE_BYTES.
    state_bytes = models.PositiveBigIntegerField(default=0, editable=False)
    # The join of the parallel group the run waits for: its first position and
    # how many of its steps have not finished yet. The step task that finishes
    # the last one resumes the run (see stepflows.store.steps).
    join_group = models.PositiveIntegerField(null=True, blank=True, editable=False)
    join_pending = models.PositiveIntegerField(default=0, editable=False)
    # A durable wait (step.sleep, step.wait_for_event, step.invoke): what the
    # waiting run waits for, and when the sweep must wake it (a sleep's due
    # time, a wait's timeout). Cleared when it is woken.
    waiting_for = models.CharField(
        _("waiting for"), max_length=16, choices=WaitKind.choices, blank=True, default=""
    )
    wait_until = models.DateTimeField(_("wait until"), null=True, blank=True)
    # A run started by step.invoke: the step of ``parent`` that waits for it.
    caller_step = models.CharField(_("invoked by step"), max_length=255, blank=True, default="")
    # Its cancel_on waiters are registered (at its first invocation).
    listening = models.BooleanField(default=False, editable=False)
    # Flow control: the key value a held run waits on (a concurrency key, a
    # throttle, debounce or batch key), its place in the line (created_at
    # moved by Priority), and a batch's event ids, in order.
    flow_key = models.CharField(_("flow key"), max_length=255, blank=True, default="")
    priority_at = models.DateTimeField(null=True, blank=True, editable=False)
    batch = models.JSONField(_("batched events"), null=True, blank=True)
    # A run started by stepflows.api.fork_run: the run it was forked from, and the
    # step it executes from (the steps before it were copied from that run).
    forked_from = models.ForeignKey(
        "self",
        verbose_name=_("forked from"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="forks",
    )
    fork_step = models.CharField(_("forked at step"), max_length=200, blank=True, default="")
    # The workflow's version (@workflow(version=...)) when the run was created; ""
    # for a workflow that declares none.
    version = models.CharField(_("version"), max_length=64, blank=True, default="")

    objects = RunQuerySet.as_manager()

    class Meta:
        verbose_name = _("run")
        verbose_name_plural = _("runs")
        ordering = ["-created_at"]
        # Admin actions, each behind its own permission (stepflows.admin).
        permissions = [
            ("retry_run", _("Can retry failed runs")),
            ("rerun_run", _("Can rerun runs from the start")),
            ("cancel_run", _("Can cancel runs")),
            ("compare_runs", _("Can compare runs")),
            ("fork_run", _("Can fork runs")),
        ]
        indexes = [
            models.Index(fields=["-created_at"], name="stepflows_run_created_idx"),
            models.Index(fields=["status", "-created_at"], name="stepflows_run_status_idx"),
            models.Index(fields=["workflow_id", "-created_at"], name="stepflows_run_wf_idx"),
            models.Index(fields=["status", "progress_at"], name="stepflows_run_progress_idx"),
            models.Index(fields=["status", "wait_until"], name="stepflows_run_wait_idx"),
            models.Index(
                fields=["workflow_id", "waiting_for", "flow_key", "priority_at"],
                name="stepflows_run_held_idx",
            ),
            models.Index(fields=["version", "-created_at"], name="stepflows_run_version_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.id}"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES

    def family(self) -> RunQuerySet:
        """Runs below this one in its fan-out family, at any depth; see ``family_of``."""
        return Run.objects.family_of(self)

    def typed_output(self) -> Any:
        """The output as the workflow function's return annotation declares it.

        ``output`` is the JSON form; a workflow annotated ``-> Model`` (or
        ``datetime``, ``list[Model]``...) gets that type back here, by the same
        rule as step outputs. Without an annotation, or when the workflow is no
        longer registered, this is ``output`` itself.
        """
        from .exceptions import WorkflowNotFoundError
        from .registry import registry
        from .serialization import restore, return_type

        try:
            workflow = registry.get(self.workflow_id)
        except WorkflowNotFoundError:
            return self.output
        return restore(self.output, return_type(workflow.fn))

    @property
    def duration(self) -> float | None:
        """Seconds from start to end (or to now while it runs)."""
        if self.started_at is None:
            return None
        end = self.ended_at or timezone.now()
        return (end - self.started_at).total_seconds()


class Step(models.Model):
    """A step of a run: its memoized output or error, and every attempt."""

    # No index of its own: the unique (run, step_id) and the (run, position) index
    # both start with run, and one index less is one write less for every step.
    run = models.ForeignKey(
        Run,
        verbose_name=_("run"),
        on_delete=models.CASCADE,
        related_name="steps",
        db_index=False,
    )
    step_id = models.CharField(_("step id"), max_length=255)
    # Order of the step call in the workflow function; replays must meet the
    # same step ids in the same order.
    position = models.PositiveIntegerField(_("position"))
    # Steps started by one `parallel` call share a group: the position of its first step.
    group = models.PositiveIntegerField(_("parallel group"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=16, choices=StepStatus.choices, default=StepStatus.SCHEDULED
    )
    output = models.JSONField(_("output"), null=True, blank=True)
    output_bytes = models.PositiveIntegerField(_("output size"), default=0)
    error = models.JSONField(_("error"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    ended_at = models.DateTimeField(_("ended at"), null=True, blank=True)
    # Each attempt: {"number", "started_at", "ended_at", "error", "worker"}.
    attempts = models.JSONField(_("attempts"), default=list, blank=True)
    attempt_count = models.PositiveIntegerField(_("attempt count"), default=0)
    # Attempts made before the last manual retry of the run: the retry budget
    # counts only the attempts after it.
    attempts_base = models.PositiveIntegerField(_("attempts before last retry"), default=0)
    # When a retry of a failed attempt is due.
    retry_at = models.DateTimeField(_("retry at"), null=True, blank=True)
    # A parallel step being executed: the step task holding it, and its last
    # heartbeat. Recovery restarts a running step only once its heartbeat is
    # older than LEASE_SECONDS (see stepflows.engine.heartbeat).
    lease_owner = models.CharField(max_length=100, blank=True, default="", editable=False)
    heartbeat_at = models.DateTimeField(_("last heartbeat"), null=True, blank=True)
    # What the step does: run code, or wait durably (sleep, event, invoked run).
    kind = models.CharField(_("kind"), max_length=16, choices=StepKind.choices, default="run")
    # A waiting step: when a sleep is due, or a wait times out.
    wake_at = models.DateTimeField(_("wakes at"), null=True, blank=True)
    # A waiting step's details (event name and match value, child run...).
    wait = models.JSONField(_("wait"), null=True, blank=True)
    # Lines the step's code logged with ctx.logger, bounded: {"lines": [{"at", "level",
    # "attempt", "message"}], "dropped": n} (see stepflows.context.StepLog).
    logs = models.JSONField(_("log lines"), null=True, blank=True)

    class Meta:
        verbose_name = _("step")
        verbose_name_plural = _("steps")
        ordering = ["run", "position"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_id"], name="stepflows_step_run_id_uniq"),
        ]
        indexes = [
            models.Index(fields=["run", "position"], name="stepflows_step_run_pos_idx"),
        ]

    def __str__(self) -> str:
        return self.step_id

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def is_finished(self) -> bool:
        return self.status in (StepStatus.COMPLETED, StepStatus.FAILED)

    def error_summary(self) -> dict[str, Any] | None:
        return self.error


class Intervention(models.Model):
    """Who did what to a run: retry, rerun, cancel, replay or fork.

    Written by :mod:`stepflows.api` in the transaction that makes the change.
    ``run`` is the run acted on (for a replay: the new run, since the event is
    what was acted on); ``new_run`` the run a rerun, replay or fork started.
    """

    class Action(models.TextChoices):
        RETRY = "retry", _("retry")
        RERUN = "rerun", _("rerun")
        CANCEL = "cancel", _("cancel")
        REPLAY = "replay", _("replay")
        FORK = "fork", _("fork")

    run = models.ForeignKey(
        Run, verbose_name=_("run"), on_delete=models.CASCADE, related_name="interventions"
    )
    action = models.CharField(_("action"), max_length=16, choices=Action.choices)
    # The admin user's name, "command line" or "code".
    by = models.CharField(_("by"), max_length=150)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("user"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.TextField(_("reason"), blank=True, default="")
    at = models.DateTimeField(_("at"), default=timezone.now)
    new_run = models.ForeignKey(
        Run,
        verbose_name=_("new run"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="started_by",
    )
    # What else the action was given, e.g. {"from_step": "charge"} for a fork.
    detail = models.JSONField(_("detail"), default=dict, blank=True)

    class Meta:
        verbose_name = _("intervention")
        verbose_name_plural = _("interventions")
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["run", "at"], name="stepflows_interv_run_at_idx")]

    def __str__(self) -> str:
        return f"{self.get_action_display()} of run {self.run_id} by {self.by}"


class Waiter(models.Model):
    """A pending wait for an event: a ``step.wait_for_event`` or a ``cancel_on``.

    Keyed by event name and match key (a hash of the matched field's path and
    value, ``*`` without ``match``), so each sent event finds its waiters with
    one indexed query, however many runs wait on other keys.
    """

    WAIT = "wait"
    CANCEL = "cancel"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="waiters")
    step_id = models.CharField(max_length=255, blank=True, default="")
    kind = models.CharField(max_length=8, default=WAIT)
    event_name = models.CharField(max_length=255)
    match_key = models.CharField(max_length=64)
    # An if_ predicate must be called in the workflow's code: the event only wakes the run.
    has_filter = models.BooleanField(default=False)
    # For cancel_on: which of the workflow's CancelOn entries.
    cancel_index = models.PositiveSmallIntegerField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("waiter")
        verbose_name_plural = _("waiters")
        indexes = [
            models.Index(fields=["event_name", "match_key"], name="stepflows_waiter_match_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.event_name} for run {self.run_id}"


class Slot(models.Model):
    """A concurrency slot: ``run`` holds one of its workflow's slots for ``key``."""

    workflow_id = models.CharField(max_length=255)
    key = models.CharField(max_length=255)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="slots")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("concurrency slot")
        verbose_name_plural = _("concurrency slots")
        constraints = [
            models.UniqueConstraint(fields=["run", "key"], name="stepflows_slot_run_key_uniq"),
        ]
        indexes = [models.Index(fields=["workflow_id", "key"], name="stepflows_slot_key_idx")]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.key!r}: run {self.run_id}"


class FlowState(models.Model):
    """The state of one flow-control limit for one key of one workflow.

    ``kind`` is throttle, rate_limit, idempotency, singleton, debounce, batch or
    cron; ``at`` is the limit's clock (a throttle's next free start, a rate
    limit's theoretical arrival time, a debounce's first event, a cron's last
    tick), ``until`` an expiry (an idempotency key), ``run`` the run it points
    at (the pending debounce or batch run, the singleton's active run).
    """

    workflow_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=16)
    key = models.CharField(max_length=255, blank=True, default="")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    at = models.DateTimeField(null=True, blank=True)
    until = models.DateTimeField(null=True, blank=True)
    count = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name = _("flow state")
        verbose_name_plural = _("flow states")
        constraints = [
            models.UniqueConstraint(
                fields=["workflow_id", "kind", "key"], name="stepflows_flow_state_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_id} {self.kind} {self.key!r}"
