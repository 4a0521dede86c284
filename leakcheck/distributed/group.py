"""The audited process of one rank joins the default process group before `baseline`.

The group is created by leakcheck, not the runner, so it belongs to the baseline: what the
runner must release is what it creates after (its own groups, their communicators, the
buffers its collectives allocate). NCCL creates a communicator lazily, at a group's first
collective, so its memory shows in the phase that first communicates, not here.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Callable
from typing import Any

from leakcheck.distributed import BACKEND_ENV

LAZY_COMMUNICATORS = (
    "NCCL communicators are created lazily, at a group's first collective: their device memory "
    "shows in the phase that first communicates (warm-up), not at baseline"
)


def launched_backend() -> str | None:
    """The backend this process was launched to join (by `leakcheck run --nproc`), or None."""
    return os.environ.get(BACKEND_ENV) or None


def join_launched_group(device: str, limit_s: float | None, note: Callable[[str], None]) -> dict[str, int]:
    """Initialise the default process group when this process is a rank of `--nproc`.

    Returns {"rank": r, "world_size": n} (empty when not launched as a rank). The rendezvous
    waits at most `limit_s` (the load phase's limit): a rank that never comes must not
    hang the others forever.
    """
    backend = launched_backend()
    if backend is None:
        return {}
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=limit_s) if limit_s else datetime.timedelta(minutes=30)
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    where = f"local rank {os.environ.get('LOCAL_RANK', '?')}, {device}"
    note(
        f"rank {rank} of {world} ({where}): leakcheck initialised the default process group ({backend}) "
        "before baseline, so it is not counted"
        + (f"; {LAZY_COMMUNICATORS}" if backend == "nccl" else "")
    )
    return {"rank": rank, "world_size": world}


def rank_arguments(factory: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """`rank` and `world_size` for a factory that has such parameters (and args do not set),
    when the default process group is up."""
    if launched_backend() is None:
        return {}
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    import torch.distributed as dist

    if not dist.is_initialized():
        return {}
    given = {"rank": dist.get_rank(), "world_size": dist.get_world_size()}
    return {name: value for name, value in given.items() if name in parameters and name not in args}


def child_note(pid: int) -> str:
    """The note of an isolated run's child: for a rank of `--nproc`, which rank of how many
    (every rank runs isolated, so "of leakcheck --isolate" would name a flag nobody gave)."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if launched_backend() is not None and rank is not None and world is not None:
        return f"rank {rank} of {world}: audited in a child process (pid {pid}) of its rank, so a crash leaves a report"
    return f"ran in a child process (pid {pid}) of leakcheck --isolate"
