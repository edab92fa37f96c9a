"""Engine parts that need no database: backoff, serialization, the replay-aware logger."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from stepflows import NonRetriableError, RetryAfterError
from stepflows.context import Context
from stepflows.engine.retry import backoff, decide
from stepflows.events import Event
from stepflows.exceptions import OutputSerializationError
from stepflows.serialization import restore, return_type, to_json


def test_backoff_grows_exponentially_with_jitter_and_a_cap(settings):
    settings.STEPFLOWS = {"RETRY_BASE_DELAY": 1.0, "RETRY_MAX_DELAY": 10.0}
    for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 10.0)]:
        delays = [backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len({round(d, 6) for d in delays}) > 100  # jittered, not fixed


def test_retry_after_error_sets_the_delay():
    assert decide(RetryAfterError("x", 7), 0, 4).delay == 7.0
    assert decide(RetryAfterError("x", timedelta(minutes=1)), 3, 4).delay == 60.0
    when = datetime.now(UTC) + timedelta(seconds=30)
    assert 28 < decide(RetryAfterError("x", when), 0, 4).delay <= 30
    with pytest.raises(TypeError):
        RetryAfterError("x", "soon")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "retry_after, words",
    [(datetime(2030, 1, 1), "naive datetime"), (float("inf"), "finite"), (1e12, "a year")],
)
def test_a_retry_after_that_cannot_be_honoured_is_a_final_usage_error(retry_after, words):
    decision = decide(RetryAfterError("later", retry_after), 0, 4)
    assert not decision.retry
    assert type(decision.error).__name__ == "StepUsageError" and words in str(decision.error)


def test_one_decision_for_every_failure():
    class Custom(BaseException):
        pass

    assert decide(ValueError("x"), 0, 4).retry
    assert not decide(ValueError("x"), 4, 4).retry  # the last attempt
    for exc in (SystemExit(1), KeyboardInterrupt(), Custom(), NonRetriableError("no")):
        decision = decide(exc, 0, 4)
        assert not decision.retry and decision.error is exc


def test_to_json_measures_and_refuses_what_json_cannot_hold():
    data, size = to_json({"a": [1, 2], "when": datetime(2026, 1, 1, tzinfo=UTC)}, where="step x")
    assert data == {"a": [1, 2], "when": "2026-01-01T00:00:00Z"} and size == len(
        '{"a":[1,2],"when":"2026-01-01T00:00:00Z"}'
    )
    with pytest.raises(OutputSerializationError, match="step x"):
        to_json(object(), where="step x")
    with pytest.raises(OutputSerializationError, match="NaN"):
        to_json(float("inf"), where="step x")


def test_restore_uses_the_return_annotation():
    def price() -> Decimal:
        return Decimal("1.10")

    data, _ = to_json(price(), where="")
    assert restore(data, return_type(price)) == Decimal("1.10")
    assert return_type(lambda: 1) is None
    assert restore({"x": 1}, None) == {"x": 1}


def test_logger_is_quiet_while_replaying(caplog):
    replaying = [True]
    ctx = Context(
        event=Event(name="e", data={}), run_id="r", workflow_id="wf", replaying=lambda: replaying[0]
    )
    with caplog.at_level(logging.INFO, logger="stepflows.workflow.wf"):
        ctx.logger.info("during replay")
        replaying[0] = False
        ctx.logger.info("fresh line")
    assert [r.getMessage() for r in caplog.records] == ["fresh line"]
    assert caplog.records[0].run_id == "r"


@pytest.mark.parametrize("value", ["a\x00b", {"\x00": 1}, ["ok", {"k": "nul\x00"}]])
def test_nul_characters_are_refused_on_every_backend(value):
    with pytest.raises(OutputSerializationError, match="NUL"):
        to_json(value, where="step x")


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    assert to_json("back\\u0000slash", where="")[0] == "back\\u0000slash"
