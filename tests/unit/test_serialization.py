"""Step and run outputs: JSON on the way in, the declared type on the way out (no database)."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel

from stepflows.exceptions import OutputSerializationError
from stepflows.serialization import restore, return_type, to_json

if TYPE_CHECKING:
    from decimal import Context as OnlyForTypeCheckers


class Point(BaseModel):
    x: int
    y: Decimal
    at: datetime


POINT = Point(x=1, y=Decimal("2.50"), at=datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC))


def point() -> Point:
    return POINT


def points() -> list[Point]:
    return [POINT, POINT]


def point_map() -> dict[str, Point]:
    return {"a": POINT}


def maybe_point() -> Point | None:
    return POINT


def when() -> datetime:
    return datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))


def amount() -> Decimal:
    return Decimal("1234.5600")


def ident() -> uuid.UUID:
    return uuid.UUID("12345678-1234-5678-1234-567812345678")


def day() -> date:
    return date(2024, 2, 29)


def pair() -> tuple[int, str]:
    return (1, "a")


def untyped():  # type: ignore[no-untyped-def]
    return POINT


def anything() -> Any:
    return POINT


def roundtrip(fn: Any) -> Any:
    data, size = to_json(fn(), where="test step")
    assert size > 0
    return restore(data, return_type(fn))


@pytest.mark.parametrize(
    "fn", [point, points, point_map, maybe_point, when, amount, ident, day, pair]
)
def test_typed_outputs_round_trip_to_equal_values_of_the_same_type(fn):
    value = fn()
    back = roundtrip(fn)
    assert back == value and type(back) is type(value)
    if isinstance(value, list | dict):
        items = value.values() if isinstance(value, dict) else value
        back_items = back.values() if isinstance(back, dict) else back
        assert all(type(a) is type(b) for a, b in zip(items, back_items, strict=True))


def test_decimal_keeps_its_digits_and_datetime_its_offset():
    assert str(roundtrip(amount)) == "1234.5600"
    assert roundtrip(when).utcoffset() == timedelta(hours=2)
    assert roundtrip(point).y == Decimal("2.50")


def test_without_a_type_the_json_form_comes_back():
    assert roundtrip(untyped) == {"x": 1, "y": "2.50", "at": "2024-01-02T03:04:05.600000Z"}
    assert roundtrip(anything) == roundtrip(untyped)


def test_return_type_sees_through_partials_lambdas_objects_and_model_classes():
    assert return_type(functools.partial(functools.partial(amount))) is Decimal
    assert return_type(lambda: 1) is None

    class Maker:
        def __call__(self) -> Point:
            return POINT

    assert return_type(Maker()) is Point
    assert return_type(Point) is Point
    assert return_type(dict) is None


def test_an_unresolvable_parameter_annotation_does_not_lose_the_return_type():
    def load(ctx: OnlyForTypeCheckers) -> Point:
        return POINT

    assert return_type(load) is Point


def test_an_unresolvable_return_type_falls_back_to_json_with_a_warning(caplog):
    def load() -> OnlyForTypeCheckers:  # type: ignore[empty-body]
        ...

    assert return_type(load) is None
    assert "cannot be resolved" in caplog.text and "load" in caplog.text


def test_json_that_no_longer_fits_the_type_is_returned_as_stored():
    assert restore({"x": "not a number"}, Point) == {"x": "not a number"}
    assert restore(None, Point) is None


@pytest.mark.parametrize(
    "value, words",
    [
        (object(), "cannot be stored as JSON"),
        ({"x": float("nan")}, "NaN"),
        ({1, object()}, "cannot be stored as JSON"),
        (b"\xff\xfe", "cannot be stored as JSON"),
    ],
)
def test_values_json_cannot_hold_are_a_clear_error(value, words):
    with pytest.raises(OutputSerializationError) as info:
        to_json(value, where="workflow 'w', run r, step 's':")
    assert words in str(info.value) and "step 's'" in str(info.value)


@pytest.mark.parametrize(
    "value, at",
    [
        ("bad\ud800", ""),
        ({"a": [1, "ok", "x\udcff"]}, " at ['a'][2]"),
        (("ok", {"k": "\udc80"}), " at [1]['k']"),
    ],
)
def test_a_lone_surrogate_is_a_clear_error_naming_where_it_is(value, at):
    with pytest.raises(OutputSerializationError) as info:
        to_json(value, where="workflow 'w', run r, step 's':")
    message = str(info.value)
    assert message.startswith("workflow 'w', run r, step 's': returned a value")
    assert "lone surrogate (U+D" in message and f"{at})" in message
    assert "not valid Unicode" in message
