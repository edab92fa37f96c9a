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
import logging
import re
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from .exceptions import OutputSerializationError

# An escaped NUL in JSON text, not preceded by an escaped backslash.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")

_NO_TYPE = (None, Any, inspect.Signature.empty, object)

logger = logging.getLogger("stepflows.engine")


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
    if _NUL.search(text):
        # PostgreSQL's jsonb cannot hold U+0000; refuse it on every backend alike.
        raise OutputSerializationError(
            f"{where} returned a value whose text contains the NUL character (U+0000), "
            "which cannot be stored as JSON in PostgreSQL. Remove it, or encode binary "
            "data (base64) before returning it."
        )
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate (half of a UTF-16 pair, e.g. from bytes decoded with
        # errors="surrogateescape") is not Unicode text: no database stores it.
        char = text[exc.start]
        path = _path_to(data, lambda s: char in s)
        at = f" at {path}" if path else ""
        raise OutputSerializationError(
            f"{where} returned a value whose text contains a lone surrogate "
            f"(U+{ord(char):04X}{at}), which is not valid Unicode and cannot be stored. "
            "Decode bytes with their real encoding (or errors='replace') before returning them."
        ) from None
    return data, len(encoded)


def _path_to(value: Any, bad: Callable[[str], bool], path: str = "") -> str | None:
    """Where in JSON data the first string for which ``bad`` holds is.

    Like ``['items'][2]``; ``''`` for the value itself, None when there is none.
    (pydantic already refuses keys it cannot encode, so only values are searched.)
    """
    if isinstance(value, str):
        return path if bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _path_to(item, bad, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _path_to(item, bad, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def return_type(fn: Callable[..., Any]) -> Any:
    """The declared return type of a step function, or None."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):
        # A model class called as the step function returns an instance of itself.
        return fn if issubclass(fn, BaseModel) else None
    target: Any = fn
    if not inspect.isroutine(fn) and callable(fn):
        target = type(fn).__call__  # a callable object: its __call__ declares the type
    try:
        return _declared_return(target)
    except TypeError:  # unhashable: resolve it every time
        return _declared_return.__wrapped__(target)


@functools.lru_cache(maxsize=4096)
def _declared_return(target: Any) -> Any:
    """The return annotation of ``target``, resolved once per function.

    ``typing.get_type_hints`` evaluates every annotation of the function, at each
    step call otherwise; a function's annotations do not change while it runs.
    """
    try:
        annotation = typing.get_type_hints(target).get("return")
    except Exception:
        # One unresolvable parameter annotation (say, a type imported under
        # TYPE_CHECKING) fails get_type_hints as a whole: resolve the return alone.
        annotation = _return_only(target)
    if annotation in _NO_TYPE:
        return None
    return annotation


_warned: set[str] = set()


def _return_only(fn: Any) -> Any:
    raw = getattr(fn, "__annotations__", {}).get("return")
    if not isinstance(raw, str):
        return raw
    namespace = dict(getattr(fn, "__globals__", {}))
    try:
        namespace.update(inspect.getclosurevars(fn).nonlocals)
    except (TypeError, ValueError):
        pass
    try:
        return eval(raw, namespace)  # what typing.get_type_hints does with a string
    except Exception as exc:
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', fn)}"
        if name not in _warned:
            _warned.add(name)
            logger.warning(
                "step function %s declares the return type %r, which cannot be resolved "
                "(%s: %s); its output is returned in its JSON form. Define or import the "
                "type at module level.",
                name,
                raw,
                type(exc).__name__,
                exc,
            )
        return None


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
