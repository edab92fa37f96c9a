"""`python manage.py stepflows <send|runs|bench>`: send events, list runs, benchmark."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
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
        self.stdout.write(f"{'run':36}  {'workflow':24} {'status':10} {'event':28} created")
        for run in rows:
            self.stdout.write(
                f"{run.id!s:36}  {run.workflow_id[:24]:24} {run.status:10} "
                f"{run.event.name[:28]:28} {run.created_at:%Y-%m-%d %H:%M:%S}"
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
