#!/usr/bin/env python3
"""Record, on a GPU, what the CPU tests replay: an allocator snapshot joined with an audit.

Runs a config through the whole lifecycle with CUDA allocation history on, then writes to
OUT_DIR: the JSON report, the allocator snapshot (`torch.cuda.memory._snapshot()`) as a
pickle, and the live CUDA graphs' pool ids. Used to build tests/fixtures/.

    python scripts/capture_cuda_snapshot.py leakcheck/examples/mrv2-seed-cuda.yaml OUT_DIR
"""

from __future__ import annotations

import gc
import json
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from leakcheck.config import load_config  # noqa: E402
from leakcheck.lifecycle.phases import run_lifecycle  # noqa: E402
from leakcheck.renderers.json_report import to_json  # noqa: E402
from leakcheck.report.build import build_report  # noqa: E402


def main() -> None:
    config_path, out_dir = sys.argv[1], sys.argv[2]
    os.makedirs(out_dir, exist_ok=True)
    config = load_config(config_path)
    torch.cuda.memory._record_memory_history(enabled="all", context="all", stacks="python", max_entries=100_000)
    lifecycle = run_lifecycle(config)
    report = build_report(config, lifecycle)
    snapshot = torch.cuda.memory._snapshot()
    graphs = [
        {"type": type(o).__name__, "pool": list(o.pool()) if hasattr(o, "pool") else None}
        for o in gc.get_objects()
        if isinstance(o, torch.cuda.CUDAGraph)
    ]
    torch.cuda.memory._record_memory_history(enabled=None)
    name = config.name
    with open(os.path.join(out_dir, f"{name}.report.json"), "w") as out:
        out.write(to_json(report))
    with open(os.path.join(out_dir, f"{name}.snapshot.pickle"), "wb") as out:
        pickle.dump(snapshot, out)
    with open(os.path.join(out_dir, f"{name}.graphs.json"), "w") as out:
        json.dump(
            {
                "graphs": graphs,
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(),
                "reserved": torch.cuda.memory_reserved(),
                "allocated": torch.cuda.memory_allocated(),
            },
            out,
            indent=1,
        )
    segments = snapshot["segments"]
    print(
        f"{name}: verdict {report.verdict}, leaked {report.leaked_bytes:,} B, {len(segments)} segments, "
        f"pools {sorted({tuple(s.get('segment_pool_id', ())) for s in segments})}, live graphs {len(graphs)}"
    )


if __name__ == "__main__":
    main()
