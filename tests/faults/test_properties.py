"""Bad input, generated: event names, payloads and step outputs (hypothesis).

Whatever comes in: a clear StepflowsError at send(), or a run that ends
(completed, or failed with an error that says why); never a crashed worker,
never a stuck run.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import stepflows
from stepflows.exceptions import StepflowsError
from stepflows.models import Run, RunStatus

pytestmark = pytest.mark.django_db(transaction=True)

QUICK = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Floats below 1e15: PostgreSQL's jsonb keeps numbers, not their Python type, so a
# large integral float (4.4e16) comes back as an int (a known limit, see README).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(-1e15, 1e15)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
anything = json_values | st.sets(st.integers(), max_size=2) | st.binary(max_size=4) | st.floats()


@QUICK
@given(name=st.text(max_size=300))
def test_any_event_name_is_stored_or_refused_clearly(name):
    try:
        [event_id] = stepflows.send(name, data={})
    except StepflowsError as exc:
        assert str(exc)
        return
    assert Run.objects.filter(event_id=event_id).count() == 0  # no workflow listens to it


@QUICK
@given(data=anything | st.dictionaries(st.text(max_size=10), anything, max_size=5))
def test_any_payload_is_stored_or_refused_clearly(data):
    try:
        stepflows.send("test/no-workflow-listens", data=data)
    except StepflowsError as exc:
        assert str(exc)


step_values = (
    json_values
    | st.just({"raise": "<script>alert(1)</script> no"})
    | st.just({"unserializable": True})
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(step_values, max_size=5))
def test_any_step_output_completes_or_fails_clearly(faults_worker, values):
    try:
        run_id = faults_worker.send("test/fault-echo", {"values": values})
    except StepflowsError:
        return  # refused at send(): a clear error, nothing stored
    [run] = faults_worker.wait([run_id], timeout=120)
    raises = any(isinstance(v, dict) and v.get("raise") for v in values)
    if raises:
        assert run.status == RunStatus.FAILED
        assert run.error["type"] == "StepError" and "<script>" in run.error["message"]
    else:
        assert run.status == RunStatus.COMPLETED, run.error
        # A set is stored as a list (JSON has no sets); everything else as it came.
        expected = [[1, 2] if v == {"unserializable": True} else v for v in values]
        assert run.output == expected
    assert faults_worker.workers[0].process.poll() is None  # the worker is alive


@pytest.fixture
def faults_worker(faults):
    faults.worker("properties", concurrency=2)
    return faults
