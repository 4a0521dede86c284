"""Where NVML's growth went: every reserved byte of the caching allocator, named.

NVML counts what the driver gave this process; PyTorch's allocator explains the part it
reserved, block by block; the audit explains which blocks live tensors and pools hold. The
difference between NVML's growth and the allocator's is outside PyTorch's allocator: CUDA
context growth, lazily loaded kernel modules, cuBLAS handles, NCCL, other libraries.

With `cycles: N`, each later cycle's NVML growth is split the same way (`cycle_split`), from
the allocator's state at that cycle's `collected` and the previous one's.
"""

from __future__ import annotations

from leakcheck.engine.allocator import DEFAULT_POOL, AllocatorState, Block, Segment, site_label
from leakcheck.report.model import Category, MemorySample, Reconciliation, Storage

LEAKED_TENSORS = "leaked tensors"
LEAKED_SEGMENTS = "leaked segments"
GRAPH_POOLS = "CUDA graph and memory pools"
ORPHAN_POOLS = "private pools with no live owner"
WORKSPACES = "cuBLAS workspaces"
CPP_HELD = "allocated, held from C++ (no Python tensor)"
CACHE = "allocator cache (reserved, free)"
OUTSIDE = "outside PyTorch's allocator"

# Categories whose bytes have a named holder or a named allocator role.
NAMED = {LEAKED_TENSORS, LEAKED_SEGMENTS, GRAPH_POOLS, ORPHAN_POOLS, WORKSPACES, CACHE}
# A cycle's split, in the order a developer reads it.
CYCLE_CATEGORIES = (LEAKED_SEGMENTS, GRAPH_POOLS, ORPHAN_POOLS, WORKSPACES, CPP_HELD, CACHE)


def _held(storages: list[Storage]) -> tuple[set[int], set[tuple[int, ...]]]:
    """Addresses of leaked device tensors, and pools a leaked graph or MemPool owns."""
    leaked = {s.address for s in storages if s.kind == "tensor" and not s.pinned and not s.collectable}
    owned_pools = {tuple(s.pool) for s in storages if s.kind != "tensor" and s.pool and not s.collectable}
    return leaked, owned_pools


def pinned_by_leaks(state: AllocatorState, storages: list[Storage]) -> int:
    """Reserved bytes the device would get back if every leaked storage went.

    `empty_cache()` releases whole segments: a segment counts when every live block in it is a
    leaked tensor, and a private pool counts when a leaked graph or MemPool owns it. Measured
    on one snapshot for all cycles' leaks together, so a cycle's share is the difference.
    """
    leaked, owned_pools = _held(storages)
    total = 0
    for segment in state.segments:
        if segment.pool != DEFAULT_POOL:
            # A workspace captured into the pool keeps its segment whoever owns the pool.
            owned = segment.pool in owned_pools and not state.kept_by_workspace(segment)
            total += segment.total_size if owned else 0
            continue
        if segment.kept_only_by(leaked):
            total += segment.total_size
    return total


def reconcile(
    state: AllocatorState,
    storages: list[Storage],
    baseline: MemorySample,
    collected: MemorySample,
    workspaces: set[int] | None = None,
) -> Reconciliation:
    """Split the allocator's reserved bytes, then NVML's growth since baseline, into categories.

    state: the allocator after `collected`. storages: what the audits found (every cycle's,
    since every runner is still alive). workspaces: addresses of blocks that clearing cuBLAS
    workspaces released (None when that could not be done: then those captured into graph
    pools are told by their size, and the rest are not told).
    """
    leaked, owned_pools = _held(storages)
    told = workspaces if workspaces is not None else state.pool_workspaces
    sizes = dict.fromkeys((LEAKED_TENSORS, GRAPH_POOLS, ORPHAN_POOLS, WORKSPACES, CPP_HELD, CACHE), 0)
    sites: dict[str, dict[str, int]] = {CPP_HELD: {}}
    for segment in state.segments:
        private = segment.pool != DEFAULT_POOL
        for block in segment.blocks:
            if block.active and block.address in leaked:
                sizes[LEAKED_TENSORS] += block.size
            elif block.active and block.address in told:
                sizes[WORKSPACES] += block.size  # also one made while capturing, inside a graph's pool
            elif private:
                sizes[GRAPH_POOLS if segment.pool in owned_pools else ORPHAN_POOLS] += block.size
            elif not block.active:
                sizes[CACHE] += block.size
            else:
                sizes[CPP_HELD] += block.size
                label = site_label(block.frames) or "<no allocation stack>"
                sites[CPP_HELD][label] = sites[CPP_HELD].get(label, 0) + block.size

    reserved = state.reserved()
    categories = [Category(name, size) for name, size in sizes.items()]
    cpp_sites = sorted(sites[CPP_HELD].items(), key=lambda item: -item[1])[:3]
    if cpp_sites:
        categories[4].detail = "; ".join(f"{label} ({size:,} B)" for label, size in cpp_sites)
    if workspaces is None:
        categories[3].detail = "not identified: torch offers no way to clear them here"
    elif sizes[WORKSPACES]:
        categories[3].detail = workspace_streams(state, told)
    growth = None
    if collected.nvml_process_bytes is not None and baseline.nvml_process_bytes is not None:
        growth = collected.nvml_process_bytes - baseline.nvml_process_bytes
        before = baseline.torch_reserved_bytes or 0
        if before:
            categories.append(Category("reserved already at baseline", -before))
        categories.append(
            Category(OUTSIDE, growth - (reserved - before), "CUDA context, kernel modules, cuBLAS handles, NCCL")
        )
    named = sum(c.bytes for c in categories if c.name in NAMED)
    return Reconciliation(
        nvml_growth_bytes=growth,
        torch_reserved_bytes=reserved,
        categories=categories,
        named_bytes=named,
        reserved_named_share=named / reserved if reserved else 1.0,
        growth_named_share=(named / growth) if growth else None,
    )


def workspace_streams(state: AllocatorState, workspaces: set[int]) -> str:
    """Which stream made each workspace: torch keeps one per stream for the process's life, so
    a runner that warms up on a new stream per load adds one per load."""
    made: dict[int, list[Block]] = {}
    for block in state.active_blocks():
        if block.address in workspaces:
            made.setdefault(block.stream, []).append(block)
    parts = []
    for stream, blocks in sorted(made.items(), key=lambda item: -sum(b.size for b in item[1])):
        site = next((label for label in (site_label(b.frames) for b in blocks) if label), None)
        name = "the default stream" if stream == 0 else f"stream {stream:#x}"
        size = sum(b.size for b in blocks)
        parts.append(f"{name}: {len(blocks)} ({size:,} B)" + (f", first at {site}" if site else ""))
    return f"{len(parts)} stream(s); " + "; ".join(parts)


def segment_split(state: AllocatorState, storages: list[Storage], workspaces: set[int]) -> dict[str, int]:
    """Every reserved byte of `state`, by whole segments where one role keeps a segment alone.

    NVML sees segments, not blocks: a segment whose live blocks are all leaked tensors (or all
    workspaces) costs the device all of it, spare room included. Spare room in a segment
    that several roles share is the allocator's cache. Sums to `state.reserved()`.
    """
    leaked, owned_pools = _held(storages)
    sizes = dict.fromkeys(CYCLE_CATEGORIES, 0)
    for segment in state.segments:
        for name, size in _segment_roles(segment, leaked, owned_pools, workspaces).items():
            sizes[name] += size
    return sizes


def _segment_roles(
    segment: Segment, leaked: set[int], owned_pools: set[tuple[int, ...]], workspaces: set[int]
) -> dict[str, int]:
    """One segment's bytes by role (see `segment_split`)."""
    private = segment.pool != DEFAULT_POOL
    rest = (GRAPH_POOLS if segment.pool in owned_pools else ORPHAN_POOLS) if private else CPP_HELD
    roles: dict[str, int] = {}
    for block in segment.blocks:
        if not block.active:
            continue
        if block.address in leaked:
            role = LEAKED_SEGMENTS
        elif block.address in workspaces:
            role = WORKSPACES
        else:
            role = rest
        roles[role] = roles.get(role, 0) + block.size
    spare = segment.total_size - sum(roles.values())
    if private and WORKSPACES not in roles:
        roles[rest] = roles.get(rest, 0) + spare  # the pool's owner frees it all
    elif len(roles) == 1:
        only = next(iter(roles))
        roles[only] += spare
    elif spare:
        roles[CACHE] = roles.get(CACHE, 0) + spare
    return roles


def cycle_split(
    previous: AllocatorState,
    current: AllocatorState,
    previous_storages: list[Storage],
    storages: list[Storage],
    nvml_growth: int | None,
    workspaces: set[int] | None = None,
) -> tuple[list[Category], float | None]:
    """What one later cycle added, by category: the allocator's change between the previous
    cycle's `collected` and this one's, and NVML's growth beyond it as outside PyTorch.

    storages: leaked storages of every cycle so far (every runner is still alive).
    workspaces: blocks clearing torch's workspaces released after the last phase (they were
    workspaces all along: torch frees one only when told to); None: told by size in pools.
    Returns the categories and the share of NVML's growth they name (None without NVML).
    """
    told_before = _workspaces(previous, workspaces)
    told_now = _workspaces(current, workspaces)
    before = segment_split(previous, previous_storages, told_before)
    after = segment_split(current, storages, told_now)
    categories = [Category(name, after[name] - before[name]) for name in CYCLE_CATEGORIES]
    details = ["new on " + workspace_streams(current, told_now - told_before)] if told_now - told_before else []
    if workspaces is None:
        details.append("only those captured into graph pools told apart (by their size)")
    categories[3].detail = "; ".join(details) or None
    if nvml_growth is None:
        return categories, None
    reserved_growth = current.reserved() - previous.reserved()
    categories.append(Category(OUTSIDE, nvml_growth - reserved_growth, "CUDA context, kernel modules, cuBLAS handles"))
    named = sum(c.bytes for c in categories if c.name in NAMED)
    return categories, (named / nvml_growth if nvml_growth > 0 else None)


def _workspaces(state: AllocatorState, cleared: set[int] | None) -> set[int]:
    """Workspaces alive in `state`: blocks at the addresses clearing released, still allocated."""
    if cleared is None:
        return set(state.pool_workspaces)
    return {b.address for b in state.active_blocks() if b.address in cleared}
