"""A holder's suggested fix as something leakcheck can apply itself, for `--prove`.

Every owner in a report comes with a line for `shutdown()` (`del self.model_state`,
`torch._dynamo.reset()`). `--prove` runs those lines, one holder at a time, and measures
what dies. A `Release` is such a line in executable form, or the reason leakcheck must not
run it (another thread's frame, C++ state with no documented release).

A plan must not pin what its own earlier steps should free, so a Release keeps strong
references only to what the fix names as its starting point: a root container (the runner,
a module, a class), which is alive anyway. Any other object it needs (a logging handler, a
hook handle) is held through a weak reference; one that cannot be is held strongly and the
release says so in `caveat`, since the proof of that step is then weaker.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from leakcheck.engine.survivors import CollectableWatch

# Why leakcheck leaves a holder alone; each is shown next to the holder as "not tried: ...".
LIVE_FRAME = "a live frame of another thread: only that thread can drop its locals"
NO_RELEASE = "no line leakcheck knows how to run: release it in shutdown() and run again"
NOT_EVALUABLE = "its path cannot be evaluated, so the line cannot be run as written"
CPP_STATE = "held in C++ with no documented release"
LIBRARY_STATE = "a library's internal state: clearing it would break other users of the library"
CALLER_FRAME = "a frame of the code that called leakcheck: only that code can drop its locals"
UNTRACKED_REFERENCE = "held by a reference outside the Python heap, which no line of Python can drop by name"
NO_ROOT = "reachable from no root leakcheck knows, so there is no line to run"
FROZEN = "frozen by gc.freeze(): leakcheck does not unfreeze the caller's heap"
ALLOWED = "allowed by the gate: its bytes are not counted, so leakcheck leaves it alone"


@dataclass(frozen=True)
class Release:
    """How to apply one fix: `action()` does what the suggested line does.

    action: None when leakcheck does not try this holder; `not_tried` says why.
    caveat: what makes this step's measurement less than exact (a strong reference the
        plan had to keep), shown with its result.
    """

    action: Callable[[], object] | None
    not_tried: str | None = None
    caveat: str | None = None

    @property
    def tried(self) -> bool:
        return self.action is not None

    @classmethod
    def never(cls, reason: str) -> Release:
        return cls(action=None, not_tried=reason)

    @classmethod
    def call(cls, function: Callable[..., object], *arguments: object) -> Release:
        """`function(*arguments)`, holding the arguments weakly where they allow it.

        An argument that died before the step runs makes the step a no-op: whatever it
        held is already free, and the measurement shows that.
        """
        held: list[Callable[[], object]] = []
        caveat = None
        for argument in arguments:
            try:
                held.append(weakref.ref(argument))
            except TypeError:
                held.append(lambda argument=argument: argument)  # type: ignore[misc]
                if not _cannot_pin(argument):
                    caveat = f"holds a {type(argument).__name__} strongly (it takes no weak reference)"

        def run() -> object:
            values = [get() for get in held]
            if any(value is None for value in values):
                return None
            return function(*values)

        return cls(action=run, caveat=caveat)


def _cannot_pin(value: object) -> bool:
    """A name, a number or a tuple of them: holding it strongly keeps no memory alive."""
    if type(value) is tuple:
        return all(_cannot_pin(item) for item in value)
    return any(type(value) is kind for kind in (str, int, float, bool, bytes, type(None)))


def delete_attribute(container: object, name: str) -> Release:
    """`del self.NAME` on the runner (a root: held strongly)."""
    return Release(action=lambda: delattr(container, name))


def delete_item(container: object, key: object) -> Release:
    """`del runner[KEY]` on a dict runner; the key must be hashable and is held strongly
    (keys are the names a developer wrote: strings, ints, tuples of them)."""

    def run() -> None:
        del container[key]  # type: ignore[index,attr-defined]

    return Release(action=run)


def set_to_none(namespace_owner: object, name: str) -> Release:
    """`pkg.mod.NAME = None` or `pkg.mod.Class.NAME = None` (modules and classes are roots)."""
    return Release(action=lambda: setattr(namespace_owner, name, None))


def call_method(namespace_owner: object, name: str, method_name: str) -> Release:
    """`pkg.mod.NAME.clear()` or `pkg.mod.NAME.cache_clear()`: the value is looked up through
    its root when the step runs, so the plan itself does not hold it."""

    def run() -> object:
        return getattr(getattr(namespace_owner, name), method_name)()

    return Release(action=run)


def collect() -> Release:
    """Garbage cycles: `gc.collect()`."""
    return Release(action=gc.collect)


def clear_in_place(container: object) -> Release:
    """`runner.clear()` on a list runner (the runner is a root: held strongly)."""

    def run() -> object:
        return container.clear()  # type: ignore[attr-defined]

    return Release(action=run)


def namespace_release(namespace_owner: object, name: object, path: str, fix: str | None) -> Release:
    """The Release matching a global's or class attribute's suggested line, read off the line
    itself, so that whoever words the line decides what is run: a line leakcheck does not
    know how to run (a comment, a library's own release) is not tried unless its Release
    comes with it."""
    if fix is None or fix.startswith("#"):
        return Release.never(NOT_EVALUABLE)
    if type(name) is not str:
        return Release.never(NO_RELEASE)
    if fix == f"{path} = None":
        return set_to_none(namespace_owner, name)
    for method in ("cache_clear", "clear"):
        if fix == f"{path}.{method}()":
            return call_method(namespace_owner, name, method)
    return Release.never(NO_RELEASE)


@dataclass(frozen=True)
class PlannedRelease:
    """One reported holder and how to release it, in report order.

    line: the suggested line (`Owner.fix`); holders with the same line are one step.
    """

    path: str
    kind: str
    line: str | None
    release: Release


@dataclass
class ReleasePlan:
    """The suggested lines of one audit in executable form, and weak references to every
    leaked storage they should free (keyed like `survivors.storage_key`).

    Filled by `audit_watching(plan=...)`; filling it again (a second audit of the same
    cycle) replaces what it held. Nothing in it keeps a leaked storage alive: the watch is
    weak, and each Release holds only root containers (see the module docstring).
    """

    steps: list[PlannedRelease] = field(default_factory=list)
    watch: CollectableWatch = field(default_factory=CollectableWatch)

    def replace(self, steps: list[PlannedRelease], watch: CollectableWatch) -> None:
        self.steps, self.watch = steps, watch
