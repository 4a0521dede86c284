"""Each later cycle's NVML growth, split into the final reconciliation's categories.

There is no GPU here: the allocator states are snapshots in the format
`torch.cuda.memory._snapshot()` returns (segments with their stream and pool, blocks with
their state and frames), written out for a runner that warms up on a new stream per load and
captures a CUDA graph, as on an H100: per load, a new 32 MiB cuBLAS workspace on the new
stream, 40 MiB of leaked weights, and a 2 MiB graph pool; the first capture also put a
workspace into its graph's pool. One real CPU run checks the report's shape.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import leakcheck
from conftest import run_audit
from leakcheck.cli import app
from leakcheck.engine.allocator import AllocatorState
from leakcheck.engine.reconcile import (
    CACHE,
    CPP_HELD,
    GRAPH_POOLS,
    LEAKED_SEGMENTS,
    ORPHAN_POOLS,
    OUTSIDE,
    WORKSPACES,
    cycle_split,
    pinned_by_leaks,
    reconcile,
)
from leakcheck.lifecycle.phases import _split_cycles
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.renderers.markdown import to_markdown
from leakcheck.renderers.terminal import render
from leakcheck.report.model import Audit, Category, Cycle, MemorySample, Report, Storage

MiB = 2**20
WORKSPACE = 32 * MiB
CAPTURE_STREAM = 0x5000
SITE = [{"filename": "/srv/runner/streams.py", "line": 51, "name": "warm_up"}]
FIXTURE = Path(__file__).parent / "fixtures" / "h200-after-runner-deleted.snapshot.json"


def segment(address, blocks, stream=0, pool=(0, 0)):
    """One segment as torch's snapshot writes it; blocks are (size, state) from `address` on."""
    out, at = [], address
    for size, state in blocks:
        out.append({"address": at, "size": size, "requested_size": size, "state": state, "frames": SITE})
        at += size
    total = sum(size for size, _ in blocks)
    active = sum(size for size, state in blocks if state.startswith("active"))
    return {
        "device": 0,
        "address": address,
        "total_size": total,
        "allocated_size": active,
        "active_size": active,
        "requested_size": active,
        "stream": stream,
        "segment_type": "large",
        "segment_pool_id": list(pool),
        "is_expandable": False,
        "frames": SITE,
        "blocks": out,
    }


def load_segments(load: int):
    """What load `load` (1-based) leaves after its `collected`: its stream's workspace, its
    40 MiB weights, its graph's 2 MiB pool (the first capture's pool also holds a workspace)."""
    base = 0x7F00_0000_0000 + load * 0x1000_0000
    stream = 0x1000 * load
    segments = [
        segment(base, [(WORKSPACE, "active_allocated")], stream=stream),
        segment(base + 0x400_0000, [(40 * MiB, "active_allocated")]),
        segment(base + 0x800_0000, [(1 * MiB, "active_allocated"), (1 * MiB, "inactive")], pool=(0, load)),
    ]
    if load == 1:
        segments.append(segment(base + 0xC00_0000, [(WORKSPACE, "active_allocated")], CAPTURE_STREAM, (0, 1)))
    return segments


def state_after(loads: int, workspace_sizes=()) -> AllocatorState:
    segments = [s for load in range(1, loads + 1) for s in load_segments(load)]
    segments.append(segment(0x7E00_0000_0000, [(512, "active_allocated"), (2 * MiB - 512, "inactive")]))
    return AllocatorState.from_snapshot({"segments": segments}, 0, workspace_sizes)


def leaked(load: int) -> list[Storage]:
    """What the audit of load `load` found: the weights, the graph's 1 MiB output, its pool."""
    base = 0x7F00_0000_0000 + load * 0x1000_0000
    tensor = dict(device="cuda:0", dtype="float32", shape=[], example="", owners=["runner.model"], tensors=1)
    return [
        Storage(address=base + 0x400_0000, nbytes=40 * MiB, **tensor),
        Storage(address=base + 0x800_0000, nbytes=1 * MiB, **tensor),
        Storage(
            device="cuda:0",
            address=0,
            nbytes=1 * MiB,
            dtype="",
            shape=[],
            example="",
            owners=["runner.graph"],
            tensors=1,
            kind="graph_pool",
            pool=[0, load],
        ),
    ]


def workspace_addresses(loads: int) -> set[int]:
    """What clearing torch's workspaces after the last phase released."""
    state = state_after(loads)
    return {b.address for b in state.active_blocks() if b.size == WORKSPACE}


def sizes(categories: list[Category]) -> dict[str, int]:
    return {c.name: c.bytes for c in categories}


def test_a_later_cycle_growth_is_named_by_category_with_the_new_stream():
    growth = 32 * MiB + 40 * MiB + 2 * MiB + 3 * MiB  # 3 MiB outside the allocator (kernels, handles)
    categories, share = cycle_split(
        state_after(1), state_after(2), leaked(1), leaked(1) + leaked(2), growth, workspace_addresses(3)
    )
    split = sizes(categories)
    assert split[LEAKED_SEGMENTS] == 40 * MiB + 1 * MiB  # the weights' segment, and the graph's output block
    assert split[WORKSPACES] == WORKSPACE  # the new stream's workspace, not the runner's
    assert split[GRAPH_POOLS] == 1 * MiB and split[ORPHAN_POOLS] == 0
    assert split[CACHE] == 0 and split[CPP_HELD] == 0
    assert split[OUTSIDE] == 3 * MiB
    assert sum(split.values()) == growth
    assert share == pytest.approx((growth - 3 * MiB) / growth) and share >= 0.95
    detail = next(c.detail for c in categories if c.name == WORKSPACES)
    assert f"stream {0x2000:#x}: 1 ({WORKSPACE:,} B)" in detail
    assert "streams.py:51 in warm_up" in detail


def test_every_later_cycle_of_three_is_named_at_least_95_percent():
    collected = [MemorySample("collected", cycle=n, nvml_process_bytes=500 * MiB + n * 77 * MiB) for n in (1, 2, 3)]
    lifecycle = Lifecycle(device="cuda:0", memory=[MemorySample("baseline", nvml_process_bytes=500 * MiB), *collected])
    for load in (1, 2, 3):
        lifecycle.audits.append(Audit("cuda:0", [], leaked(load), [], 0, 0, 0, 0, 0))
    _split_cycles([state_after(1), state_after(2), state_after(3)], workspace_addresses(3), lifecycle)
    assert sorted(lifecycle.cycle_categories) == [2, 3]
    for cycle in (2, 3):
        categories, share = lifecycle.cycle_categories[cycle]
        assert sizes(categories)[WORKSPACES] == WORKSPACE
        assert share is not None and share >= 0.95


def test_without_clearing_only_workspaces_captured_into_pools_are_told():
    # The capture stream's workspace lives in graph 1's pool: told by its size alone.
    before, after = state_after(1, {WORKSPACE}), state_after(2, {WORKSPACE})
    assert before.pool_workspaces == {b.address for b in before.active_blocks() if b.stream == CAPTURE_STREAM}
    categories, _ = cycle_split(before, after, leaked(1), leaked(1) + leaked(2), None, None)
    split = sizes(categories)
    assert split[WORKSPACES] == 0  # the new stream's workspace is not told without clearing...
    assert split[CPP_HELD] == WORKSPACE  # ...so it is what no tensor explains, not a leak of the runner
    assert OUTSIDE not in split  # no NVML here: no outside figure, no share
    assert "told apart (by their size)" in next(c.detail for c in categories if c.name == WORKSPACES)


def test_workspace_captured_into_a_graph_pool_is_not_the_graph_owners(baseline):
    """The H200 recording: a 32 MiB workspace inside the graphs' 34 MiB pool. Deleting the graph
    does not free it, so the graph's owner is charged with the 2 MiB its release gives back."""
    snapshot = json.loads(FIXTURE.read_text())
    plain = AllocatorState.from_snapshot(snapshot)
    told = AllocatorState.from_snapshot(snapshot, 0, {WORKSPACE})
    assert plain.pools() == {(0, 1): 34 * MiB}
    assert told.pools() == {(0, 1): 2 * MiB}
    assert len(told.pool_workspaces) == 1

    class RecordedGraph:
        def pool(self):
            return (0, 1)

    class Runner:
        pass

    runner = Runner()
    runner.graphs = [RecordedGraph()]
    result = run_audit(runner, baseline, allocator=told, pool_types=(RecordedGraph,))
    pool = next(s for s in result.storages if s.kind == "graph_pool")
    assert pool.nbytes == 2 * MiB
    assert result.owner("runner.graphs").retained_bytes == 2 * MiB
    # What the device gets back when the graph goes: not the workspace's segment.
    assert pinned_by_leaks(told, [pool]) == 2 * MiB
    # The final reconciliation, without clearing, still charges that workspace to workspaces.
    rec = reconcile(told, [pool], MemorySample("baseline"), MemorySample("collected"), None)
    assert sizes(rec.categories)[WORKSPACES] == WORKSPACE
    assert sizes(rec.categories)[GRAPH_POOLS] == 2 * MiB


def test_cycle_categories_survive_the_journal_and_the_json_report():
    events: list[dict] = []
    lifecycle = Lifecycle(device="cuda:0", journal=events.append)
    categories = [Category(WORKSPACES, WORKSPACE, "new on 1 stream(s)"), Category(OUTSIDE, 2 * MiB)]
    lifecycle.set_cycle_categories(2, categories, 0.94)
    replayed = Lifecycle.replay(json.loads(json.dumps(events)))
    assert replayed.cycle_categories == {2: (categories, 0.94)}
    report = Report(name="r", device="cuda:0", verdict="pass", leaked_bytes=0, max_leaked_bytes=0)
    report.cycles = [Cycle(1, 10, 10, 0), Cycle(2, 34 * MiB, 32 * MiB, 0, 0, categories, 0.94)]
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.cycles[1].categories == categories and again.cycles[1].growth_named_share == 0.94
    assert again.cycles[0].categories == []


def rendered(report: Report) -> str:
    console = Console(width=80, record=True, color_system=None)
    render(report, console)
    return console.export_text()


def test_the_split_renders_within_80_columns():
    growth = 77 * MiB
    categories, share = cycle_split(
        state_after(1), state_after(2), leaked(1), leaked(1) + leaked(2), growth, workspace_addresses(3)
    )
    report = Report(name="streams-seed", device="cuda:0", verdict="fail", leaked_bytes=41 * MiB, max_leaked_bytes=0)
    report.cycles = [
        Cycle(1, 600 * MiB, 100 * MiB, 41 * MiB),
        Cycle(2, growth, 74 * MiB, 41 * MiB, 0, categories, share),
    ]
    text = rendered(report)
    assert "Growth per later cycle, by category" in text
    assert re.search(r"cuBLAS workspaces\s.*\+32\.0 MiB", text)
    assert f"cycle 2 {share:.1%}" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    markdown = to_markdown(report)
    assert "| cuBLAS workspaces | +32.0 MiB |" in markdown
    assert f"| named share of NVML growth | {share:.1%} |" in markdown


@pytest.fixture
def restored_sys_path(monkeypatch):
    """leakcheck puts the config's folder first on sys.path; later tests' paths must not be
    shortened against the examples folder."""
    monkeypatch.setattr(sys, "path", list(sys.path))


def test_cpu_run_of_the_stream_example_with_three_cycles(tmp_path, restored_sys_path):
    config = Path(leakcheck.__file__).parent / "examples" / "streams-seed.yaml"
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["run", str(config), "--device", "cpu", "--json", str(out), "--no-prove"])
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert [c["cycle"] for c in report["cycles"]] == [1, 2, 3]
    assert all(c["categories"] == [] and c["growth_named_share"] is None for c in report["cycles"])
    assert {o["path"] for o in report["owners"]} >= {"leakcheck.examples.streams._WARMED"}
    text = rendered(Report.from_dict(report))
    assert "Growth per later cycle" not in text  # nothing to split on a CPU
    assert max(len(line) for line in text.splitlines()) <= 80
    fixed = Path(leakcheck.__file__).parent / "examples" / "streams-fixed.yaml"
    result = CliRunner().invoke(app, ["run", str(fixed), "--device", "cpu", "--no-prove"])
    assert result.exit_code == 0, result.output
