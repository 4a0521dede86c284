"""PyTorch's CUDA caching allocator, read from `torch.cuda.memory._snapshot()`.

What the heap cannot tell: which bytes a CUDA graph's private pool still reserves, where a
block was allocated (the Python stack recorded with it), which stream allocated it, and what
the allocator holds that no Python tensor explains (cuBLAS workspaces, blocks kept from C++,
its own cache).
Everything here works on the snapshot's plain dicts, so recorded snapshots replay on a CPU.
"""

from __future__ import annotations

import bisect
import os
import re
import sys
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from leakcheck.engine import torch_internals

DEFAULT_POOL = (0, 0)
ACTIVE = ("active_allocated", "active_pending_free")
HISTORY_ENTRIES = 200_000


@dataclass(frozen=True)
class Frame:
    filename: str
    line: int
    name: str

    def __str__(self) -> str:
        return f"{self.filename}:{self.line} in {self.name}"


@dataclass
class Block:
    address: int
    size: int
    state: str
    pool: tuple[int, int]
    frames: list[Frame] = field(default_factory=list)
    stream: int = 0  # the stream its segment was allocated on (0: the default stream)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


@dataclass
class Segment:
    address: int
    total_size: int
    pool: tuple[int, int]
    blocks: list[Block]
    frames: list[Frame] = field(default_factory=list)
    stream: int = 0  # the caching allocator keeps each stream's segments apart

    @property
    def active_size(self) -> int:
        return sum(b.size for b in self.blocks if b.active)

    def kept_only_by(self, addresses: set[int] | dict[int, object]) -> bool:
        """Whether `empty_cache()` would release this segment once these blocks are freed."""
        active = [b.address for b in self.blocks if b.active]
        return bool(active) and all(address in addresses for address in active)


@dataclass
class AllocatorState:
    """One device's segments and blocks, indexed by address."""

    device: int
    segments: list[Segment]
    history: bool = False  # whether blocks carry allocation stacks
    # Active blocks the size of a cuBLAS(Lt) workspace inside a private pool: made while a
    # graph was being captured, kept by torch's per-stream workspace map, so releasing the
    # graph does not free them (see `workspaces_in_pools`).
    pool_workspaces: set[int] = field(default_factory=set)
    _starts: list[int] = field(default_factory=list, repr=False)
    _blocks: list[Block] = field(default_factory=list, repr=False)

    @classmethod
    def from_snapshot(cls, snapshot: dict, device: int = 0, workspace_sizes: Iterable[int] = ()) -> AllocatorState:
        """`workspace_sizes`: the sizes torch gives cuBLAS and cuBLASLt workspaces on this
        device, to tell the workspaces captured into graph pools (none told when empty)."""
        segments = []
        for raw in snapshot.get("segments", []):
            if raw.get("device", device) != device:
                continue
            pool = tuple(raw.get("segment_pool_id", DEFAULT_POOL))
            stream = int(raw.get("stream", 0) or 0)
            blocks = []
            address = raw["address"]
            for block in raw.get("blocks", []):
                start = block.get("address", address)
                frames = _frames(block.get("frames"))
                blocks.append(Block(start, block["size"], block["state"], pool, frames, stream))
                address = start + block["size"]
            frames = _frames(raw.get("frames"))
            segments.append(Segment(raw["address"], raw["total_size"], pool, blocks, frames, stream))
        state = cls(device=device, segments=segments)
        state.pool_workspaces = workspaces_in_pools(segments, set(workspace_sizes))
        state._blocks = sorted((b for s in segments for b in s.blocks), key=lambda b: b.address)
        state._starts = [b.address for b in state._blocks]
        state.history = any(b.frames for b in state._blocks if b.active)
        return state

    @classmethod
    def capture(cls, device: str) -> AllocatorState:
        """Read the live allocator; a CPU-side call that allocates nothing on the device."""
        index = torch.device(device).index or 0
        return cls.from_snapshot(torch.cuda.memory._snapshot(), index, torch_internals.cublas_workspace_sizes())

    def block_at(self, address: int) -> Block | None:
        """The block holding `address` (a storage's data pointer)."""
        position = bisect.bisect_right(self._starts, address) - 1
        if position < 0:
            return None
        block = self._blocks[position]
        return block if block.address <= address < block.address + block.size else None

    def active_blocks(self) -> list[Block]:
        return [b for b in self._blocks if b.active]

    def reserved(self, pool: tuple[int, int] | None = None) -> int:
        return sum(s.total_size for s in self.segments if pool is None or s.pool == pool)

    def pools(self) -> dict[tuple[int, int], int]:
        """Reserved bytes of each private pool (CUDA graphs, MemPools) that its owner frees.

        A cuBLAS workspace captured into the pool is not among them: torch's workspace map
        keeps it, so releasing the graph leaves it (and its segment's spare room) reserved.
        """
        result: dict[tuple[int, int], int] = {}
        for segment in self.segments:
            if segment.pool != DEFAULT_POOL:
                result[segment.pool] = (
                    result.get(segment.pool, 0) + segment.total_size - self.kept_by_workspace(segment)
                )
        return result

    def pool_active(self, pool: tuple[int, int]) -> int:
        """Bytes allocated in a pool, less the workspaces torch keeps there."""
        return sum(
            sum(b.size for b in s.blocks if b.active and b.address not in self.pool_workspaces)
            for s in self.segments
            if s.pool == pool
        )

    def kept_by_workspace(self, segment: Segment) -> int:
        """The part of a pool segment a captured workspace keeps reserved after the pool's
        owner goes: all of it but the other live blocks (the segment cannot be released)."""
        if not any(b.address in self.pool_workspaces for b in segment.blocks):
            return 0
        return segment.total_size - sum(
            b.size for b in segment.blocks if b.active and b.address not in self.pool_workspaces
        )

    def pool_frames(self, pool: tuple[int, int]) -> list[Frame]:
        """Where a pool's memory was first asked for: its largest segment's stack."""
        segments = sorted((s for s in self.segments if s.pool == pool), key=lambda s: -s.total_size)
        for segment in segments:
            if segment.frames:
                return segment.frames
            for block in segment.blocks:
                if block.frames:
                    return block.frames
        return []


def workspaces_in_pools(segments: list[Segment], sizes: set[int]) -> set[int]:
    """Active blocks in private pools whose size is a cuBLAS workspace's.

    The size is what can be told without freeing anything (telling them for certain means
    clearing torch's workspaces, which `phases._reconcile` does only after the last phase).
    """
    if not sizes:
        return set()
    return {
        block.address
        for segment in segments
        if segment.pool != DEFAULT_POOL
        for block in segment.blocks
        if block.active and block.size in sizes
    }


def _frames(raw: Iterable[dict] | None) -> list[Frame]:
    return [Frame(f.get("filename", "?"), int(f.get("line", 0)), f.get("name", "?")) for f in raw or []]


def start_history(max_entries: int = HISTORY_ENTRIES) -> str | None:
    """Record the allocation stack of every live block from now on; returns why not, or None."""
    return torch_internals.record_allocator_history(max_entries)


def stop_history() -> None:
    torch_internals.stop_allocator_history()


_LIBRARY_DIRS = tuple(
    os.path.join(os.path.abspath(p), "")
    for p in {os.path.dirname(torch.__file__), sysconfig.get_paths().get("stdlib", ""), os.path.dirname(os.__file__)}
    if p
)
# Recorded stacks come from other machines too: recognise libraries by path shape as well.
_LIBRARY_PACKAGES = {"torch", "transformers", "accelerate", "triton", "safetensors"}
_STDLIB = re.compile(r"[/\\]lib[/\\]python3\.\d+[/\\](?!site-packages|dist-packages)")


def is_library_path(path: str) -> bool:
    """Frames of torch, transformers and the standard library: never "where the user allocated"."""
    from leakcheck.engine.roots import is_own_code

    if not path or path.startswith("<"):
        return True
    absolute = os.path.abspath(path)
    if absolute.startswith(_LIBRARY_DIRS) or is_own_code(absolute) or _STDLIB.search(absolute):
        return True
    parts = absolute.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = parts.index(marker)
            if index + 1 < len(parts) and parts[index + 1] in _LIBRARY_PACKAGES:
                return True
    return False


def user_frame(frames: list[Frame]) -> Frame | None:
    """The innermost frame in the user's code: not torch, transformers or the standard library."""
    return next((frame for frame in frames if not is_library_path(frame.filename)), None)


def site_label(frames: list[Frame]) -> str | None:
    frame = user_frame(frames)
    if frame is None:
        return None
    return f"{_short(frame.filename)}:{frame.line} in {frame.name}"


def _short(path: str) -> str:
    """Paths relative to the working directory or a sys.path entry, as a developer reads them."""
    absolute = os.path.normpath(os.path.abspath(path))
    bases = sorted({os.getcwd(), *(p for p in sys.path if p)}, key=len, reverse=True)
    for base in bases:
        base = os.path.join(os.path.abspath(base), "")
        if absolute.startswith(base):
            return absolute[len(base) :]
    return path
