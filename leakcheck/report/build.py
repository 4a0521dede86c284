"""From what a run measured to its report: totals, cycles, the lines shutdown() should gain,
and the gate's verdict (whose rules live in `gate.py`)."""

from __future__ import annotations

from leakcheck.config import Config
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.report.gate import count, is_allowed, process_groups_note, unproven, verdict
from leakcheck.report.model import CYCLE, Audit, Cycle, Owner, Report, RunError


def build_report(
    config: Config,
    lifecycle: Lifecycle,
    max_leaked_bytes: int | None = None,
    max_nvml_growth_bytes: int | None = None,
) -> Report:
    """Apply the gate to what a run found.

    A storage counts as leaked when at least one holder that is neither allowed nor garbage
    still pins it: bytes an allowed owner shares with a forgotten one are still a leak.

    Only an audit can pass: a run that audited nothing (and recorded no error to say why)
    is an error, never a pass with zero bytes.
    """
    limit = config.gate.max_leaked_bytes if max_leaked_bytes is None else max_leaked_bytes
    patterns = config.gate.allow
    found = lifecycle.audit
    growth_limit = config.gate.max_nvml_growth_bytes if max_nvml_growth_bytes is None else max_nvml_growth_bytes
    report = Report(
        name=config.name or "leakcheck",
        device=lifecycle.device,
        verdict="pass",
        leaked_bytes=0,
        max_leaked_bytes=limit,
        memory=lifecycle.memory,
        audit_memory=lifecycle.audit_memory,
        reconciliation=lifecycle.reconciliation,
        max_nvml_growth_bytes=growth_limit,
        timings=dict(lifecycle.timings),
        error=lifecycle.error,
        notes=list(lifecycle.notes),
        config=str(config.path) if config.path else None,
        environment=dict(lifecycle.environment),
    )
    if found is not None:
        apply_audit(report, found, patterns)
    report.cycles = cycle_summaries(lifecycle, patterns)
    report.import_time = lifecycle.import_time
    if lifecycle.shutdown_source is not None:
        report.shutdown_file, report.shutdown_line = lifecycle.shutdown_source
    if report.cycles and lifecycle.pinned_segments:
        report.leaked_reserved_bytes = report.cycles[-1].leaked_reserved_bytes
    report.nvml_growth_bytes = nvml_growth(report)
    report.proof = lifecycle.proof if found is not None else None
    report.require_proven = config.gate.require_proven
    if report.require_proven and (why := unproven(report)) is not None:
        report.notes.append(why)
    if report.error is None and found is None:
        report.error = RunError(
            phase="audit",
            type="NotAudited",
            message="no audit ran, so nothing was measured that could pass the gate",
        )
    report.verdict = verdict(report, report.unsized_storages)
    return report


def apply_audit(report: Report, found: Audit, patterns: list[str]) -> None:
    """Put an audit's holders and the bytes the gate counts into `report` (verdict not set).

    Shared by runs (`build_report`) and the Python API (`report_of_audit`), so that a report
    from either is counted by the same rules.
    """
    for owner in found.owners:
        owner.allowed = is_allowed(owner.path, patterns)
    counted = count(found, patterns)
    report.leaked_bytes, report.allowed_bytes = counted.leaked, counted.allowed
    report.leaked_reserved_bytes, report.unsized_storages = counted.reserved, counted.unsized
    report.leaked_process_groups = counted.groups
    if counted.groups:
        report.notes.append(process_groups_note(counted.groups))
    if counted.unsized:
        report.notes.append(
            f"{counted.unsized} leaked storage(s) could not be read or sized (see their note): "
            "they fail the gate whatever its limit, since their bytes are unknown, not zero"
        )
    report.held_bytes = found.held_bytes
    report.pinned_bytes = found.pinned_bytes
    report.sites = found.sites
    report.cycle_bytes = found.cycle_bytes
    report.owners = found.owners
    report.storages = found.storages
    report.shared = found.shared
    report.release = release_lines(found.owners)
    report.heap_objects = found.heap_objects
    report.notes.extend(found.notes)


def report_of_audit(
    found: Audit, name: str = "leakcheck", max_leaked_bytes: int = 0, allow: list[str] | None = None
) -> Report:
    """The report of an audit made through the Python API (`Audit.to_report()`), gated like a
    run's: `render`, `to_json` and `gate.exit_code` take it as they take the CLI's.

    It measured no phases, so it has no memory table, cycles or proof.
    """
    report = Report(
        name=name,
        device=found.device,
        verdict="pass",
        leaked_bytes=0,
        max_leaked_bytes=max_leaked_bytes,
        timings=dict(found.timings),
    )
    apply_audit(report, found, list(allow or []))
    report.verdict = verdict(report, report.unsized_storages)
    return report


def cycle_summaries(lifecycle: Lifecycle, patterns: list[str]) -> list[Cycle]:
    """Per cycle: NVML and reserved growth over the previous cycle's `collected`, the audited
    leak, and (later cycles on CUDA) that growth split by category."""
    ends = [m for m in lifecycle.memory if m.phase == "collected"]
    starts = [m for m in lifecycle.memory if m.phase == "baseline"][:1] + ends[:-1]
    cycles = []
    for index, (start, end) in enumerate(zip(starts, ends), start=1):
        audit = lifecycle.audits[index - 1] if index - 1 < len(lifecycle.audits) else None
        counted = count(audit, patterns) if audit else None
        leaked, reserved = (counted.leaked, counted.reserved) if counted else (0, 0)
        pinned = lifecycle.pinned_segments
        if index <= len(pinned):  # measured on the device: segments this cycle's leaks added
            reserved = pinned[index - 1] - (pinned[index - 2] if index > 1 else 0)
        categories, share = lifecycle.cycle_categories.get(index, ([], None))
        cycles.append(
            Cycle(
                cycle=index,
                nvml_growth_bytes=_difference(end.nvml_process_bytes, start.nvml_process_bytes),
                torch_reserved_growth_bytes=_difference(end.torch_reserved_bytes, start.torch_reserved_bytes),
                leaked_bytes=leaked,
                leaked_reserved_bytes=reserved,
                categories=list(categories),
                growth_named_share=share,
            )
        )
    return cycles


def nvml_growth(report: Report) -> int | None:
    """NVML growth since baseline; with several cycles, the mean growth per cycle after the first.

    The first cycle pays one-time costs (context, kernel modules, workspaces); what each later
    cycle adds is the leak that kills a long-lived process that reloads models.
    """
    measured = [c.nvml_growth_bytes for c in report.cycles]
    growth = [g for g in measured if g is not None]
    if not growth or len(growth) != len(measured):
        return None
    if len(growth) == 1:
        return growth[0]
    later = growth[1:]
    return int(sum(later) / len(later))


def _difference(end: int | None, start: int | None) -> int | None:
    return None if end is None or start is None else end - start


def release_lines(owners: list[Owner]) -> list[str]:
    """What shutdown() should add, largest first; one line per holder, garbage cycles once."""
    lines: dict[str, None] = {}  # insertion-ordered set: linear in holders
    collect_suggested = False
    for owner in owners:
        if owner.allowed or not owner.fix:
            continue
        if owner.kind == CYCLE and collect_suggested:
            continue
        lines.setdefault(owner.fix)
        collect_suggested = collect_suggested or owner.fix.startswith("gc.collect()")
    return list(lines)
