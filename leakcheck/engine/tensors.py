"""Tensors on the audited device, deduplicated by the storage that really holds the bytes.

Views, tied weights and `.detach()` copies share one storage; counting tensors would count
those bytes several times. Everything here is keyed by storage.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from leakcheck.engine.heap import TypeIndex

StorageKey = tuple[str, int]  # (device, data pointer)


def normalize_device(device: str | torch.device) -> str:
    """'cuda' means the current CUDA device; reports always name the index."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(dev)


def is_pinned_tensor(tensor: torch.Tensor) -> bool:
    try:
        return bool(tensor.is_pinned())
    except Exception:
        return False


def storage_of(tensor: torch.Tensor) -> tuple[StorageKey, int] | None:
    """(key, bytes) of a tensor's storage; None for tensors without one (meta, sparse, wrappers)."""
    try:
        if tensor.is_meta or tensor.layout != torch.strided:
            return None
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        pointer = storage.data_ptr()
    except Exception:
        return None
    if nbytes == 0 or pointer == 0:
        return None
    return (str(storage.device), pointer), nbytes


def is_tensor_type(cls: type) -> bool:
    return isinstance(cls, type) and issubclass(cls, torch.Tensor)


def tensor_nodes(objects: list, types: TypeIndex | None = None) -> np.ndarray:
    """Indices of every torch.Tensor (and subclass) among `objects`."""
    return (types or TypeIndex(objects)).nodes(is_tensor_type)


def hidden_edges(objects: list, nodes: np.ndarray) -> list[tuple[object, object]]:
    """Ownership that lives in C++ autograd metadata, as (holder, held) node pairs.

    A tensor's `.grad` and a view's `._base` are not gc referents, yet a `.grad` pins as many
    bytes as its parameter and a view keeps its base's PyObject alive (torch hands the base
    one reference from C++, which would otherwise look like an untracked holder). Tensors
    that had no Python object yet are created and appended to `objects`.
    """
    known = {id(objects[node]) for node in nodes.tolist()}
    edges = []
    getters = [getattr(torch._C.TensorBase, name, None) for name in ("_grad", "_base")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for node in nodes.tolist():
            tensor = objects[node]
            for getter in getters:
                try:
                    held = getter.__get__(tensor) if getter is not None else None
                except Exception:
                    continue
                if held is None:
                    continue
                if id(held) not in known:
                    objects.append(held)
                    known.add(id(held))
                edges.append((tensor, held))
    return edges


@dataclass
class Baseline:
    """What was alive before the runner was built: it belongs to the process, not the runner.

    Weak references, not keys alone: an address freed after baseline and reused by the runner
    is the runner's, so a storage counts as baseline only while a baseline tensor still has it.
    The same holds for CUDA graphs and memory pools, by pool id.
    """

    device: str
    tensors: list[weakref.ref] = field(default_factory=list)
    pools: list[weakref.ref] = field(default_factory=list)
    storages: int = 0
    bytes: int = 0

    def live_keys(self) -> set[tuple]:
        from leakcheck.engine.audit import pool_id

        keys: set[tuple] = set()
        for ref in self.tensors:
            tensor = ref()
            found = storage_of(tensor) if tensor is not None else None
            if found:
                keys.add(found[0])
        for ref in self.pools:
            holder = ref()
            pool = pool_id(holder) if holder is not None else None
            if pool is not None:
                keys.add(("pool", pool))
        return keys


def take_baseline(device: str) -> Baseline:
    """Record the tensors (and, on CUDA, pinned host tensors and pools) already alive.

    Garbage is collected first: a cycle left over from earlier work is nobody's baseline.
    """
    from leakcheck.engine.audit import cuda_pool_types

    device = normalize_device(device)
    on_cuda = device.startswith("cuda")
    gc.collect()
    objects = gc.get_objects()
    types = TypeIndex(objects)
    baseline = Baseline(device=device)
    seen: set[StorageKey] = set()
    for node in types.nodes(is_tensor_type).tolist():
        tensor = objects[node]
        found = storage_of(tensor)
        if found is None:
            continue
        if found[0][0] != device and not (on_cuda and found[0][0] == "cpu" and is_pinned_tensor(tensor)):
            continue
        try:
            baseline.tensors.append(weakref.ref(tensor))
        except TypeError:
            continue
        if found[0] not in seen:
            seen.add(found[0])
            baseline.storages += 1
            baseline.bytes += found[1]
    pool_types = cuda_pool_types() if on_cuda else ()
    if pool_types:
        for node in types.nodes(lambda t: issubclass(t, pool_types)).tolist():
            try:
                baseline.pools.append(weakref.ref(objects[node]))
            except TypeError:
                continue
    tensor = None
    del objects
    return baseline
