"""The CUDA allocator's snapshot, replayed on a CPU from a recording made on an H200.

tests/fixtures/h200-after-runner-deleted.snapshot.json: the seed MRV2 runner on an H200
(torch 2.11.0+cu130), recorded after the runner itself was dropped: what is left are six
32 MiB cuBLAS workspaces (one inside the CUDA graphs' pool), two rotary caches that the
module-level `_ROPE_DICT` still holds, and the allocator's cache.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from conftest import run_audit
from leakcheck.engine.allocator import AllocatorState, is_library_path, site_label
from leakcheck.engine.reconcile import CACHE, CPP_HELD, GRAPH_POOLS, LEAKED_TENSORS, ORPHAN_POOLS, OUTSIDE, WORKSPACES
from leakcheck.engine.reconcile import reconcile
from leakcheck.report.model import MemorySample, Storage

FIXTURE = Path(__file__).parent / "fixtures" / "h200-after-runner-deleted.snapshot.json"
MiB = 2**20
GRAPH_POOL = (0, 1)


@pytest.fixture
def snapshot() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture
def state(snapshot) -> AllocatorState:
    return AllocatorState.from_snapshot(snapshot)


def test_segments_pools_and_blocks(state):
    assert state.reserved() == 1_725_956_096  # torch.cuda.memory_reserved() at that moment
    assert state.pools() == {GRAPH_POOL: 34 * MiB}
    assert state.pool_active(GRAPH_POOL) == 32 * MiB
    active = state.active_blocks()
    assert sorted(b.size for b in active) == [64 * 1024, 256 * 1024] + [32 * MiB] * 6
    assert state.history


def test_block_lookup_by_address(state):
    block = max(state.active_blocks(), key=lambda b: b.size)
    assert state.block_at(block.address) is block
    assert state.block_at(block.address + block.size - 1) is block
    assert state.block_at(0) is None


def test_allocation_sites_skip_library_frames(state):
    workspace = next(b for b in state.active_blocks() if b.size == 32 * MiB)
    assert workspace.frames[0].filename.endswith("torch/nn/modules/linear.py")  # where torch asked
    assert site_label(workspace.frames).endswith("leakcheck/examples/mrv2.py:57 in forward")  # where the user did
    rope = next(b for b in state.active_blocks() if b.size == 64 * 1024)
    assert site_label(rope.frames).endswith("leakcheck/examples/mrv2.py:31 in __init__")
    assert is_library_path("/usr/lib/python3.12/threading.py")
    assert is_library_path("/opt/venv/lib/python3.12/site-packages/transformers/models/llama/modeling_llama.py")
    assert not is_library_path("/srv/engine/worker/model_runner.py")


class RecordedGraph:
    """Stands in for a torch.cuda.CUDAGraph on a CPU: it names the pool the recording shows."""

    def __init__(self, pool):
        self._pool = pool

    def pool(self):
        return self._pool


class Manager:
    pass


def test_graphs_sharing_a_pool_pin_it_once(baseline, state):
    runner = Manager()
    runner.cudagraph_manager = Manager()
    runner.cudagraph_manager.graphs = {1: RecordedGraph(GRAPH_POOL), 2: RecordedGraph(GRAPH_POOL)}
    runner.unused_graph = RecordedGraph((0, 7))  # a pool the allocator does not know: nothing reserved
    result = run_audit(runner, baseline, allocator=state, pool_types=(RecordedGraph,))
    pools = [s for s in result.storages if s.kind != "tensor"]
    assert len(pools) == 1
    pool = pools[0]
    assert (pool.kind, pool.pool, pool.nbytes, pool.tensors, pool.idle) == ("graph_pool", [0, 1], 34 * MiB, 2, False)
    assert pool.owners == ["runner.cudagraph_manager"]
    assert pool.allocated_at.endswith("mrv2.py:57 in forward")
    assert pool.example == "runner.cudagraph_manager.graphs[1]"
    assert [o.path for o in result.owners] == ["runner.cudagraph_manager"]
    assert result.owners[0].reachable_bytes == result.held_bytes == 34 * MiB
    assert result.sites[0].bytes == 34 * MiB and result.sites[0].owners == ["runner.cudagraph_manager"]


def test_a_pool_with_nothing_allocated_is_flagged_idle(baseline, snapshot):
    idle = copy.deepcopy(snapshot)
    for segment in idle["segments"]:
        if segment["segment_pool_id"] == list(GRAPH_POOL):
            for block in segment["blocks"]:
                block["state"] = "inactive"
    runner = Manager()
    runner.graph = RecordedGraph(GRAPH_POOL)
    result = run_audit(runner, baseline, allocator=AllocatorState.from_snapshot(idle), pool_types=(RecordedGraph,))
    assert result.storages[0].idle and result.storages[0].nbytes == 34 * MiB


def recorded_storages(state: AllocatorState, leaked_sizes: tuple[int, ...]) -> list[Storage]:
    """Leaked tensors as an audit reports them: the recording's blocks of these sizes."""
    return [
        Storage(
            device="cuda:0",
            address=b.address,
            nbytes=b.size,
            dtype="float16",
            shape=[],
            example="",
            owners=["x"],
            tensors=1,
        )
        for b in state.active_blocks()
        if b.size in leaked_sizes
    ]


BASELINE = MemorySample("baseline", nvml_process_bytes=543_162_368, torch_reserved_bytes=0)
COLLECTED = MemorySample("collected", nvml_process_bytes=2_512_388_096, torch_reserved_bytes=1_725_956_096)


def test_reconciliation_names_every_reserved_byte(state):
    workspaces = {b.address for b in state.active_blocks() if b.size == 32 * MiB}
    result = reconcile(state, recorded_storages(state, (64 * 1024, 256 * 1024)), BASELINE, COLLECTED, workspaces)
    sizes = {c.name: c.bytes for c in result.categories}
    assert sizes[LEAKED_TENSORS] == 320 * 1024  # the two rotary caches
    assert sizes[WORKSPACES] == 6 * 32 * MiB  # one of them inside the graphs' pool
    assert sizes[ORPHAN_POOLS] == 2 * MiB  # the graphs are gone; their pool keeps the rest
    assert sizes[GRAPH_POOLS] == 0 and sizes[CPP_HELD] == 0
    assert sizes[LEAKED_TENSORS] + sizes[WORKSPACES] + sizes[ORPHAN_POOLS] + sizes[CACHE] == state.reserved()
    assert result.reserved_named_share == 1.0
    assert sizes[OUTSIDE] == 2_512_388_096 - 543_162_368 - 1_725_956_096
    assert result.nvml_growth_bytes == sum(c.bytes for c in result.categories)
    assert result.growth_named_share == pytest.approx(state.reserved() / result.nvml_growth_bytes)


def test_without_workspace_identification_they_are_unexplained(state):
    result = reconcile(state, recorded_storages(state, ()), BASELINE, COLLECTED, None)
    sizes = {c.name: c.bytes for c in result.categories}
    assert sizes[WORKSPACES] == 0
    assert sizes[CPP_HELD] == 5 * 32 * MiB + 320 * 1024
    cpp = next(c for c in result.categories if c.name == CPP_HELD)
    assert "mrv2.py:57 in forward" in cpp.detail
    assert result.reserved_named_share == pytest.approx(1 - sizes[CPP_HELD] / state.reserved())


def test_cpu_audit_reads_no_allocator(baseline):
    runner = Manager()
    runner.weights = torch.zeros(16)
    result = run_audit(runner, baseline)
    assert result.storages[0].pool is None and result.storages[0].allocated_at is None
    assert not any("history" in note for note in result.notes)


# tests/fixtures/h200-mrv2-live.json: the seed MRV2 runner (fp16, 4 layers) on an H200, audited
# while alive, with the allocator snapshot taken at the same moment (scripts/capture_cuda_snapshot.py).
LIVE = Path(__file__).parent / "fixtures" / "h200-mrv2-live.json"


@pytest.fixture
def live() -> dict:
    return json.loads(LIVE.read_text())


def test_every_leaked_storage_is_an_allocated_block(live):
    state = AllocatorState.from_snapshot(live["snapshot"])
    tensors = [s for s in live["storages"] if s["kind"] == "tensor"]
    assert len(tensors) == 54
    for storage in tensors:
        block = state.block_at(storage["address"])
        assert block is not None and block.active and block.size >= storage["nbytes"]
        # Recorded on another machine: the path prefix differs, the file and line do not.
        assert site_label(block.frames).endswith(storage["allocated_at"])
    assert sum(s["nbytes"] for s in tensors) <= live["allocated"] <= state.reserved() == live["reserved"]


def test_pool_weighing_replays_the_recording(live):
    from leakcheck.engine.inventory import Inventory, Item

    state = AllocatorState.from_snapshot(live["snapshot"])
    inventory = Inventory()
    for index, storage in enumerate(live["storages"]):
        item = Item(**{key: storage[key] for key in ("kind", "address", "nbytes", "pool", "pinned")}, device="cuda:0")
        key = ("pool", tuple(storage["pool"])) if storage["kind"] != "tensor" else ("cuda:0", storage["address"])
        inventory.add(key, index, item)
    leaked = inventory.weigh(state)
    pool = next(item for item in inventory.items if item.kind == "graph_pool")
    recorded = next(s for s in live["storages"] if s["kind"] == "graph_pool")
    assert pool.nbytes == recorded["nbytes"] == 35_636_224
    assert pool.allocated_at.endswith(recorded["allocated_at"])
    assert not pool.idle
    # What the device gets back: whole segments that only leaked blocks keep, nothing more.
    tensors = [item for item in inventory.items if item.kind == "tensor"]
    leaked_addresses = {item.address for item in tensors}
    returned = 0
    for segment in state.segments:
        active = [b.address for b in segment.blocks if b.active]
        if segment.pool == (0, 0) and active and set(active) <= leaked_addresses:
            returned += segment.total_size
    assert returned > 0
    assert sum(item.reserved for item in tensors) == pytest.approx(returned, abs=len(tensors))  # integer shares
    assert all(item.reserved in (0,) or item.reserved >= item.nbytes for item in tensors)
    assert sum(item.reserved for item in inventory.items) <= state.reserved()
    assert int(leaked.nbytes.sum()) == sum(s["nbytes"] for s in live["storages"])


def test_live_reconciliation_names_what_torch_reserves(live):
    state = AllocatorState.from_snapshot(live["snapshot"])
    storages = [Storage(**{**s, "reserved_bytes": s.get("reserved_bytes", 0)}) for s in live["storages"]]
    result = reconcile(state, storages, BASELINE, COLLECTED, workspaces=None)
    sizes = {c.name: c.bytes for c in result.categories}
    assert sizes[GRAPH_POOLS] == 35_636_224
    assert sizes[LEAKED_TENSORS] >= sum(s.nbytes for s in storages if s.kind == "tensor")
    # Without naming workspaces, what no tensor explains: the main stream's 32 MiB cuBLAS
    # workspace, allocated inside the first matrix product, and two 512-byte blocks CUDA
    # graph capture keeps for itself.
    assert sizes[CPP_HELD] == 32 * MiB + 2 * 512
    assert "mrv2.py:" in next(c for c in result.categories if c.name == CPP_HELD).detail
    # The recording also cleared cuBLAS workspaces and noted which blocks that released.
    named = reconcile(state, storages, BASELINE, COLLECTED, workspaces=set(live["workspaces"]))
    sizes = {c.name: c.bytes for c in named.categories}
    assert sizes[WORKSPACES] == 2 * 32 * MiB and sizes[CPP_HELD] == 2 * 512  # one in the graphs' pool
    assert sizes[GRAPH_POOLS] == 35_636_224 - 32 * MiB
    assert named.reserved_named_share > 0.99999


def test_segments_pinned_by_leaks(live):
    from leakcheck.engine.reconcile import pinned_by_leaks

    state = AllocatorState.from_snapshot(live["snapshot"])
    storages = [Storage(**s) for s in live["storages"]]
    pinned = pinned_by_leaks(state, storages)
    pool = next(s for s in storages if s.kind == "graph_pool")
    assert pool.nbytes < pinned <= state.reserved()
    # Forgetting the graphs leaves their pool out; forgetting the tensors leaves only the pool.
    tensors_only = pinned_by_leaks(state, [s for s in storages if s.kind == "tensor"])
    assert tensors_only == pinned - state.pools()[(0, 1)]
    assert pinned_by_leaks(state, [pool]) == state.pools()[(0, 1)]
    assert pinned_by_leaks(state, []) == 0
