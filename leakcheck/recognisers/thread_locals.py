"""threading.local: each thread's attributes live as long as that thread.

A module-level `threading.local()` used as a per-thread cache (a kernel workspace, a scratch
buffer) keeps the main thread's slot for the whole process. `MOD._SCRATCH = None` is the
wrong release: it frees the bytes, but every later call that reads `_SCRATCH.workspace`
breaks, in every thread. The release is to delete the attributes, in the thread that set
them: `del MOD._SCRATCH.workspace`.
"""

from __future__ import annotations

import _thread

from leakcheck.engine.release import Release
from leakcheck.engine.safe_read import class_lookup, instance_of, items_of
from leakcheck.recognisers import Recogniser, Remedy, shutdown_expression

# Values that cannot pin device memory: a slot holding one is left alone.
_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def this_threads_slot(local: object) -> dict | None:
    """The calling thread's attribute dict of a `threading.local`, read through the type's own
    `__getattribute__`. That read creates the dict when this thread has none, and for a
    subclass with an `__init__` runs it: so subclasses with their own `__init__` are not read."""
    if not instance_of(local, _thread._local):
        return None
    if class_lookup(type(local), "__init__") is not object.__init__:
        return None
    try:
        slot = _thread._local.__getattribute__(local, "__dict__")  # type: ignore[arg-type]
    except Exception:
        return None
    return slot if type(slot) is dict else None


def _delete(local: object, names: tuple[str, ...]) -> None:
    for name in names:
        delattr(local, name)


class ThreadLocals(Recogniser):
    name = "threading.local"
    applies_to_user_roots = True

    def object_remedy(self, obj: object, path: str) -> Remedy | None:
        slot = this_threads_slot(obj)
        if slot is None:
            return None
        names = tuple(
            name
            for name, value in items_of(slot)
            if type(name) is str and name.isidentifier() and not any(type(value) is t for t in _SCALARS)
        )
        if not names:
            return None  # nothing in this thread's slot: another thread's, which only that thread can clear
        shown = shutdown_expression(path)
        return Remedy(
            label=path,
            fix="; ".join(f"del {shown}.{name}" for name in names),
            release=Release.call(_delete, obj, names),
            detail=(
                "a threading.local: each thread's attributes live as long as the thread (the main thread's, "
                "as long as the process); delete them in the thread that set them, and keep the local itself"
            ),
            recogniser=self.name,
            replaces=True,
        )


RECOGNISER = ThreadLocals()
