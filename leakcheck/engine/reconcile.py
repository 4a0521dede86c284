"""Where NVML's growth went: every reserved byte of the caching allocator, named.

NVML counts what the driver gave this process; PyTorch's allocator explains the part it
reserved, block by block; the audit explains which blocks live tensors and pools hold. The
difference between NVML's growth and the allocator's is outside PyTorch's allocator: CUDA
context growth, lazily loaded kernel modules, cuBLAS handles, NCCL, other libraries.
"""

from __future__ import annotations

from leakcheck.engine.allocator import DEFAULT_POOL, AllocatorState, site_label
from leakcheck.report.model import Category, MemorySample, Reconciliation, Storage

LEAKED_TENSORS = "leaked tensors"
GRAPH_POOLS = "CUDA graph and memory pools"
ORPHAN_POOLS = "private pools with no live owner"
WORKSPACES = "cuBLAS workspaces"
CPP_HELD = "allocated, held from C++ (no Python tensor)"
CACHE = "allocator cache (reserved, free)"
OUTSIDE = "outside PyTorch's allocator"

# Categories whose bytes have a named holder or a named allocator role.
NAMED = {LEAKED_TENSORS, GRAPH_POOLS, ORPHAN_POOLS, WORKSPACES, CACHE}


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
            total += segment.total_size if segment.pool in owned_pools else 0
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
    workspaces released (None when that could not be done).
    """
    leaked, owned_pools = _held(storages)
    sizes = dict.fromkeys((LEAKED_TENSORS, GRAPH_POOLS, ORPHAN_POOLS, WORKSPACES, CPP_HELD, CACHE), 0)
    sites: dict[str, dict[str, int]] = {CPP_HELD: {}}
    for segment in state.segments:
        private = segment.pool != DEFAULT_POOL
        for block in segment.blocks:
            if block.active and block.address in leaked:
                sizes[LEAKED_TENSORS] += block.size
            elif block.active and workspaces is not None and block.address in workspaces:
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
