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

from leakcheck.engine.heap import HeapGraph, expand, ids_of, weak_components
from leakcheck.engine.dominators import objects_to_release
from leakcheck.engine.liveness import dead_roots
from leakcheck.recognisers import Remedy
from leakcheck.engine.paths import describe_chain, indexed_containers, join
from leakcheck.engine.release import FROZEN, NO_ROOT, UNTRACKED_REFERENCE, Release, collect
from leakcheck.engine.roots import Handle, RootIndex
from leakcheck.engine.safe_read import type_name
from leakcheck.engine.tensors import tensor_label
from leakcheck.engine.walks import Walker
from leakcheck.report.model import CLOSURE, CYCLE, FREED_BY_COLLECTOR, FROZEN_GARBAGE, UNATTRIBUTED, UNTRACKED

EXAMPLES_PER_OWNER = 3
# Pseudo-owners: none of them explains why a C++ reference holds a storage (see `_untracked`).
_PSEUDO_OWNER_KINDS = frozenset({UNTRACKED, UNATTRIBUTED, CYCLE, FROZEN_GARBAGE})


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


@dataclass
class _Subgraph:
    """The part of the heap that leads to a leaked tensor, renumbered 0..m-1."""

    nodes: np.ndarray  # global index of each local node
    local: np.ndarray  # global -> local, -1 outside
    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def of(cls, graph: HeapGraph, inside: np.ndarray) -> _Subgraph:
        nodes = np.sort(inside)
        local = np.full(graph.size, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        src, dst = graph.children(nodes)
        keep = local[dst] >= 0
        rows, cols = local[src[keep]], local[dst[keep]]
        indptr = np.zeros(nodes.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=nodes.size), out=indptr[1:])
        return cls(nodes=nodes, local=local, indptr=indptr, indices=cols)

    @property
    def size(self) -> int:
        return int(self.nodes.size)


@dataclass
class _TensorsByNode:
    """Which leaked entries (tensor, storage) sit on each local node, as CSR: a walk's visited
    nodes give their storages without scanning every leaked tensor per holder."""

    is_tensor: np.ndarray
    indptr: np.ndarray
    positions: np.ndarray

    @classmethod
    def of(cls, tensor_local: np.ndarray, size: int) -> _TensorsByNode:
        counts = np.bincount(tensor_local, minlength=size)
        indptr = np.zeros(size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(is_tensor=counts > 0, indptr=indptr, positions=np.argsort(tensor_local, kind="stable"))

    def reached(self, visited: np.ndarray) -> tuple[int, list[int]]:
        """(how many tensor nodes are among `visited`, their leaked positions in visiting order)."""
        hits = visited[self.is_tensor[visited]]
        if hits.size <= 64:  # most holders: a loop beats numpy's per-call cost
            indptr, positions = self.indptr, self.positions
            found: list[int] = []
            for node in hits.tolist():
                found.extend(positions[indptr[node] : indptr[node + 1]].tolist())
            return int(hits.size), found
        return int(hits.size), expand(self.indptr, self.positions, hits)[1].tolist()


def find_owners(
    graph: HeapGraph,
    roots: RootIndex,
    leaked: Leaked,
    frozen: np.ndarray | None = None,
    describe_limit: int = 20000,
    cpp_states: dict[int, Handle] | None = None,
) -> Ownership:
    """Attribute every leaked storage to the handles that pin it.

    frozen: per node, whether gc.freeze() had frozen it; frozen garbage is never collected.
    cpp_states: per leaked storage, the library's C++ state known to hold it (TorchScript's
        compilation unit for a storage seen as a graph constant): a reference from outside the
        heap to that storage is charged to that state, one holder for all of its storages.
    Cost: one backward walk, then one forward walk per distinct handle target, each touching
    only what that handle reaches (see `walks.Walker`), so holders add work by what they
    reach, not by how many there are.
    """
    objects = graph.objects
    inside, stops, stop = _leads_to_leaks(graph, roots, leaked)
    sub = _Subgraph.of(graph, inside)
    walker = Walker(sub.indptr, sub.indices, sub.size)
    tensor_local = sub.local[leaked.nodes]
    tensors = _TensorsByNode.of(tensor_local, sub.size)
    # Before any handle exists: handles hold their targets, which would add references.
    unexplained = unexplained_references(graph, sub.nodes)
    untracked = _untracked_by_storage(leaked, unexplained[tensor_local])
    garbage = _garbage(graph, sub, walker, stop, unexplained)
    del unexplained

    holders: list[Holder] = []
    owner_sets: list[list[int]] = [[] for _ in range(leaked.count)]
    example: list[tuple[str, bool] | None] = [None] * leaked.count
    described = 0

    storage_of = leaked.storage.tolist()
    nbytes_of = leaked.nbytes.tolist()

    def visit(group: list[Handle], sources: list[int], prefix_evaluable: bool = True) -> None:
        """Walk once from `sources` and make a holder of each handle in `group` (same target)."""
        nonlocal described
        visited, _ = walker.walk(sources)
        count, positions = tensors.reached(visited)
        if not count:
            return
        first: dict[int, int] = {}  # storage -> the first tensor met on it, to name it
        for position in positions:
            first.setdefault(storage_of[position], position)
        by_size = sorted(first, key=lambda s: -nbytes_of[s])
        storages = np.array(sorted(first), dtype=np.int64)
        steps: dict[int, list] = {}  # a storage's chain is the same for every handle of the group

        def steps_to(storage: int) -> list:
            if storage not in steps:
                end = int(tensor_local[first[storage]])
                steps[storage] = describe_chain([objects[sub.nodes[i]] for i in walker.chain(end)])
            return steps[storage]

        for handle in group:
            holder = Holder(handle=handle, storages=storages, tensors=count)
            index = len(holders)
            holders.append(holder)
            for rank, storage in enumerate(by_size):
                owner_sets[storage].append(index)
                wants_example = rank < EXAMPLES_PER_OWNER
                needs_name = example[storage] is None and described < describe_limit
                if not (wants_example or needs_name):
                    continue
                text, evaluable, notes = join(handle.path, steps_to(storage), prefix_evaluable and handle.evaluable)
                described += 1
                if wants_example:
                    holder.examples.append((storage, text, evaluable))
                    holder.notes.extend(n for n in notes if n not in holder.notes)
                if needs_name:
                    example[storage] = (text, evaluable)

    # Named handles of the root containers the backward pass met, grouped by target.
    containers = {id(c): c for node in stops.tolist() if (c := roots.containers.get(node)) is not None}
    handles = [h for c in containers.values() for h in c.handles()]
    found = graph.lookup(ids_of([h.target for h in handles])) if handles else np.empty(0, np.int64)
    targets = np.where(found >= 0, sub.local[found], -1)  # -1: not in the graph, or leads to no leak
    by_target: dict[int, list[Handle]] = {}
    for handle, target in zip(handles, targets.tolist()):
        if target >= 0:
            by_target.setdefault(target, []).append(handle)
    del handles
    with indexed_containers():
        for target, group in by_target.items():
            visit(group, [target])
        for members in _garbage_cycles(sub, garbage):
            kinds = sorted({type_name(type(objects[m])) for m in members.tolist()})
            label = f"<garbage cycle of {members.size} objects: {', '.join(kinds[:4])}>"
            is_frozen = frozen is not None and bool(frozen[members].any())
            visit([_cycle_handle(label, is_frozen)], sub.local[members].tolist(), prefix_evaluable=False)

    _untracked(graph, leaked, untracked, holders, owner_sets, example, cpp_states or {})
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
    # Library registries are paths to the object to release, not holders (engine/dominators.py).
    holders = objects_to_release(holders, owner_sets, graph, sub, walker, tensor_local, leaked.storage, roots)
    return Ownership(holders=holders, owner_sets=owner_sets, example=example)


def one_per_release(ownership: Ownership) -> None:
    """Holders with the same name and the same fix are one holder: torch.compile's state found
    through the heap and the storages its C++ side holds (`cpp_states`, cpp_held) are released by the
    same `torch._dynamo.reset()`, and two rows would split what that one line frees. The first
    (a heap holder comes before the pseudo-holders) keeps its kind and examples."""
    holders, owner_sets = ownership.holders, ownership.owner_sets
    first: dict[tuple[str, str | None], int] = {}
    into: list[int] = []
    kept: list[Holder] = []
    for holder in holders:
        key = (holder.handle.path, holder.handle.fix)
        position = first.get(key)
        if position is None or holder.handle.fix is None:
            first.setdefault(key, len(kept))
            into.append(len(kept))
            kept.append(holder)
            continue
        lead = kept[position]
        kept[position] = replace(
            lead,
            storages=np.union1d(lead.storages, holder.storages),
            tensors=lead.tensors + holder.tensors,
            examples=(lead.examples + holder.examples)[:EXAMPLES_PER_OWNER],
        )
        into.append(position)
    if len(kept) == len(holders):
        return
    for storage, owners in enumerate(owner_sets):
        owner_sets[storage] = sorted({into[o] for o in owners})
    ownership.holders = kept


def _leads_to_leaks(graph: HeapGraph, roots: RootIndex, leaked: Leaked) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(nodes that lead to a leaked tensor without passing a root, the roots met, the stop mask).

    A class or module that is itself garbage (a class made per call, see `liveness.py`) is
    no root: the walk goes on through it, so what it holds is reported as the garbage it is.
    """
    backward = Walker(graph.rev_indptr, graph.rev_indices, graph.size)
    stop = roots.stop
    sources = leaked.nodes.tolist()
    inside, stops = backward.walk(sources, stop=stop)
    for _ in range(8):  # each round can only meet roots further up; real heaps need one or two
        dead = dead_roots(graph, roots, stops)
        if dead.size == 0:
            break
        stop = stop.copy() if stop is roots.stop else stop
        stop[dead] = False
        inside, stops = backward.walk(sources, stop=stop)
    return inside, stops, stop


def _cycle_handle(label: str, frozen: bool) -> Handle:
    if frozen:
        return Handle(
            label,
            FROZEN_GARBAGE,
            None,
            evaluable=False,
            detail="frozen by gc.freeze(): gc.collect() never frees it",
            fix="# break the reference cycle before gc.freeze(), or gc.unfreeze(); gc.collect()",
            release=Release.never(FROZEN),
        )
    return Handle(
        label,
        CYCLE,
        None,
        evaluable=False,
        detail="freed by gc.collect()",
        fix="gc.collect()  # or break the reference cycle",
        release=collect(),
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


def _garbage(graph: HeapGraph, sub: _Subgraph, walker: Walker, stop: np.ndarray, unexplained: np.ndarray) -> np.ndarray:
    """Local nodes only the cyclic collector would free, found without running it.

    The collector's own test, on the part of the heap that leads to leaked tensors: an object
    is alive when something outside this subgraph references it (a root or barrier, or a
    reference the graph cannot see) or when a live object does. Whatever is left is garbage.
    Unlike a DEBUG_SAVEALL collection, this runs no finalizers and clears no weak references.
    """
    children, parents = graph.parents(sub.nodes)
    held_from_outside = np.zeros(sub.size, dtype=np.bool_)
    held_from_outside[sub.local[children[stop[parents]]]] = True
    alive, _ = walker.walk(np.flatnonzero(held_from_outside | (unexplained > 0)).tolist())
    garbage = np.ones(sub.size, dtype=np.bool_)
    garbage[alive] = False
    return garbage


def _garbage_cycles(sub: _Subgraph, garbage: np.ndarray) -> list[np.ndarray]:
    """Connected groups of garbage in the leak subgraph, as global node indices."""
    members = np.flatnonzero(garbage)
    if members.size == 0:
        return []
    position = np.full(sub.size, -1, dtype=np.int64)
    position[members] = np.arange(members.size)
    src, dst = expand(sub.indptr, sub.indices, members)
    keep = position[dst] >= 0
    labels = weak_components(members.size, position[src[keep]], position[dst[keep]])
    # Split by label with one sort, not one mask per group: 10,000 cycles stay linear.
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return [sub.nodes[members[group]] for group in np.split(order, bounds)]


def _untracked(
    graph: HeapGraph,
    leaked: Leaked,
    by_storage: dict[int, list[int]],
    holders: list[Holder],
    owner_sets: list[list[int]],
    example: list,
    cpp_states: dict[int, Handle],
) -> None:
    """A pseudo-owner for each storage a reference outside the Python heap holds, only where no
    named holder explains it; or, for storages a known C++ state holds (`cpp_states`), that
    state, as one holder.

    The heap graph already follows what C++ holds that leakcheck can read (autograd graphs,
    `.grad`, `._base`); what is left is a reference it cannot see. A tensor whose PyObject C++
    keeps (torch does that for every tensor whose TensorImpl is shared with C++: a TorchScript
    module's parameters, a graph's saved tensors) has one such reference even though the named
    holder that owns the C++ object is what frees it: listing the pseudo-owner beside that
    holder made the holder's retained bytes 0. Garbage-cycle holders explain nothing here,
    since charging a C++-held storage to a cycle would call it collectable.
    """
    by_state: dict[int, tuple[Handle, list[int], int]] = {}
    for storage, nodes in by_storage.items():
        if any(holders[owner].handle.kind not in _PSEUDO_OWNER_KINDS for owner in owner_sets[storage]):
            continue
        tensor = graph.objects[nodes[0]]
        label = f"<untracked reference to {tensor_label(tensor)}>"
        path = example[storage][0] if example[storage] else label
        state = cpp_states.get(storage)
        if state is not None:
            _, storages, count = by_state.get(id(state), (state, [], 0))
            by_state[id(state)] = (state, [*storages, storage], count + len(nodes))
            continue
        handle = Handle(
            label,
            UNTRACKED,
            None,
            evaluable=False,
            detail=(
                "held outside the Python heap (C++): a C extension, TorchScript or torch.compile state, "
                "an atexit callback or a thread-local, or an autograd graph leakcheck could not read"
            ),
            fix="# release the C++ owner: the extension's handle, or drop outputs that require grad (keep .detach())",
            release=Release.never(UNTRACKED_REFERENCE),
        )
        holder = Holder(
            handle=handle,
            storages=np.array([storage]),
            tensors=len(nodes),
            examples=[(storage, path, bool(example[storage] and example[storage][1]))],
        )
        owner_sets[storage].append(len(holders))
        holders.append(holder)
    for state, storages, count in by_state.values():
        examples = [(s, f"<{tensor_label(graph.objects[by_storage[s][0]])} held by {state.path}>", False)
                    for s in storages[:EXAMPLES_PER_OWNER]]
        for storage in storages:
            owner_sets[storage].append(len(holders))
        holders.append(Holder(handle=state, storages=np.array(storages), tensors=count, examples=examples))


def remedy_handle(remedy: Remedy) -> Handle:
    """A holder for memory a library's C++ state keeps, named and released as the library says."""
    return Handle(
        remedy.label,
        UNTRACKED,
        None,
        evaluable=False,
        detail=remedy.detail or "held in C++: no Python object points to these storages",
        fix=remedy.fix,
        release=remedy.release,
    )


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
        release=Release.never(NO_ROOT),
    )
    examples = []
    for storage in orphan[:EXAMPLES_PER_OWNER]:
        examples.append((storage, f"<{tensor_label(graph.objects[int(leaked.nodes[first[storage]])])}>", False))
    for storage in orphan:
        owner_sets[storage].append(len(holders))
        example[storage] = example[storage] or (
            f"<{tensor_label(graph.objects[int(leaked.nodes[first[storage]])])}>",
            False,
        )
    holders.append(Holder(handle=handle, storages=np.array(orphan), tensors=len(orphan), examples=examples))


def effective_owners(owner_sets: list[list[int]], holders: list[Holder]) -> list[list[int]]:
    """Holders that keep each storage alive after a gc.collect(): garbage counts only when alone."""
    result = []
    for owners in owner_sets:
        live = [o for o in owners if holders[o].handle.kind not in FREED_BY_COLLECTOR]
        result.append(live or owners)
    return result
