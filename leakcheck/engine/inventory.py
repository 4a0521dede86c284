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
from leakcheck.engine.owners import EXAMPLES_PER_OWNER, Holder, Leaked, Ownership, remedy_handle
from leakcheck.engine.release import CPP_STATE, Release
from leakcheck.engine.roots import Handle
from leakcheck.engine.seen_storages import SeenStorages
from leakcheck.recognisers import cpp_remedies, site_remedy
from leakcheck.engine.tensors import StorageKey, storages_of, tensor_reads
from leakcheck.report.model import UNTRACKED


TENSOR = "tensor"
GRAPH_POOL = "graph_pool"
MEM_POOL = "mem_pool"
CPP_HELD = "cpp_held"  # a storage alive with no Python tensor: C++ holds it (see seen_storages.py)
PROCESS_GROUP = "process_group"  # a live torch.distributed group (see process_groups.py): 0 bytes, still a leak
POOL_KINDS = (GRAPH_POOL, MEM_POOL)


@dataclass
class Item:
    """One block of memory on the heap: a storage (however many tensors view it) or a pool."""

    kind: str  # tensor | graph_pool | mem_pool | cpp_held | process_group
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
    weak_ref: object | None = None  # cpp_held: the StorageWeakRef that says whether it died

    @property
    def is_pool(self) -> bool:
        return self.kind in POOL_KINDS


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
            # A process group's address is its Python object's, not a device block's.
            reads_block = not item.is_pool and item.kind != PROCESS_GROUP
            block = allocator.block_at(item.address) if allocator and reads_block else None
            if block is not None and not item.pinned:
                # A cpp_held storage names no pool: a storage report with a pool that is
                # not a tensor reads as the pool's owner (reconcile.py).
                item.pool = list(block.pool) if item.kind == TENSOR else None
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


def add_cpp_held(inventory: Inventory, seen: SeenStorages, exclude: set[StorageKey]) -> int:
    """Storages seen from `loaded` on, still alive, that no tensor on the heap reaches: C++
    holds them. Each becomes a `cpp_held` item with no heap node (nothing on the heap pins
    it), appended after every other item; returns the slot of the first.

    Never dropped: these are the bytes a heap walk alone would pass with 0 leaked.
    """
    first = len(inventory.items)
    for held in seen.alive():
        if held.key in inventory.index or held.key in exclude:
            continue
        inventory.index[held.key] = len(inventory.items)
        inventory.items.append(
            Item(
                kind=CPP_HELD,
                device=held.device,
                address=held.address,
                nbytes=held.nbytes,
                dtype="uint8",
                shape=[held.nbytes],
                numel=held.nbytes,
                note="no Python tensor points to it: held from C++ (bytes of the storage)",
                weak_ref=held.ref,
            )
        )
    return first


def known_cpp_states(items: list[Item], seen: SeenStorages | None) -> dict[int, Handle]:
    """Per item slot, the library C++ state known to hold that storage, for storages that only
    a reference from outside the Python heap keeps:

    - TorchScript's compilation unit, for storages a snapshot read as graph constants (on the
      CPU frozen weights keep their Python Parameter objects, which C++ holds, so they surface
      as untracked references rather than cpp_held storages);
    - a library whose generated code allocated it (`Recogniser.site_remedy`: inductor's).

    Each state is one holder however many storages it holds; `--prove` then measures whether
    its release frees them."""
    states: dict[int, Handle] = {}
    script = None
    if seen is not None and seen.script_constants:
        remedy = next((r for r in cpp_remedies() if r.recogniser == "torchscript"), None)
        script = remedy_handle(remedy) if remedy is not None else None
    by_label: dict[str, Handle] = {}
    for slot, item in enumerate(items):
        if item.kind != TENSOR:
            continue
        if script is not None and seen is not None and (item.device, item.address) in seen.script_constants:
            states[slot] = script
        elif item.allocated_at:
            remedy = site_remedy(item.allocated_at)
            if remedy is not None:
                states[slot] = by_label.setdefault(remedy.label, remedy_handle(remedy))
    return states


def own_cpp_held(ownership: Ownership, items: list[Item], first: int) -> None:
    """Give the cpp_held items (slots `first` on) their holder: the C++ state a library's
    recogniser names (TorchScript's compilation unit, torch.compile's caches), or else one
    `<held in C++ ...>` holder that says no Python line releases it.

    Which library state holds which storage cannot be read from Python, so each named state
    holds all of them: releasing every one frees them, which `--prove` then measures.
    """
    slots = list(range(first, len(items)))
    if not slots:
        return
    handles = [remedy_handle(remedy) for remedy in cpp_remedies()] or [_unnamed_cpp_handle(len(slots))]
    storages = np.array(slots, dtype=np.int64)
    for slot in slots:
        ownership.owner_sets.append([])
        ownership.example.append((_storage_label(items[slot]), False))
    for handle in handles:
        examples = [(slot, _storage_label(items[slot]), False) for slot in slots[:EXAMPLES_PER_OWNER]]
        index = len(ownership.holders)
        ownership.holders.append(Holder(handle=handle, storages=storages, tensors=len(slots), examples=examples))
        for slot in slots:
            ownership.owner_sets[slot].append(index)


def _storage_label(item: Item) -> str:
    return f"<storage of {item.nbytes:,} bytes at {item.address:#x}, held in C++>"


def _unnamed_cpp_handle(count: int) -> Handle:
    return Handle(
        f"<held in C++: {count} storage{'s' if count != 1 else ''} no Python object points to>",
        UNTRACKED,
        None,
        evaluable=False,
        detail=(
            "alive, but no Python tensor points to these bytes: C++ holds them, e.g. TorchScript's "
            "compilation unit (torch.jit.freeze / trace constants), torch.compile's caches, or a C++ extension"
        ),
        fix="# no Python line releases it: find the C++ owner (TorchScript? torch.compile?)",
        release=Release.never(CPP_STATE),
    )
