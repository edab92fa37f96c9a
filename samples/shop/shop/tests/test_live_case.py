"""The workflow on a real Celery worker, from a TransactionTestCase."""

from django.test import TransactionTestCase

from stepflows.testing import LiveWorkerMixin


class FulfilOrderOnAWorkerTests(LiveWorkerMixin, TransactionTestCase):
    def test_completes(self):
        [run] = self.send_and_wait("shop/order.paid", {"order_id": 10, "amount": 1, "items": []})

        self.assertEqual(run.status, "completed", run.error)
        self.assertEqual(run.output["charge_id"], "ch_10")
