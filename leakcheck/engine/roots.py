"""Where ownership starts: the objects whose named entries a developer can release.

A root container is an object whose outgoing references have names a person can act on:
the runner (`runner.NAME`), a module's dict (`pkg.mod.NAME`), a class's dict
(`pkg.mod.Class.NAME`) and the live frames of other threads. The walk from a tensor back to
its owners stops at root containers and at barriers (modules, type objects, leakcheck's own
frames): a path never goes through a function's `__globals__` or an instance's class, since
the module global or class attribute is its own root.

Every module and class in the process is indexed, so one lazy module (`__getattr__`), one
hostile metaclass or one dead proxy anywhere must not stop the audit: nothing here uses
getattr on a module or class; each is read through safe_read, under its own guard.
"""

from __future__ import annotations

import os
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

import leakcheck
from leakcheck.engine.heap import HeapGraph, TypeIndex, ids_of
from leakcheck.engine.release import (
    CALLER_FRAME,
    LIVE_FRAME,
    NOT_EVALUABLE,
    Release,
    clear_in_place,
    delete_attribute,
    delete_item,
    namespace_release,
)
from leakcheck.engine.paths import (
    MODULE_TABLES,
    TEXT_CAP,
    attribute_step,
    key_step,
    module_entry_step,
    name_step,
    shortened,
)
from leakcheck.engine.safe_read import (
    LRU_WRAPPER_TYPE,
    MISSING,
    attribute_pairs,
    class_lookup,
    class_namespace,
    elements_of,
    exact_str,
    instance_dict,
    instance_of,
    is_exact_clearable,
    items_of,
    module_name,
    module_namespace,
    namespace_reads_back,
    read_locals,
    shadowed_names,
    str_entry,
    subscript_reads_back,
    type_facts_cached,
    type_module,
    type_qualname,
)
from leakcheck.report.model import ATTRIBUTE, CLASS_ATTRIBUTE, FRAME, GLOBAL

_PACKAGE_DIR = os.path.dirname(os.path.abspath(leakcheck.__file__))
_EXAMPLES_DIR = os.path.join(_PACKAGE_DIR, "examples")
_SKIPPED_NAMES = ("__builtins__", "__dict__", "__weakref__")
_PREFIX_CAP = 4 * TEXT_CAP
_CALLER_FRAME = "the caller's frame"


def is_own_module(name: str) -> bool:
    """leakcheck's own modules are never owners; its shipped examples are user code."""
    return (name == "leakcheck" or name.startswith("leakcheck.")) and not name.startswith("leakcheck.examples")


def is_own_code(filename: object) -> bool:
    text = exact_str(filename)
    if text is None:
        return False
    path = os.path.abspath(text)
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
    release: Release | None = None  # the fix in executable form, for --prove (None: not known)


@dataclass
class RootContainer:
    kind: str
    prefix: str
    obj: object
    evaluable: bool = True
    detail: str | None = None

    def handles(self) -> list[Handle]:
        """The container's named entries, read under a guard.

        A container whose reading fails part-way keeps the entries read so far; what it
        alone held is then reported as unattributed, still counted, and no other container
        loses anything.
        """
        produced: list[Handle] = []
        with type_facts_cached():
            try:
                for handle in self._entries():
                    produced.append(handle)
            except Exception:
                pass
        return produced

    def _entries(self) -> Iterator[Handle]:
        if self.kind == ATTRIBUTE:
            yield from _attribute_handles(self.obj, self.prefix)
        elif self.kind == FRAME:
            yield from _frame_handles(self)
        else:
            yield from _namespace_handles(self)


def _attribute_handles(obj: object, prefix: str) -> Iterator[Handle]:
    if instance_of(obj, dict):
        reads_back = subscript_reads_back(obj)
        for key, value in items_of(obj):  # type: ignore[arg-type]
            step = key_step(key, reads_back)
            release = delete_item(obj, key) if step.evaluable else Release.never(NOT_EVALUABLE)
            yield Handle(
                prefix + step.text, ATTRIBUTE, value, step.evaluable, fix=f"del {prefix}{step.text}", release=release
            )
        return
    elements = elements_of(obj)
    if elements is not None:
        reads_back = subscript_reads_back(obj)
        release = clear_in_place(obj) if reads_back else Release.never(NOT_EVALUABLE)
        for index, value in enumerate(elements):
            yield Handle(f"{prefix}[{index}]", ATTRIBUTE, value, reads_back, fix=f"{prefix}.clear()", release=release)
        return
    module = instance_of(obj, torch.nn.Module)
    for name, value in attribute_pairs(obj):
        if module and type(name) is str and name in MODULE_TABLES and type(value) is dict:
            for key, entry in items_of(value):
                step = module_entry_step(obj, name, key)
                fix = f"del {_self(prefix)}{step.text}"
                release = _attribute_release(obj, key, step.evaluable)
                yield Handle(prefix + step.text, ATTRIBUTE, entry, step.evaluable, fix=fix, release=release)
            continue
        step = attribute_step(obj, name)
        fix = f"del {_self(prefix)}{step.text}"
        release = _attribute_release(obj, name, step.evaluable)
        yield Handle(prefix + step.text, ATTRIBUTE, value, step.evaluable, fix=fix, release=release)


def _attribute_release(obj: object, name: object, evaluable: bool) -> Release:
    """`del self.NAME`; an nn.Module's `__delattr__` also finds entries of its parameter,
    buffer and submodule tables, which is what `del self[0]` on a Sequential drops too."""
    if not evaluable or type(name) is not str:
        return Release.never(NOT_EVALUABLE)
    return delete_attribute(obj, name)


def _self(prefix: str) -> str:
    """Suggested fixes are written from inside `shutdown()`, where the runner is `self`."""
    return "self" if prefix == "runner" else prefix


def _namespace_handles(container: RootContainer) -> Iterator[Handle]:
    """`pkg.mod.NAME` for a module's globals, `pkg.mod.Class.NAME` for a class's attributes.

    Names that are not short identifiers are shown as `.__dict__[...]`, shortened (and not
    evaluable) past a small cap; a name a metaclass or module subclass would answer with its
    own descriptor is not evaluable either.
    """
    owner = container.obj
    is_class = container.kind == CLASS_ATTRIBUTE
    namespace = class_namespace(owner) if is_class else module_namespace(owner)  # type: ignore[arg-type]
    if namespace is None:
        return
    shadowed = shadowed_names(owner)
    dict_reads_back = namespace_reads_back(owner)
    for name, value in items_of(namespace):
        if type(name) is str and name in _SKIPPED_NAMES:
            continue
        reads_back = shadowed is not None and type(name) is str and name not in shadowed
        if is_class:  # `Class.name` runs the value's __get__: a classmethod or property is not itself
            reads_back = reads_back and _binds_to_itself(value)
        step = name_step(name, reads_back, dict_reads_back)
        path = container.prefix + step.text
        evaluable = container.evaluable and step.evaluable
        fix = release_line(path, value, evaluable)
        release = namespace_release(owner, name, path, fix) if evaluable else Release.never(NOT_EVALUABLE)
        yield Handle(path, container.kind, value, evaluable, fix=fix, release=release)


def _binds_to_itself(value: object) -> bool:
    """Whether `Class.name` gives back the stored value (a plain function does; a classmethod,
    staticmethod or property gives something else)."""
    return type(value) is types.FunctionType or class_lookup(type(value), "__get__") is MISSING


def release_line(path: str, value: object, evaluable: bool = True) -> str:
    """The line a shutdown() would add to drop a global or class attribute.

    `.clear()` only where it is the builtin's own, `.cache_clear()` for a real lru_cache
    wrapper; the value's type is read exactly (its `__class__` can lie).
    """
    if not evaluable:
        return f"# release {path}"
    if LRU_WRAPPER_TYPE is not None and type(value) is LRU_WRAPPER_TYPE:
        return f"{path}.cache_clear()"
    if is_exact_clearable(value):
        return f"{path}.clear()"
    return f"{path} = None"


def _frame_handles(container: RootContainer) -> Iterator[Handle]:
    live = container.obj
    assert type(live) is LiveFrame
    release = Release.never(CALLER_FRAME if live.detail == _CALLER_FRAME else LIVE_FRAME)
    for name, value in items_of(live.locals):
        step = key_step(name)
        shown = exact_str(name) if type(name) is str and len(name) <= TEXT_CAP else None
        yield Handle(
            f"{container.prefix}.f_locals{step.text}",
            FRAME,
            value,
            evaluable=False,
            detail=container.detail,
            fix=f"# let {live.function} return" + (f", or drop its local {shown!r}" if shown else ""),
            release=release,
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


def _thread_names() -> dict[int, str]:
    """ident -> name of live threads, read from each Thread's own dict (a subclass may
    override the `name` and `ident` properties)."""
    names: dict[int, str] = {}
    for thread in threading.enumerate():
        namespace = instance_dict(thread)
        if namespace is None:
            continue
        ident, name = str_entry(namespace, "_ident"), exact_str(str_entry(namespace, "_name"))
        if type(ident) is int and name is not None:
            names[ident] = name[:TEXT_CAP]
    return names


def capture_live_frames(caller_frames: bool) -> list[LiveFrame]:
    """Frames of other threads, and (for API use) the caller's frames on this thread.

    leakcheck's own frames are never captured: they are the auditor, not the audited.
    """
    own_thread = threading.get_ident()
    names = _thread_names()
    captured = []
    for ident, top in sys._current_frames().items():
        if ident == own_thread and not caller_frames:
            continue
        thread = names.get(ident, str(ident))
        for frame in frame_stack(top):
            if is_own_code(frame.f_code.co_filename):
                continue
            function = _code_name(frame.f_code)
            if ident == own_thread:
                label, detail = frame_label(frame, None), _CALLER_FRAME
            else:
                label, detail = frame_label(frame, thread), f"live frame of thread {thread}"
            try:
                copy = read_locals(frame)
            except Exception:  # a frame whose locals cannot be read is left out, not fatal
                continue
            captured.append(LiveFrame(label, function, detail, copy))
    return captured


def frame_references(frames: list[LiveFrame]) -> list[tuple[object, object]]:
    """(locals copy, value) pairs standing for the references an executing frame holds."""
    return [(live.locals, value) for live in frames for _, value in items_of(live.locals)]


def _code_name(code: types.CodeType) -> str:
    name = exact_str(getattr(code, "co_qualname", code.co_name)) or "?"
    return name[:TEXT_CAP]


def frame_label(frame: types.FrameType, thread: str | None) -> str:
    code = frame.f_code
    where = f"{os.path.basename(exact_str(code.co_filename) or '?')}:{frame.f_lineno}"
    return f"<frame {_code_name(code)} at {where}" + (f" in thread {thread}>" if thread else ">")


@dataclass
class RootIndex:
    """Which graph nodes stop the walk, and which of those are named containers."""

    graph: HeapGraph
    stop: np.ndarray
    containers: dict[int, RootContainer] = field(default_factory=dict)


def _registered_modules() -> dict[int, set[str]]:
    """id(module) -> the names sys.modules has it under (plain str keys only)."""
    registered: dict[int, set[str]] = {}
    if not instance_of(sys.modules, dict):
        return registered
    for name, module in items_of(sys.modules):
        if type(name) is str:
            registered.setdefault(id(module), set()).add(name)
    return registered


def _prefix(text: str, evaluable: bool) -> tuple[str, bool]:
    """A root's name, shortened (and then not evaluable) past a cap."""
    if len(text) > _PREFIX_CAP:
        return f"<{shortened(text)}>", False
    return text, evaluable


def _module_container(module: object, registered: dict[int, set[str]]) -> tuple[dict | None, RootContainer | None]:
    """A module's namespace and, unless it is leakcheck's own, the root container naming it."""
    namespace = module_namespace(module)
    if namespace is None:
        return None, None
    names = registered.get(id(module), set())
    name = module_name(namespace)
    if name is None and names:
        name = min(names)
    if name is None:
        return None, None
    if is_own_module(name):
        return namespace, None
    evaluable = name in names and all(part.isidentifier() for part in name.split("."))
    prefix, evaluable = _prefix(name, evaluable)
    return namespace, RootContainer(GLOBAL, prefix, module, evaluable=evaluable)


def _class_container(cls: type, module_names: set[str]) -> tuple[dict | None, RootContainer | None]:
    """A class's real namespace and, for user classes, the root container naming it."""
    namespace = class_namespace(cls)
    if namespace is None:
        return None, None
    module = type_module(cls)
    if module is None or is_own_module(module):
        return namespace, None
    qualname = type_qualname(cls)
    prefix, evaluable = _prefix(f"{module}.{qualname}", "<" not in qualname and module in module_names)
    return namespace, RootContainer(CLASS_ATTRIBUTE, prefix, cls, evaluable=evaluable)


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
        if obj is not None:
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
        inner = instance_dict(runner)
        if inner is not None:
            mark(inner, runner_container)
            if instance_of(runner, torch.nn.Module):
                for table in MODULE_TABLES:
                    value = str_entry(inner, table)
                    mark(value if value is not MISSING else None, runner_container)

    registered = _registered_modules()
    for module in nodes_of(lambda t: issubclass(t, types.ModuleType)):
        mark(module)
        try:
            namespace, container = _module_container(module, registered)
        except Exception:  # this module is left as a barrier; its globals become unattributed
            continue
        mark(namespace, container)

    module_names = {name for names in registered.values() for name in names}
    for cls in nodes_of(lambda t: issubclass(t, type)):
        mark(cls)
        try:
            namespace, container = _class_container(cls, module_names)
        except Exception:
            continue
        mark(namespace, container)

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
