"""`python manage.py stepflows <verb>`: send events; list, show and manage runs.

Verbs: send, runs, show, limits, retry, rerun, fork, cancel, replay, recover.
"""

from __future__ import annotations

import argparse
import difflib
import json
import shutil
import uuid
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import termcolors, timezone

from ... import api
from ...admin.flow_control import limits_table
from ...exceptions import StepflowsError
from ...models import Event, Run, RunStatus
from ...registry import registry
from .. import runinfo
from ..waiting import TIMEOUT_HELP, WAIT_HELP, wait_for_runs

#: Who the audit trail says acted, for every verb run from here.
BY = "command line"


class Command(BaseCommand):
    help = (
        "Send events; list, show and manage runs. A RUN_ID is a run's id, or its first "
        "8 or more characters."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="verb", required=True)
        send = sub.add_parser("send", help="send an event")
        send.add_argument("name")
        send.add_argument("--data", default="{}", help="the event data, as a JSON object")
        send.add_argument("--id", default=None, help="an idempotency key")
        _wait_options(send)
        runs = sub.add_parser(
            "runs",
            help="list recent runs, one line each",
            epilog=runinfo.RUN_KEYS_HELP,
            formatter_class=_Raw,
        )
        runs.add_argument("--limit", type=int, default=20, help="at most this many (20)")
        runs.add_argument("--status", default=None, help="only runs with this status")
        runs.add_argument("--workflow", default=None, help="only runs of this workflow id")
        runs.add_argument(
            "--version",
            dest="code_version",
            default=None,
            metavar="V",
            help="only runs started by this version of their workflow's code "
            "(@workflow(version=...)); '' for runs of workflows that declare none",
        )
        runs.add_argument(
            "--json", dest="as_json", action="store_true", help="print one JSON document"
        )
        show = sub.add_parser(
            "show",
            help="a run: status, times, error, steps with attempts, children, interventions",
            epilog=runinfo.RUN_KEYS_HELP,
            formatter_class=_Raw,
        )
        show.add_argument("run_id", metavar="RUN_ID")
        show.add_argument(
            "--json", dest="as_json", action="store_true", help="print one JSON document"
        )
        limits = sub.add_parser(
            "limits", help="flow control: each workflow's limits, and per key what runs and waits"
        )
        limits.add_argument("--workflow", default=None, help="only this workflow")
        retry = sub.add_parser(
            "retry", help="resume failed or blocked runs where they stopped, on the current code"
        )
        retry.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        _reason(retry)
        _wait_options(retry)
        rerun = sub.add_parser("rerun", help="start new runs of the same events, from the top")
        rerun.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        _reason(rerun)
        _wait_options(rerun)
        fork = sub.add_parser(
            "fork",
            help="start a new run of the same event that keeps the outputs of the steps "
            "before STEP and executes from it",
        )
        fork.add_argument("run_id", metavar="RUN_ID")
        fork.add_argument(
            "--from",
            dest="from_step",
            required=True,
            metavar="STEP",
            help="the step id to execute from (`show RUN_ID` lists them)",
        )
        _reason(fork)
        _wait_options(fork)
        cancel = sub.add_parser("cancel", help="stop runs before their next step")
        cancel.add_argument("run_ids", nargs="+", metavar="RUN_ID")
        cancel.add_argument(
            "--keep-children",
            action="store_true",
            help="leave running the runs they started with step.invoke",
        )
        _reason(cancel)
        replay = sub.add_parser("replay", help="start fresh runs of events")
        replay.add_argument("event_ids", nargs="+", metavar="EVENT_ID")
        _reason(replay)
        _wait_options(replay)
        recover = sub.add_parser("recover", help="find stuck runs and resume them")
        recover.add_argument(
            "--dry-run", action="store_true", help="list the stuck runs, resume nothing"
        )
        recover.add_argument("--limit", type=int, default=1000, help="at most this many runs")

    def handle(self, *args: Any, verb: str, **options: Any) -> None:
        getattr(self, f"do_{verb.replace('-', '_')}")(**options)

    # -- sending and looking ----------------------------------------------------------

    def do_send(
        self,
        name: str,
        data: str,
        id: str | None,
        wait: bool = False,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        try:
            payload = json.loads(data)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--data is not valid JSON: {exc}") from None
        try:
            ids = api.send(name, data=payload, id=id)
        except StepflowsError as exc:
            raise CommandError(str(exc)) from None
        runs = list(Run.objects.filter(event_id__in=ids).order_by("created_at"))
        if not runs:
            self.stdout.write(f"event {ids[0]}: {_nothing_started(name)}")
            return
        self.stdout.write(f"event {ids[0]}: started {len(runs)} run(s)")
        for run in runs:
            self.stdout.write(f"  {run.id}  {run.workflow_id}")
        self._wait(wait, timeout, [r.id for r in runs])

    def do_runs(
        self,
        limit: int,
        status: str | None,
        workflow: str | None,
        as_json: bool = False,
        code_version: str | None = None,
        **_: Any,
    ) -> None:
        qs = Run.objects.select_related("event").order_by("-created_at")
        if status:
            qs = qs.filter(status=status)
        if workflow:
            qs = qs.filter(workflow_id=workflow)
        if code_version is not None:
            qs = qs.filter(version=code_version)
        rows = list(qs[:limit])
        documents = runinfo.summaries(rows)
        if as_json:
            self.stdout.write(runinfo.to_json({"runs": documents}))
            return
        # On a terminal, ids are cut to the 8 characters every verb accepts, so a line
        # fits 120 columns; piped (scripts, grep), each line starts with the full id.
        short = self.stdout.isatty()
        id_width = 8 if short else 36
        # An error's first line is cut to fit the terminal (100 characters when piped).
        room = shutil.get_terminal_size((120, 24)).columns - id_width - 78 if short else 100
        self.stdout.write(
            f"{'run':{id_width}}  {'workflow':18} {'status':10} {'event':18} {'created':11} "
            f"{'took':>7} {'steps':>5}  now / error"
        )
        for run, doc in zip(rows, documents, strict=True):
            tail = doc["now"]
            if run.status in (RunStatus.FAILED, RunStatus.BLOCKED, RunStatus.CANCELLED):
                tail = runinfo.error_line(run.error, max(30, room), compact=True)
            steps = f"{doc['steps_done']}/{doc['steps_total']}"
            self.stdout.write(
                f"{str(run.id)[:id_width]:{id_width}}  {run.workflow_id[:18]:18} "
                f"{self._status(run.status, 10)} {run.event.name[:18]:18} "
                f"{_created(run):11} {runinfo.duration_text(doc['duration']):>7} "
                f"{steps:>5}  {tail}".rstrip()
            )

    def do_show(self, run_id: str, as_json: bool = False, **_: Any) -> None:
        run = _find_run(run_id)
        document = runinfo.detail(run)
        if as_json:
            self.stdout.write(runinfo.to_json(document))
            return
        for line in runinfo.show_lines(document):
            self.stdout.write(line)

    def _status(self, status: str, width: int) -> str:
        """A status padded to ``width``, coloured like the admin's badges on a terminal."""
        padding = " " * max(0, width - len(status))
        # self.style colours nothing with --no-color or when the output is not a terminal.
        if status not in STATUS_COLOURS or self.style.SUCCESS("x") == "x":
            return status + padding
        return termcolors.make_style(**STATUS_COLOURS[status])(status) + padding

    def _wait(self, wait: bool, timeout: float | None, run_ids: list[Any]) -> None:
        if not wait or not run_ids:
            return
        if timeout is not None and timeout < 0:
            raise CommandError(f"--timeout must be 0 or more seconds, not {timeout:g}")
        wait_for_runs(run_ids, timeout=timeout, write=self.stdout.write)

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
                found.append(_find_run(raw))
            except CommandError as exc:
                problems.append(str(exc))
        return found

    def _finish(
        self,
        verb: str,
        problems: list[str],
        total: int,
        wait: bool = False,
        timeout: float | None = None,
        started: list[Any] | None = None,
    ) -> None:
        """Report the ids that could not be acted on, then wait for the runs acted on."""
        for line in problems:
            self.stderr.write(line)
        try:
            self._wait(wait, timeout, started or [])
        finally:
            if problems:
                self.stderr.write(f"{len(problems)} of {total} could not be {verb}; see above")
        if problems:
            raise CommandError(f"{len(problems)} of {total} could not be {verb}; see above")

    def do_retry(
        self,
        run_ids: list[str],
        reason: str = "",
        wait: bool = False,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        def retry(run: Run) -> tuple[Any, str]:
            api.retry_run(run, by=BY, reason=reason)
            return run.id, "resuming where it failed"

        self._each("retried", run_ids, retry, wait, timeout)

    def do_rerun(
        self,
        run_ids: list[str],
        reason: str = "",
        wait: bool = False,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        def rerun(run: Run) -> tuple[Any, str]:
            new = api.rerun(run, by=BY, reason=reason)
            return new.id, f"new run {new.id}"

        self._each("rerun", run_ids, rerun, wait, timeout)

    def _each(
        self,
        verb: str,
        run_ids: list[str],
        act: Callable[[Run], tuple[Any, str]],
        wait: bool,
        timeout: float | None,
    ) -> None:
        """Apply one verb to each run; a run it cannot take is reported, the others go on.

        ``act`` returns the id of the run to wait for and what to print.
        """
        problems: list[str] = []
        started = []
        for run in self._runs(run_ids, problems):
            try:
                waited, said = act(run)
            except (StepflowsError, Run.DoesNotExist) as exc:
                text = str(exc)
                problems.append(text if str(run.id) in text else f"run {run.id}: {text}")
                continue
            started.append(waited)
            self.stdout.write(f"{verb} {run.id}  {run.workflow_id}: {said}")
        self._finish(verb, problems, len(run_ids), wait, timeout, started)

    def do_fork(
        self,
        run_id: str,
        from_step: str,
        reason: str = "",
        wait: bool = False,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        run = _find_run(run_id)
        try:
            new = api.fork_run(run, from_step=from_step, by=BY, reason=reason)
        except (StepflowsError, Run.DoesNotExist) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"forked {run.id}  {run.workflow_id} from step {from_step!r}: new run {new.id}"
        )
        self._wait(wait, timeout, [new.id])

    def do_cancel(
        self, run_ids: list[str], keep_children: bool = False, reason: str = "", **_: Any
    ) -> None:
        problems: list[str] = []
        for run in self._runs(run_ids, problems):
            if api.cancel_run(run, children=not keep_children, by=BY, reason=reason):
                self.stdout.write(f"cancelled {run.id}  {run.workflow_id}")
            else:
                fresh = Run.objects.get(pk=run.pk)
                self.stdout.write(f"left {run.id}  {run.workflow_id}: already {fresh.status}")
        self._finish("cancelled", problems, len(run_ids))

    def do_replay(
        self,
        event_ids: list[str],
        reason: str = "",
        wait: bool = False,
        timeout: float | None = None,
        **_: Any,
    ) -> None:
        problems: list[str] = []
        events = []
        for raw in event_ids:
            event = Event.objects.filter(pk=raw).first()
            if event is None:
                problems.append(
                    f"event {raw}: not found "
                    "(`manage.py stepflows show RUN_ID` shows the event of a run)"
                )
            else:
                events.append(event)
        started = []
        for event in events:
            try:
                runs = api.replay_event(event, by=BY, reason=reason)
            except StepflowsError as exc:
                problems.append(str(exc))
                continue
            self.stdout.write(f"replayed {event.id} ({event.name}): started {len(runs)} run(s)")
            for run in runs:
                started.append(run.id)
                self.stdout.write(f"  {run.id}  {run.workflow_id}")
        self._finish("replayed", problems, len(event_ids), wait, timeout, started)

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


#: Statuses on a terminal, in the colours of the admin's badges.
STATUS_COLOURS: dict[str, dict[str, Any]] = {
    "running": {"fg": "blue"},
    "waiting": {"fg": "cyan"},
    "completed": {"fg": "green"},
    "failed": {"fg": "red", "opts": ("bold",)},
    "cancelled": {"fg": "yellow"},
    "skipped": {"fg": "magenta"},
    "blocked": {"fg": "red"},
}


class _Raw(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of the JSON keys' description in ``--help``."""


def _wait_options(parser: CommandParser) -> None:
    parser.add_argument("--wait", action="store_true", help=WAIT_HELP)
    parser.add_argument("--timeout", type=float, default=None, metavar="S", help=TIMEOUT_HELP)


def _reason(parser: CommandParser) -> None:
    parser.add_argument(
        "--reason",
        default="",
        metavar="TEXT",
        help="why: recorded in the run's audit trail, with 'command line' as who",
    )


def _find_run(raw: str) -> Run:
    """A run by its id, or by the first 8 or more characters of it (as `runs` shows them)."""
    text = raw.strip()
    try:
        return Run.objects.select_related("event").get(pk=uuid.UUID(text))
    except ValueError:
        pass
    except Run.DoesNotExist:
        raise CommandError(
            f"run {raw}: not found; `manage.py stepflows runs` lists recent runs"
        ) from None
    digits = text.replace("-", "").lower()
    if not (8 <= len(digits) < 32 and all(c in "0123456789abcdef" for c in digits)):
        raise CommandError(
            f"run {raw}: not a run id (a UUID, or its first 8 or more characters); "
            "`manage.py stepflows runs` lists recent runs"
        )
    low = uuid.UUID(digits + "0" * (32 - len(digits)))
    high = uuid.UUID(digits + "f" * (32 - len(digits)))
    found = list(Run.objects.select_related("event").filter(pk__gte=low, pk__lte=high)[:3])
    if not found:
        raise CommandError(f"run {raw}: not found; `manage.py stepflows runs` lists recent runs")
    if len(found) > 1:
        raise CommandError(
            f"run {raw}: more than one run id starts with it ({found[0].id}, {found[1].id}"
            f"{', ...' if len(found) > 2 else ''}); give more of the id"
        )
    return found[0]


def _created(run: Run) -> str:
    """When the run was created: the time of day today, else the date and minute."""
    local = timezone.localtime(run.created_at)
    if local.date() == timezone.localdate():
        return local.strftime("%H:%M:%S")
    return local.strftime("%m-%d %H:%M")


def _nothing_started(name: str) -> str:
    """Why an event started no run, with the nearest trigger names when none listens to it."""
    listening = sorted(wf.id for wf in registry.all() if any(t.event == name for t in wf.triggers))
    if listening:
        return (
            f"started no run; {', '.join(listening)} listen(s) to {name!r}, but a trigger filter "
            "or flow control (idempotency, debounce, batch) started nothing new"
        )
    names = sorted({t.event for wf in registry.all() for t in wf.triggers})
    text = f"no workflow listens to {name!r}; nothing started (the event is stored)"
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    if close:
        return text + f". Did you mean: {', '.join(close)}?"
    if names:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return text + f". Workflows listen to: {shown}"
    return text + ". No workflow is registered: is its workflows.py in an installed app?"
