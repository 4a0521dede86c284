"""The one module that calls private torch APIs; each has a public fallback where one exists.

Reading a tensor subclass through its own attributes runs the subclass's Python:
`__torch_function__` for every method and property, `__torch_dispatch__` for metadata a
wrapper subclass customises. A subclass that refuses or lies would hide its bytes, so tensors
are read through `torch._C.TensorBase`'s own descriptors and methods, called unbound, with
both hooks switched off. Which of these names exist changes between torch releases; every
one is looked up defensively here so the rest of the engine never names `torch._C`.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import SupportsInt, cast

import torch

from leakcheck.engine.safe_read import (
    MISSING,
    cached_fact,
    class_lookup,
    instance_dict,
    is_subtype,
    module_namespace,
    mro,
    str_entry,
)

# The C base of torch.Tensor: its descriptors read the TensorImpl directly.
TENSOR_BASE = cast(type, getattr(torch._C, "TensorBase", None) or getattr(torch._C, "_TensorBase", torch.Tensor))
# Layouts whose tensors keep their bytes in an opaque handle with no readable storage.
OPAQUE_LAYOUTS = {layout: "MKLDNN" for layout in (getattr(torch, "_mkldnn", None),) if layout is not None}
_PYTHON_KEY = getattr(getattr(torch._C, "DispatchKey", None), "Python", None)
_DISABLED_DISPATCH = getattr(torch._C, "_disabled_torch_dispatch_impl", None)


def _base_member(name: str) -> object:
    """A TensorBase getter or method as stored on the class, or None in a torch without it."""
    for klass in mro(TENSOR_BASE):
        found = klass.__dict__.get(name, MISSING)
        if found is not MISSING:
            return found
    return None


_GETTERS = {
    name: _base_member(name)
    for name in ("layout", "device", "dtype", "shape", "is_nested", "_grad", "_base", "grad_fn")
}
_METHODS = {
    name: _base_member(name)
    for name in (
        "untyped_storage",
        "numel",
        "_indices",
        "_values",
        "crow_indices",
        "col_indices",
        "ccol_indices",
        "row_indices",
        "values",
        "is_pinned",
    )
}


def _function_switch():
    """Context that turns `__torch_function__` off for subclasses and modes alike."""
    for name in ("DisableTorchFunction", "DisableTorchFunctionSubclass"):
        switch = getattr(torch._C, name, None)
        if switch is not None:
            return switch
    return nullcontext  # pragma: no cover - torch < 1.13 has no switch; reads may dispatch


_DISABLE_FUNCTION = _function_switch()
# Excludes the Python dispatch key: no `__torch_dispatch__` of a mode or subclass runs for ops
# leakcheck calls (aten.is_pinned, _values, ...). Public fallback: none, so nothing.
_DISABLE_DISPATCH = getattr(torch._C, "_DisableTorchDispatch", None) or nullcontext


@contextmanager
def no_user_dispatch() -> Iterator[None]:
    """Within this block, torch calls on a tensor reach its C++ implementation only."""
    with _DISABLE_FUNCTION(), _DISABLE_DISPATCH():
        yield


def _get(name: str, tensor: object) -> object:
    getter = _GETTERS.get(name)
    if getter is None:
        raise AttributeError(f"this torch has no TensorBase.{name}")
    return getter.__get__(tensor, type(tensor))  # type: ignore[attr-defined]


def _call(name: str, tensor: object) -> object:
    method = _METHODS.get(name)
    if method is None:
        raise AttributeError(f"this torch has no TensorBase.{name}()")
    return method(tensor)  # type: ignore[operator]


def layout(tensor: object) -> torch.layout:
    return _get("layout", tensor)  # type: ignore[return-value]


def device(tensor: object) -> torch.device:
    return _get("device", tensor)  # type: ignore[return-value]


def dtype(tensor: object) -> torch.dtype:
    return _get("dtype", tensor)  # type: ignore[return-value]


def shape(tensor: object) -> tuple[int, ...]:
    return tuple(_get("shape", tensor))  # type: ignore[arg-type]


def is_nested(tensor: object) -> bool:
    return bool(_get("is_nested", tensor))


def grad(tensor: object) -> object:
    return _get("_grad", tensor)


def base(tensor: object) -> object:
    return _get("_base", tensor)


def grad_fn(tensor: object) -> object:
    """The autograd node that made a non-leaf tensor (None for a leaf): it owns the graph."""
    return _get("grad_fn", tensor)


def untyped_storage(tensor: object) -> torch.UntypedStorage:
    return _call("untyped_storage", tensor)  # type: ignore[return-value]


def numel(tensor: object) -> int:
    return int(_call("numel", tensor))  # type: ignore[call-overload]


def component(name: str, tensor: object) -> object:
    """A sparse tensor's index or value tensor (`_indices`, `crow_indices`, `values`, ...)."""
    return _call(name, tensor)


def has_python_dispatch(tensor: object) -> bool:
    """Whether torch calls back into Python (`__torch_dispatch__`) for this tensor's metadata.

    Such a tensor's layout, device, sizes and numel may be answered by its subclass's code,
    so only its storage is read. Public fallback: the class defines `__torch_dispatch__`.
    """
    keys = getattr(torch._C, "_dispatch_keys", None)
    if keys is not None and _PYTHON_KEY is not None:
        try:
            return bool(keys(tensor).has(_PYTHON_KEY))
        except Exception:
            pass
    found = class_lookup(type(tensor), "__torch_dispatch__")
    return found is not MISSING and found is not _DISABLED_DISPATCH


def storage_is_pinned(storage: torch.UntypedStorage) -> bool:
    """Whether a host storage is pinned; asked of the storage so no subclass is involved."""
    try:
        return bool(torch.UntypedStorage.is_pinned(storage))
    except Exception:
        return False


def is_pinned(tensor: object) -> bool:
    """Whether a plain (no `__torch_dispatch__`) host tensor is pinned: the aten op, with
    dispatch off, is cheaper than asking its storage."""
    try:
        return bool(_call("is_pinned", tensor))
    except Exception:
        return False


# --- CUDA graphs and memory pools --------------------------------------------------------------


def _pool_class(name: str) -> type | None:
    found = getattr(torch._C, name, None)
    return found if isinstance(found, type) else None


_GRAPH = _pool_class("_CUDAGraph")
_MEM_POOL = _pool_class("_MemPool")


def cuda_pool_types() -> tuple[type, ...]:
    """Classes whose objects own a private pool of the CUDA caching allocator.

    Public fallback: torch.cuda.CUDAGraph and torch.cuda.MemPool, the Python subclasses.
    """
    found = tuple(t for t in (_GRAPH, _MEM_POOL) if t is not None)
    if found:
        return found
    public = (getattr(torch.cuda, "CUDAGraph", None), getattr(torch.cuda, "MemPool", None))
    return tuple(t for t in public if isinstance(t, type))


def _native(owner: type | None, name: str) -> object:
    """A C++ method or property of a pool class; None where this build only has a stub."""
    if owner is None:
        return None
    found = owner.__dict__.get(name)
    if found is None or type(found) is types.FunctionType:
        return None  # a Python stub (CPU builds), which would run Python, not read the pool
    return found


def is_mem_pool(holder: object) -> bool:
    if _MEM_POOL is not None and is_subtype(type(holder), _MEM_POOL):
        return True
    return class_lookup(type(holder), "use_count") is not MISSING


def _as_pool(value: object) -> tuple[int, int] | None:
    if value is None:
        return None
    first, second = cast("tuple[SupportsInt, SupportsInt]", value)
    return int(first), int(second)


def pool_id(holder: object) -> tuple[int, int] | None:
    """The private pool a CUDA graph or MemPool owns, as the allocator names it.

    torch's own pool classes are read through their C++ accessors. A class the caller passed
    as a pool type (`audit(pool_types=...)`) is asked through its own `pool()` or `id`: the
    caller declared that code part of the contract.
    """
    try:
        graph_pool = _native(_GRAPH, "pool")
        if graph_pool is not None and is_subtype(type(holder), _GRAPH):  # type: ignore[arg-type]
            return _as_pool(graph_pool(holder))  # type: ignore[operator]
        pool_property = _native(_MEM_POOL, "id")
        if pool_property is not None and is_subtype(type(holder), _MEM_POOL):  # type: ignore[arg-type]
            return _as_pool(pool_property.__get__(holder, type(holder)))  # type: ignore[attr-defined]
        declared = getattr(holder, "pool", None)
        return _as_pool(declared() if callable(declared) else getattr(holder, "id", None))
    except Exception:  # a graph not captured yet owns no pool
        return None


def storage_weak_ref(tensor: object) -> object | None:
    """A weak reference to a tensor's storage, with `.expired()`; None where torch has none.

    It watches the storage itself, not the tensor: a finalizer that keeps a new view of the
    bytes and drops the old tensor still keeps the storage alive, and this sees it. torch's
    own (multiprocessing uses it to share storages); the caller falls back to a plain weak
    reference to the tensor.
    """
    try:
        from torch.multiprocessing.reductions import StorageWeakRef
    except ImportError:  # pragma: no cover - every torch we support has it
        return None
    try:
        with no_user_dispatch():
            return StorageWeakRef(untyped_storage(tensor))
    except Exception:  # no readable storage (opaque, wrapper): watch the tensor instead
        return None


def cublas_workspace_sizes() -> set[int]:
    """The sizes torch gives each stream's cuBLAS and cuBLASLt workspace (bytes); empty where
    this torch does not say. A CPU-side read: it allocates nothing."""
    sizes = set()
    for name in ("_cuda_getCublasWorkspaceSize", "_cuda_getCublasLtWorkspaceSize"):
        read = getattr(torch._C, name, None)
        if read is None:
            continue
        try:
            size = int(read())
        except Exception:  # a build without CUDA, or one that reads it differently
            continue
        if size > 0:
            sizes.add(size)
    return sizes


# --- storages held from C++, TorchScript graphs (engine/seen_storages.py) ----------------------


def weak_ref_to(storage: torch.UntypedStorage) -> object | None:
    """torch's own weak reference to a storage (not to a tensor): it outlives every Python
    tensor of the storage and says whether C++ still holds the bytes. None where unavailable."""
    try:
        from torch.multiprocessing.reductions import StorageWeakRef

        return StorageWeakRef(storage)
    except Exception:
        return None


def storage_behind(ref: object) -> torch.UntypedStorage | None:
    """The storage a `weak_ref_to` reference watches, while something still holds it.

    The storage object it returns holds the bytes: read it and let it go at once.
    Public fallback: none (expired or unreadable reads as gone).
    """
    try:
        if ref.expired():  # type: ignore[attr-defined]
            return None
        rebuild = getattr(torch.UntypedStorage, "_new_with_weak_ptr", None)
        return None if rebuild is None else rebuild(ref.cdata)  # type: ignore[attr-defined]
    except Exception:
        return None


_SCRIPT_MODULE = _pool_class("ScriptModule")
_SCRIPT_FUNCTION = _pool_class("ScriptFunction")


def is_script_type(cls: type) -> bool:
    """TorchScript's C++ module and function objects, whose graphs may hold tensor constants."""
    return any(owner is not None and is_subtype(cls, owner) for owner in (_SCRIPT_MODULE, _SCRIPT_FUNCTION))


def graph_tensor_constants(holder: object) -> list[object]:
    """Tensor constants of a TorchScript module's methods or a script function's graph
    (`torch.jit.freeze` turns weights into these; `torch.jit.trace` captured tensors too).

    Read through the C++ classes' own methods, so no Python subclass code runs. Each tensor
    returned gets a Python object that torch keeps for as long as the graph holds it.
    """
    graphs = []
    try:
        if _SCRIPT_MODULE is not None and is_subtype(type(holder), _SCRIPT_MODULE):
            for name in _SCRIPT_MODULE._method_names(holder):  # type: ignore[attr-defined]
                graphs.append(_SCRIPT_MODULE._get_method(holder, name).graph)  # type: ignore[attr-defined]
        elif _SCRIPT_FUNCTION is not None and is_subtype(type(holder), _SCRIPT_FUNCTION):
            graphs.append(_SCRIPT_FUNCTION.graph.__get__(holder, type(holder)))  # type: ignore[attr-defined]
    except Exception:
        return []
    found = []
    for graph in graphs:
        try:
            for node in graph.findAllNodes("prim::Constant", True):
                value = node.output()
                if value.type().kind() == "TensorType":
                    found.append(value.toIValue())
        except Exception:
            continue
    return found


def dynamo_has_compiled() -> bool:
    """Whether torch.compile holds compiled code now, without importing dynamo: its frame
    counter (`torch._dynamo.convert_frame.FRAME_COUNTER`) counts frames compiled since the
    last `torch._dynamo.reset()`, which sets it back to 0. Where a torch lacks it, dynamo's
    cumulative graph count (which reset does not clear) is the fallback."""
    import sys

    convert = sys.modules.get("torch._dynamo.convert_frame")
    if convert is None:
        return False
    counter = getattr(convert, "FRAME_COUNTER", None)
    if isinstance(counter, int):
        return counter > 0
    utils = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None) if utils is not None else None
    stats = counters.get("stats") if isinstance(counters, dict) else None
    return isinstance(stats, dict) and bool(stats.get("unique_graphs", 0))


def torchscript_in_use() -> bool:
    """Whether TorchScript compiled anything in this process: its process-wide compilation
    unit has functions (scripted modules' methods, freeze's inlined graphs)."""
    import sys

    state = sys.modules.get("torch.jit._state")
    unit = getattr(state, "_python_cu", None) if state is not None else None
    try:
        return unit is not None and len(unit.get_functions()) > 0
    except Exception:
        return False


# --- autograd graphs (engine/tensors.py `hidden_edges`, engine/paths.py) ------------------------
# A tensor that requires grad owns its graph through C++: `grad_fn` nodes, each holding the next
# nodes, the tensors it saved for backward and, for a leaf, an `AccumulateGrad` holding the
# parameter. None of that is a gc referent. Nodes are read through their classes' C++ getters;
# a saved tensor is read as stored (`SavedTensor.data`), never unpacked: unpacking runs a
# `saved_tensors_hooks` unpack hook (activation checkpointing recomputes the forward there).

_SAVED_TENSOR = getattr(getattr(torch._C, "_autograd", None), "SavedTensor", None)
_RAW_SAVED = "_raw_saved_"
_TYPE_NAMESPACE = type.__dict__["__dict__"]


@dataclass(frozen=True)
class AutogradReference:
    """One thing an autograd node holds, with the step that reads it back in a debugger."""

    step: str
    held: object
    is_node: bool  # another node of the graph (read in turn), else a tensor or a hook's object


@dataclass(frozen=True)
class _NodeGetters:
    """The C++ getters of one autograd node class."""

    next_functions: object
    variable: object | None  # AccumulateGrad's leaf
    saved: tuple[tuple[str, object], ...]  # (name after `_raw_saved_`, getter)
    readable_names: frozenset[str]  # `_saved_NAME` getters that exist, for readable steps
    python_function: bool  # a custom autograd.Function's ctx: `saved_tensors` reads its saves


def _getset(cls: type, name: str) -> object | None:
    """A getter written in C on `cls`'s MRO; None for anything else (a Python property runs code)."""
    found = class_lookup(cls, name)
    return found if type(found) is types.GetSetDescriptorType else None


def _node_getters(cls: type) -> _NodeGetters | None:
    """How to read a node of class `cls`; None when `cls` is not an autograd node class.

    Node classes share no base class (each C++ node is its own generated type), so a class is
    one when it has a C `next_functions` getter and the `_sequence_nr` every node has.
    """
    next_functions = _getset(cls, "next_functions")
    if next_functions is None or class_lookup(cls, "_sequence_nr") is MISSING:
        return None
    saved: dict[str, object] = {}
    readable: set[str] = set()
    for klass in mro(cls):
        try:
            names = list(_TYPE_NAMESPACE.__get__(klass))
        except Exception:
            continue
        for name in names:
            if type(name) is not str:
                continue
            if name.startswith(_RAW_SAVED) and name[len(_RAW_SAVED) :] not in saved:
                getter = _getset(cls, name)
                if getter is not None:
                    saved[name[len(_RAW_SAVED) :]] = getter
            elif name.startswith("_saved_"):
                readable.add(name[len("_saved_") :])
    return _NodeGetters(
        next_functions=next_functions,
        variable=_getset(cls, "variable"),
        saved=tuple(saved.items()),
        readable_names=frozenset(readable),
        python_function=_getset(cls, "saved_tensors") is not None,
    )


def _read(getter: object, holder: object) -> object:
    return getter.__get__(holder, type(holder))  # type: ignore[attr-defined]


def autograd_references(node: object) -> list[AutogradReference]:
    """What an autograd node holds: the next nodes, an AccumulateGrad's leaf, saved tensors
    (and, where a saved-tensors hook packed one, the packed object and the unpack hook).

    A getter that fails (a saved tensor freed by backward, a torch that lacks it) is skipped:
    reading a graph is best effort and never stops the audit. Empty for a non-node.
    """
    getters = cached_fact(type(node), "autograd_node", _node_getters)
    if getters is None:
        return []
    found: list[AutogradReference] = []
    try:
        pairs = _read(getters.next_functions, node)
    except Exception:
        pairs = ()
    index: int | None  # a position below; None for a saved value that is not a sequence
    if type(pairs) is tuple:
        for index, pair in enumerate(pairs):
            nxt = pair[0] if type(pair) is tuple and pair else None
            if nxt is not None:
                found.append(AutogradReference(f".next_functions[{index}][0]", nxt, True))
    if getters.variable is not None:
        try:
            variable = _read(getters.variable, node)
        except Exception:
            variable = None
        if variable is not None:
            found.append(AutogradReference(".variable", variable, False))
    for name, getter in getters.saved:
        try:
            raw = _read(getter, node)
        except Exception:
            continue
        entries: list[tuple[int | None, object]] = (
            list(enumerate(cast("tuple[object, ...] | list[object]", raw)))
            if type(raw) in (tuple, list)
            else [(None, raw)]
        )
        for index, saved in entries:
            found.extend(_saved_references(getters, name, index, saved))
    return found


def _saved_references(getters: _NodeGetters, name: str, index: int | None, saved: object) -> list[AutogradReference]:
    """A SavedTensor's bytes as stored: its tensor, or what a pack hook made of it and the hook."""
    if _SAVED_TENSOR is None or type(saved) is not _SAVED_TENSOR:
        return []
    suffix = "" if index is None else f"[{index}]"
    raw_step = f"{_RAW_SAVED}{name}{suffix}"
    try:
        hook = saved.unpack_hook  # type: ignore[attr-defined]
        data = saved.data  # type: ignore[attr-defined]
    except Exception:
        return []
    if hook is not None:  # packed by a saved_tensors_hooks pack hook: reading it back runs the hook
        found = [AutogradReference(f".{raw_step}.unpack_hook", hook, False)]
        if data is not None:
            found.append(AutogradReference(f".{raw_step}.data", data, False))
        return found
    if data is None:  # freed by backward
        return []
    if getters.python_function and name == "tensors":
        step = f".saved_tensors{suffix}"
    elif name in getters.readable_names:
        step = f"._saved_{name}{suffix}"
    else:
        step = f".{raw_step}.data"
    return [AutogradReference(step, data, False)]


def autograd_step(holder: object, held: object) -> str | None:
    """The step from `holder` to `held` when it is an autograd reference (a tensor's
    `.grad_fn`, or something a node holds); None otherwise."""
    if is_subtype(type(holder), torch.Tensor):
        try:
            with no_user_dispatch():
                return ".grad_fn" if grad_fn(holder) is held else None
        except Exception:
            return None
    for reference in autograd_references(holder):
        if reference.held is held:
            return reference.step
    return None


def record_allocator_history(max_entries: int, events: bool = False) -> str | None:
    """From now on, record the allocation stack (Python frames) of every CUDA block; returns
    why it cannot, or None. It records on the host as the runner allocates and allocates
    nothing on the device. No public API records this.

    events=False (`enabled="state"`): a stack per live block and no event trace, so snapshots
    stay cheap however long the runner runs: allocation sites. events=True (`enabled="all"`):
    every allocation and free too, the trace PyTorch's memory_viz draws (`--snapshot`).
    Older torch (< 2.1) offers only the `enabled=True` form, with a bounded history.
    """
    record = getattr(torch.cuda.memory, "_record_memory_history", None)
    if record is None:
        return f"torch {torch.__version__} cannot record allocation history"
    try:
        if events:
            record(enabled="all", context="all", stacks="python", max_entries=max_entries)
        else:
            record(enabled="state", context="alloc", stacks="python", max_entries=max_entries)
    except TypeError:
        try:
            record(True, trace_alloc_max_entries=max_entries, trace_alloc_record_context=True)
        except Exception as exc:  # pragma: no cover - very old torch
            return f"allocation history unavailable in torch {torch.__version__}: {exc}"
    except RuntimeError as exc:
        return f"allocation history unavailable: {exc}"
    return None


def stop_allocator_history() -> None:
    record = getattr(torch.cuda.memory, "_record_memory_history", None)
    if record is not None:
        try:
            record(enabled=None)
        except TypeError:  # pragma: no cover - very old torch
            record(False)


def allocator_snapshot_pickle() -> bytes:
    """The allocator's snapshot with its recorded history, pickled as
    `torch.cuda.memory._dump_snapshot` writes it (what memory_viz opens); read on the host.
    Public fallback: the segments alone (`torch.cuda.memory_snapshot()`), with no history."""
    import pickle

    take = getattr(torch.cuda.memory, "_snapshot", None)
    snapshot = take() if take is not None else {"segments": torch.cuda.memory_snapshot(), "device_traces": []}
    return pickle.dumps(snapshot)


# --- process groups (engine/process_groups.py) --------------------------------------------------
# torch.distributed keeps every group it created in module-level maps of distributed_c10d
# (`_pg_map` and its siblings; older torch kept them on the `_world` object). A ProcessGroup
# is a pybind11 object the cyclic collector does not track, so gc.get_objects() never lists
# it: the registry is where the audit finds the live ones. The registry is read from the
# module's and the `_world` object's own dicts, never through `_world.pg_map` (a property).

_C10D = "torch.distributed.distributed_c10d"


def _c10d() -> tuple[dict | None, dict | None]:
    """(distributed_c10d's module dict, its `_world` object's dict), each None where absent:
    torch.distributed never imported in this process means nothing to find, and nothing is
    imported to find it."""
    import sys

    namespace = module_namespace(sys.modules.get(_C10D))
    if namespace is None:
        return None, None
    world = str_entry(namespace, "_world")
    return namespace, instance_dict(world) if world is not MISSING else None


def _registry_map() -> dict | None:
    """torch's map of live groups (group -> (backend, store)), or None where torch.distributed
    was never imported in this process."""
    namespace, world_dict = _c10d()
    if namespace is None:
        return None
    found = str_entry(namespace, "_pg_map")
    if type(found) is dict:
        return found
    if world_dict is not None:
        found = str_entry(world_dict, "_pg_map")
        if type(found) is dict:
            return found
    return None


def live_process_groups() -> list[object]:
    """Every process group torch's registry holds now: created by `init_process_group` or
    `new_group` and not yet destroyed by `destroy_process_group`. Empty without the registry."""
    registry = _registry_map()
    if registry is None:
        return []
    try:
        return list(registry)
    except Exception:  # changed size while read (another thread): read again next audit
        return []


def process_group_live(group: object) -> bool:
    """Whether `group` is still in torch's registry (not destroyed). A dead weak reference
    (None) is no live group."""
    if group is None:
        return False
    registry = _registry_map()
    return registry is not None and any(key is group for key in list(registry))


@dataclass(frozen=True)
class GroupFacts:
    """What the report says about one process group, read from the registry and the
    group's C++ accessors (no Python subclass code runs)."""

    name: str
    backend: str
    size: int | None
    rank: int | None
    default: bool


def process_group_facts(group: object) -> GroupFacts:
    """The group's name, backend, size and this process's rank in it; '?'/None where unreadable."""
    backend = "?"
    registry = _registry_map()
    entry = None
    if registry is not None:
        entry = next((value for key, value in list(registry.items()) if key is group), None)
    if type(entry) is tuple and entry and type(entry[0]) is str:
        backend = entry[0]
    namespace, world_dict = _c10d()
    base = str_entry(namespace, "ProcessGroup") if namespace is not None else MISSING
    name, size, rank = "?", None, None
    if isinstance(base, type) and is_subtype(type(group), base):
        name = _read_group(lambda: str(base.group_name.__get__(group, base)), "?")  # type: ignore[attr-defined]
        size = _read_group(lambda: int(base.size(group)), None)  # type: ignore[attr-defined]
        rank = _read_group(lambda: int(base.rank(group)), None)  # type: ignore[attr-defined]
    default_group = str_entry(world_dict, "_default_pg") if world_dict is not None else MISSING
    return GroupFacts(name=name, backend=backend, size=size, rank=rank, default=default_group is group)


def _read_group(read, fallback):
    try:
        return read()
    except Exception:
        return fallback
