"""weakref.finalize: a registered finalizer holds its function and arguments until it runs.

`weakref.finalize._registry` maps each finalizer to a record of (func, args, kwargs): it is
the path to the user's finalizer, never a thing to clear (every library in the process
registers there). The documented release is calling the finalizer (`finalizer()`), which
runs it once and drops what it holds, or `finalizer.detach()`.
"""

from __future__ import annotations

import types
import weakref

from leakcheck.engine.dominators import user_reference
from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import exact_str, items_of, type_qualname
from leakcheck.recognisers import Recogniser, Remedy

_RECORD = getattr(weakref.finalize, "_Info", None)


def finalizer_of(record: object) -> weakref.finalize | None:
    """The finalizer whose registry record is `record`."""
    registry = weakref.finalize.__dict__.get("_registry")
    if not isinstance(registry, dict):
        return None
    for finalizer, value in items_of(registry):
        if value is record:
            return finalizer  # type: ignore[return-value]
    return None


def function_name(record: object) -> str:
    func = getattr(record, "func", None) if type(record) is _RECORD else None
    if type(func) is types.FunctionType:
        return exact_str(func.__qualname__) or "?"
    if type(func) is types.MethodType and type(func.__func__) is types.FunctionType:
        return exact_str(func.__func__.__qualname__) or "?"
    return type_qualname(type(func))


def _call_registered(index: int) -> object:
    """Call the finalizer with this record index, found when the step runs: the plan holds
    no reference to the finalizer (it takes no weak reference)."""
    registry = weakref.finalize.__dict__.get("_registry", {})
    for finalizer, record in list(registry.items()):
        if getattr(record, "index", None) == index:
            return finalizer()
    return None


class WeakrefFinalize(Recogniser):
    name = "weakref.finalize"

    def member_remedy(self, container: object, member: object, path: str) -> Remedy | None:
        if _RECORD is None or type(member) is not _RECORD:
            return None
        if container is not weakref.finalize.__dict__.get("_registry"):
            return None
        finalizer = finalizer_of(member)
        if finalizer is None:
            return None
        function = function_name(member)
        kept = user_reference(finalizer)
        fix = (
            f"{kept}()"
            if kept
            else f"finalizer()  # the weakref.finalize(obj, {function}, ...) you registered: call it in shutdown()"
        )
        return Remedy(
            label=f"weakref.finalize of {function}",
            fix=fix,
            release=Release(action=lambda index=member.index: _call_registered(index)),  # type: ignore[attr-defined,misc]
            detail=f"a finalizer registered for {function}; weakref.finalize._registry is its path, not the holder",
            recogniser=self.name,
        )


RECOGNISER = WeakrefFinalize()
