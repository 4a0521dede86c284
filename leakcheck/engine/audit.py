"""`audit()`: every tensor still alive on a device, who pins it, and what releasing each holder frees.

This is the Python API the CLI is built on. It reads the heap, allocates nothing on the
audited device, prints nothing, and returns an `Audit` for a renderer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np

from leakcheck.engine import torch_internals
from leakcheck.engine.allocator import AllocatorState
from leakcheck.engine.heap import TypeIndex, build_graph, collector_paused, reveal_frozen_objects
from leakcheck.engine.inventory import (
    Inventory,
    Item,
    add_cpp_held,
    add_pools,
    add_storages,
    own_cpp_held,
    known_cpp_states,
)
from leakcheck.engine.process_groups import (
    add_process_groups,
    append_process_groups,
    own_process_groups,
    untracked_dict_edges,
)
from leakcheck.engine.owners import Holder, Leaked, Ownership, effective_owners, find_owners, one_per_release
from leakcheck.engine.release import NO_RELEASE, PlannedRelease, Release, ReleasePlan
from leakcheck.engine.roots import capture_live_frames, frame_references, index_roots
from leakcheck.engine.seen_storages import SeenStorages, made_by_leakcheck
from leakcheck.engine.survivors import CollectableWatch, storage_key
from leakcheck.engine.tensors import Baseline, hidden_edges, normalize_device, tensor_nodes
from leakcheck.report.model import FREED_BY_COLLECTOR, Audit, Owner, SharedHold, Site, Storage
from leakcheck.report.keys import holder_key

Progress = Callable[[str], None]


def audit(
    runner: object | None = None,
    device: str = "cpu",
    baseline: Baseline | None = None,
    *,
    caller_frames: bool = True,
    allocator: AllocatorState | None = None,
    pool_types: tuple[type, ...] | None = None,
    progress: Progress | None = None,
    seen: SeenStorages | None = None,
    barriers: tuple[object, ...] = (),
) -> Audit:
    """Find every storage and memory pool alive on `device` and attribute it to its holders.

    runner: the object whose attributes are reported as `runner.NAME` (may be None).
    baseline: from `take_baseline()` before the runner existed; its storages are not counted.
    caller_frames: report the frames of the calling thread below this call as `frame`
        owners (API use); the CLI passes False, since those frames are leakcheck's own.
    allocator: the CUDA allocator's state; read from the device when auditing CUDA. It
        gives each pool's reserved bytes and, with history on, where each block came from.
    pool_types: classes whose instances own a private memory pool (default: CUDA graphs
        and MemPools); their `pool()` or `id` names the pool.
    seen: storages watched since the runner was built (`seen_storages.take_snapshot`); those
        still alive that no Python tensor reaches are reported as `cpp_held`.
    barriers: objects the walk does not pass through (a test runner's session and config):
        their references name no holder, and what only they reach is reported unattributed.

    Storages held only by reference cycles are reported as `cycle` owners, which
    `gc.collect()` frees; the audit finds them without collecting (`audit_watching` also
    returns what it takes to check, after a collection, that they really died).
    """
    return audit_watching(
        runner,
        device,
        baseline,
        caller_frames=caller_frames,
        allocator=allocator,
        pool_types=pool_types,
        progress=progress,
        seen=seen,
        barriers=barriers,
    )[0]


def audit_watching(
    runner: object | None = None,
    device: str = "cpu",
    baseline: Baseline | None = None,
    *,
    caller_frames: bool = True,
    allocator: AllocatorState | None = None,
    pool_types: tuple[type, ...] | None = None,
    progress: Progress | None = None,
    plan: ReleasePlan | None = None,
    seen: SeenStorages | None = None,
    barriers: tuple[object, ...] = (),
) -> tuple[Audit, CollectableWatch]:
    """`audit()`, and weak references to every storage it judged collectable.

    After `gc.collect()`, `CollectableWatch.survivors()` names those a finalizer kept alive:
    they were not freed, whatever the audit expected. See `engine/survivors.py`.

    plan: when given, filled with the audit's release plan (one step per reported owner, in
        report order, and weak references to every leaked storage), for `lifecycle.prove`.
    """
    say = progress or (lambda _message: None)
    device = normalize_device(device)
    on_cuda = device.startswith("cuda")
    if pool_types is None:
        pool_types = torch_internals.cuda_pool_types() if on_cuda else ()
    started = time.perf_counter()
    frames = capture_live_frames(caller_frames)
    exclude = baseline.live_keys() if baseline is not None else set()
    timings: dict[str, float] = {}
    freeze = reveal_frozen_objects()
    with collector_paused():
        say("reading the heap")
        objects = gc.get_objects()
        types = TypeIndex(objects)
        nodes = tensor_nodes(objects, types)
        made = made_by_leakcheck(objects, nodes.tolist())
        if made:  # tensor objects a snapshot's graph reading made: leakcheck's own
            nodes = np.array([node for node in nodes.tolist() if node not in made], dtype=np.int64)
        known = len(objects)
        extra_edges = hidden_edges(objects, nodes)
        types.extend(objects[known:])
        nodes = np.concatenate([nodes, known + tensor_nodes(objects[known:])])  # also autograd nodes came
        group_nodes = append_process_groups(objects, types)  # not gc-tracked: from torch's registry
        extra_edges += untracked_dict_edges(objects, group_nodes)
        inventory = Inventory()
        add_storages(inventory, objects, nodes, device, exclude, pinned=on_cuda)
        if pool_types:
            add_pools(inventory, objects, types.nodes(lambda t: issubclass(t, pool_types)), exclude)
        add_process_groups(inventory, objects, group_nodes, device, exclude)
        first_cpp_held = add_cpp_held(inventory, seen, exclude) if seen is not None else len(inventory.items)
        del nodes
        graph = build_graph(objects, extra_edges + frame_references(frames), types)
        del extra_edges  # its pairs hold references the refcount check must not see
        del objects
        timings["scan_s"] = time.perf_counter() - started
        if allocator is None and on_cuda:
            captured = time.perf_counter()
            allocator = AllocatorState.capture(device)
            timings["allocator_s"] = time.perf_counter() - captured
        leaked = inventory.weigh(allocator)
        say(f"attributing {leaked.count:,} storages over {graph.size:,} objects")
        roots = index_roots(graph, runner, frames, barriers=(frames, *barriers))
        # cpp_held items have no heap node: owners are found for the others, then given theirs.
        on_heap = Leaked(nodes=leaked.nodes, storage=leaked.storage, nbytes=leaked.nbytes[:first_cpp_held])
        ownership = find_owners(
            graph,
            roots,
            on_heap,
            frozen=freeze.frozen_mask(graph.objects),
            cpp_states=known_cpp_states(inventory.items[:first_cpp_held], seen),
        )
        del on_heap
        own_cpp_held(ownership, inventory.items, first_cpp_held)
        one_per_release(ownership)
        own_process_groups(ownership, inventory.items, leaked, graph.objects)
        result, collectable = _summarize(device, leaked, inventory.items, ownership, graph.size, graph.edges, baseline)
        watch = _watch(collectable, leaked, graph.objects)
        if plan is not None:
            plan.replace(
                _planned_releases(result, ownership.holders),
                _watch_leaked(result, inventory.items, leaked, graph.objects),
            )
        if allocator is not None:
            result.sites = allocation_sites(result.storages)
        del graph, roots, ownership, collectable
    result.frozen_objects = freeze.frozen_objects
    if seen is not None and seen.failures:
        result.notes.append(
            f"{len(seen.failures)} storage snapshot(s) failed ({seen.failures[0]}): storages only C++ holds "
            "may be missing from this audit"
        )
    if freeze.note:
        result.notes.append(freeze.note)
    if allocator is not None and not allocator.history and result.storages:
        result.notes.append(
            "allocation history was off: no allocation sites (leakcheck run records them from baseline on)"
        )
    # The heap audit alone: reading the allocator's snapshot is torch's work, timed apart.
    timings["audit_s"] = time.perf_counter() - started - timings.get("allocator_s", 0.0)
    timings["owners_s"] = timings["audit_s"] - timings["scan_s"]
    result.timings = timings
    return result, watch


def _watch(collectable: list[tuple[Storage, int]], leaked: Leaked, objects: list) -> CollectableWatch:
    """Weak references to one tensor (or pool owner) of each storage judged collectable."""
    watch = CollectableWatch()
    if not collectable:
        return watch
    first: dict[int, int] = {}
    for position, slot in enumerate(leaked.storage.tolist()):
        first.setdefault(slot, position)
    for storage, slot in collectable:
        watch.add(storage, objects[int(leaked.nodes[first[slot]])])
    return watch


def _planned_releases(result: Audit, holders: list[Holder]) -> list[PlannedRelease]:
    """One step per reported owner, in report order. Owners are matched to their holders by
    path: paths repeat only among pseudo-owners of one kind (two garbage cycles, two
    untracked references), whose releases are the same."""
    releases: dict[str, Release | None] = {}
    for holder in holders:
        releases.setdefault(holder.handle.path, holder.handle.release)
    return [
        PlannedRelease(owner.path, owner.kind, owner.fix, releases.get(owner.path) or Release.never(NO_RELEASE))
        for owner in result.owners
    ]


def _watch_leaked(result: Audit, items: list[Item], leaked: Leaked, objects: list) -> CollectableWatch:
    """Weak references to each storage the gate may count (neither collectable nor pinned):
    the proof asks, after each step, which of them died."""
    watched = {storage_key(s): s for s in result.storages if not s.collectable and not s.pinned}
    watch = CollectableWatch()
    first: dict[int, int] = {}
    for position, slot in enumerate(leaked.storage.tolist()):
        first.setdefault(slot, position)
    for slot, item in enumerate(items):
        storage = watched.get((item.address, item.kind, tuple(item.pool or ())))
        if storage is not None and slot in first:
            watch.add(storage, objects[int(leaked.nodes[first[slot]])])
        elif storage is not None and item.weak_ref is not None:  # cpp_held: no heap node, its own weak ref
            watch.add_storage_ref(storage, item.weak_ref)
    return watch


def _summarize(
    device: str,
    leaked: Leaked,
    items: list[Item],
    ownership: Ownership,
    heap_objects: int,
    heap_edges: int,
    baseline: Baseline | None,
) -> tuple[Audit, list[tuple[Storage, int]]]:
    """The audit's figures per holder and per storage, and the collectable storages (with
    their slots), which the lifecycle checks again after collecting."""
    holders = ownership.holders
    effective = effective_owners(ownership.owner_sets, holders)
    nbytes = leaked.nbytes.tolist()
    on_device = [not item.pinned for item in items]
    reachable = [0] * len(holders)
    retained = [0] * len(holders)
    pinned = [0] * len(holders)
    shared: dict[tuple[int, ...], list[int]] = {}
    for storage, holding in enumerate(ownership.owner_sets):
        if not on_device[storage]:
            for owner in holding:
                pinned[owner] += nbytes[storage]
            continue
        for owner in holding:
            reachable[owner] += nbytes[storage]
        live = effective[storage]
        if len(live) == 1:
            retained[live[0]] += nbytes[storage]
        elif len(live) > 1:
            shared.setdefault(tuple(sorted(live)), []).append(storage)

    def pins_something(holder) -> bool:
        """A holder whose only items are graphs with empty pools pins nothing worth a line."""
        return any(not items[s].is_pool or nbytes[s] for s in holder.storages.tolist())

    owners = [
        Owner(
            path=h.handle.path,
            kind=h.handle.kind,
            reachable_bytes=reachable[i],
            retained_bytes=retained[i],
            tensors=h.tensors,
            storages=int(h.storages.size),
            examples=[text for _, text, _ in h.examples],
            detail=h.handle.detail or ("; ".join(h.notes) if h.notes else None),
            fix=h.handle.fix,
            evaluable=all(ev for _, _, ev in h.examples),
            pinned_bytes=pinned[i],
            key=holder_key(
                h.handle.path,
                h.handle.kind,
                [text for _, text, _ in h.examples],
                (items[s].allocated_at for s in h.storages),  # read only for a generated pseudo-holder
            ),
        )
        for i, h in enumerate(holders)
        if pins_something(h)
    ]
    order = sorted(
        range(len(owners)), key=lambda i: (-owners[i].reachable_bytes, -owners[i].retained_bytes, owners[i].path)
    )
    owners = [owners[i] for i in order]

    storage_reports = []
    collectable_slots: list[tuple[Storage, int]] = []
    held = cycle = pinned_total = 0
    for s, item in enumerate(items):
        if item.is_pool and nbytes[s] == 0:
            continue  # a graph whose pool reserves nothing pins nothing
        live = effective[s]
        collectable = bool(live) and all(holders[o].handle.kind in FREED_BY_COLLECTOR for o in live)
        if item.pinned:
            pinned_total += nbytes[s]
        elif collectable:
            cycle += nbytes[s]
        else:
            held += nbytes[s]
        example = ownership.example[s]
        report = Storage(
            device=item.device or device,
            address=item.address,
            nbytes=nbytes[s],
            dtype=item.dtype,
            shape=item.shape,
            example=example[0] if example else "",
            owners=[holders[o].handle.path for o in live],
            tensors=item.tensors,
            collectable=collectable,
            allocated_at=item.allocated_at,
            reserved_bytes=item.reserved,
            kind=item.kind,
            pool=item.pool,
            pinned=item.pinned,
            idle=item.idle,
            layout=item.layout,
            note=item.note,
            unknown=item.unknown,
            evaluable=bool(example and example[1]),
        )
        storage_reports.append(report)
        if collectable and not item.pinned:
            collectable_slots.append((report, s))
    storage_reports.sort(key=lambda s: -s.nbytes)
    groups = [
        SharedHold(
            owners=[holders[o].handle.path for o in key], bytes=sum(nbytes[s] for s in members), storages=len(members)
        )
        for key, members in shared.items()
    ]
    groups.sort(key=lambda g: -g.bytes)
    audit = Audit(
        device=device,
        owners=owners,
        storages=storage_reports,
        shared=groups,
        held_bytes=held,
        cycle_bytes=cycle,
        pinned_bytes=pinned_total,
        baseline_storages=baseline.storages if baseline else 0,
        heap_objects=heap_objects,
        heap_edges=heap_edges,
    )
    return audit, collectable_slots


def allocation_sites(storages: list[Storage]) -> list[Site]:
    """Leaked device bytes grouped by the user-code line that allocated them."""
    sites: dict[str, Site] = {}
    owners: dict[str, dict[str, None]] = {}  # per site, its holders in first-seen order
    for storage in storages:
        if storage.pinned or storage.collectable or storage.nbytes == 0:
            continue
        label = storage.allocated_at or "<unknown: allocated while history was off>"
        site = sites.setdefault(label, Site(site=label, bytes=0, storages=0, owners=[]))
        site.bytes += storage.nbytes
        site.storages += 1
        owners.setdefault(label, {}).update(dict.fromkeys(storage.owners))
    for label, site in sites.items():
        site.owners = list(owners[label])
    return sorted(sites.values(), key=lambda s: -s.bytes)
