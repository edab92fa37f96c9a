"""What ``manage.py stepflows runs|show`` say about runs: as JSON documents and as text.

A run is described once, as a dict of plain values (datetimes kept as
``datetime``): ``--json`` dumps it (datetimes in ISO 8601), the text output
formats it for a terminal. The keys are documented in the command's help and
stay stable; new keys may be added.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db.models import Count, Q
from django.utils import timezone

from ..admin.flow_control import is_held
from ..admin.flow_text import hold_text, line_figures, skip_reason
from ..models import Intervention, Run, RunStatus, Step, StepKind, StepStatus, WaitKind
from ..store.fence import worker_of
from ..timeline import format_seconds, local_time
from ..timeline.lanes import parse_time

RUN_KEYS_HELP = """\
runs --json prints {"runs": [RUN, ...]}, newest first. RUN: id, workflow, version
(of the code that started it, or ""), status, event {id, name}, parent (the id of
the run whose event started it, or null), created_at, started_at, ended_at (ISO
8601, or null), duration (seconds, or null), steps_done, steps_total (patch markers
not counted), error ({type, message}, or null), now (what an active run is doing,
why a run was skipped, or "").
show --json prints RUN with, in addition: event {id, name, data}, output,
error {type, message, traceback}, forked_from, fork_step, resumes, steps [STEP],
children [{id, workflow, status, event, caller_step}] and interventions
[{action, by, reason, at, run, new_run, detail}]. STEP: step_id, position, group,
kind, status, started_at, ended_at, duration, attempt_count, retry_at, worker (the
worker running it now, or ""), error ({type, message}, or null), output and
attempts [{number, started_at, ended_at, worker, error}].
"""

#: The message of a run that failed because a step did (stepflows.exceptions.StepError).
STEP_FAILED = re.compile(r"step '(.*?)' failed: (.*)")


def to_json(document: Any) -> str:
    """One JSON document; datetimes in ISO 8601, anything else unknown as a string."""

    def default(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.isoformat()
        return str(value)

    return json.dumps(document, indent=2, ensure_ascii=False, default=default)


def first_line(text: Any, width: int | None = None) -> str:
    """The first non-empty line of ``text``, cut to ``width`` characters with an ellipsis."""
    line = next((part.strip() for part in str(text or "").splitlines() if part.strip()), "")
    if width is not None and len(line) > width:
        return line[: max(0, width - 1)] + "…"
    return line


def error_of(error: Any, *, traceback: bool = False) -> dict[str, Any] | None:
    """A run's or step's ``error`` as {type, message} (and traceback), or None."""
    if not error:
        return None
    if not isinstance(error, dict):
        return {"type": "Error", "message": str(error)}
    found = {"type": str(error.get("type") or "Error"), "message": str(error.get("message") or "")}
    if traceback:
        found["traceback"] = str(error.get("traceback") or "")
    return found


def error_line(error: Any, width: int | None = None, *, compact: bool = False) -> str:
    """``Type: first line of the message``, cut to ``width``.

    A step's failure reads ``step 'charge' failed: ValueError: ...`` (``compact``:
    ``charge: ValueError: ...``), without the StepError type that would repeat it.
    """
    found = error_of(error)
    if found is None:
        return ""
    message = first_line(found["message"])
    step = STEP_FAILED.match(message) if found["type"] == "StepError" else None
    if step is not None:
        return first_line(f"{step[1]}: {step[2]}" if compact else message, width)
    return first_line(f"{found['type']}: {message}" if message else found["type"], width)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 6)


def duration_text(seconds: float | None) -> str:
    return "" if seconds is None else format_seconds(seconds)


# -- runs: one dict each ----------------------------------------------------------------


def step_counts(run_ids: Sequence[Any]) -> dict[Any, tuple[int, int]]:
    """(steps completed, steps recorded) of each run, in one query."""
    rows = (
        Step.objects.filter(run_id__in=list(run_ids))
        .exclude(kind=StepKind.PATCH)  # step.patched's answers: no work
        .values("run_id")
        .annotate(total=Count("pk"), done=Count("pk", filter=Q(status=StepStatus.COMPLETED)))
    )
    return {row["run_id"]: (row["done"], row["total"]) for row in rows}


def summaries(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The RUN dict of each run (``select_related("event")`` expected): four queries."""
    ids = [r.id for r in runs]
    counts = step_counts(ids)
    nows = now_texts(runs)
    return [summary(r, counts.get(r.id, (0, 0)), nows.get(r.id, "")) for r in runs]


def summary(run: Run, counts: tuple[int, int], now: str) -> dict[str, Any]:
    end = run.ended_at or (timezone.now() if run.started_at else None)
    return {
        "id": str(run.id),
        "workflow": run.workflow_id,
        "version": run.version,
        "status": run.status,
        "event": {"id": run.event_id, "name": run.event.name},
        "parent": str(run.parent_id) if run.parent_id else None,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "duration": _seconds(run.started_at, end),
        "steps_done": counts[0],
        "steps_total": counts[1],
        "error": error_of(run.error) if run.status != RunStatus.COMPLETED else None,
        "now": now,
    }


def detail(run: Run) -> dict[str, Any]:
    """The show document of one run: its RUN dict, steps, children and audit trail."""
    steps = list(Step.objects.filter(run_id=run.pk).order_by("position"))
    work = [s for s in steps if s.kind != StepKind.PATCH]
    done = sum(1 for s in work if s.status == StepStatus.COMPLETED)
    document = summary(run, (done, len(work)), now_texts([run]).get(run.id, ""))
    document["event"] = {"id": run.event_id, "name": run.event.name, "data": run.event.data}
    document["output"] = run.output
    document["error"] = (
        error_of(run.error, traceback=True) if run.status != RunStatus.COMPLETED else None
    )
    document["forked_from"] = _id_or_none(getattr(run, "forked_from_id", None))
    document["fork_step"] = getattr(run, "fork_step", "")
    document["resumes"] = run.resumes
    document["steps"] = [step_document(s) for s in steps]
    children = Run.objects.filter(parent_id=run.pk).select_related("event").order_by("created_at")
    document["children"] = [
        {
            "id": str(child.id),
            "workflow": child.workflow_id,
            "status": child.status,
            "event": child.event.name,
            "caller_step": child.caller_step,
        }
        for child in children
    ]
    document["interventions"] = interventions(run)
    return document


def _id_or_none(value: Any) -> str | None:
    return str(value) if value else None


def step_document(step: Step) -> dict[str, Any]:
    attempts = []
    for i, item in enumerate(step.attempts or []):
        if not isinstance(item, dict):
            continue
        attempts.append(
            {
                "number": int(item.get("number", i) or 0),
                "started_at": parse_time(item.get("started_at")),
                "ended_at": parse_time(item.get("ended_at")),
                "worker": str(item.get("worker") or ""),
                "error": error_of(item.get("error")),
            }
        )
    running = step.status == StepStatus.RUNNING and step.lease_owner
    return {
        "step_id": step.step_id,
        "position": step.position,
        "group": step.group,
        "kind": step.kind,
        "status": step.status,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "duration": _seconds(step.started_at, step.ended_at),
        "attempt_count": step.attempt_count,
        "retry_at": step.retry_at,
        "worker": worker_of(step.lease_owner) if running else "",
        "error": error_of(step.error),
        "output": step.output,
        "attempts": attempts,
    }


def interventions(run: Run) -> list[dict[str, Any]]:
    """Who retried, reran, cancelled, replayed or forked this run, and what started it."""
    rows = Intervention.objects.filter(Q(run_id=run.pk) | Q(new_run_id=run.pk)).order_by("at", "id")
    return [
        {
            "action": row.action,
            "by": row.by,
            "reason": row.reason,
            "at": row.at,
            "run": str(row.run_id),
            "new_run": _id_or_none(row.new_run_id),
            "detail": row.detail or {},
        }
        for row in rows
    ]


# -- the text of show ---------------------------------------------------------------------


def _when(value: datetime | None, *, millis: bool = False) -> str:
    if value is None:
        return "-"
    local = timezone.localtime(value)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return text + f".{local.microsecond // 1000:03d}" if millis else text


def _clock(value: datetime | None) -> str:
    """An attempt's time of day, to the millisecond."""
    if value is None:
        return "…"
    local = timezone.localtime(value)
    return local.strftime("%H:%M:%S") + f".{local.microsecond // 1000:03d}"


def show_lines(doc: dict[str, Any]) -> list[str]:
    """``manage.py stepflows show`` as text lines."""
    lines = [f"run {doc['id']}  {doc['workflow']}  {doc['status']}"]

    def field(name: str, value: str) -> None:
        lines.append(f"  {name:12} {value}")

    event = doc["event"]
    if doc.get("version"):
        field("version", doc["version"])
    field("event", f"{event['name']}  (id {event['id']})")
    if doc["parent"]:
        field("parent", f"{doc['parent']}  (the run that sent its event)")
    if doc.get("forked_from"):
        field("forked from", f"{doc['forked_from']}  at step {doc['fork_step']!r}")
    field("created", _when(doc["created_at"]))
    field("started", _when(doc["started_at"]))
    ended = _when(doc["ended_at"])
    took = duration_text(doc["duration"])
    if doc["ended_at"]:
        field("ended", f"{ended}  (took {took})" if took else ended)
    elif took:
        field("running for", took)
    if doc.get("resumes"):
        field("retried", f"{doc['resumes']} time(s)")
    if doc["error"]:
        label = "why" if doc["status"] in (RunStatus.SKIPPED, RunStatus.CANCELLED) else "error"
        field(label, error_line(doc["error"]))
    if doc["status"] == RunStatus.BLOCKED:
        field("to resume", "deploy code that matches its recorded steps, then retry it")
    if doc["now"] and doc["status"] != RunStatus.SKIPPED:
        field("now", doc["now"])
    lines.append("")
    lines.append(f"steps: {doc['steps_done']} of {doc['steps_total']} done")
    if doc["steps"]:
        lines.append(f"  {'#':>3}  {'step':28} {'status':10} {'started':19}  {'took':>8}  attempts")
    for step in doc["steps"]:
        retry = f", next at {local_time(step['retry_at'])}" if step["retry_at"] else ""
        worker = f"  on {step['worker']}" if step["worker"] else ""
        lines.append(
            f"  {step['position']:>3}  {step['step_id'][:28]:28} {step['status']:10} "
            f"{_when(step['started_at']):19}  {duration_text(step['duration']):>8}  "
            f"{step['attempt_count']}{retry}{worker}"
        )
        if step["error"] and not step["attempts"]:
            lines.append(f"       error: {error_line(step['error'], 100)}")
        for attempt in step["attempts"]:
            worker = f"  {attempt['worker']}" if attempt["worker"] else ""
            error = f"  {error_line(attempt['error'], 70)}" if attempt["error"] else "  ok"
            lines.append(
                f"       attempt {attempt['number']}: {_clock(attempt['started_at'])} -> "
                f"{_clock(attempt['ended_at'])}{worker}{error}"
            )
    if doc["children"]:
        lines.append("")
        lines.append(f"children: {len(doc['children'])} run(s) started by its events or steps")
        for child in doc["children"]:
            via = f"  (step {child['caller_step']})" if child["caller_step"] else ""
            lines.append(
                f"  {child['id']}  {child['workflow'][:24]:24} {child['status']:10} "
                f"{child['event']}{via}"
            )
    if doc["interventions"]:
        lines.append("")
        lines.append("interventions:")
        for entry in doc["interventions"]:
            lines.append(f"  {_when(entry['at'])}  {intervention_text(entry, doc['id'])}")
    return lines


def intervention_text(entry: dict[str, Any], run_id: str) -> str:
    """One audit entry as seen from run ``run_id``: ``fork by alice: from step b, new run X``."""
    action, by = entry["action"], entry["by"]
    started_this = entry["new_run"] == run_id and entry["run"] != run_id
    if action == "replay":
        text = f"started by a replay by {by}"
    elif started_this:
        text = f"started by a {action} of run {entry['run']} by {by}"
    else:
        text = f"{action} by {by}"
        if entry["new_run"] and entry["new_run"] != run_id:
            text += f": new run {entry['new_run']}"
    step = (entry.get("detail") or {}).get("from_step")
    if step:
        text += f" (from step {step!r})"
    if entry["reason"]:
        text += f" — {first_line(entry['reason'], 80)}"
    return text


# -- what an active run is doing ------------------------------------------------------------


def now_texts(runs: Iterable[Run]) -> dict[Any, str]:
    """What each run is doing right now (or why it was skipped), in a few words."""
    runs = list(runs)
    active = (RunStatus.RUNNING, RunStatus.WAITING)
    running = _running_steps([r.id for r in runs if r.status in active])
    waits = _wait_details([r.id for r in runs if r.status == RunStatus.WAITING and r.waiting_for])
    lines = line_figures(r.id for r in runs if is_held(r))
    return {
        run.id: now_text(run, running.get(run.id, []), waits.get(run.id), lines.get(run.id))
        for run in runs
    }


def _running_steps(run_ids: list[Any]) -> dict[Any, list[tuple[str, str]]]:
    """Steps being executed (parallel ones, or a long sequential one), with their workers."""
    found: dict[Any, list[tuple[str, str]]] = {}
    if not run_ids:
        return found
    rows = Step.objects.filter(run_id__in=run_ids, status=StepStatus.RUNNING).values_list(
        "run_id", "step_id", "lease_owner"
    )
    for run_id, step_id, owner in rows:
        found.setdefault(run_id, []).append((step_id, worker_of(owner)))
    return found


def _wait_details(run_ids: list[Any]) -> dict[Any, dict[str, Any]]:
    """For runs in a durable wait: the details of the step each waits in (``Step.wait``)."""
    found: dict[Any, dict[str, Any]] = {}
    if not run_ids:
        return found
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


def now_text(
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
    if running:
        steps = ", ".join(f"{step} on {worker}" for step, worker in running[:3])
        more = f" and {len(running) - 3} more" if len(running) > 3 else ""
        return f"running {steps}{more}"
    if run.status == RunStatus.RUNNING and run.lease_owner:
        return f"executing on {worker_of(run.lease_owner)}"
    if run.status == RunStatus.WAITING and run.waiting_for:
        return _wait_text(run, wait)
    if run.status == RunStatus.WAITING and run.join_pending:
        return f"waiting for {run.join_pending} parallel step(s)"
    if run.status == RunStatus.WAITING:
        return "waiting for a retry"
    return ""
