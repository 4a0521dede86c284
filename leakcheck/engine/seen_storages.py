"""Weak references to every storage the runner made, so bytes no Python object points to still count.

The heap audit finds memory through Python tensors. Memory C++ holds after the last Python
tensor of it died is invisible there: weights that `torch.jit.freeze` inlined into
TorchScript's process-wide compilation unit, a graph constant of a traced function. So the
lifecycle takes a snapshot after `loaded` and after `warmed`: a weak reference (torch's
`StorageWeakRef`, which watches the storage, not a tensor) to every storage then alive on
the audited device and not baseline. At audit time, a watched storage that is still alive but
that no Python tensor reaches is a leaked storage of kind `cpp_held` (see inventory.py).

A snapshot keeps nothing alive: weak references only, and the tensors it reads are let go
before it returns. Reading a TorchScript graph's tensor constants gives each a Python object
that torch keeps for as long as the graph holds the tensor; those objects are leakcheck's own
doing, so the audit leaves them out (`made_by_leakcheck`) and their bytes stay `cpp_held`.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from leakcheck.engine import torch_internals as ti
from leakcheck.engine.heap import TypeIndex, collector_paused
from leakcheck.engine.safe_read import MISSING, instance_dict, is_subtype, str_entry
from leakcheck.engine.tensors import (
    SPARSE_COMPONENTS,
    Baseline,
    StorageKey,
    hidden_edges,
    normalize_device,
    tensor_nodes,
    tensor_reads,
)

_RECURSIVE_SCRIPT_MODULE = getattr(getattr(torch, "jit", None), "RecursiveScriptModule", None)

# id -> weak reference, for tensor objects that exist only because a snapshot read a graph
# constant. Process-wide: the object outlives the snapshot (torch keeps it with the graph).
_MADE: dict[int, weakref.ref] = {}


@dataclass(frozen=True)
class HeldStorage:
    """A watched storage still alive at audit time, as read back through its weak reference."""

    key: StorageKey  # (device, data pointer), as `tensors.StorageRead.key`
    device: str
    address: int
    nbytes: int
    ref: object  # the StorageWeakRef: `--prove` can ask it whether the bytes died


@dataclass
class SeenStorages:
    """Storages seen on `device` from `loaded` on, one weak reference per storage key.

    A key whose storage died and whose address a new storage took is watched anew: the key
    names an address, the reference names one storage.
    """

    device: str
    baseline: Baseline | None = None  # its storages are the process's, never watched
    refs: dict[StorageKey, object] = field(default_factory=dict)
    snapshots: int = 0
    failures: list[str] = field(default_factory=list)  # snapshots that could not be taken, and why
    # Storages read as tensor constants of a TorchScript graph: when one survives with no
    # named holder, TorchScript's compilation unit is the C++ state that keeps it.
    script_constants: set[StorageKey] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.refs)

    def record(self, storage: torch.UntypedStorage, exclude: set[StorageKey], constant: bool = False) -> None:
        """Watch `storage` if it is on the audited device, holds bytes, and is not baseline;
        `constant`: it was read as a TorchScript graph constant."""
        try:
            device = str(storage.device)
            pointer = int(storage.data_ptr())
            if device != self.device or pointer == 0 or int(storage.nbytes()) == 0:
                return
        except Exception:
            return
        key = (device, pointer)
        if key in exclude:
            return
        if constant:
            self.script_constants.add(key)
        known = self.refs.get(key)
        if known is not None and not known.expired():  # type: ignore[attr-defined]
            return
        ref = ti.weak_ref_to(storage)
        if ref is not None:
            self.refs[key] = ref

    def alive(self) -> list[HeldStorage]:
        """Watched storages something still holds, read back one at a time and let go."""
        found = []
        for key, ref in self.refs.items():
            storage = ti.storage_behind(ref)
            if storage is None:
                continue
            try:
                held = HeldStorage(
                    key=(str(storage.device), int(storage.data_ptr())),
                    device=str(storage.device),
                    address=int(storage.data_ptr()),
                    nbytes=int(storage.nbytes()),
                    ref=ref,
                )
            except Exception:
                continue
            finally:
                del storage
            if held.key == key and held.nbytes:  # a storage resized to nothing holds nothing
                found.append(held)
        return found


def take_snapshot(seen: SeenStorages) -> SeenStorages:
    """Add to `seen` every storage alive now on its device: through every tensor on the heap,
    what autograd metadata reaches (`tensors.hidden_edges`), and TorchScript graph constants.

    Cost: one gc.get_objects() and one pass over the tensors. Returns `seen`. It never
    raises: a snapshot that fails is recorded in `seen.failures` (the audit notes it), since
    the run's other measurements matter more than this one.
    """
    try:
        _snapshot(seen)
    except Exception as error:  # noqa: BLE001 - a runner's object may fail any read
        seen.failures.append(f"{type(error).__name__}: {error}"[:200])
    return seen


def _snapshot(seen: SeenStorages) -> None:
    exclude = seen.baseline.live_keys() if seen.baseline is not None else set()
    with collector_paused():
        objects = gc.get_objects()
        types = TypeIndex(objects)
        nodes = tensor_nodes(objects, types)
        on_heap = {id(objects[node]) for node in nodes.tolist()}
        known = len(objects)
        del_edges = hidden_edges(objects, nodes)
        del del_edges  # its pairs hold tensors: only the tensors themselves are wanted
        tensors = [objects[node] for node in nodes.tolist()] + objects[known:]
        scripts = [objects[node] for node in types.nodes(_is_script_holder).tolist()]
        del objects, types, nodes
        constants: list[object] = []
        for holder in scripts:
            found = ti.graph_tensor_constants(_script_object(holder))
            _remember_made(c for c in found if id(c) not in on_heap)
            constants.extend(found)
        del scripts
        with tensor_reads():
            for is_constant, group in ((False, tensors), (True, constants)):
                for tensor in group:
                    for storage in _storages(tensor):
                        seen.record(storage, exclude, constant=is_constant)
        del tensors, constants
    seen.snapshots += 1


def new_seen(device: str, baseline: Baseline | None = None) -> SeenStorages:
    """An empty watch for a runner built after `baseline` was taken."""
    return SeenStorages(device=normalize_device(device), baseline=baseline)


def made_by_leakcheck(objects: list, nodes: Iterable[int]) -> set[int]:
    """Which of `nodes` are tensor objects only a snapshot's graph reading created."""
    if not _MADE:
        return set()
    return {node for node in nodes if id(objects[node]) in _MADE and _MADE[id(objects[node])]() is objects[node]}


def _remember_made(tensors: Iterable[object]) -> None:
    for tensor in tensors:
        key = id(tensor)
        try:
            _MADE[key] = weakref.ref(tensor, lambda _ref, key=key: _MADE.pop(key, None))  # type: ignore[misc]
        except TypeError:
            continue


def _is_script_holder(cls: type) -> bool:
    """TorchScript's C++ objects, and the Python modules that wrap them (the C++ module
    object itself is not tracked by gc, so it is found through its wrapper)."""
    if ti.is_script_type(cls):
        return True
    return _RECURSIVE_SCRIPT_MODULE is not None and is_subtype(cls, _RECURSIVE_SCRIPT_MODULE)


def _script_object(holder: object) -> object:
    """The C++ object behind a RecursiveScriptModule (its `_c`, read from its own dict)."""
    if ti.is_script_type(type(holder)):
        return holder
    namespace = instance_dict(holder)
    found = str_entry(namespace, "_c") if namespace is not None else MISSING
    return None if found is MISSING else found


def _storages(tensor: object) -> list[torch.UntypedStorage]:
    """The storages a tensor keeps alive (a sparse tensor's parts each have one); none for a
    layout with no readable storage (MKLDNN), a wrapper subclass, or an unreadable tensor."""
    try:
        if ti.has_python_dispatch(tensor):
            return [ti.untyped_storage(tensor)]
        layout = ti.layout(tensor)
        if layout is torch.strided:
            return [ti.untyped_storage(tensor)]
        parts = SPARSE_COMPONENTS.get(layout, ())  # type: ignore[call-overload]
        return [ti.untyped_storage(ti.component(name, tensor)) for name in parts]
    except Exception:
        return []
