"""One pass over the Python heap, kept as integer arrays.

objgraph and `gc.get_referrers` answer "who holds X?" by scanning the whole heap once per
question, so thousands of tensors cost thousands of scans. Here the heap is read once
(`gc.get_objects()` plus `gc.get_referents()` of each object) into a CSR graph of object
indices, and every later question (reachability, owners, retained bytes) is array work on it.

Speed and memory come from never making a Python object per edge or per object: referents
of a whole chunk come back in one list, their addresses are read straight out of the list's
item array, and they are mapped to object indices with one sorted search per chunk.
See scripts/bench_audit.py.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np

CHUNK = 1 << 16

# Offset of ob_item in PyListObject: the list header is PyVarObject, then the item pointer.
_OB_ITEM_OFFSET = list.__basicsize__ - 2 * ctypes.sizeof(ctypes.c_ssize_t)


def _ids_by_memory(items: list) -> np.ndarray:
    """Addresses of a list's items, copied from its item array without calling id() per item."""
    n = len(items)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    base = ctypes.c_void_p.from_address(id(items) + _OB_ITEM_OFFSET).value
    if base is None:  # pragma: no cover - a non-empty list always has an item array
        return _ids_by_call(items)
    return np.ctypeslib.as_array((ctypes.c_int64 * n).from_address(base)).copy()


def _object_at(address: int) -> object:
    """The object at `address`, which the caller knows to be alive (a new reference to it)."""
    return ctypes.cast(address, ctypes.py_object).value


def _ids_by_call(items: list) -> np.ndarray:
    return np.fromiter(map(id, items), dtype=np.int64, count=len(items))


def _pick_id_reader() -> Callable[[list], np.ndarray]:
    """Use the fast reader only where it provably matches id() on this interpreter."""
    probe = [object(), [], {}, "x", 10**30]
    try:
        if _ids_by_memory(probe).tolist() == [id(x) for x in probe]:
            return _ids_by_memory
    except (ValueError, OSError):  # pragma: no cover - exotic interpreters
        pass
    return _ids_by_call  # pragma: no cover


ids_of: Callable[[list], np.ndarray] = _pick_id_reader()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep the cyclic collector from running mid-scan.

    Building millions of temporary lists would otherwise trigger full collections, which
    cost more than the scan itself and could free objects we have already indexed.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class Freeze:
    """What the scan did about `gc.freeze()`, for the report and for telling frozen garbage."""

    frozen_objects: int = 0
    unfrozen_ids: np.ndarray | None = None  # sorted addresses of objects that were not frozen

    @property
    def note(self) -> str | None:
        if not self.frozen_objects:
            return None
        return (
            f"gc.freeze() had hidden {self.frozen_objects:,} objects from gc.get_objects(); leakcheck unfroze "
            "them to read them and left them unfrozen (freezing again would also freeze the runner under "
            "audit, so none of its garbage could ever be collected); call gc.freeze() again if you rely on it"
        )

    def frozen_mask(self, objects: list) -> np.ndarray | None:
        """Which of `objects` were frozen before the scan; None when nothing was."""
        if self.unfrozen_ids is None:
            return None
        return ~np.isin(ids_of(objects), self.unfrozen_ids, assume_unique=False)


def reveal_frozen_objects() -> Freeze:
    """Make objects frozen by `gc.freeze()` visible to `gc.get_objects()`.

    vLLM freezes its start-up heap; a scan that skipped the permanent generation would miss
    every module, class and object created before the freeze. The gc module can only freeze
    everything alive, so the freeze is not restored: restoring it would freeze the audited
    runner too, and garbage it leaves later would never be collected (seen on a GPU host
    whose Python froze its start-up objects). Which objects were frozen is remembered, so
    frozen garbage can be reported as such: `gc.collect()` does not free it.
    """
    count = gc.get_freeze_count() if hasattr(gc, "get_freeze_count") else 0
    if not count:
        return Freeze()
    unfrozen = np.sort(ids_of(gc.get_objects()))
    gc.unfreeze()
    return Freeze(count, unfrozen)


class TypeIndex:
    """The type of every object as an address, to select nodes by type without a Python loop."""

    def __init__(self, objects: list):
        self.type_ids = np.empty(0, dtype=np.int64)
        self.types: dict[int, type] = {}
        self.extend(objects)

    def extend(self, objects: list) -> None:
        types = list(map(type, objects))
        type_ids = ids_of(types)
        self.type_ids = np.concatenate([self.type_ids, type_ids])
        # Distinct types by address, not set(types): hashing a class runs its metaclass's
        # __hash__. Each address is turned back into its type (alive: `types` holds it), which
        # spares the stable argsort a first-index search would need (a third of the scan).
        for address in np.unique(type_ids).tolist():
            if address not in self.types:
                self.types[address] = cast(type, _object_at(address))  # the address came from type()
        del types

    def nodes(self, predicate: Callable[[type], bool]) -> np.ndarray:
        """Indices of objects whose type satisfies `predicate` (checked once per distinct type)."""
        wanted = np.array([tid for tid, t in self.types.items() if predicate(t)], dtype=np.int64)
        return np.flatnonzero(np.isin(self.type_ids, wanted))


@dataclass
class HeapGraph:
    """The object graph as arrays: node i is `objects[i]`; edges follow strong references.

    Forward edges (`fwd_indptr`, `fwd_indices`) go from holder to held; reverse edges go from
    held to holder. Duplicate edges (a list holding the same tensor twice) are kept, so
    in-degrees match reference counts.
    """

    objects: list
    addresses: AddressIndex
    fwd_indptr: np.ndarray
    fwd_indices: np.ndarray
    rev_indptr: np.ndarray
    rev_indices: np.ndarray
    types: TypeIndex | None = None

    @property
    def size(self) -> int:
        return len(self.objects)

    @property
    def edges(self) -> int:
        return int(self.fwd_indices.shape[0])

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Node index for each address, -1 where the object is not in the graph."""
        return self.addresses.lookup(ids)

    def parents(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(child, parent) pairs for every reference into `nodes`."""
        return expand(self.rev_indptr, self.rev_indices, nodes)

    def children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(parent, child) pairs for every reference out of `nodes`."""
        return expand(self.fwd_indptr, self.fwd_indices, nodes)

    def in_degree(self, nodes: np.ndarray) -> np.ndarray:
        return (self.rev_indptr[nodes + 1] - self.rev_indptr[nodes]).astype(np.int64)


class AddressIndex:
    """Object address -> node index, for millions of look-ups at a time.

    A sorted search finds each address; most referents are not graph nodes (strings, ints,
    None), so a byte table indexed by the address bits first rules out most misses with one
    memory access instead of a twenty-step binary search. Distinct 16-byte-aligned addresses
    within `16 * size` bytes of each other never share a slot, so false positives are rare.
    """

    def __init__(self, ids: np.ndarray):
        n = ids.shape[0]
        self.order = np.argsort(ids, kind="stable").astype(np.int32 if n < 2**31 else np.int64)
        self.sorted_ids = ids[self.order]
        size = 1 << max(16, int(8 * n).bit_length())
        self.mask = size - 1
        self.maybe = np.zeros(size, dtype=np.bool_)
        self.maybe[(self.sorted_ids >> 4) & self.mask] = True

    def __len__(self) -> int:
        return int(self.sorted_ids.shape[0])

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Node index for each address, -1 where the object is not in the graph."""
        result = np.full(ids.shape, -1, dtype=np.int64)
        if self.sorted_ids.size == 0 or ids.size == 0:
            return result
        candidates = np.flatnonzero(self.maybe[(ids >> 4) & self.mask])
        wanted = ids[candidates]
        pos = np.searchsorted(self.sorted_ids, wanted)
        np.minimum(pos, self.sorted_ids.size - 1, out=pos)
        found = self.sorted_ids[pos] == wanted
        result[candidates[found]] = self.order[pos[found]]
        return result


def expand(indptr: np.ndarray, indices: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (node, neighbour) pairs of a CSR adjacency for a batch of nodes, without a Python loop."""
    nodes = np.asarray(nodes, dtype=np.int64)
    starts = indptr[nodes].astype(np.int64)
    lengths = indptr[nodes + 1].astype(np.int64) - starts
    total = int(lengths.sum())
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
    return np.repeat(nodes, lengths), indices[offsets].astype(np.int64)


def build_graph(
    objects: list,
    extra_references: Sequence[tuple[object, object]] = (),
    types: TypeIndex | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HeapGraph:
    """Index `objects` and every strong reference between them.

    `extra_references` are (holder, held) pairs that `gc.get_referents` does not report but
    that are real ownership, such as a tensor's `.grad`; pairs outside `objects` are dropped.
    """
    n = len(objects)
    addresses = AddressIndex(ids_of(objects))

    counts = np.zeros(n, dtype=np.int64)
    dst_parts: list[np.ndarray] = []
    # One gc.get_referents call per chunk, with a marker between objects: the marker's only
    # referent is `separator`, so its address splits the flat result back into rows. This
    # avoids a Python list per object, which costs more than the traversal itself.
    separator = object()
    marker = (separator,)
    separator_id = id(separator)
    with collector_paused():
        for start in range(0, n, CHUNK):
            chunk = objects[start : start + CHUNK]
            interleaved = [marker] * (2 * len(chunk))
            interleaved[0::2] = chunk
            del chunk
            flat = gc.get_referents(*interleaved)
            del interleaved
            referent_ids = ids_of(flat)
            del flat
            ends = np.flatnonzero(referent_ids == separator_id)
            targets = addresses.lookup(referent_ids)
            hit = targets >= 0
            hits_before = np.zeros(targets.shape[0] + 1, dtype=np.int64)
            np.cumsum(hit, out=hits_before[1:])
            starts = np.empty_like(ends)
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
            counts[start : start + ends.shape[0]] = hits_before[ends] - hits_before[starts]
            dst_parts.append(targets[hit].astype(np.int32 if n < 2**31 else np.int64))
            if progress:
                progress(min(start + CHUNK, n), n)

    indices = np.concatenate(dst_parts) if dst_parts else np.empty(0, dtype=np.int32)
    del dst_parts
    if extra_references:
        holders = addresses.lookup(ids_of([pair[0] for pair in extra_references]))
        held = addresses.lookup(ids_of([pair[1] for pair in extra_references]))
        both = (holders >= 0) & (held >= 0)
        if both.any():
            indices, counts = _add_edges(indices, counts, holders[both], held[both])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    rev_indptr, rev_indices = transpose(indptr, indices, n)
    return HeapGraph(
        objects=objects,
        addresses=addresses,
        fwd_indptr=indptr,
        fwd_indices=indices,
        rev_indptr=rev_indptr,
        rev_indices=rev_indices,
        types=types if types is not None else TypeIndex(objects),
    )


def transpose(indptr: np.ndarray, indices: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The reverse adjacency (held -> holders) of a CSR graph, as CSR.

    Duplicate edges stay (in-degrees are reference counts) and each row's holders come in
    ascending order, so a walk's order does not depend on how the forward rows were laid out.
    The edges are sorted as one int64 key each, (held << 32) | holder: a plain sort of keys is
    five times faster than a stable argsort by target. For 850,000 edges it takes about 20 ms
    against 9 ms for the scipy CSR-to-CSC conversion it replaces, a few percent of the scan.
    """
    rev_indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(indices, minlength=n), out=rev_indptr[1:])
    holders = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    if n >= 2**31:  # pragma: no cover - keys would not fit; a heap of two billion objects
        return rev_indptr, holders[np.argsort(indices, kind="stable")].astype(indices.dtype)
    keys = (indices.astype(np.int64) << 32) | holders
    keys.sort()
    return rev_indptr, (keys & 0xFFFFFFFF).astype(indices.dtype)


def weak_components(count: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For each of `count` nodes, the smallest node index of its weakly connected component.

    Union-find in array form: each round hooks every root to the smallest root across any of
    its edges, then flattens the trees by pointer jumping. Only roots are hooked (always to a
    smaller index, so no loop can form), which merges whole trees at once: a shuffled chain of
    a million links took 14 rounds, where label propagation over 100,000 took minutes.
    """
    parent = np.arange(count, dtype=np.int64)
    while True:
        a, b = parent[src], parent[dst]
        differ = a != b
        if not differ.any():
            return parent
        a, b = a[differ], b[differ]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped


def _add_edges(
    indices: np.ndarray, counts: np.ndarray, extra_src: np.ndarray, extra_dst: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Splice extra (src, dst) edges into CSR rows, keeping rows contiguous."""
    n = counts.shape[0]
    src = np.repeat(np.arange(n), counts)
    all_src = np.concatenate([src, extra_src])
    all_dst = np.concatenate([indices.astype(np.int64), extra_dst])
    order = np.argsort(all_src, kind="stable")
    new_counts = np.bincount(all_src, minlength=n)
    return all_dst[order].astype(indices.dtype), new_counts
