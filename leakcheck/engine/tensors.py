"""Tensors on the audited device, deduplicated by the storage that really holds the bytes.

Views, tied weights and `.detach()` copies share one storage; counting tensors would count
those bytes several times. Everything here is keyed by storage.

A tensor is read without running its subclass's Python (see torch_internals), and every
tensor yields what it owns: its storage, a sparse tensor's index and value storages, an
estimate for opaque layouts, nothing for wrappers and meta tensors. A tensor whose storage
cannot be read is reported as unknown bytes with the reason, never skipped: skipping it is
how a refusing subclass used to turn a leak into a pass.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from leakcheck.engine import torch_internals as ti
from leakcheck.engine.heap import TypeIndex, ids_of
from leakcheck.engine.safe_read import error_text, is_subtype, type_facts_cached, type_name

StorageKey = tuple  # (device, data pointer); (device, "tensor", id) for bytes read off a tensor

# Sparse layouts: the methods that return their component tensors, each with its own storage.
SPARSE_COMPONENTS = {
    torch.sparse_coo: ("_indices", "_values"),
    torch.sparse_csr: ("crow_indices", "col_indices", "values"),
    torch.sparse_csc: ("ccol_indices", "row_indices", "values"),
    torch.sparse_bsr: ("crow_indices", "col_indices", "values"),
    torch.sparse_bsc: ("ccol_indices", "row_indices", "values"),
}


@dataclass(frozen=True)
class StorageRead:
    """One block of memory a tensor owns, as far as it could be read.

    `key` identifies the block across tensors (two views give one key). `device` is None
    when even the device could not be read: such bytes count on every audited device.
    `unknown`: the storage itself could not be read; `nbytes` is then numel x element size
    where those could be read, else 0, and `note` says why.
    """

    key: tuple
    nbytes: int
    layout: str = "strided"
    note: str | None = None
    unknown: bool = False
    device: str | None = None
    address: int = 0
    dtype: str = ""
    shape: tuple[int, ...] = ()
    numel: int = 0
    pinned: bool = False


def normalize_device(device: str | torch.device) -> str:
    """'cuda' means the current CUDA device; reports always name the index."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(dev)


def _dtype_name(dtype: object) -> str:
    return str(dtype).replace("torch.", "") if type(dtype) is torch.dtype else "?"


def _itemsize(dtype: object) -> int:
    if type(dtype) is not torch.dtype:
        return 0
    size = getattr(dtype, "itemsize", None)  # torch.dtype is torch's own C type
    if size is None:  # pragma: no cover - torch < 2.1
        size = torch.empty(0, dtype=dtype).element_size()
    return int(size)


@contextmanager
def tensor_reads() -> Iterator[None]:
    """Subclass dispatch off and torch's warnings (deprecated storage APIs, beta layouts) quiet,
    entered once for a whole loop of `storages_of` calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ti.no_user_dispatch():
            yield


def storages_of(tensor: object, check_pinned: bool = False) -> list[StorageRead]:
    """Every block of memory `tensor` owns, read with subclass dispatch off (call it inside
    `tensor_reads()`, entered once for a whole loop).

    check_pinned: also ask whether host storages are pinned (only CUDA audits care).
    """
    try:
        return _read(tensor, check_pinned)
    except Exception as error:
        return [_estimate(tensor, "?", f"its storage could not be read ({error_text(error)})", unknown=True)]


def _read(tensor: object, check_pinned: bool) -> list[StorageRead]:
    if ti.has_python_dispatch(tensor):
        return _read_python_subclass(tensor, check_pinned)
    device = ti.device(tensor)
    if device.type == "meta":
        return []
    layout = ti.layout(tensor)
    if type(layout) is not torch.layout:
        return [_estimate(tensor, "?", "its layout could not be read", unknown=True)]
    if layout is torch.strided:
        if ti.is_nested(tensor):
            return _strided(tensor, "nested", check_pinned, note="nested tensor: its buffer", own_shape=False)
        return _strided(tensor, "strided", check_pinned)
    layout_name = str(layout).replace("torch.", "")
    if layout in SPARSE_COMPONENTS:
        reads: list[StorageRead] = []
        for name in SPARSE_COMPONENTS[layout]:
            note = f"{name.strip('_')} of a {layout_name} tensor"
            reads.extend(_strided(ti.component(name, tensor), layout_name, check_pinned, note, owner=(tensor, name)))
        return reads
    if layout in ti.OPAQUE_LAYOUTS:
        note = f"opaque {ti.OPAQUE_LAYOUTS[layout]} tensor: bytes estimated as numel x element size"
        return [_estimate(tensor, layout_name, note, unknown=False)]
    return [_estimate(tensor, layout_name, f"layout {layout_name} has no storage leakcheck can read", unknown=True)]


def _strided(
    tensor: object,
    layout: str,
    check_pinned: bool,
    note: str | None = None,
    own_shape: bool = True,
    owner: tuple[object, str] | None = None,
) -> list[StorageRead]:
    """A strided tensor's storage. owner: for a sparse tensor's component (a temporary
    tensor), the sparse tensor and the component's name, to key an estimate by."""
    storage = ti.untyped_storage(tensor)
    nbytes = int(storage.nbytes())
    if nbytes == 0:
        return []  # an empty tensor holds no memory
    device = str(storage.device)
    if device.startswith("meta"):
        return []  # FakeTensors (torch.compile's tracing) hold a meta storage: no memory, no pointer
    pointer = int(storage.data_ptr())
    if pointer == 0:
        missing = f"a {nbytes}-byte storage with no data pointer"
        return [_estimate(tensor, layout, missing, unknown=True, nbytes=nbytes, owner=owner)]
    dtype = ti.dtype(tensor)
    if own_shape:
        shape, count = ti.shape(tensor), ti.numel(tensor)
    else:
        count = ti.numel(tensor)
        shape = (count,)
    pinned = check_pinned and device == "cpu" and ti.is_pinned(tensor)
    return [
        StorageRead(
            key=(device, pointer),
            nbytes=nbytes,
            layout=layout,
            note=note,
            device=device,
            address=pointer,
            dtype=_dtype_name(dtype),
            shape=shape,
            numel=count,
            pinned=pinned,
        )
    ]


def _read_python_subclass(tensor: object, check_pinned: bool) -> list[StorageRead]:
    """A `__torch_dispatch__` subclass: only its storage is read (its metadata is its code's).

    A wrapper subclass (`_make_wrapper_subclass`) has an "invalid python storage" and owns
    no bytes itself: the tensors it wraps are on the heap and are found on their own.
    """
    storage = ti.untyped_storage(tensor)
    if str(storage.device).startswith("meta"):
        return []  # a FakeTensor or FunctionalTensor of torch.compile's tracing: no memory
    try:
        pointer = int(storage.data_ptr())
    except RuntimeError as error:
        if "invalid python storage" in error_text(error):
            return []
        raise
    nbytes = int(storage.nbytes())
    device = str(storage.device)
    if nbytes == 0 or device.startswith("meta"):
        return []
    if pointer == 0:
        note = f"a {nbytes}-byte storage with no data pointer"
        return [_estimate(tensor, "strided", note, unknown=True, nbytes=nbytes)]
    dtype = ti.dtype(tensor)
    itemsize = _itemsize(dtype) or 1
    return [
        StorageRead(
            key=(device, pointer),
            nbytes=nbytes,
            note=f"{type_name(type(tensor))} runs __torch_dispatch__: shape not read, storage size shown",
            device=device,
            address=pointer,
            dtype=_dtype_name(dtype),
            shape=(nbytes // itemsize,),
            numel=nbytes // itemsize,
            pinned=check_pinned and device == "cpu" and ti.storage_is_pinned(storage),
        )
    ]


def _estimate(
    tensor: object,
    layout: str,
    note: str,
    unknown: bool,
    nbytes: int | None = None,
    owner: tuple[object, str] | None = None,
) -> StorageRead:
    """Bytes a tensor owns without a readable storage: numel x element size where readable.

    Keyed by the identity of the tensor on the heap (and the component's name, for a part of
    a sparse tensor), which cannot collide with a data pointer: the tensor's Python object
    and any storage's bytes are different live allocations.
    """
    device: str | None = None
    dtype: object = None
    count = 0
    python_dispatch = True
    try:
        python_dispatch = ti.has_python_dispatch(tensor)
        dtype = ti.dtype(tensor)
        if not python_dispatch:
            device = str(ti.device(tensor))
            count = ti.numel(tensor)
    except Exception:
        pass
    if nbytes is None:
        nbytes = count * _itemsize(dtype)
    if device is None:
        note += "; device unknown, counted on the audited device"
    return StorageRead(
        key=(device or "?", "tensor", id(tensor)) if owner is None else (device or "?", owner[1], id(owner[0])),
        nbytes=nbytes,
        layout=layout,
        note=note,
        unknown=unknown,
        device=device,
        dtype=_dtype_name(dtype),
        shape=(count,) if count else (),
        numel=count,
    )


def tensor_label(tensor: object) -> str:
    """`Tensor[1033] float32`, read without the subclass's code; the type name alone if unreadable."""
    name = type_name(type(tensor))
    with tensor_reads():
        try:
            if ti.has_python_dispatch(tensor):
                return name
            shape = "x".join(str(int(d)) for d in ti.shape(tensor))
            return f"{name}[{shape}] {_dtype_name(ti.dtype(tensor))}"
        except Exception:
            return name


def is_tensor_type(cls: type) -> bool:
    return is_subtype(cls, torch.Tensor)


def tensor_nodes(objects: list, types: TypeIndex | None = None) -> np.ndarray:
    """Indices of every torch.Tensor (and subclass) among `objects`."""
    return (types or TypeIndex(objects)).nodes(is_tensor_type)


def hidden_edges(objects: list, nodes: np.ndarray) -> list[tuple[object, object]]:
    """Ownership that lives in C++ autograd metadata, as (holder, held) node pairs.

    A tensor's `.grad` and a view's `._base` are not gc referents, yet a `.grad` pins as many
    bytes as its parameter and a view keeps its base's PyObject alive (torch hands the base
    one reference from C++, which would otherwise look like an untracked holder). Nor is the
    autograd graph a tensor that requires grad owns: its `grad_fn` node, the nodes after it,
    the tensors each saved for backward and the leaves its `AccumulateGrad` nodes hold. A kept
    loss tensor pins the parameters and activations of its graph, so each of those is an edge
    here, and the Python holder of the loss is charged with them.

    Objects met this way that were not on the heap yet (a tensor or node that had no Python
    object, a saved-tensors hook) are created and appended to `objects`: callers pick the
    tensors among them by type. The walk is iterative with a visited set (a 10,000-step
    recurrent graph is a long chain), reads through C++ getters with dispatch off, and skips
    whatever it cannot read.
    """
    met: dict[int, object] = {}  # id -> object, in the order met: the heap's tensors first
    tensors = [objects[node] for node in nodes.tolist()]
    for tensor in tensors:
        met[id(tensor)] = tensor
    on_heap = len(met)
    graph_nodes: list[object] = []
    edges: list[tuple[object, object]] = []

    def reach(holder: object, held: object, is_node: bool) -> None:
        edges.append((holder, held))
        if id(held) in met:
            return
        met[id(held)] = held
        if is_node:
            graph_nodes.append(held)
        elif is_tensor_type(type(held)):
            tensors.append(held)

    with tensor_reads(), type_facts_cached():
        read_tensors = read_nodes = 0
        while read_tensors < len(tensors) or read_nodes < len(graph_nodes):
            while read_tensors < len(tensors):
                tensor = tensors[read_tensors]
                read_tensors += 1
                for getter in (ti.grad, ti.base, ti.grad_fn):
                    try:
                        held = getter(tensor)
                    except Exception:
                        continue
                    if held is not None:
                        reach(tensor, held, getter is ti.grad_fn)
            while read_nodes < len(graph_nodes):
                node = graph_nodes[read_nodes]
                read_nodes += 1
                for reference in ti.autograd_references(node):
                    reach(node, reference.held, reference.is_node)
    _append_missing(objects, list(met.values())[on_heap:])
    return edges


def _append_missing(objects: list, candidates: list) -> None:
    """Append the candidates that are not already among `objects` (a node or hook someone
    else holds is on the heap already; one listed twice would double its references)."""
    if not candidates:
        return
    present = np.isin(ids_of(candidates), ids_of(objects)).tolist()
    objects.extend(obj for obj, found in zip(candidates, present) if not found)


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
    # Process groups torch's registry held at baseline (leakcheck's own default group, when
    # it joined one for `--nproc`): the process's, not the runner's.
    process_groups: list[weakref.ref] = field(default_factory=list)
    storages: int = 0
    bytes: int = 0

    def live_keys(self) -> set[tuple]:
        keys: set[tuple] = set()
        with tensor_reads():
            for ref in self.tensors:
                tensor = ref()
                if tensor is not None:
                    keys.update(read.key for read in storages_of(tensor))
        for ref in self.pools:
            holder = ref()
            pool = ti.pool_id(holder) if holder is not None else None
            if pool is not None:
                keys.add(("pool", pool))
        for ref in self.process_groups:
            group = ref()
            if group is not None:
                keys.add(process_group_key(group))
        return keys


def process_group_key(group: object) -> tuple:
    """An inventory key for a process group: its identity, only ever compared while a strong or
    weak reference keeps the group alive (so the address cannot have been reused)."""
    return ("process_group", id(group))


def _belongs(read: StorageRead, device: str, on_cuda: bool) -> bool:
    """On the audited device, pinned host memory on a CUDA audit, or on a device unknown."""
    return read.device is None or read.device == device or (on_cuda and read.device == "cpu" and read.pinned)


def take_baseline(device: str) -> Baseline:
    """Record the tensors (and, on CUDA, pinned host tensors and pools) already alive.

    Garbage is collected first: a cycle left over from earlier work is nobody's baseline.
    """
    device = normalize_device(device)
    on_cuda = device.startswith("cuda")
    gc.collect()
    objects = gc.get_objects()
    types = TypeIndex(objects)
    baseline = Baseline(device=device)
    seen: set[tuple] = set()
    with tensor_reads():
        for node in types.nodes(is_tensor_type).tolist():
            tensor = objects[node]
            reads = [r for r in storages_of(tensor, check_pinned=on_cuda) if _belongs(r, device, on_cuda)]
            if not reads:
                continue
            try:
                baseline.tensors.append(weakref.ref(tensor))
            except TypeError:
                continue
            for read in reads:
                if read.key not in seen:
                    seen.add(read.key)
                    baseline.storages += 1
                    baseline.bytes += read.nbytes
    pool_types = ti.cuda_pool_types() if on_cuda else ()
    if pool_types:
        for node in types.nodes(lambda t: any(is_subtype(t, p) for p in pool_types)).tolist():
            try:
                baseline.pools.append(weakref.ref(objects[node]))
            except TypeError:
                continue
    for group in ti.live_process_groups():
        try:
            baseline.process_groups.append(weakref.ref(group))
        except TypeError:
            continue
    group = None
    tensor = None
    del objects
    return baseline
