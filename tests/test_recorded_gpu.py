"""GPU behaviour, checked on the CPU: reports recorded on H200s (tests/fixtures/gpu/, written by
`scripts/gpu_cases.sh` and `scripts/gpu_tp.sh`, torch 2.11.0+cu130) read back, gated, shown and
merged by today's code through the real CLI. CI has no GPU; these keep what the GPU showed from
being broken by a change to the report model, the gate, the renderers or the merge.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from leakcheck.report.gate import exit_code
from leakcheck.report.model import Report

GPU = Path(__file__).resolve().parent / "fixtures" / "gpu"


def recorded(name: str) -> Report:
    return Report.from_dict(json.loads((GPU / name).read_text()))


def leakcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "leakcheck", *args], capture_output=True, text=True, timeout=120,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )


def test_reduce_overhead_without_reset_is_one_proven_holder():
    """torch.compile(mode="reduce-overhead") kept: its CUDA-graph trees, pool and the int64
    counters only C++ holds are one holder whose documented release frees all of it."""
    report = recorded("h200-cudagraph-trees-seed.json")
    assert exit_code(report) == 1
    assert [(o.path, o.fix) for o in report.owners] == [
        ("torch.compile state (dynamo, inductor, CUDA-graph trees)", "torch._dynamo.reset()")
    ]
    assert report.owners[0].retained_bytes == report.leaked_bytes == 132_403_216
    assert report.proof is not None and report.proof.freed_bytes == report.proof.claimed_bytes == report.leaked_bytes
    shown = leakcheck("show", str(GPU / "h200-cudagraph-trees-seed.json"))
    assert shown.returncode == 1
    assert "torch._dynamo.reset()" in shown.stdout and "proven: 126 MiB of 126 MiB" in shown.stdout


def test_every_later_cycle_of_the_streams_runner_is_named():
    """A runner that warms up on a new stream per load: each later cycle's NVML growth is
    split into categories that name at least 95% of it (the issue's bar; 100% recorded)."""
    for name, workspace_only in (("h200-streams-seed.json", False), ("h200-streams-fixed.json", True)):
        report = recorded(name)
        later = [c for c in report.cycles if c.cycle > 1]
        assert len(later) == 2, name
        for cycle in later:
            named = sum(c.bytes for c in cycle.categories)
            assert cycle.nvml_growth_bytes and named >= 0.95 * cycle.nvml_growth_bytes, (name, cycle)
            workspaces = next(c.bytes for c in cycle.categories if c.name == "cuBLAS workspaces")
            assert workspaces > 0  # a new stream, a new cuBLAS workspace
            if workspace_only:
                assert workspaces == cycle.nvml_growth_bytes
    shown = leakcheck("show", str(GPU / "h200-streams-fixed.json"))
    assert shown.returncode == 0, shown.stderr


def test_tensor_parallel_ranks_merge_to_the_recorded_verdict(tmp_path):
    """`leakcheck merge` of the two ranks' own reports (as `audit_to_file` would write them)
    gives back the combined report the launcher made: every holder on both ranks, the live
    NCCL group counted, exit 1; the fixed run merges to a pass."""
    combined = json.loads((GPU / "h200x2-tp-seed.json").read_text())
    paths = []
    for rank in combined["ranks"]:
        path = tmp_path / f"leak-rank{rank['rank']}.json"
        path.write_text(json.dumps(rank))
        paths.append(str(path))
    out = tmp_path / "merged.json"
    merged = leakcheck("merge", *paths, "--json", str(out))
    assert merged.returncode == 1, merged.stderr
    again = json.loads(out.read_text())
    assert again["leaked_bytes"] == combined["leaked_bytes"] == 2 * 1_207_992_376
    assert again["leaked_process_groups"] == 2
    holders = {o["path"]: o["ranks"] for o in again["owners"]}
    assert holders == {
        "runner.cudagraph_manager": [0, 1], "runner.model_state": [0, 1], "runner.pooling_runner": [0, 1],
        "runner.last_hidden": [0, 1], "runner.tp_group": [0, 1],
    }
    assert "torch.distributed.destroy_process_group(self.tp_group)" in again["release"]
    assert "runner.tp_group" in merged.stdout

    fixed = json.loads((GPU / "h200x2-tp-fixed.json").read_text())
    for rank in fixed["ranks"]:
        (tmp_path / f"fixed-rank{rank['rank']}.json").write_text(json.dumps(rank))
    passed = leakcheck("merge", *(str(tmp_path / f"fixed-rank{r}.json") for r in (0, 1)))
    assert passed.returncode == 0, passed.stdout[-2000:]
