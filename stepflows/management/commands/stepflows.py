"""`python manage.py stepflows <send|runs>`: send events and list runs."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import api
from ...exceptions import StepflowsError
from ...models import Run


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
        self.stdout.write(f"{'run':36}  {'workflow':24} {'status':10} {'event':28} created")
        for run in rows:
            self.stdout.write(
                f"{run.id!s:36}  {run.workflow_id[:24]:24} {run.status:10} "
                f"{run.event.name[:28]:28} {run.created_at:%Y-%m-%d %H:%M:%S}"
            )
