#!/usr/bin/env python3
"""Record, on a GPU, what the CPU tests replay: an allocator snapshot joined with a live audit.

Builds the MRV2 example on CUDA with allocation history on, warms it up, calls the seed
shutdown(), audits it while the runner is alive, and writes to OUT_DIR/mrv2-cuda.json: the
trimmed allocator snapshot (segments, blocks, top frames), the audit's storages and owners,
and each live CUDA graph's pool id. tests/fixtures/ holds one such recording.

    python scripts/capture_cuda_snapshot.py OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from leakcheck import audit, take_baseline  # noqa: E402
from leakcheck.engine.allocator import start_history, stop_history  # noqa: E402
from leakcheck.examples import mrv2  # noqa: E402

FRAMES_KEPT = 10


def trim_frames(frames: list[dict] | None) -> list[dict]:
    return [{"filename": f["filename"], "line": f["line"], "name": f["name"]} for f in (frames or [])[:FRAMES_KEPT]]


def trim_snapshot(snapshot: dict) -> dict:
    """Only what leakcheck reads: segments, blocks and their allocation stacks."""
    segments = []
    for segment in snapshot["segments"]:
        segments.append(
            {
                "device": segment["device"],
                "address": segment["address"],
                "total_size": segment["total_size"],
                "segment_pool_id": list(segment["segment_pool_id"]),
                "frames": trim_frames(segment.get("frames")),
                "blocks": [
                    {
                        "address": b["address"],
                        "size": b["size"],
                        "state": b["state"],
                        "frames": trim_frames(b.get("frames")),
                    }
                    for b in segment["blocks"]
                ],
            }
        )
    traces = snapshot.get("device_traces") or []
    return {"segments": segments, "trace_entries": [len(t) for t in traces]}


def main() -> None:
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.cuda.init()
    torch.cuda.synchronize()
    start_history()
    baseline = take_baseline("cuda:0")
    runner = mrv2.build(variant="seed", device="cuda:0", dtype="float16", hidden=512, layers=4, heads=8, vocab=8192)
    runner.execute_model(steps=2)
    runner.shutdown()
    torch.cuda.synchronize()
    result = audit(runner, "cuda:0", baseline, caller_frames=False)
    snapshot = torch.cuda.memory._snapshot()
    graphs = [list(g.pool()) for g in runner.cudagraph_manager.graphs.values()]
    active = {b["address"] for s in snapshot["segments"] for b in s["blocks"] if b["state"] == "active_allocated"}
    torch._C._cuda_clearCublasWorkspaces()
    after = torch.cuda.memory._snapshot()["segments"]
    workspaces = sorted(active - {b["address"] for s in after for b in s["blocks"] if b["state"] == "active_allocated"})
    stop_history()
    recording = {
        "recorded_on": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__},
        "snapshot": trim_snapshot(snapshot),
        "graph_pools": graphs,
        "workspaces": workspaces,  # blocks torch._C._cuda_clearCublasWorkspaces() released
        "storages": [s.__dict__ for s in result.storages],
        "owners": [
            {"path": o.path, "reachable_bytes": o.reachable_bytes, "retained_bytes": o.retained_bytes}
            for o in result.owners
        ],
        "sites": [s.__dict__ for s in result.sites],
        "reserved": torch.cuda.memory_reserved(),
        "allocated": torch.cuda.memory_allocated(),
    }
    path = os.path.join(out_dir, "mrv2-cuda.json")
    with open(path, "w") as out:
        json.dump(recording, out, indent=1)
    pools = {tuple(p) for p in graphs}
    print(
        f"recorded {path}: {len(result.storages)} storages, graph pools {sorted(pools)}, "
        f"{len(recording['snapshot']['segments'])} segments, {os.path.getsize(path):,} bytes"
    )


if __name__ == "__main__":
    main()
