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


def tensor_device(tensor: torch.Tensor) -> str | None:
    try:
        dev = tensor.device
    except Exception:
        return None
    return str(dev)


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
    """Storages alive before the runner was built: they belong to the process, not the runner.

    Weak references, not keys alone: an address freed after baseline and reused by the runner
    is the runner's, so a storage counts as baseline only while a baseline tensor still has it.
    """

    device: str
    tensors: list[weakref.ref] = field(default_factory=list)
    storages: int = 0
    bytes: int = 0

    def live_keys(self) -> set[StorageKey]:
        keys = set()
        for ref in self.tensors:
            tensor = ref()
            if tensor is None:
                continue
            found = storage_of(tensor)
            if found:
                keys.add(found[0])
        return keys


def take_baseline(device: str) -> Baseline:
    """Record the tensors already alive on `device`, before the runner's factory runs.

    Garbage is collected first: a cycle left over from earlier work is nobody's baseline.
    """
    gc.collect()
    objects = gc.get_objects()
    nodes = tensor_nodes(objects)
    baseline = Baseline(device=device)
    seen: set[StorageKey] = set()
    for node in nodes.tolist():
        tensor = objects[node]
        found = storage_of(tensor)
        if found is None or found[0][0] != device:
            continue
        try:
            baseline.tensors.append(weakref.ref(tensor))
        except TypeError:
            continue
        if found[0] not in seen:
            seen.add(found[0])
            baseline.storages += 1
            baseline.bytes += found[1]
    del objects
    return baseline
