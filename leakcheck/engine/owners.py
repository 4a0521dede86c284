"""Who pins each surviving storage, what each holder alone would free, and which must all go.

The question "what must shutdown() release?" has an exact answer on the heap graph. Cut the
graph at root containers (the runner, module and class dicts, live frames): every path from
a root to a tensor then starts with one named handle (`runner.model_state`). The holders of
a storage are the handles that reach it without passing through another root. Releasing all
of them frees it; keeping any one keeps it alive. So:

- `reachable_bytes` of a holder: storages it reaches;
- `retained_bytes`: storages it is the only holder of (what a dominator tree over the
  subgraph that leads to surviving tensors gives for the handle nodes);
- a `SharedHold`: storages with several holders, which all must go before a byte is freed.

All of it is one backward pass from the tensors plus one forward pass per relevant handle,
over arrays restricted to the (small) part of the heap that leads to a leaked tensor.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from leakcheck.engine.heap import HeapGraph, expand, ids_of
from leakcheck.engine.paths import describe_chain, indexed_containers, join
from leakcheck.engine.roots import Handle, RootIndex
from leakcheck.report.model import CLOSURE, CYCLE, FREED_BY_COLLECTOR, FROZEN_GARBAGE, UNATTRIBUTED, UNTRACKED

EXAMPLES_PER_OWNER = 3


@dataclass
class Leaked:
    """Surviving tensors on the audited device, grouped by storage.

    `nodes[i]` is a tensor node whose storage is `storage[i]`; storages are numbered densely.
    """

    nodes: np.ndarray
    storage: np.ndarray
    nbytes: np.ndarray  # per storage

    @property
    def count(self) -> int:
        return int(self.nbytes.shape[0])


@dataclass
class Holder:
    """A handle (or pseudo-handle) and the storages it reaches."""

    handle: Handle
    storages: np.ndarray
    tensors: int
    examples: list[tuple[int, str, bool]] = field(default_factory=list)  # (storage, path, evaluable)
    notes: list[str] = field(default_factory=list)


@dataclass
class Ownership:
    holders: list[Holder]
    owner_sets: list[list[int]]  # per storage: indices into holders
    example: list[tuple[str, bool] | None]  # per storage: a path to one of its tensors


def reverse_reach(graph: HeapGraph, seeds: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nodes that reach `seeds` without passing through a stop node, and the stop nodes met."""
    inside = np.zeros(graph.size, dtype=np.bool_)
    inside[seeds] = True
    frontier = np.unique(seeds)
    met: list[np.ndarray] = []
    while frontier.size:
        _, parents = graph.parents(frontier)
        parents = np.unique(parents)
        at_stop = stop[parents]
        met.append(parents[at_stop])
        parents = parents[~at_stop & ~inside[parents]]
        inside[parents] = True
        frontier = parents
    stops = np.unique(np.concatenate(met)) if met else np.empty(0, dtype=np.int64)
    return inside, stops


@dataclass
class _Subgraph:
    """The part of the heap that leads to a leaked tensor, renumbered 0..m-1."""

    nodes: np.ndarray  # global index of each local node
    local: np.ndarray  # global -> local, -1 outside
    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def of(cls, graph: HeapGraph, inside: np.ndarray) -> _Subgraph:
        nodes = np.flatnonzero(inside)
        local = np.full(graph.size, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        src, dst = graph.children(nodes)
        keep = local[dst] >= 0
        rows, cols = local[src[keep]], local[dst[keep]]
        indptr = np.zeros(nodes.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=nodes.size), out=indptr[1:])
        return cls(nodes=nodes, local=local, indptr=indptr, indices=cols)

    def bfs(self, sources: np.ndarray) -> np.ndarray:
        """Parent of each local node on a shortest path from `sources` (-1 source, -2 unreached)."""
        parent = np.full(self.nodes.size, -2, dtype=np.int64)
        parent[sources] = -1
        frontier = np.unique(sources)
        while frontier.size:
            src, dst = expand(self.indptr, self.indices, frontier)
            fresh = parent[dst] == -2
            src, dst = src[fresh], dst[fresh]
            dst, first = np.unique(dst, return_index=True)
            parent[dst] = src[first]
            frontier = dst
        return parent

    def chain(self, parent: np.ndarray, end: int) -> list[int]:
        path = [end]
        while parent[path[-1]] >= 0:
            path.append(int(parent[path[-1]]))
        path.reverse()
        return [int(self.nodes[i]) for i in path]


def find_owners(
    graph: HeapGraph,
    roots: RootIndex,
    leaked: Leaked,
    frozen: np.ndarray | None = None,
    describe_limit: int = 20000,
) -> Ownership:
    """Attribute every leaked storage to the handles that pin it.

    frozen: per node, whether gc.freeze() had frozen it; frozen garbage is never collected.
    """
    objects = graph.objects
    inside, stops = reverse_reach(graph, leaked.nodes, roots.stop)
    sub = _Subgraph.of(graph, inside)
    tensor_local = sub.local[leaked.nodes]
    # Before any handle exists: handles hold their targets, which would add references.
    unexplained = unexplained_references(graph, sub.nodes)
    untracked = _untracked_by_storage(leaked, unexplained[tensor_local])
    garbage = _garbage(graph, sub, roots.stop, unexplained)

    holders: list[Holder] = []
    owner_sets: list[list[int]] = [[] for _ in range(leaked.count)]
    example: list[tuple[str, bool] | None] = [None] * leaked.count
    described = 0

    def visit(handle: Handle, sources: np.ndarray, prefix_evaluable: bool = True) -> None:
        nonlocal described
        parent = sub.bfs(sources)
        reached = parent[tensor_local] != -2
        if not reached.any():
            return
        storages = np.unique(leaked.storage[reached])
        holder = Holder(handle=handle, storages=storages, tensors=int(reached.sum()))
        index = len(holders)
        holders.append(holder)
        # One tensor per storage, the first met, to name it.
        first_tensor: dict[int, int] = {}
        for position in np.flatnonzero(reached).tolist():
            first_tensor.setdefault(int(leaked.storage[position]), position)
        by_size = sorted(first_tensor, key=lambda s: -int(leaked.nbytes[s]))
        for rank, storage in enumerate(by_size):
            owner_sets[storage].append(index)
            wants_example = rank < EXAMPLES_PER_OWNER
            needs_name = example[storage] is None and described < describe_limit
            if not (wants_example or needs_name):
                continue
            chain = [objects[i] for i in sub.chain(parent, int(tensor_local[first_tensor[storage]]))]
            text, evaluable, notes = join(handle.path, describe_chain(chain), prefix_evaluable and handle.evaluable)
            described += 1
            if wants_example:
                holder.examples.append((storage, text, evaluable))
                holder.notes.extend(n for n in notes if n not in holder.notes)
            if needs_name:
                example[storage] = (text, evaluable)

    # Named handles of the root containers the backward pass met.
    containers = {id(c): c for node in stops.tolist() if (c := roots.containers.get(node)) is not None}
    handles = [h for c in containers.values() for h in c.handles()]
    targets = graph.lookup(ids_of([h.target for h in handles])) if handles else np.empty(0, dtype=np.int64)
    with indexed_containers():
        for handle, target in zip(handles, targets.tolist()):
            if target >= 0 and inside[target]:
                visit(handle, np.array([sub.local[target]]))

        for members in _garbage_cycles(sub, garbage):
            kinds = sorted({type(objects[m]).__name__ for m in members.tolist()})
            label = f"<garbage cycle of {members.size} objects: {', '.join(kinds[:4])}>"
            is_frozen = frozen is not None and bool(frozen[members].any())
            visit(_cycle_handle(label, is_frozen), sub.local[members], prefix_evaluable=False)
    del unexplained

    _untracked(graph, leaked, untracked, holders, owner_sets, example)
    _unattributed(graph, leaked, holders, owner_sets, example)
    for holder in holders:
        # A holder that pins tensors only through a function's cells is a closure.
        closure = any(note.startswith("closure variable") for note in holder.notes)
        if (
            closure
            and holder.handle.kind not in (CYCLE, FROZEN_GARBAGE)
            and all(".__closure__[" in path for _, path, _ in holder.examples)
        ):
            holder.handle = replace(holder.handle, kind=CLOSURE, detail="; ".join(holder.notes))
    return Ownership(holders=holders, owner_sets=owner_sets, example=example)


def _cycle_handle(label: str, frozen: bool) -> Handle:
    if frozen:
        return Handle(
            label,
            FROZEN_GARBAGE,
            None,
            evaluable=False,
            detail="frozen by gc.freeze(): gc.collect() never frees it",
            fix="# break the reference cycle before gc.freeze(), or gc.unfreeze(); gc.collect()",
        )
    return Handle(
        label,
        CYCLE,
        None,
        evaluable=False,
        detail="freed by gc.collect()",
        fix="gc.collect()  # or break the reference cycle",
    )


def unexplained_references(graph: HeapGraph, nodes: np.ndarray) -> np.ndarray:
    """References to each node that no graph edge explains: from C/C++, untracked objects or
    executing frames.

    `sys.getrefcount` counts its argument and our `objects` list; every other reference
    should be an edge of the graph.
    """
    objects = graph.objects
    refcounts = np.fromiter(
        (sys.getrefcount(objects[node]) for node in nodes.tolist()), dtype=np.int64, count=nodes.shape[0]
    )
    return refcounts - 2 - graph.in_degree(nodes)


def _untracked_by_storage(leaked: Leaked, unexplained: np.ndarray) -> dict[int, list[int]]:
    by_storage: dict[int, list[int]] = defaultdict(list)
    for position in np.flatnonzero(unexplained > 0).tolist():
        by_storage[int(leaked.storage[position])].append(int(leaked.nodes[position]))
    return by_storage


def _garbage(graph: HeapGraph, sub: _Subgraph, stop: np.ndarray, unexplained: np.ndarray) -> np.ndarray:
    """Local nodes only the cyclic collector would free, found without running it.

    The collector's own test, on the part of the heap that leads to leaked tensors: an object
    is alive when something outside this subgraph references it (a root or barrier, or a
    reference the graph cannot see) or when a live object does. Whatever is left is garbage.
    Unlike a DEBUG_SAVEALL collection, this runs no finalizers and clears no weak references.
    """
    children, parents = graph.parents(sub.nodes)
    held_from_outside = np.zeros(sub.nodes.size, dtype=np.bool_)
    held_from_outside[sub.local[children[stop[parents]]]] = True
    sources = np.flatnonzero(held_from_outside | (unexplained > 0))
    return sub.bfs(sources) == -2


def _garbage_cycles(sub: _Subgraph, garbage: np.ndarray) -> list[np.ndarray]:
    """Connected groups of garbage in the leak subgraph, as global node indices."""
    members = np.flatnonzero(garbage)
    if members.size == 0:
        return []
    position = np.full(sub.nodes.size, -1, dtype=np.int64)
    position[members] = np.arange(members.size)
    src, dst = expand(sub.indptr, sub.indices, members)
    keep = position[dst] >= 0
    adjacency = sp.coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (position[src[keep]], position[dst[keep]])),
        shape=(members.size, members.size),
    )
    _, labels = connected_components(adjacency, directed=True, connection="weak")
    return [sub.nodes[members[labels == label]] for label in np.unique(labels).tolist()]


def _untracked(
    graph: HeapGraph,
    leaked: Leaked,
    by_storage: dict[int, list[int]],
    holders: list[Holder],
    owner_sets: list[list[int]],
    example: list,
) -> None:
    for storage, nodes in by_storage.items():
        tensor = graph.objects[nodes[0]]
        label = f"<untracked reference to {_tensor_label(tensor)}>"
        path = example[storage][0] if example[storage] else label
        handle = Handle(
            label,
            UNTRACKED,
            None,
            evaluable=False,
            detail=(
                "held outside the Python heap: an autograd graph (an output that requires grad), "
                "torch.compile's caches, a C extension, an atexit callback or a thread-local"
            ),
            fix="torch._dynamo.reset()  # if compiled; else drop outputs that require grad, or the extension's handle",
        )
        holder = Holder(
            handle=handle,
            storages=np.array([storage]),
            tensors=len(nodes),
            examples=[(storage, path, bool(example[storage] and example[storage][1]))],
        )
        owner_sets[storage].append(len(holders))
        holders.append(holder)


def _unattributed(
    graph: HeapGraph, leaked: Leaked, holders: list[Holder], owner_sets: list[list[int]], example: list
) -> None:
    orphan = [s for s in range(leaked.count) if not owner_sets[s]]
    if not orphan:
        return
    first: dict[int, int] = {}
    for position, storage in enumerate(leaked.storage.tolist()):
        first.setdefault(storage, position)
    handle = Handle(
        "<unattributed>",
        UNATTRIBUTED,
        None,
        evaluable=False,
        detail="alive, but reachable from no root leakcheck knows (leakcheck's own frames?)",
    )
    examples = []
    for storage in orphan[:EXAMPLES_PER_OWNER]:
        examples.append((storage, f"<{_tensor_label(graph.objects[int(leaked.nodes[first[storage]])])}>", False))
    for storage in orphan:
        owner_sets[storage].append(len(holders))
        example[storage] = example[storage] or (
            f"<{_tensor_label(graph.objects[int(leaked.nodes[first[storage]])])}>",
            False,
        )
    holders.append(Holder(handle=handle, storages=np.array(orphan), tensors=len(orphan), examples=examples))


def _tensor_label(tensor: object) -> str:
    try:
        shape = "x".join(str(d) for d in tensor.shape)  # type: ignore[attr-defined]
        return f"{type(tensor).__name__}[{shape}] {str(tensor.dtype).replace('torch.', '')}"  # type: ignore[attr-defined]
    except Exception:
        return type(tensor).__name__


def effective_owners(owner_sets: list[list[int]], holders: list[Holder]) -> list[list[int]]:
    """Holders that keep each storage alive after a gc.collect(): garbage counts only when alone."""
    result = []
    for owners in owner_sets:
        live = [o for o in owners if holders[o].handle.kind not in FREED_BY_COLLECTOR]
        result.append(live or owners)
    return result
