"""`leakcheck.audit_to_file`: for engines that start their own workers (vLLM's
`collective_rpc`, Ray actors, multiprocessing executors), where leakcheck cannot launch the
ranks itself. Each worker calls it at the end of its `shutdown()`; `leakcheck merge
leak-rank*.json` then combines the files into one report and verdict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leakcheck.report.model import Report, RunError


def current_rank() -> tuple[int, int | None]:
    """(rank, world size) from the default process group, else from torchrun's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    world = os.environ.get("WORLD_SIZE")
    return int(os.environ.get("RANK", "0")), int(world) if world and world.isdigit() else None


def audit_to_file(
    runner: object | None,
    path: str | os.PathLike[str] = "leak-rank{rank}.json",
    baseline: Any = None,
    *,
    device: str | None = None,
    name: str | None = None,
    max_leaked_bytes: int = 0,
    allow: list[str] | None = None,
) -> Report:
    """Audit this process now and write the JSON report to `path` (`{rank}` is this rank).

    baseline: `leakcheck.take_baseline(device)` from before the worker built its runner; its
        storages are not counted (without one, everything alive on the device counts).
    device: the audited device; default: the baseline's.
    Never raises for a failed audit: the file then holds an error report, which fails the
    merge, so a worker's shutdown() is not broken by its own audit.
    """
    from leakcheck.config import Config, Gate, RunnerSpec
    from leakcheck.lifecycle.record import Lifecycle
    from leakcheck.outputs import write_atomic
    from leakcheck.renderers.json_report import to_json
    from leakcheck.report.build import build_report

    rank, world = current_rank()
    target = Path(str(path).format(rank=rank))
    audited = device or (baseline.device if baseline is not None else "cpu")
    config = Config(
        name=name or f"{type(runner).__name__} rank {rank}",
        device="cpu" if audited == "cpu" else "cuda",
        runner=RunnerSpec(factory="leakcheck:audit_to_file"),
        gate=Gate(max_leaked_bytes=max_leaked_bytes, allow=list(allow or [])),
    )
    lifecycle = Lifecycle(device=audited)
    lifecycle.set_environment("rank", rank)
    try:
        from leakcheck.engine.audit import audit

        lifecycle.add_audit(audit(runner, audited, baseline, caller_frames=False))
    except Exception as exc:  # noqa: BLE001 - the worker's shutdown() must go on; the file says why
        lifecycle.fail(RunError(phase="audit", type=type(exc).__name__, message=str(exc)[:500] or type(exc).__name__))
    report = build_report(config, lifecycle)
    report.rank, report.world_size = rank, world
    report.notes.append(f"written by leakcheck.audit_to_file in process {os.getpid()} (rank {rank})")
    write_atomic(target, to_json(report))
    return report
