"""`leakcheck run CONFIG --nproc N`: N ranks through torch's elastic launcher, one verdict.

The launcher (torch.distributed.launcher.api, the engine behind torchrun) starts
`python -m leakcheck.distributed.rank` once per rank with RANK, WORLD_SIZE, LOCAL_RANK and
a rendezvous store; each rank's audited process joins the default group before `baseline`
(distributed/group.py) and writes its report to a file in a private folder. This process
reads the files, merges them (distributed/merge.py) and writes, renders and gates one report.
Nothing travels over the device: the reports are files.

Two nodes are torchrun's own rendezvous: run `python -m torch.distributed.run --nnodes 2
--nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:29400 -m leakcheck.distributed.rank
DIR BACKEND cuda CONFIG` on each node, then `leakcheck merge DIR/rank*.json` (see README).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from leakcheck.config import Config, ConfigError, Distributed
from leakcheck.distributed.merge import merge_reports, missing_rank
from leakcheck.distributed.rank import REPORT_NAME
from leakcheck.outputs import RUNNING, placeholder_error
from leakcheck.present import present
from leakcheck.renderers.progress import progress
from leakcheck.report.model import Report, ReportInputError, read_report

if TYPE_CHECKING:
    from leakcheck.cli import RunRequest

MONITOR_INTERVAL_S = 0.2


def with_nproc(config: Config, nproc: int | None) -> Config:
    """`--nproc N` over the config's `distributed:` (its backend kept)."""
    if nproc is None:
        return config
    backend = config.distributed.backend if config.distributed is not None else "auto"
    return config.model_copy(update={"distributed": Distributed(nproc=nproc, backend=backend)})


def placement(config: Config) -> tuple[str, str]:
    """(device kind, backend) for the ranks: each rank runs on `cuda:LOCAL_RANK` unless the
    config says cpu (or no GPU is present with `auto`); nccl needs CUDA, gloo runs anywhere."""
    import torch

    assert config.distributed is not None
    where, nproc = config.where("distributed"), config.distributed.nproc
    cuda = torch.cuda.is_available()
    if config.device == "cpu" or (config.device == "auto" and not cuda):
        kind = "cpu"
    elif not cuda:
        raise ConfigError(f"{config.where('device')}: device: {config.device} but torch.cuda.is_available() is False")
    else:
        kind = "cuda"
        if torch.cuda.device_count() < nproc:
            raise ConfigError(
                f"{where}: distributed.nproc: {nproc} ranks need {nproc} GPUs (one per rank, cuda:LOCAL_RANK), "
                f"this machine has {torch.cuda.device_count()}"
            )
    backend = config.distributed.backend
    if backend == "auto":
        backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl" and kind == "cpu":
        raise ConfigError(f"{where}: distributed.backend: nccl needs CUDA devices; use gloo for ranks on the CPU")
    return kind, backend


def rank_flags(request: RunRequest) -> list[str]:
    """The user's flags for each rank's run, less --device (each rank has its own)."""
    flags, skip = [], False
    for item in request.argv:
        if skip:
            skip = False
            continue
        if item == "--device":
            skip = True
            continue
        flags.append(item)
    return flags


def launch_ranks(config: Config, request: RunRequest, work: Path, kind: str, backend: str) -> dict[int, str]:
    """Run every rank to its end; the ranks whose process failed, with why."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    assert config.distributed is not None
    nproc = config.distributed.nproc
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"leakcheck-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port: several leakcheck runs can share a host
        max_restarts=0,  # a leak audit is not retried: a restart would hide what the first run left
        monitor_interval=MONITOR_INTERVAL_S,
        start_method="spawn",
    )
    config_path = str(config.path or request.config_path.resolve())
    args = ["-m", "leakcheck.distributed.rank", str(work), backend, kind, config_path, *rank_flags(request)]
    quiet = logging.getLogger("torch.distributed.elastic")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the launcher's INFO/WARNING lines are not the user's report
    try:
        elastic_launch(launch, sys.executable)(*args)
    except ChildFailedError as exc:
        return {rank: f"the rank's process failed: {failure.message or f'exit code {failure.exitcode}'}"
                for rank, failure in exc.failures.items()}
    finally:
        quiet.setLevel(level)
    return {}


def gather(work: Path, nproc: int, failed: dict[int, str], name: str, device: str, limit: int) -> list[Report]:
    """Each rank's report from its file; a rank that left none (or only its placeholder) is an error."""
    reports = []
    for rank in range(nproc):
        path = work / REPORT_NAME.format(rank=rank)
        try:
            report = read_report(path)
        except ReportInputError:
            why = failed.get(rank, "the rank ended without writing its report")
            reports.append(missing_rank(rank, name, device, limit, why))
            continue
        if report.error is not None and report.error.phase == RUNNING:
            why = failed.get(rank, "the rank's report is its placeholder: it did not finish")
            reports.append(missing_rank(rank, name, device, limit, why))
            continue
        report.rank = rank
        reports.append(report)
    return reports


def run_distributed(config: Config, request: RunRequest) -> int:
    """Launch the ranks, merge their reports, write, render and gate the combined one."""
    from leakcheck import cli
    from leakcheck.report.gate import exit_code

    try:
        kind, backend = placement(config)
    except ConfigError as exc:
        raise cli._config_failure(request, config, str(exc)) from None
    failures = request.outputs.write(request.bare_report(config, placeholder_error()))
    if failures:
        raise cli._fail(failures[0])
    assert config.distributed is not None
    nproc = config.distributed.nproc
    work = Path(tempfile.mkdtemp(prefix="leakcheck-ranks-"))
    try:
        with progress(f"running {nproc} ranks ({backend})", quiet=request.flags.quiet):
            failed = launch_ranks(config, request, work, kind, backend)
        limit = request.max_leaked_bytes if request.max_leaked_bytes is not None else config.gate.max_leaked_bytes
        reports = gather(work, nproc, failed, config.name or "leakcheck", kind, limit)
        if request.verbose:
            for rank in range(nproc):
                with contextlib.suppress(OSError):
                    cli._say(f"--- rank {rank} ---\n" + (work / f"rank{rank}.log").read_text(errors="replace"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    merged = merge_reports(reports)
    merged.notes.insert(0, f"{nproc} ranks launched by torch's elastic launcher ({backend}, {kind}); "
                        "each rank audited its own process, in a child process of its own")
    failures = request.outputs.write(merged)
    picture = cli.draw_graph(merged, request.graph)  # --graph: the combined report, every rank's holders
    failures += picture.failures
    present(merged, request.outputs, request.flags, failures + picture.notes)
    code = exit_code(merged)
    return cli.EXIT_USAGE if failures and code == 0 else code

