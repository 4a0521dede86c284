"""`audit()`: every tensor still alive on a device, who pins it, and what releasing each holder frees.

This is the Python API the CLI is built on. It reads the heap, allocates nothing on the
audited device, prints nothing, and returns an `Audit` for a renderer.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

import numpy as np

from leakcheck.engine.heap import TypeIndex, build_graph, collector_paused, reveal_frozen_objects
from leakcheck.engine.owners import Leaked, effective_owners, find_owners
from leakcheck.engine.roots import capture_live_frames, frame_references, index_roots
from leakcheck.engine.tensors import Baseline, StorageKey, hidden_edges, normalize_device, storage_of, tensor_nodes
from leakcheck.report.model import FREED_BY_COLLECTOR, Audit, Owner, SharedHold, Storage

Progress = Callable[[str], None]


def audit(
    runner: object | None = None,
    device: str = "cpu",
    baseline: Baseline | None = None,
    *,
    caller_frames: bool = True,
    progress: Progress | None = None,
) -> Audit:
    """Find every storage alive on `device` and attribute it to the holders that pin it.

    runner: the object whose attributes are reported as `runner.NAME` (may be None).
    baseline: from `take_baseline()` before the runner existed; its storages are not counted.
    caller_frames: report the frames of the calling thread below this call as `frame`
        owners (API use); the CLI passes False, since those frames are leakcheck's own.

    Storages held only by reference cycles are reported as `cycle` owners, which
    `gc.collect()` frees; the audit finds them without collecting.
    """
    say = progress or (lambda _message: None)
    device = normalize_device(device)
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
        leaked, storages = _leaked_storages(objects, nodes, device, exclude)
        del nodes
        graph = build_graph(objects, extra_edges + frame_references(frames), types)
        del extra_edges  # its pairs hold references the refcount check must not see
        del objects
        timings["scan_s"] = time.perf_counter() - started
        say(f"attributing {leaked.count:,} storages over {graph.size:,} objects")
        roots = index_roots(graph, runner, frames, barriers=(frames,))
        ownership = find_owners(graph, roots, leaked, frozen=freeze.frozen_mask(graph.objects))
        result = _summarize(device, leaked, storages, ownership, graph.size, graph.edges, baseline)
        del graph, roots, ownership
    result.frozen_objects = freeze.frozen_objects
    if freeze.note:
        result.notes.append(freeze.note)
    timings["audit_s"] = time.perf_counter() - started
    timings["owners_s"] = timings["audit_s"] - timings["scan_s"]
    result.timings = timings
    return result


def _leaked_storages(
    objects: list, nodes: np.ndarray, device: str, exclude: set[StorageKey]
) -> tuple[Leaked, list[dict]]:
    """Tensor nodes on `device` whose storage was not alive at baseline, numbered by storage."""
    index: dict[StorageKey, int] = {}
    info: list[dict] = []
    kept_nodes: list[int] = []
    kept_storage: list[int] = []
    tensor = None
    for node in nodes.tolist():
        tensor = objects[node]
        found = storage_of(tensor)
        if found is None:
            continue
        key, nbytes = found
        if key[0] != device or key in exclude:
            continue
        slot = index.get(key)
        if slot is None:
            slot = index[key] = len(info)
            info.append(
                {
                    "address": key[1],
                    "nbytes": nbytes,
                    "dtype": str(tensor.dtype).replace("torch.", ""),
                    "shape": list(tensor.shape),
                    "numel": tensor.numel(),
                    "tensors": 0,
                }
            )
        elif tensor.numel() > info[slot]["numel"]:
            info[slot].update(
                dtype=str(tensor.dtype).replace("torch.", ""), shape=list(tensor.shape), numel=tensor.numel()
            )
        info[slot]["tensors"] += 1
        kept_nodes.append(node)
        kept_storage.append(slot)
    tensor = None  # no reference to a tensor may outlive this loop: it would look untracked
    leaked = Leaked(
        nodes=np.array(kept_nodes, dtype=np.int64),
        storage=np.array(kept_storage, dtype=np.int64),
        nbytes=np.array([s["nbytes"] for s in info], dtype=np.int64),
    )
    return leaked, info


def _summarize(device, leaked, storages, ownership, heap_objects, heap_edges, baseline) -> Audit:
    holders = ownership.holders
    effective = effective_owners(ownership.owner_sets, holders)
    nbytes = leaked.nbytes.tolist()
    reachable = [0] * len(holders)
    retained = [0] * len(holders)
    shared: dict[tuple[int, ...], list[int]] = {}
    for storage, owners in enumerate(ownership.owner_sets):
        for owner in owners:
            reachable[owner] += nbytes[storage]
        live = effective[storage]
        if len(live) == 1:
            retained[live[0]] += nbytes[storage]
        elif len(live) > 1:
            shared.setdefault(tuple(sorted(live)), []).append(storage)

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
        )
        for i, h in enumerate(holders)
    ]
    order = sorted(
        range(len(owners)), key=lambda i: (-owners[i].reachable_bytes, -owners[i].retained_bytes, owners[i].path)
    )
    owners = [owners[i] for i in order]

    storage_reports = []
    held = cycle = 0
    for s, meta in enumerate(storages):
        live = effective[s]
        collectable = bool(live) and all(holders[o].handle.kind in FREED_BY_COLLECTOR for o in live)
        if collectable:
            cycle += nbytes[s]
        else:
            held += nbytes[s]
        example = ownership.example[s]
        storage_reports.append(
            Storage(
                device=device,
                address=meta["address"],
                nbytes=nbytes[s],
                dtype=meta["dtype"],
                shape=meta["shape"],
                example=example[0] if example else "",
                owners=[holders[o].handle.path for o in live],
                tensors=meta["tensors"],
                collectable=collectable,
            )
        )
    storage_reports.sort(key=lambda s: -s.nbytes)
    groups = [
        SharedHold(
            owners=[holders[o].handle.path for o in key], bytes=sum(nbytes[s] for s in members), storages=len(members)
        )
        for key, members in shared.items()
    ]
    groups.sort(key=lambda g: -g.bytes)
    return Audit(
        device=device,
        owners=owners,
        storages=storage_reports,
        shared=groups,
        held_bytes=held,
        cycle_bytes=cycle,
        baseline_storages=baseline.storages if baseline else 0,
        heap_objects=heap_objects,
        heap_edges=heap_edges,
    )
