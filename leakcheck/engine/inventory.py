"""What the heap holds on the audited device, before anyone asks who holds it.

An `Inventory` lists each block of memory once, as an `Item` (a tensor storage, or the
private pool of a CUDA graph or MemPool), with every heap node that pins it: a storage
viewed by ten tensors is one item with ten nodes. Weighing it against the caching
allocator's snapshot then says what each item gives back to the device when it goes.
Ownership (owners.py) and the summary (audit.py) read the items; they never re-read tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from leakcheck.engine import torch_internals
from leakcheck.engine.allocator import DEFAULT_POOL, AllocatorState, site_label
from leakcheck.engine.owners import Leaked
from leakcheck.engine.tensors import StorageKey, storages_of, tensor_reads

TENSOR = "tensor"
GRAPH_POOL = "graph_pool"
MEM_POOL = "mem_pool"


@dataclass
class Item:
    """One block of memory on the heap: a storage (however many tensors view it) or a pool."""

    kind: str  # tensor | graph_pool | mem_pool
    device: str
    address: int  # a storage's data pointer (0 for pools and for unreadable storages)
    nbytes: int  # a pool's: what it reserves beyond the leaked tensors inside it (see `weigh`)
    dtype: str = ""
    shape: list[int] = field(default_factory=list)
    numel: int = 0
    pinned: bool = False  # pinned host memory, on a CUDA audit
    pool: list[int] | None = None  # the allocator pool it lives in (a pool's own id for pools)
    layout: str = "strided"
    note: str | None = None
    unknown: bool = False  # its storage could not be read: nbytes is an estimate, or 0
    tensors: int = 0  # heap nodes that pin it
    reserved: int = 0  # what the device gets back when it goes (see `weigh`)
    idle: bool = False  # a pool with no live allocation in it
    allocated_at: str | None = None  # the user-code line that allocated it (CUDA, history on)

    @property
    def is_pool(self) -> bool:
        return self.kind != TENSOR


@dataclass
class Inventory:
    """Items, and for each heap node that pins one, which (`nodes[i]` pins `items[slots[i]]`)."""

    items: list[Item] = field(default_factory=list)
    index: dict[tuple, int] = field(default_factory=dict)
    nodes: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)

    def add(self, key: tuple, node: int, item: Item) -> Item:
        """Record that `node` pins the item keyed `key` (`item` describes it, if it is new)."""
        slot = self.index.get(key)
        if slot is None:
            slot = self.index[key] = len(self.items)
            self.items.append(item)
        found = self.items[slot]
        found.tensors += 1
        self.nodes.append(node)
        self.slots.append(slot)
        return found

    def weigh(self, allocator: AllocatorState | None) -> Leaked:
        """Bytes per item; a pool counts what it reserves beyond the leaked tensors inside it.

        `reserved` is what the device gets back when the leaked storages go: `empty_cache()`
        releases whole segments, so a storage in a segment that only leaked blocks keep alive
        counts its block and its share of the segment's free space; one in a segment that
        something else also keeps alive gives the device nothing back.
        """
        inside: dict[tuple[int, int], int] = {}
        by_block: dict[int, Any] = {}  # block address -> Item
        for item in self.items:
            item.reserved = item.nbytes
            block = allocator.block_at(item.address) if allocator and not item.is_pool else None
            if block is not None and not item.pinned:
                item.pool = list(block.pool)
                item.allocated_at = site_label(block.frames)
                item.reserved = 0  # until a segment only leaked blocks keep gives it back
                inside[block.pool] = inside.get(block.pool, 0) + block.size
                by_block[block.address] = item
        if allocator is not None:
            _share_pinned_segments(allocator, by_block)
        reserved = allocator.pools() if allocator else {}
        for item in self.items:
            if item.is_pool:
                pool = (item.pool[0], item.pool[1]) if item.pool else DEFAULT_POOL
                item.nbytes = item.reserved = max(reserved.get(pool, 0) - inside.get(pool, 0), 0)
                item.idle = allocator is not None and allocator.pool_active(pool) == 0
                item.allocated_at = site_label(allocator.pool_frames(pool)) if allocator else None
        return Leaked(
            nodes=np.array(self.nodes, dtype=np.int64),
            storage=np.array(self.slots, dtype=np.int64),
            nbytes=np.array([item.nbytes for item in self.items], dtype=np.int64),
        )


def _share_pinned_segments(allocator: AllocatorState, by_block: dict[int, Any]) -> None:
    """A segment whose only live blocks are leaked goes back to the device whole when they go:
    share its size among them, by block size."""
    for segment in allocator.segments:
        if segment.pool != DEFAULT_POOL or not segment.kept_only_by(by_block):
            continue
        active = [b for b in segment.blocks if b.active]
        used = sum(b.size for b in active)
        spare = segment.total_size - used
        for block in active:
            by_block[block.address].reserved = block.size + spare * block.size // used


def add_storages(
    inventory: Inventory, objects: list, nodes: np.ndarray, device: str, exclude: set[StorageKey], pinned: bool
) -> None:
    """Tensors on `device` (and pinned host tensors, when auditing CUDA) not alive at baseline.

    Every block a tensor owns is added (a sparse tensor has several); one whose storage could
    not be read is added as unknown bytes with its reason, so it can never pass unseen. A
    tensor whose device could not be read counts on the audited device.
    """
    # Reads hold no tensor (an unreadable one is keyed by its id): none may outlive this
    # function, or it would look like an untracked reference.
    with tensor_reads():
        owned = [(node, storages_of(objects[node], check_pinned=pinned)) for node in nodes.tolist()]
    for node, reads in owned:
        for read in reads:
            is_pinned = pinned and read.device == "cpu" and read.pinned
            if (read.device is not None and read.device != device and not is_pinned) or read.key in exclude:
                continue
            item = Item(
                kind=TENSOR,
                device=read.device or device,
                address=read.address,
                nbytes=read.nbytes,
                dtype=read.dtype,
                shape=list(read.shape),
                numel=read.numel,
                pinned=is_pinned,
                layout=read.layout,
                note=read.note,
                unknown=read.unknown,
            )
            found = inventory.add(read.key, node, item)
            if read.numel > found.numel:  # the largest view describes the storage best
                found.dtype, found.shape, found.numel = read.dtype, list(read.shape), read.numel


def add_pools(inventory: Inventory, objects: list, nodes: np.ndarray, exclude: set[StorageKey]) -> None:
    """CUDA graphs and MemPools: each private pool is one item, held through its owners."""
    for node in nodes.tolist():
        holder = objects[node]
        pool = torch_internals.pool_id(holder)
        if pool is None or ("pool", pool) in exclude:
            continue
        kind = MEM_POOL if torch_internals.is_mem_pool(holder) else GRAPH_POOL
        item = Item(kind=kind, device="", address=0, nbytes=0, pool=list(pool))
        inventory.add(("pool", pool), node, item)
