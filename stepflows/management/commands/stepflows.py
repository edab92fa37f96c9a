"""`python manage.py stepflows <send|runs|limits|retry|rerun|cancel|replay|recover|bench>`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import termcolors

from ... import api
from ...admin.flow_control import is_held, limits_table
from ...admin.flow_text import hold_text, line_figures, skip_reason
from ...exceptions import StepflowsError
from ...models import Event, Run, RunStatus, Step, StepStatus, WaitKind
from ...store.fence import worker_of
from ...timeline import local_time


class Command(BaseCommand):
    help = "Send events and inspect runs."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        send = sub.add_parser("send", help="send an event")
        send.add_argument("name")
        send.add_argument("--data", default="{}", help="the event data, as a JSON object")
        send.add_argument("--id", default=None, help="an idempotency key")
        runs = sub.add_parser("runs", help="list recent runs")
        runs.add_argument("--limit", type=int, default=20)
        runs.add_argument("--status", default=None)
        runs.add_argument("--workflow", default=None)
        limits = sub.add_parser(
            "limits", help="flow control: each workflow's limits, and per key what runs and waits"
        )
        limits.add_argument("--workflow", default=None, help="only this workflow")
        retry = sub.add_parser("retry", help="resume failed runs where they failed")
        retry.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        rerun = sub.add_parser("rerun", help="start new runs of the same events, from the top")
        rerun.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        cancel = sub.add_parser("cancel", help="stop runs before their next step")
        cancel.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        cancel.add_argument(
            "--keep-children",
            action="store_true",
            help="leave running the runs they started with step.invoke",
        )
        replay = sub.add_parser("replay", help="start fresh runs of events")
        replay.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
        recover = sub.add_parser("recover", help="find stuck runs and resume them")
        recover.add_argument(
            "--dry-run", action="store_true", help="list the stuck runs, resume nothing"
        )
        recover.add_argument("--limit", type=int, default=1000, help="at most this many runs")
        bench = sub.add_parser("bench", help="benchmark stepflows against raw Celery chords")
        from ...bench.main import add_arguments as bench_arguments

        bench_arguments(bench)

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        getattr(self, f"do_{verb.replace('-', '_')}")(**options)

    def do_send(self, name: str, data: str, id: str | None, **_: Any) -> None:
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--data is not valid JSON: {exc}") from None
        try:
            ids = api.send(name, data=payload, id=id)
        except StepflowsError as exc:
            raise CommandError(str(exc)) from None
        runs = Run.objects.filter(event_id__in=ids)
        self.stdout.write(f"event {ids[0]}: started {runs.count()} run(s)")
        for run in runs:
            self.stdout.write(f"  {run.id}  {run.workflow_id}")

    def do_runs(self, limit: int, status: str | None, workflow: str | None, **_: Any) -> None:
        qs = Run.objects.select_related("event").order_by("-created_at")
        if status:
            qs = qs.filter(status=status)
        if workflow:
            qs = qs.filter(workflow_id=workflow)
        rows = list(qs[:limit])
        running = _running_steps([r.id for r in rows if r.status == RunStatus.WAITING])
        waits = _wait_details(
            [r.id for r in rows if r.status == RunStatus.WAITING and r.waiting_for]
        )
        lines = line_figures(r.id for r in rows if is_held(r))
        self.stdout.write(
            f"{'run':36}  {'workflow':24} {'status':10} {'event':28} {'created':19}  now"
        )
        for run in rows:
            now = _now_text(run, running.get(run.id, []), waits.get(run.id), lines.get(run.id))
            self.stdout.write(
                f"{run.id!s:36}  {run.workflow_id[:24]:24} {self._status(run.status, 10)} "
                f"{run.event.name[:28]:28} {run.created_at:%Y-%m-%d %H:%M:%S}  {now}"
            )

    def _status(self, status: str, width: int) -> str:
        """A status padded to ``width``, coloured like the admin's badges on a terminal."""
        padding = " " * max(0, width - len(status))
        # self.style colours nothing with --no-color or when the output is not a terminal.
        if status not in STATUS_COLOURS or self.style.SUCCESS("x") == "x":
            return status + padding
        return termcolors.make_style(**STATUS_COLOURS[status])(status) + padding

    def do_limits(self, workflow: str | None, **_: Any) -> None:
        rows = limits_table(workflow)
        if not rows:
            if workflow:
                raise CommandError(
                    f"workflow {workflow!r} has no flow control (or is not registered), and "
                    "no slots or held runs; `manage.py stepflows limits` lists those that do"
                )
            self.stdout.write("No registered workflow has flow control.")
            return
        self.stdout.write(
            f"{'workflow':24} {'limit':16} {'key':24} {'running':>7} {'waiting':>7}  setting"
        )
        for row in rows:
            key = row.key_text
            running = "-" if row.running is None else str(row.running)
            waiting = "-" if row.waiting is None else str(row.waiting)
            self.stdout.write(
                f"{row.workflow_id[:24]:24} {row.limit[:16]:16} {key[:24]:24} "
                f"{running:>7} {waiting:>7}  {row.setting}"
            )

    # -- managing runs: the same verbs as the admin actions (stepflows.api) ------------

    def _runs(self, run_ids: list[str], problems: list[str]) -> list[Run]:
        found = []
        for raw in run_ids:
            try:
                found.append(Run.objects.get(pk=raw))
            except (Run.DoesNotExist, ValueError, ValidationError):
                problems.append(f"run {raw}: not found")
        return found

    def _finish(self, verb: str, problems: list[str], total: int) -> None:
        for line in problems:
            self.stderr.write(line)
        if problems:
            raise CommandError(f"{len(problems)} of {total} could not be {verb}; see above")

    def do_retry(self, run_ids: list[str], **_: Any) -> None:
        problems: list[str] = []
        for run in self._runs(run_ids, problems):
            try:
                api.retry_run(run)
            except StepflowsError as exc:
                problems.append(str(exc))
                continue
            self.stdout.write(f"retried {run.id}  {run.workflow_id}: resuming where it failed")
        self._finish("retried", problems, len(run_ids))

    def do_rerun(self, run_ids: list[str], **_: Any) -> None:
        problems: list[str] = []
        for run in self._runs(run_ids, problems):
            try:
                new = api.rerun(run)
            except StepflowsError as exc:
                problems.append(f"run {run.id}: {exc}")
                continue
            self.stdout.write(f"rerun {run.id}  {run.workflow_id}: new run {new.id}")
        self._finish("rerun", problems, len(run_ids))

    def do_cancel(self, run_ids: list[str], keep_children: bool = False, **_: Any) -> None:
        problems: list[str] = []
        for run in self._runs(run_ids, problems):
            if api.cancel_run(run, children=not keep_children):
                self.stdout.write(f"cancelled {run.id}  {run.workflow_id}")
            else:
                fresh = Run.objects.get(pk=run.pk)
                self.stdout.write(f"left {run.id}  {run.workflow_id}: already {fresh.status}")
        self._finish("cancelled", problems, len(run_ids))

    def do_replay(self, event_ids: list[str], **_: Any) -> None:
        problems: list[str] = []
        events = []
        for raw in event_ids:
            event = Event.objects.filter(pk=raw).first()
            if event is None:
                problems.append(f"event {raw}: not found")
            else:
                events.append(event)
        for event in events:
            try:
                runs = api.replay_event(event)
            except StepflowsError as exc:
                problems.append(str(exc))
                continue
            self.stdout.write(f"replayed {event.id} ({event.name}): started {len(runs)} run(s)")
            for run in runs:
                self.stdout.write(f"  {run.id}  {run.workflow_id}")
        self._finish("replayed", problems, len(event_ids))

    def do_recover(self, dry_run: bool, limit: int, **_: Any) -> None:
        from ...engine.recovery import recover_stuck_runs
        from ...engine.sweep import sweep

        if not dry_run:
            due = sweep(limit=limit)
            self.stdout.write(
                f"due: {due['woken']} waits woken, {due['timed_out']} runs timed out, "
                f"{due['released']} held runs started, {due['slots_handed_over']} slots "
                f"handed over, {due['cron_ticks']} cron ticks sent"
            )
        report = recover_stuck_runs(limit=limit, dry_run=dry_run)
        done = {rid: "resumed" for rid in report.resumed}
        done |= {rid: "FAILED" for rid in report.failed}
        done |= {rid: "skipped (moved meanwhile)" for rid in report.skipped}
        for stuck in report.found:
            action = "would resume" if dry_run else done.get(stuck.run_id, "?")
            self.stdout.write(f"{stuck.describe()}: {action}")
        counts = report.counts()
        self.stdout.write(
            f"stuck runs: {counts['found']}, resumed: {counts['resumed']}, "
            f"failed: {counts['failed']}, skipped: {counts['skipped']}"
        )

    def do_bench(self, **options: Any) -> None:
        """Run the bench in its own process, with the bench settings (see stepflows.bench)."""
        argv = []
        for name in (
            "parallel_sizes",
            "sequential_sizes",
            "repeats",
            "warmup",
            "throughput_runs",
            "throughput_width",
            "rss_runs",
            "sleep_runs",
            "sleep_in_flight",
            "wait_sizes",
            "wait_sends",
            "invoke_steps",
            "concurrency_runs",
            "handoff_runs",
            "scenarios",
            "concurrency",
            "celery_app",
        ):
            if options.get(name) is not None:
                argv += [f"--{name.replace('_', '-')}", str(options[name])]
        if options.get("quick"):
            argv.append("--quick")
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "stepflows.bench.settings",
            "STEPFLOWS_BENCH_BASE_SETTINGS": settings.SETTINGS_MODULE,
        }
        env.setdefault("STEPFLOWS_BENCH_QUEUE", f"stepflows-bench-{os.getpid()}")
        if not (os.environ.get("DATABASE_URL") or os.environ.get("CELERY_BROKER_URL")):
            # Embedded default: a fresh database and broker folder of the bench's own.
            default = Path(getattr(settings, "BASE_DIR", Path.cwd())) / "var" / "bench"
            var = Path(os.environ.get("STEPFLOWS_BENCH_DIR") or default)
            shutil.rmtree(var, ignore_errors=True)
            var.mkdir(parents=True)
            env["STEPFLOWS_VAR_DIR"] = str(var)
        done = subprocess.run([sys.executable, "-m", "stepflows.bench", *argv], env=env)
        if done.returncode:
            raise CommandError(f"the bench failed (exit status {done.returncode})")


#: Statuses on a terminal, in the colours of the admin's badges.
STATUS_COLOURS: dict[str, dict[str, Any]] = {
    "running": {"fg": "blue"},
    "waiting": {"fg": "cyan"},
    "completed": {"fg": "green"},
    "failed": {"fg": "red", "opts": ("bold",)},
    "cancelled": {"fg": "yellow"},
    "skipped": {"fg": "magenta"},
}


def _running_steps(run_ids: list[Any]) -> dict[Any, list[tuple[str, str]]]:
    """For waiting runs: their parallel steps being executed, with the worker of each."""
    found: dict[Any, list[tuple[str, str]]] = {}
    rows = Step.objects.filter(run_id__in=run_ids, status=StepStatus.RUNNING).values_list(
        "run_id", "step_id", "lease_owner"
    )
    for run_id, step_id, owner in rows:
        found.setdefault(run_id, []).append((step_id, worker_of(owner)))
    return found


def _wait_details(run_ids: list[Any]) -> dict[Any, dict[str, Any]]:
    """For runs in a durable wait: the details of the step each waits in (``Step.wait``)."""
    found: dict[Any, dict[str, Any]] = {}
    rows = Step.objects.filter(
        run_id__in=run_ids, status=StepStatus.SCHEDULED, kind__in=[WaitKind.EVENT, WaitKind.INVOKE]
    ).order_by("position")
    for run_id, wait in rows.values_list("run_id", "wait"):
        if isinstance(wait, dict):
            found[run_id] = wait
    return found


def _wait_text(run: Run, wait: dict[str, Any] | None) -> str:
    """A durable wait in a few words: sleep until 12:00:03, event shop/paid, run 1a2b3c4d."""
    wait = wait or {}
    until = local_time(run.wait_until)
    if run.waiting_for == WaitKind.SLEEP:
        return f"waiting: sleep until {until or '?'}"
    if run.waiting_for == WaitKind.EVENT:
        text = f"waiting: event {wait.get('event') or '?'}"
        if wait.get("match"):
            text += f" with {wait['match']} = {json.dumps(wait.get('value'), default=str)}"
        return text + (f", times out at {until}" if until else "")
    if run.waiting_for == WaitKind.INVOKE:
        child = str(wait.get("child") or "?")
        text = f"waiting: run {child}"
        if wait.get("workflow"):
            text += f" ({wait['workflow']})"
        return text + (f", times out at {until}" if until else "")
    return f"waiting: {run.waiting_for}"


def _now_text(
    run: Run,
    running: list[tuple[str, str]],
    wait: dict[str, Any] | None = None,
    line: tuple[int, int] | None = None,
) -> str:
    """What is happening to an active run right now, in a few words; why a run was skipped."""
    if run.status == RunStatus.SKIPPED:
        return f"skipped: {skip_reason(run)}"
    if is_held(run):
        in_use, place = line or (None, None)
        return f"waiting: {hold_text(run, in_use=in_use, place=place)}"
    if run.status == RunStatus.RUNNING and run.lease_owner:
        return f"executing on {worker_of(run.lease_owner)}"
    if running:
        steps = ", ".join(f"{step} on {worker}" for step, worker in running[:3])
        more = f" and {len(running) - 3} more" if len(running) > 3 else ""
        return f"running {steps}{more}"
    if run.status == RunStatus.WAITING and run.waiting_for:
        return _wait_text(run, wait)
    if run.status == RunStatus.WAITING and run.join_pending:
        return f"waiting for {run.join_pending} parallel step(s)"
    if run.status == RunStatus.WAITING:
        return "waiting for a retry"
    return ""
