"""The gate: which bytes count, and the verdict a CI job acts on.

Kept apart from building the report so the rules read in one place, and so that a report
read back from JSON (`leakcheck show`) is judged by the same code that judged the run.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from fnmatch import fnmatchcase

from leakcheck.report.model import PROCESS_GROUP, Audit, Report, Storage

# The exit codes every command shares: a verdict's, and 2 for usage or config errors.
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
EXIT_CODES = {"pass": EXIT_PASS, "fail": EXIT_FAIL, "error": EXIT_ERROR}


def is_allowed(path: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


@dataclass
class Counted:
    """What the gate counts in one audit."""

    leaked: int = 0  # device bytes some unallowed holder pins
    allowed: int = 0  # bytes only allowed holders pin
    reserved: int = 0  # the leaked bytes as allocator memory (blocks and the segment space only they keep)
    unsized: int = 0  # leaked storages whose size could not be read (counted as 0 bytes)
    accepted: int = 0  # bytes only allowed or baseline-accepted holders pin, at least one accepted
    groups: int = 0  # live process groups some unallowed holder keeps: 0 bytes each, still leaks


def count(audit: Audit, patterns: list[str]) -> Counted:
    return count_storages(audit.storages, patterns)


def count_storages(storages: list[Storage], patterns: list[str], accepted: Collection[str] = ()) -> Counted:
    """accepted: holder paths a `--baseline` accepted; like allowed ones, they count only when
    they are all that pins a storage."""
    counted = Counted()
    for storage in storages:
        if storage.collectable or storage.pinned:
            continue
        # Bytes an allowed holder shares with a forgotten one are still a leak.
        if any(path not in accepted and not is_allowed(path, patterns) for path in storage.owners):
            counted.leaked += storage.nbytes
            counted.reserved += storage.reserved_bytes or storage.nbytes
            counted.unsized += storage.unknown and storage.nbytes == 0
            counted.groups += storage.kind == PROCESS_GROUP
        elif any(path in accepted and not is_allowed(path, patterns) for path in storage.owners):
            counted.accepted += storage.nbytes
        else:
            counted.allowed += storage.nbytes
    return counted


def verdict(report: Report, unsized: int = 0) -> str:
    """pass, fail or error. A run with an error never passes; nor does one that holds storages
    whatever their size: a storage of unknown size is a leak of unknown size, not zero. Nor one
    that leaves a process group alive: its bytes are 0 on gloo and unmeasured on NCCL, but the
    next load makes another, with its threads, sockets and communicator."""
    if report.error is not None:
        return "error"
    if report.leaked_bytes > report.max_leaked_bytes or unsized or report.leaked_process_groups:
        return "fail"
    if report.require_proven and unproven(report) is not None:
        return "fail"
    growth, limit = report.nvml_growth_bytes, report.max_nvml_growth_bytes
    if limit is not None and growth is not None and growth > limit:
        return "fail"
    return "pass"


def unproven(report: Report) -> str | None:
    """Why `gate.require_proven` fails this report, or None when it holds.

    Nothing counted needs no proof. Otherwise the proof must have run, and every counted
    byte must have died while the suggested lines ran: a holder leakcheck did not try
    fails it only through the bytes it kept.
    """
    if report.leaked_bytes == 0 and report.unsized_storages == 0:
        return None
    proof = report.proof
    if proof is None:
        return "gate.require_proven: the proof did not run (--no-prove, or it failed: see the notes)"
    if proof.unfreed_bytes or proof.freed_bytes < proof.claimed_bytes:
        return (
            f"gate.require_proven: {proof.unfreed_bytes:,} of {proof.claimed_bytes:,} counted bytes "
            "were not freed by the suggested lines"
        )
    return None


def exit_code(report: Report) -> int:
    return EXIT_CODES[report.verdict]


def process_groups_note(groups: int) -> str:
    """Why a report with no bytes over the limit fails: the process groups it left alive."""
    return (
        f"{groups} process group(s) still alive after shutdown(): they fail the gate whatever its byte limit "
        "(a live group is a leak; torch.distributed.destroy_process_group releases it)"
    )
