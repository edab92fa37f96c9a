"""Step and run outputs to JSON and back, with the types the code declared.

A step's value is stored as JSON. When the step function is annotated to
return a pydantic model, ``list[Model]``, ``dict[str, Model]``, ``datetime``,
``Decimal``, ``UUID``..., the stored JSON is validated back into that type, on
the first run as on every replay, so the workflow always sees the same thing.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from ..exceptions import OutputSerializationError

_NO_TYPE = (None, Any, inspect.Signature.empty, object)


def to_json(value: Any, *, where: str) -> tuple[Any, int]:
    """Return ``(json_value, size_in_bytes)`` or raise OutputSerializationError."""
    try:
        data = to_jsonable_python(value)
        text = json.dumps(data, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise OutputSerializationError(
            f"{where} returned a value that cannot be stored as JSON "
            f"({type(value).__name__}: {exc}). Return dicts, lists, strings, numbers, "
            "booleans, None, or pydantic models; NaN and infinity are not allowed."
        ) from None
    return data, len(text.encode())


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of a step function, or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return None
    annotation = hints.get("return")
    if annotation in _NO_TYPE:
        return None
    return annotation


@functools.lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def restore(data: Any, annotation: Any) -> Any:
    """Turn stored JSON back into ``annotation`` (when there is one)."""
    if annotation is None or data is None:
        return data
    try:
        return _adapter(annotation).validate_python(data)
    except (ValidationError, TypeError, ValueError, Exception):
        # An annotation pydantic cannot rebuild (or a stale one) must not fail
        # a replay: the stored JSON is still the step's output.
        return data
