"""`audit()`: every tensor still alive on a device, who pins it, and what releasing each holder frees.

This is the Python API the CLI is built on. It reads the heap, allocates nothing on the
audited device, prints nothing, and returns an `Audit` for a renderer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from leakcheck.engine import torch_internals
from leakcheck.engine.allocator import DEFAULT_POOL, AllocatorState, site_label
from leakcheck.engine.heap import TypeIndex, build_graph, collector_paused, reveal_frozen_objects
from leakcheck.engine.owners import Leaked, effective_owners, find_owners
from leakcheck.engine.roots import capture_live_frames, frame_references, index_roots
from leakcheck.engine.safe_read import type_name
from leakcheck.engine.survivors import CollectableWatch
from leakcheck.engine.tensors import (
    Baseline,
    StorageKey,
    hidden_edges,
    normalize_device,
    storages_of,
    tensor_nodes,
    tensor_reads,
)
from leakcheck.report.model import FREED_BY_COLLECTOR, Audit, Owner, SharedHold, Site, Storage

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
) -> tuple[Audit, CollectableWatch]:
    """`audit()`, and weak references to every storage it judged collectable.

    After `gc.collect()`, `CollectableWatch.survivors()` names those a finalizer kept alive:
    they were not freed, whatever the audit expected. See `engine/survivors.py`.
    """
    say = progress or (lambda _message: None)
    device = normalize_device(device)
    on_cuda = device.startswith("cuda")
    if pool_types is None:
        pool_types = cuda_pool_types() if on_cuda else ()
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
        known = len(objects)
        extra_edges = hidden_edges(objects, nodes)
        types.extend(objects[known:])
        nodes = np.concatenate([nodes, np.arange(known, len(objects))])
        found = _find_storages(objects, nodes, device, exclude, pinned=on_cuda)
        if pool_types:
            _find_pools(objects, types.nodes(lambda t: issubclass(t, pool_types)), exclude, found)
        del nodes
        graph = build_graph(objects, extra_edges + frame_references(frames), types)
        del extra_edges  # its pairs hold references the refcount check must not see
        del objects
        timings["scan_s"] = time.perf_counter() - started
        if allocator is None and on_cuda:
            captured = time.perf_counter()
            allocator = AllocatorState.capture(device)
            timings["allocator_s"] = time.perf_counter() - captured
        leaked = found.weigh(allocator)
        say(f"attributing {leaked.count:,} storages over {graph.size:,} objects")
        roots = index_roots(graph, runner, frames, barriers=(frames,))
        ownership = find_owners(graph, roots, leaked, frozen=freeze.frozen_mask(graph.objects))
        result, collectable = _summarize(device, leaked, found.info, ownership, graph.size, graph.edges, baseline)
        watch = _watch(collectable, leaked, graph.objects)
        if allocator is not None:
            result.sites = allocation_sites(result.storages)
        del graph, roots, ownership, collectable
    result.frozen_objects = freeze.frozen_objects
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
    first = {}
    for position, slot in enumerate(leaked.storage.tolist()):
        first.setdefault(slot, position)
    for storage, slot in collectable:
        watch.add(storage, objects[int(leaked.nodes[first[slot]])])
    return watch


def cuda_pool_types() -> tuple[type, ...]:
    """Classes whose objects own a private pool of the CUDA caching allocator."""
    return torch_internals.cuda_pool_types()


def pool_id(holder: object) -> tuple[int, int] | None:
    """The private pool a CUDA graph or MemPool owns, as the allocator names it."""
    return torch_internals.pool_id(holder)


@dataclass
class _Found:
    """Storages and pools found on the heap, before the allocator gives pools their size."""

    info: list[dict] = field(default_factory=list)
    index: dict[tuple, int] = field(default_factory=dict)
    nodes: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)

    def add(self, key: tuple, node: int, meta: dict) -> dict:
        slot = self.index.get(key)
        if slot is None:
            slot = self.index[key] = len(self.info)
            self.info.append({**meta, "tensors": 0})
        self.info[slot]["tensors"] += 1
        self.nodes.append(node)
        self.slots.append(slot)
        return self.info[slot]

    def weigh(self, allocator: AllocatorState | None) -> Leaked:
        """Bytes per storage; a pool counts what it reserves beyond the leaked tensors inside it.

        `reserved` is what the device gets back when the leaked storages go: `empty_cache()`
        releases whole segments, so a storage in a segment that only leaked blocks keep alive
        counts its block and its share of the segment's free space; one in a segment that
        something else also keeps alive gives the device nothing back.
        """
        inside: dict[tuple[int, int], int] = {}
        by_block: dict[int, dict] = {}
        for meta in self.info:
            meta["reserved"] = meta["nbytes"]
            block = allocator.block_at(meta["address"]) if allocator and meta["kind"] == "tensor" else None
            if block is not None and not meta["pinned"]:
                meta["pool"] = list(block.pool)
                meta["allocated_at"] = site_label(block.frames)
                meta["reserved"] = 0  # until a segment only leaked blocks keep gives it back
                inside[block.pool] = inside.get(block.pool, 0) + block.size
                by_block[block.address] = meta
        if allocator is not None:
            _share_pinned_segments(allocator, by_block)
        reserved = allocator.pools() if allocator else {}
        for meta in self.info:
            if meta["kind"] != "tensor":
                pool = tuple(meta["pool"])
                meta["nbytes"] = meta["reserved"] = max(reserved.get(pool, 0) - inside.get(pool, 0), 0)
                meta["idle"] = allocator is not None and allocator.pool_active(pool) == 0
                meta["allocated_at"] = site_label(allocator.pool_frames(pool)) if allocator else None
        return Leaked(
            nodes=np.array(self.nodes, dtype=np.int64),
            storage=np.array(self.slots, dtype=np.int64),
            nbytes=np.array([m["nbytes"] for m in self.info], dtype=np.int64),
        )


def _share_pinned_segments(allocator: AllocatorState, by_block: dict[int, dict]) -> None:
    """A segment whose only live blocks are leaked goes back to the device whole when they go:
    share its size among them, by block size."""
    for segment in allocator.segments:
        if segment.pool != DEFAULT_POOL or not segment.kept_only_by(by_block):
            continue
        active = [b for b in segment.blocks if b.active]
        used = sum(b.size for b in active)
        spare = segment.total_size - used
        for block in active:
            by_block[block.address]["reserved"] = block.size + spare * block.size // used


def _find_storages(objects: list, nodes: np.ndarray, device: str, exclude: set[StorageKey], pinned: bool) -> _Found:
    """Tensors on `device` (and pinned host tensors, when auditing CUDA) not alive at baseline.

    Every block a tensor owns is added (a sparse tensor has several); one whose storage could
    not be read is added as unknown bytes with its reason, so it can never pass unseen. A
    tensor whose device could not be read counts on the audited device.
    """
    found = _Found()
    # Reads hold no tensor (an unreadable one is keyed by its id): none may outlive this
    # function, or it would look like an untracked reference.
    with tensor_reads():
        owned = [(node, storages_of(objects[node], check_pinned=pinned)) for node in nodes.tolist()]
    for node, reads in owned:
        for read in reads:
            is_pinned = pinned and read.device == "cpu" and read.pinned
            if (read.device is not None and read.device != device and not is_pinned) or read.key in exclude:
                continue
            meta = found.add(
                read.key,
                node,
                {
                    "kind": "tensor",
                    "device": read.device or device,
                    "address": read.address,
                    "nbytes": read.nbytes,
                    "dtype": read.dtype,
                    "shape": list(read.shape),
                    "numel": read.numel,
                    "pinned": is_pinned,
                    "pool": None,
                    "layout": read.layout,
                    "note": read.note,
                    "unknown": read.unknown,
                },
            )
            if read.numel > meta["numel"]:  # the largest view describes the storage best
                meta.update(dtype=read.dtype, shape=list(read.shape), numel=read.numel)
    return found


def _find_pools(objects: list, nodes: np.ndarray, exclude: set[StorageKey], found: _Found) -> None:
    """CUDA graphs and MemPools: each private pool is one leaked item, held through its owners."""
    for node in nodes.tolist():
        holder = objects[node]
        pool = pool_id(holder)
        if pool is None or ("pool", pool) in exclude:
            continue
        found.add(
            ("pool", pool),
            node,
            {
                "kind": "mem_pool" if torch_internals.is_mem_pool(holder) else "graph_pool",
                "device": "",
                "address": 0,
                "nbytes": 0,
                "dtype": "",
                "shape": [],
                "numel": 0,
                "pinned": False,
                "pool": list(pool),
                "type": type_name(type(holder)),
            },
        )


def _summarize(
    device, leaked, storages, ownership, heap_objects, heap_edges, baseline
) -> tuple[Audit, list[tuple[Storage, int]]]:
    """The audit's figures per holder and per storage, and the collectable storages (with
    their slots), which the lifecycle checks again after collecting."""
    holders = ownership.holders
    effective = effective_owners(ownership.owner_sets, holders)
    nbytes = leaked.nbytes.tolist()
    on_device = [not meta["pinned"] for meta in storages]
    reachable = [0] * len(holders)
    retained = [0] * len(holders)
    pinned = [0] * len(holders)
    shared: dict[tuple[int, ...], list[int]] = {}
    for storage, owners in enumerate(ownership.owner_sets):
        if not on_device[storage]:
            for owner in owners:
                pinned[owner] += nbytes[storage]
            continue
        for owner in owners:
            reachable[owner] += nbytes[storage]
        live = effective[storage]
        if len(live) == 1:
            retained[live[0]] += nbytes[storage]
        elif len(live) > 1:
            shared.setdefault(tuple(sorted(live)), []).append(storage)

    def pins_something(holder) -> bool:
        """A holder whose only items are graphs with empty pools pins nothing worth a line."""
        return any(storages[s]["kind"] == "tensor" or nbytes[s] for s in holder.storages.tolist())

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
    for s, meta in enumerate(storages):
        if meta["kind"] != "tensor" and nbytes[s] == 0:
            continue  # a graph whose pool reserves nothing pins nothing
        live = effective[s]
        collectable = bool(live) and all(holders[o].handle.kind in FREED_BY_COLLECTOR for o in live)
        if meta["pinned"]:
            pinned_total += nbytes[s]
        elif collectable:
            cycle += nbytes[s]
        else:
            held += nbytes[s]
        example = ownership.example[s]
        report = Storage(
            device=meta["device"] or device,
            address=meta["address"],
            nbytes=nbytes[s],
            dtype=meta["dtype"],
            shape=meta["shape"],
            example=example[0] if example else "",
            owners=[holders[o].handle.path for o in live],
            tensors=meta["tensors"],
            collectable=collectable,
            allocated_at=meta.get("allocated_at"),
            reserved_bytes=meta["reserved"],
            kind=meta["kind"],
            pool=meta["pool"],
            pinned=meta["pinned"],
            idle=meta.get("idle", False),
            layout=meta.get("layout", "strided"),
            note=meta.get("note"),
            unknown=meta.get("unknown", False),
            evaluable=bool(example and example[1]),
        )
        storage_reports.append(report)
        if collectable and not meta["pinned"]:
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
