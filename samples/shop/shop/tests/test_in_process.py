"""The workflows run in the test process: no worker, no broker, external calls stubbed."""

from django.test import TestCase

from shop.workflows import fulfil_order
from stepflows import NonRetriableError
from stepflows.testing import WorkflowTestMixin, run_workflow

ORDER = {"order_id": 7, "amount": 1200, "items": ["tea", "cups"]}


class FulfilOrderTests(TestCase):
    def test_completes_with_the_charge_stubbed(self):
        run = run_workflow(
            fulfil_order,
            ORDER,
            steps={"charge-card": lambda order: {"charge_id": "ch_test", "paid": True}},
        )

        self.assertEqual(run.status, "completed")
        self.assertEqual(run.output["charge_id"], "ch_test")
        self.assertEqual(run.output["reserved"], 2)

    def test_a_declined_card_fails_the_run(self):
        run = run_workflow(
            fulfil_order, ORDER, steps={"charge-card": NonRetriableError("card declined")}
        )

        self.assertEqual(run.status, "failed")
        self.assertEqual(run.error["step_id"], "charge-card")


class RemindUnpaidTests(WorkflowTestMixin, TestCase):
    step_stubs = {"charge-card": {"charge_id": "ch_test", "paid": True}}

    def test_no_reminder_when_the_order_is_paid(self):
        [run] = self.send_and_run("shop/order.created", {"order_id": 7})
        self.assertEqual(run.status, "waiting")  # for shop/order.paid, one day at most

        self.send_and_run("shop/order.paid", ORDER)  # fulfil-order runs too, stubbed
        run.refresh_from_db()
        self.assertEqual(run.output, {"reminded": False})

    def test_reminds_a_day_and_an_hour_later(self):
        [run] = self.send_and_run("shop/order.created", {"order_id": 8})

        self.advance(86400)  # the wait times out; the grace period starts
        run.refresh_from_db()
        self.assertEqual(run.status, "waiting")

        self.advance(3600)
        run.refresh_from_db()
        self.assertEqual(run.output, {"reminded": True, "order_id": 8})
