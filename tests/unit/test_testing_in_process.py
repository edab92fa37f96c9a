"""stepflows.testing in the test process: step stubs, WorkflowTestMixin, the clock."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import TestCase

import stepflows
from stepflows import NonRetriableError
from stepflows.engine.invocation import Invocation
from stepflows.models import RunStatus
from stepflows.testing import InProcess, InProcessError, WorkflowTestMixin, run_workflow
from tests.testapp.flows import testing_tools as flows
from tests.testapp.flows.testing_tools import Receipt, calls

ORDER = {"order_id": 7, "amount": 1200}


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    calls.clear()


@pytest.mark.django_db
def test_a_stub_value_stands_in_for_the_step_and_keeps_its_declared_type() -> None:
    run = run_workflow(
        flows.checkout, ORDER, steps={"charge": Receipt(order_id=7, amount=1200).model_dump()}
    )

    assert run.status == RunStatus.COMPLETED, run.error
    assert run.output == {"amount": 1200, "sent": ["email:7", "sms:7"]}
    assert calls["charge"] == 0 and calls["reserve"] == 1
    assert Invocation.new_call.__name__ == "new_call"  # the engine is itself again after
    assert not hasattr(Invocation.new_call, "__wrapped__")


@pytest.mark.django_db
def test_a_callable_stub_gets_the_steps_arguments() -> None:
    seen = []

    def fake_charge(order_id: int, amount: int) -> dict:
        seen.append((order_id, amount))
        return {"order_id": order_id, "amount": amount}

    run = run_workflow(flows.checkout, ORDER, steps={"charge": fake_charge})

    assert run.status == RunStatus.COMPLETED, run.error
    assert seen == [(7, 1200)]


@pytest.mark.django_db
def test_an_exception_stub_fails_the_step() -> None:
    run = run_workflow(flows.checkout, ORDER, steps={"charge": NonRetriableError("declined")})

    assert run.status == RunStatus.FAILED
    assert run.error["step_id"] == "charge"
    assert calls["charge"] == 0


@pytest.mark.django_db
def test_base_id_stubs_every_call_and_a_full_id_one_call() -> None:
    receipt = {"order_id": 7, "amount": 5}
    run = run_workflow(
        flows.checkout,
        ORDER,
        steps={"charge": receipt, "notify": "stubbed", "notify:1": lambda o, c: f"only {c}"},
    )

    assert run.output["sent"] == ["stubbed", "only sms"]
    assert calls["notify-email"] == calls["notify-sms"] == 0


@pytest.mark.django_db
def test_a_stub_the_run_never_reached_is_an_error() -> None:
    with pytest.raises(
        InProcessError, match=r"without reaching the stubbed step\(s\) \['chrage'\]"
    ):
        run_workflow(
            flows.checkout,
            ORDER,
            steps={"charge": {"order_id": 7, "amount": 1}, "chrage": {}},
        )


@pytest.mark.django_db
def test_the_unstubbed_real_function_runs() -> None:
    run = run_workflow(flows.checkout, ORDER)

    assert run.status == RunStatus.FAILED
    assert "the real payment API was called" in run.error["message"]


@pytest.mark.django_db
def test_driver_stubs_apply_to_every_run_it_drives() -> None:
    with InProcess(steps={"charge": {"order_id": 1, "amount": 2}}) as driver:
        stepflows.send("test/tt-order.paid", data=ORDER)
        stepflows.send("test/tt-order.paid", data=ORDER)
        assert driver.run_until_idle() == 2
    assert calls["charge"] == 0 and calls["reserve"] == 2


class WorkflowTestMixinTests(WorkflowTestMixin, TestCase):
    step_stubs = {"charge": {"order_id": 7, "amount": 99}}

    def test_run_workflow_inside_the_test_transaction(self) -> None:
        self.assertTrue(connection.in_atomic_block)
        run = self.run_workflow(flows.checkout, ORDER)

        self.assertEqual(run.status, RunStatus.COMPLETED, run.error)
        self.assertEqual(run.output["amount"], 99)

    def test_steps_for_one_call_win_over_the_class_stubs(self) -> None:
        run = self.run_workflow(flows.checkout, ORDER, steps={"charge": NonRetriableError("no")})
        self.assertEqual(run.status, RunStatus.FAILED)

    def test_send_and_run_leaves_a_waiting_run_waiting_until_the_event(self) -> None:
        [run] = self.send_and_run("test/tt-order.created", {"order_id": 3})
        self.assertEqual(run.status, RunStatus.WAITING)

        self.send_and_run("test/tt-payment", {"order_id": 3})
        run.refresh_from_db()
        self.assertEqual(run.status, RunStatus.COMPLETED)
        self.assertEqual(run.output, {"paid": True})

    def test_advance_moves_the_clock_past_a_timeout_and_a_sleep(self) -> None:
        [run] = self.send_and_run("test/tt-order.created", {"order_id": 4})
        self.advance(3600)  # the wait times out; the run sleeps 600 s
        run.refresh_from_db()
        self.assertEqual(run.status, RunStatus.WAITING)

        self.advance(600)
        run.refresh_from_db()
        self.assertEqual(run.status, RunStatus.COMPLETED)
        self.assertEqual(run.output, {"paid": False, "reminded": "email:4"})

    def test_run_workflow_jumps_over_waits(self) -> None:
        run = self.run_workflow(flows.await_payment, {"order_id": 5})
        self.assertEqual(run.output, {"paid": False, "reminded": "email:5"})
