"""What each rank of `leakcheck run --nproc N` runs: `python -m leakcheck.distributed.rank`.

torch's elastic launcher starts this module once per rank with RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. It runs this rank's audit as an isolated
`leakcheck run` (the runner in a child process, see lifecycle/isolate.py), writing the
rank's report to `WORK/rank{RANK}.json` and its terminal output to `WORK/rank{RANK}.log`.

Isolated, because the launcher ends every rank as soon as one of its processes fails: a rank
whose runner segfaults or hangs must still leave a report (with its phase), and must not
take the other ranks' audits down with it. So this process exits 0 whenever the rank's
report is written, whatever its verdict: the verdict travels in the file, not the exit code.

Usage (by launch.py only): WORK BACKEND DEVICE_KIND CONFIG [run flags...]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from leakcheck.distributed import BACKEND_ENV, DEVICE_ENV

REPORT_NAME = "rank{rank}.json"
LOG_NAME = "rank{rank}.log"


def rank_device(kind: str, local_rank: int) -> str:
    """One device per rank: `cuda:LOCAL_RANK`, or the CPU (gloo)."""
    return "cpu" if kind == "cpu" else f"cuda:{local_rank}"


def rank_argv(work: Path, rank: int, device: str, config: str, flags: list[str]) -> list[str]:
    """The `leakcheck run` command line of one rank."""
    return [
        "run", config, "--isolate", "--json", str(work / REPORT_NAME.format(rank=rank)), "--device", device,
        *per_rank_files(flags, rank),
    ]


def per_rank_files(flags: list[str], rank: int) -> list[str]:
    """Files each rank writes itself get the rank in their name (`snap.pickle` becomes
    `snap.rank1.pickle`): N ranks writing one path would keep only the last rank's."""
    out = list(flags)
    for index, flag in enumerate(out[:-1]):
        if flag == "--snapshot":
            path = Path(out[index + 1])
            out[index + 1] = str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
    return out


def _log_to(path: Path) -> None:
    """This rank's terminal output (the isolated run's report and spinner) goes to a file:
    N reports interleaved on one terminal would be unreadable; the parent prints the merge."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for target in (1, 2):
        os.dup2(descriptor, target)
    os.close(descriptor)


def main(argv: list[str]) -> int:
    work, backend, kind, config, *flags = argv
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    os.environ[BACKEND_ENV] = backend  # the audited child joins the default group with it
    os.environ[DEVICE_ENV] = kind
    _log_to(Path(work) / LOG_NAME.format(rank=rank))
    from leakcheck.cli import app

    try:
        app(rank_argv(Path(work), rank, rank_device(kind, local_rank), config, flags), prog_name="leakcheck")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    # A written report carries the verdict; only a rank that could not write one fails here.
    return 0 if code in (0, 1, 3, 130, 143) else code


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    code = main(sys.argv[1:])
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed log must not change the exit code
            pass
    os._exit(code)
