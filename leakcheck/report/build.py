"""From measurements to a verdict: the gate, allowed owners and the lines shutdown() should gain."""

from __future__ import annotations

from fnmatch import fnmatchcase

from leakcheck.config import Config
from leakcheck.lifecycle.phases import Lifecycle
from leakcheck.report.model import CYCLE, Owner, Report


def is_allowed(path: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(path, pattern) for pattern in patterns)


def build_report(config: Config, lifecycle: Lifecycle, max_leaked_bytes: int | None = None) -> Report:
    """Apply the gate to what a run found.

    A storage counts as leaked when at least one holder that is neither allowed nor garbage
    still pins it: bytes an allowed owner shares with a forgotten one are still a leak.
    """
    limit = config.gate.max_leaked_bytes if max_leaked_bytes is None else max_leaked_bytes
    patterns = config.gate.allow
    found = lifecycle.audit
    report = Report(
        name=config.name or "leakcheck",
        device=lifecycle.device,
        verdict="pass",
        leaked_bytes=0,
        max_leaked_bytes=limit,
        memory=lifecycle.memory,
        timings=dict(lifecycle.timings),
        error=lifecycle.error,
        notes=list(lifecycle.notes),
        config=str(config.path) if config.path else None,
        environment=dict(lifecycle.environment),
    )
    if found is not None:
        for owner in found.owners:
            owner.allowed = is_allowed(owner.path, patterns)
        allowed = {o.path for o in found.owners if o.allowed}
        for storage in found.storages:
            if storage.collectable:
                continue
            if any(path not in allowed for path in storage.owners):
                report.leaked_bytes += storage.nbytes
            else:
                report.allowed_bytes += storage.nbytes
        report.held_bytes = found.held_bytes
        report.cycle_bytes = found.cycle_bytes
        report.owners = found.owners
        report.storages = found.storages
        report.shared = found.shared
        report.release = release_lines(found.owners)
        report.heap_objects = found.heap_objects
        report.notes.extend(found.notes)
    if report.error is not None:
        report.verdict = "error"
    elif report.leaked_bytes > limit:
        report.verdict = "fail"
    return report


def release_lines(owners: list[Owner]) -> list[str]:
    """What shutdown() should add, largest first; one line per holder, garbage cycles once."""
    lines: list[str] = []
    for owner in owners:
        if owner.allowed or not owner.fix:
            continue
        if owner.kind == CYCLE and any(line.startswith("gc.collect()") for line in lines):
            continue
        if owner.fix not in lines:
            lines.append(owner.fix)
    return lines


def exit_code(report: Report) -> int:
    return {"pass": 0, "fail": 1, "error": 3}[report.verdict]
