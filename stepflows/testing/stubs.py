"""Step stubs for in-process tests: a step's function replaced by a stand-in, by step id.

``run_workflow(wf, data, steps={"charge-card": {"charged": True}})`` runs the
workflow as in production, except that the step ``charge-card`` does not call
its function: it returns the stub's value, or calls the stub when it is
callable (with the step's arguments), or raises it when it is an exception.
A stub keyed by a step's base id (``"summarize-chunk"``) stands in for every
call of it (``summarize-chunk``, ``summarize-chunk:1``, ...); one keyed by the
full id (``"summarize-chunk:1"``) for that call only, and wins.

The stand-in keeps the real function's declared return type, so a step typed
``-> Receipt`` returns a ``Receipt`` on replay with a stub too. Stubs are
applied by wrapping the engine's step-call constructor for as long as a
stub set is active; the engine itself knows nothing of them.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..serialization import return_type

StepStubs = Mapping[str, Any]

_lock = threading.Lock()
_active: list[_StubSet] = []
_original: Callable[..., Any] | None = None


class _StubSet:
    def __init__(self, stubs: StepStubs) -> None:
        self.stubs = dict(stubs)
        self.reached: set[str] = set()

    def find(self, step_id: str, base_id: str) -> tuple[bool, Any]:
        for key in (step_id, base_id):
            if key in self.stubs:
                self.reached.add(key)
                return True, self.stubs[key]
        return False, None

    @property
    def unreached(self) -> list[str]:
        return sorted(set(self.stubs) - self.reached)


def _lookup(step_id: str, base_id: str) -> tuple[bool, Any]:
    for stub_set in reversed(_active):  # the innermost set wins
        found, stub = stub_set.find(step_id, base_id)
        if found:
            return True, stub
    return False, None


def stand_in(stub: Any, original: Callable[..., Any]) -> Callable[..., Any]:
    """A step function that answers with ``stub`` and declares ``original``'s return type."""
    fn: Callable[..., Any]
    if inspect.iscoroutinefunction(stub):

        async def fn(*args: Any, **kwargs: Any) -> Any:
            return await stub(*args, **kwargs)

    else:

        def fn(*args: Any, **kwargs: Any) -> Any:
            if isinstance(stub, BaseException):
                raise stub
            if callable(stub):
                return stub(*args, **kwargs)
            return stub

    annotation = return_type(original)
    fn.__annotations__ = {"return": annotation} if annotation is not None else {}
    fn.__qualname__ = fn.__name__ = f"stub_of_{getattr(original, '__name__', 'step')}"
    return fn


def _install() -> None:
    global _original
    from ..engine.invocation import Invocation

    original = Invocation.new_call
    _original = original

    @functools.wraps(original)
    def new_call(self: Any, base_id: Any, *args: Any, **kwargs: Any) -> Any:
        call = original(self, base_id, *args, **kwargs)
        found, stub = _lookup(call.step_id, str(base_id))
        if found:
            call.fn = stand_in(stub, call.fn)
        return call

    Invocation.new_call = new_call  # type: ignore[method-assign]


def _uninstall() -> None:
    global _original
    from ..engine.invocation import Invocation

    if _original is not None:
        Invocation.new_call = _original  # type: ignore[method-assign]
        _original = None


@contextmanager
def stubbed_steps(stubs: StepStubs | None) -> Iterator[_StubSet]:
    """Inside the block, the steps named in ``stubs`` call their stand-ins (see the module)."""
    stub_set = _StubSet(stubs or {})
    if not stub_set.stubs:
        yield stub_set
        return
    with _lock:
        if not _active:
            _install()
        _active.append(stub_set)
    try:
        yield stub_set
    finally:
        with _lock:
            _active.remove(stub_set)
            if not _active:
                _uninstall()
