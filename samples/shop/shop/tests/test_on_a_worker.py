"""The workflow on a real Celery worker (pytest), on the test database and a private queue."""

import stepflows
from stepflows.testing import runs_for, wait_for_run


def test_fulfil_order_on_a_worker(stepflows_worker, fake_payments_api):
    [event_id] = stepflows.send("shop/order.paid", data={"order_id": 9, "amount": 500, "items": []})
    [run] = runs_for([event_id])

    run = wait_for_run(run.id, timeout=60)

    assert run.status == "completed", run.error
    assert run.output["charge_id"] == "ch_9"
    assert {"order_id": 9, "amount": 500} in fake_payments_api
