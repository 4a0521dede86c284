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
from typing import SupportsInt, cast

import torch

from leakcheck.engine.safe_read import MISSING, class_lookup, is_subtype, mro

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


_GETTERS = {name: _base_member(name) for name in ("layout", "device", "dtype", "shape", "is_nested", "_grad", "_base")}
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
