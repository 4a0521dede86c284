"""Where ownership starts: the objects whose named entries a developer can release.

A root container is an object whose outgoing references have names a person can act on:
the runner (`runner.NAME`), a module's dict (`pkg.mod.NAME`), a class's dict
(`pkg.mod.Class.NAME`) and the live frames of other threads. The walk from a tensor back to
its owners stops at root containers and at barriers (modules, type objects, leakcheck's own
frames): a path never goes through a function's `__globals__` or an instance's class, since
the module global or class attribute is its own root.
"""

from __future__ import annotations

import inspect
import os
import sys
import threading
import types
from collections.abc import Iterator, MutableMapping, MutableSequence, MutableSet
from dataclasses import dataclass, field

import numpy as np
import torch

import leakcheck
from leakcheck.engine.heap import HeapGraph, TypeIndex, ids_of
from leakcheck.engine.paths import (
    MODULE_TABLES,
    attribute_step,
    attributes,
    key_step,
    module_entry_step,
    own_dict,
)
from leakcheck.report.model import ATTRIBUTE, CLASS_ATTRIBUTE, FRAME, GLOBAL

_PACKAGE_DIR = os.path.dirname(os.path.abspath(leakcheck.__file__))
_EXAMPLES_DIR = os.path.join(_PACKAGE_DIR, "examples")
_CLEARABLE = (MutableMapping, MutableSequence, MutableSet)


def is_own_module(name: str) -> bool:
    """leakcheck's own modules are never owners; its shipped examples are user code."""
    return (name == "leakcheck" or name.startswith("leakcheck.")) and not name.startswith("leakcheck.examples")


def is_own_code(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PACKAGE_DIR + os.sep) and not path.startswith(_EXAMPLES_DIR + os.sep)


@dataclass(frozen=True)
class Handle:
    """One named entry of a root container: the unit `shutdown()` releases."""

    path: str
    kind: str
    target: object
    evaluable: bool = True
    detail: str | None = None
    fix: str | None = None


@dataclass
class RootContainer:
    kind: str
    prefix: str
    obj: object
    evaluable: bool = True
    detail: str | None = None

    def handles(self) -> Iterator[Handle]:
        if self.kind == ATTRIBUTE:
            yield from _attribute_handles(self.obj, self.prefix)
        elif self.kind == FRAME:
            yield from _frame_handles(self)
        else:
            yield from _namespace_handles(self)


def _attribute_handles(obj: object, prefix: str) -> Iterator[Handle]:
    if isinstance(obj, dict):
        for key, value in list(obj.items()):
            step = key_step(key)
            yield Handle(prefix + step.text, ATTRIBUTE, value, step.evaluable, fix=f"del {prefix}{step.text}")
        return
    if isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            yield Handle(f"{prefix}[{index}]", ATTRIBUTE, value, fix=f"{prefix}.clear()")
        return
    attrs = attributes(obj)
    module = obj if isinstance(obj, torch.nn.Module) else None
    for name, value in attrs.items():
        if module is not None and name in MODULE_TABLES and isinstance(value, dict):
            for key, entry in list(value.items()):
                step = module_entry_step(module, name, key)
                yield Handle(prefix + step.text, ATTRIBUTE, entry, fix=f"del {_self(prefix)}{step.text}")
            continue
        step = attribute_step(obj, name)
        yield Handle(prefix + step.text, ATTRIBUTE, value, fix=f"del {_self(prefix)}{step.text}")


def _self(prefix: str) -> str:
    """Suggested fixes are written from inside `shutdown()`, where the runner is `self`."""
    return "self" if prefix == "runner" else prefix


def _namespace_handles(container: RootContainer) -> Iterator[Handle]:
    namespace = vars(container.obj)
    for name, value in list(namespace.items()):
        if not isinstance(name, str) or name in ("__builtins__", "__dict__", "__weakref__"):
            continue
        path = f"{container.prefix}.{name}" if name.isidentifier() else f"{container.prefix}.__dict__[{name!r}]"
        yield Handle(path, container.kind, value, container.evaluable, fix=release_line(path, value))


def release_line(path: str, value: object) -> str:
    """The line a shutdown() would add to drop a global or class attribute."""
    if type(value).__name__ == "_lru_cache_wrapper":
        return f"{path}.cache_clear()"
    if isinstance(value, _CLEARABLE):
        return f"{path}.clear()"
    return f"{path} = None"


def _frame_handles(container: RootContainer) -> Iterator[Handle]:
    live = container.obj
    assert isinstance(live, LiveFrame)
    for name, value in list(live.locals.items()):
        yield Handle(
            f"{container.prefix}.f_locals[{name!r}]",
            FRAME,
            value,
            evaluable=False,
            detail=container.detail,
            fix=f"# let {live.function} return, or drop its local {name!r}",
        )


@dataclass
class LiveFrame:
    """A frame still executing, with a copy of its locals taken before the heap is read.

    CPython does not track executing frames in the gc (3.11+), so their locals are invisible
    to `gc.get_referents`. The copy is a real dict in the snapshot, and its entries stand in
    for the frame's own references (see `frame_references`).
    """

    label: str
    function: str
    detail: str
    locals: dict


def capture_live_frames(caller_frames: bool) -> list[LiveFrame]:
    """Frames of other threads, and (for API use) the caller's frames on this thread.

    leakcheck's own frames are never captured: they are the auditor, not the audited.
    """
    own_thread = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    captured = []
    for ident, top in sys._current_frames().items():
        if ident == own_thread and not caller_frames:
            continue
        thread = names.get(ident, str(ident))
        for frame in frame_stack(top):
            if is_own_code(frame.f_code.co_filename):
                continue
            code = frame.f_code
            function = getattr(code, "co_qualname", code.co_name)
            if ident == own_thread:
                label, detail = frame_label(frame, None), "the caller's frame"
            else:
                label, detail = frame_label(frame, thread), f"live frame of thread {thread}"
            captured.append(LiveFrame(label, function, detail, read_locals(frame)))
    return captured


def read_locals(frame: types.FrameType) -> dict:
    """A copy of an executing frame's locals that leaves the frame as it was.

    Before Python 3.13 (PEP 667), `frame.f_locals` on a function frame fills a dict cached
    on the frame, which keeps every value alive until the frame next syncs it: a runner the
    thread deletes after the audit would stay alive. So the cache is emptied again after
    copying (the next `locals()` or trace call refills it from the real locals first).
    Module and class frames are left alone: their f_locals is the namespace itself.
    """
    namespace = frame.f_locals
    copy = dict(namespace)
    if (
        sys.version_info < (3, 13)
        and frame.f_code.co_flags & inspect.CO_OPTIMIZED
        and isinstance(namespace, dict)
        and namespace is not frame.f_globals
    ):
        namespace.clear()
    return copy


def frame_references(frames: list[LiveFrame]) -> list[tuple[object, object]]:
    """(locals copy, value) pairs standing for the references an executing frame holds."""
    return [(live.locals, value) for live in frames for value in live.locals.values()]


def frame_label(frame: types.FrameType, thread: str | None) -> str:
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    where = f"{os.path.basename(code.co_filename)}:{frame.f_lineno}"
    return f"<frame {name} at {where}" + (f" in thread {thread}>" if thread else ">")


@dataclass
class RootIndex:
    """Which graph nodes stop the walk, and which of those are named containers."""

    graph: HeapGraph
    stop: np.ndarray
    containers: dict[int, RootContainer] = field(default_factory=dict)


def index_roots(
    graph: HeapGraph,
    runner: object | None,
    frames: list[LiveFrame],
    barriers: tuple[object, ...] = (),
) -> RootIndex:
    """Mark root containers and barriers among the graph's nodes.

    frames: live frames captured by `capture_live_frames` before the heap was read.
    """
    objects = graph.objects
    marked: list[object] = []
    owners: list[RootContainer | None] = []

    def mark(obj: object, container: RootContainer | None = None) -> None:
        marked.append(obj)
        owners.append(container)

    for obj in barriers:
        mark(obj)

    type_index = graph.types or TypeIndex(objects)

    def nodes_of(predicate) -> list:
        return [objects[i] for i in type_index.nodes(predicate).tolist()]

    if runner is not None:
        runner_container = RootContainer(ATTRIBUTE, "runner", runner)
        mark(runner, runner_container)
        inner = own_dict(runner)
        if inner is not None:
            mark(inner, runner_container)
        if isinstance(runner, torch.nn.Module):
            for table in MODULE_TABLES:
                mark(getattr(runner, "__dict__", {}).get(table), runner_container)

    for module in nodes_of(lambda t: issubclass(t, types.ModuleType)):
        mark(module)
        namespace = getattr(module, "__dict__", None)
        name = getattr(module, "__name__", None)
        if not isinstance(namespace, dict) or not isinstance(name, str):
            continue
        if is_own_module(name):
            mark(namespace)
        else:
            mark(namespace, RootContainer(GLOBAL, name, module, evaluable=sys.modules.get(name) is module))

    for cls in nodes_of(lambda t: issubclass(t, type)):
        mark(cls)
        namespace = _class_dict(cls)
        if namespace is None:
            continue
        module_name = getattr(cls, "__module__", None)
        if not isinstance(module_name, str) or is_own_module(module_name):
            mark(namespace)
            continue
        qualname = getattr(cls, "__qualname__", cls.__name__)
        evaluable = "<" not in qualname and sys.modules.get(module_name) is not None
        mark(namespace, RootContainer(CLASS_ATTRIBUTE, f"{module_name}.{qualname}", cls, evaluable=evaluable))

    for live in frames:
        mark(live.locals, RootContainer(FRAME, live.label, live, evaluable=False, detail=live.detail))
    # Finished frames (tracebacks, generators) are ordinary objects; leakcheck's own are barriers.
    for frame in nodes_of(lambda t: issubclass(t, types.FrameType)):
        if is_own_code(frame.f_code.co_filename):
            mark(frame)

    nodes = graph.lookup(ids_of(marked))
    marked.clear()
    stop = np.zeros(graph.size, dtype=np.bool_)
    stop[nodes[nodes >= 0]] = True
    index = RootIndex(graph=graph, stop=stop)
    for node, container in zip(nodes.tolist(), owners):
        if node >= 0 and container is not None:
            index.containers.setdefault(node, container)
    return index


def frame_stack(frame: types.FrameType | None) -> Iterator[types.FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def _class_dict(cls: type) -> dict | None:
    """The real dict behind `cls.__dict__` (a read-only proxy the gc does not see)."""
    try:
        proxy = type.__dict__["__dict__"].__get__(cls)
    except (TypeError, KeyError):
        return None
    import gc

    for referent in gc.get_referents(proxy):
        if isinstance(referent, dict):
            return referent
    return None
