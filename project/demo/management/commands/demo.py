"""`python manage.py demo`: everything `make demo` shows, in one process tree.

Migrates, creates a demo admin login, starts a Celery worker and the dev
server, sends sample events, prints the admin URL, and stops it all on Ctrl-C.
One sample run waits for an event; the printed command sends it. Flow control:
three updates of one customer wait in line for its one slot, and a burst of
catalog updates starts one debounced run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

import stepflows
from stepflows.testing import CeleryWorker

# The order that await-payment leaves waiting for its shop/order.paid event.
UNPAID_ORDER = 2
PAY_COMMAND = (
    ".venv/bin/python manage.py stepflows send shop/order.paid "
    f'--data \'{{"order_id": {UNPAID_ORDER}, "items": []}}\''
)

# sync-customer runs one run per customer at a time: this customer's updates wait in line.
BUSY_CUSTOMER = 7
CUSTOMER_COMMAND = (
    ".venv/bin/python manage.py stepflows send crm/customer.updated "
    f'--data \'{{"customer_id": {BUSY_CUSTOMER}, "change": "phone"}}\''
)
LIMITS_COMMAND = ".venv/bin/python manage.py stepflows limits"

SAMPLE_TEXT = (
    "Durable workflows keep long jobs alive across crashes. Each step runs once and its "
    "result is stored. Parallel steps run on many workers at the same time. "
) * 30


class Command(BaseCommand):
    help = "Run the stepflows demo: worker, dev server and sample events."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="stepflows-demo")
        parser.add_argument(
            "--no-server", action="store_true", help="send the events, wait for them, and exit"
        )

    def handle(
        self, *args: Any, port: int, username: str, password: str, no_server: bool, **options: Any
    ) -> None:
        call_command("migrate", verbosity=0)
        user, _ = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()

        worker = CeleryWorker(
            "project",
            concurrency=2,
            logfile=settings.VAR_DIR / "demo-worker.log",
            name="demo",
            cwd=settings.BASE_DIR,
            beat=True,  # runs the periodic recovery of stuck runs (CELERY_BEAT_SCHEDULE)
        )
        self.stdout.write("Starting a Celery worker (2 processes, with beat)...")
        worker.start()
        server: subprocess.Popen[bytes] | None = None
        try:
            event_ids = self.send_samples()
            if no_server:
                event_ids += self.pay_when_waiting()
                self.wait_for(event_ids)
                return
            server = subprocess.Popen(
                [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
                cwd=settings.BASE_DIR,
            )
            url = f"http://127.0.0.1:{port}/admin/stepflows/run/"
            self.stdout.write(
                self.style.SUCCESS(
                    f"\nstepflows demo is running.\n  Admin:    {url}\n"
                    f"  Login:    {username} / {password}\n"
                    f"  Worker log: {worker.logfile}\n"
                    f"  Order {UNPAID_ORDER} waits for its payment (10 minutes); pay it with:\n"
                    f"    {PAY_COMMAND}\n"
                    f"  Flow control: http://127.0.0.1:{port}/admin/stepflows/run/flow-control/\n"
                    f"    customer {BUSY_CUSTOMER}'s updates run one at a time; queue one more "
                    f"with\n    {CUSTOMER_COMMAND}\n"
                    f"    and list what runs and waits per key with\n    {LIMITS_COMMAND}\n"
                    "Press Ctrl-C to stop.\n"
                )
            )
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
            server.wait()
        except KeyboardInterrupt:
            self.stdout.write("\nStopping...")
        finally:
            # A second Ctrl-C must not leave the worker behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if server is not None and server.poll() is None:
                server.terminate()
                server.wait(timeout=10)
            worker.stop(timeout=15)
            self.stdout.write("Stopped the worker and the server.")

    def send_samples(self) -> list[str]:
        ids = stepflows.send(
            [
                stepflows.Event(
                    name="shop/order.paid",
                    data={"order_id": 1, "items": [{"sku": "tea", "price": 4, "qty": 3}]},
                ),
                stepflows.Event(
                    name="stripe/charge.created", data={"email": "ada@example.com", "amount": 1200}
                ),
                # Starts summarize-text (step.parallel) and summarize-text-fanout
                # (one summarize-chunk run per chunk): the same work, both ways.
                stepflows.Event(name="app/text.summarize", data={"text": SAMPLE_TEXT}),
                stepflows.Event(name="app/user.signed_up", data={"email": "grace@example.com"}),
                stepflows.Event(
                    name="shop/order.created",
                    data={"order_id": UNPAID_ORDER, "items": [{"sku": "mug", "price": 9}]},
                ),
                # sync-customer: one run per customer at a time. Customer 7's second and
                # third updates wait in line while its first is pushed; customer 8's goes on.
                *[
                    stepflows.Event(
                        name="crm/customer.updated",
                        data={"customer_id": BUSY_CUSTOMER, "change": change},
                    )
                    for change in ("email", "address", "vat-number")
                ],
                stepflows.Event(
                    name="crm/customer.updated", data={"customer_id": 8, "change": "email"}
                ),
            ]
        )
        # rebuild-search-index is debounced per catalog: four updates, sent one by one as
        # separate edits would be, start one run.
        for sku in ("sencha", "assam", "rooibos", "earl-grey"):
            ids += stepflows.send("catalog/product.updated", data={"catalog": "tea", "sku": sku})
        self.stdout.write(f"Sent {len(ids)} sample events: {', '.join(ids)}")
        self.stdout.write(
            "  stripe/charge.created starts post-payment-flow and record-revenue;\n"
            "  app/text.summarize starts summarize-text (parallel steps) and\n"
            "  summarize-text-fanout (one summarize-chunk run per chunk);\n"
            "  app/user.signed_up starts signup-reminder, which sleeps 10 s between two emails;\n"
            f"  shop/order.created starts await-payment, which waits for order {UNPAID_ORDER}'s\n"
            "  shop/order.paid event;\n"
            "  crm/customer.updated starts sync-customer, one run per customer at a time:\n"
            f"  customer {BUSY_CUSTOMER}'s three updates run one after the other (the others wait\n"
            "  in line, in the database), customer 8's beside them;\n"
            "  catalog/product.updated starts rebuild-search-index, debounced 5 s per catalog:\n"
            "  four updates of catalog tea start one run, with the last update."
        )
        return ids

    def pay_when_waiting(self) -> list[str]:
        """Once await-payment waits for its event, send the payment, as a user would."""
        from stepflows.models import Run

        deadline = time.monotonic() + 60
        waiting = Run.objects.filter(workflow_id="await-payment", waiting_for="event")
        while not waiting.filter(event__data__order_id=UNPAID_ORDER).exists():
            if time.monotonic() > deadline:
                raise RuntimeError("await-payment did not start waiting within 60 s")
            time.sleep(0.2)
        self.stdout.write(f"Paying order {UNPAID_ORDER}, as this command would:\n  {PAY_COMMAND}")
        return stepflows.send("shop/order.paid", data={"order_id": UNPAID_ORDER, "items": []})

    def wait_for(self, event_ids: list[str]) -> None:
        """Wait for the runs of the sample events, then for their fan-out families."""
        from stepflows.models import Run
        from stepflows.testing import wait_for_runs

        runs = wait_for_runs(
            Run.objects.filter(event_id__in=event_ids).values_list("id", flat=True), timeout=120
        )
        for run in runs:
            self.stdout.write(f"  {run.workflow_id:22} {run.status:10} {run.output!r:.80}")
            family = wait_for_runs(run.family().values_list("id", flat=True), timeout=120)
            if family:
                done = sum(1 for r in family if r.status == "completed")
                self.stdout.write(f"    + {len(family)} fan-out runs, {done} completed")
