"""One pass over the Python heap, kept as integer arrays.

objgraph and `gc.get_referrers` answer "who holds X?" by scanning the whole heap once per
question, so thousands of tensors cost thousands of scans. Here the heap is read once
(`gc.get_objects()` plus `gc.get_referents()` of each object) into a CSR graph of object
indices, and every later question (reachability, owners, retained bytes) is array work on it.

Speed and memory come from never making a Python object per edge: referent lists are
flattened and their addresses read straight out of the list's item array, then mapped to
object indices with one sorted search per chunk. See scripts/bench_audit.py.
"""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain

import numpy as np
import scipy.sparse as sp

CHUNK = 1 << 16

# Offset of ob_item in PyListObject: the list header is PyVarObject, then the item pointer.
_OB_ITEM_OFFSET = list.__basicsize__ - 2 * ctypes.sizeof(ctypes.c_ssize_t)


def _ids_by_memory(items: list) -> np.ndarray:
    """Addresses of a list's items, copied from its item array without calling id() per item."""
    n = len(items)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    base = ctypes.c_void_p.from_address(id(items) + _OB_ITEM_OFFSET).value
    buffer = (ctypes.c_int64 * n).from_address(base)
    return np.frombuffer(buffer, dtype=np.int64, count=n).copy()


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
    """What the scan did about `gc.freeze()`, for the report."""

    frozen_objects: int = 0

    @property
    def note(self) -> str | None:
        if not self.frozen_objects:
            return None
        return (
            f"gc.freeze() had hidden {self.frozen_objects:,} objects from gc.get_objects(); leakcheck "
            "unfroze them for the scan and froze the heap again afterwards"
        )


@contextmanager
def frozen_objects_visible() -> Iterator[Freeze]:
    """Make objects frozen by `gc.freeze()` visible to `gc.get_objects()` for the scan.

    vLLM freezes its start-up heap; a scan that skipped the permanent generation would miss
    every module, class and object created before the freeze. The gc module offers no way to
    freeze a chosen set, so the heap is frozen again as a whole afterwards: objects created
    since the original freeze end up frozen too, which the report says.
    """
    count = gc.get_freeze_count() if hasattr(gc, "get_freeze_count") else 0
    if count:
        gc.unfreeze()
    try:
        yield Freeze(count)
    finally:
        if count:
            gc.freeze()


@dataclass
class HeapGraph:
    """The object graph as arrays: node i is `objects[i]`; edges follow strong references.

    Forward edges (`fwd_indptr`, `fwd_indices`) go from holder to held; reverse edges go from
    held to holder. Duplicate edges (a list holding the same tensor twice) are kept, so
    in-degrees match reference counts.
    """

    objects: list
    sorted_ids: np.ndarray
    order: np.ndarray
    fwd_indptr: np.ndarray
    fwd_indices: np.ndarray
    rev_indptr: np.ndarray
    rev_indices: np.ndarray

    @property
    def size(self) -> int:
        return len(self.objects)

    @property
    def edges(self) -> int:
        return int(self.fwd_indices.shape[0])

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Node index for each address, -1 where the object is not in the graph."""
        return _lookup(self.sorted_ids, self.order, ids)

    def index_of(self, obj: object) -> int:
        return int(self.lookup(np.array([id(obj)], dtype=np.int64))[0])

    def parents(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(child, parent) pairs for every reference into `nodes`."""
        return expand(self.rev_indptr, self.rev_indices, nodes)

    def children(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(parent, child) pairs for every reference out of `nodes`."""
        return expand(self.fwd_indptr, self.fwd_indices, nodes)

    def in_degree(self, nodes: np.ndarray) -> np.ndarray:
        return (self.rev_indptr[nodes + 1] - self.rev_indptr[nodes]).astype(np.int64)


def _lookup(sorted_ids: np.ndarray, order: np.ndarray, ids: np.ndarray) -> np.ndarray:
    if sorted_ids.size == 0:
        return np.full(ids.shape, -1, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    np.minimum(pos, sorted_ids.size - 1, out=pos)
    found = sorted_ids[pos] == ids
    return np.where(found, order[pos], -1)


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
    progress: Callable[[int, int], None] | None = None,
) -> HeapGraph:
    """Index `objects` and every strong reference between them.

    `extra_references` are (holder, held) pairs that `gc.get_referents` does not report but
    that are real ownership, such as a tensor's `.grad`; pairs outside `objects` are dropped.
    """
    n = len(objects)
    ids = ids_of(objects)
    order = np.argsort(ids, kind="stable").astype(np.int32 if n < 2**31 else np.int64)
    sorted_ids = ids[order]
    del ids

    counts = np.zeros(n, dtype=np.int64)
    dst_parts: list[np.ndarray] = []
    get_referents = gc.get_referents
    with collector_paused():
        for start in range(0, n, CHUNK):
            chunk = objects[start : start + CHUNK]
            referents = list(map(get_referents, chunk))
            lengths = np.fromiter(map(len, referents), dtype=np.int64, count=len(chunk))
            flat = list(chain.from_iterable(referents))
            del referents
            targets = _lookup(sorted_ids, order, ids_of(flat))
            del flat
            hit = targets >= 0
            # Per-object count of referents that are graph nodes, to lay out CSR rows.
            owner = np.repeat(np.arange(len(chunk)), lengths)
            counts[start : start + len(chunk)] = np.bincount(owner[hit], minlength=len(chunk))
            dst_parts.append(targets[hit].astype(np.int32 if n < 2**31 else np.int64))
            del chunk
            if progress:
                progress(min(start + CHUNK, n), n)

    indices = np.concatenate(dst_parts) if dst_parts else np.empty(0, dtype=np.int32)
    del dst_parts
    if extra_references:
        holders = _lookup(sorted_ids, order, ids_of([pair[0] for pair in extra_references]))
        held = _lookup(sorted_ids, order, ids_of([pair[1] for pair in extra_references]))
        both = (holders >= 0) & (held >= 0)
        if both.any():
            indices, counts = _add_edges(indices, counts, holders[both], held[both])
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    data = np.ones(indices.shape[0], dtype=np.bool_)
    forward = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    reverse = forward.tocsc()
    return HeapGraph(
        objects=objects,
        sorted_ids=sorted_ids,
        order=order,
        fwd_indptr=forward.indptr,
        fwd_indices=forward.indices,
        rev_indptr=reverse.indptr,
        rev_indices=reverse.indices,
    )


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

