"""The verdict as plain text for CI systems: JUnit failure bodies, GitHub annotations, the
closing line of a `--quiet` run.

These places show text without a terminal's tables or Markdown's code blocks, and often only
its first line, so the first line says the verdict and the bytes, the next lines say who
holds them, and the suggested lines for shutdown() come last, ready to paste.
"""

from __future__ import annotations

from leakcheck.renderers import limits
from leakcheck.renderers.limits import clip
from leakcheck.report.model import FREED_BY_COLLECTOR, Report
from leakcheck.sizes import format_bytes, format_delta

HOLDERS = 10  # a CI message is read in a narrow pane: the JSON report keeps the rest


def headline(report: Report) -> str:
    """`39.4 MiB still held after shutdown() (limit 0 B)`, or the error in one line."""
    error = report.error
    if report.verdict == "error" and error is not None:
        first = (error.message.splitlines() or [""])[0]
        return clip(f"error in {error.phase}: {error.type}: {first}")
    limit = format_bytes(report.max_leaked_bytes)
    return f"{format_bytes(report.leaked_bytes)} still held after shutdown() (limit {limit})"


def reasons(report: Report) -> list[str]:
    """Each rule of the gate this report breaks, in words (empty for a pass or an error).

    A report can fail with nothing over the byte limit (NVML growth, storages of unknown
    size, `gate.require_proven`): the text must say which rule failed it.
    """
    if report.verdict != "fail":
        return []
    found = []
    if report.leaked_bytes > report.max_leaked_bytes:
        found.append(
            f"{report.leaked_bytes:,} leaked bytes are over the limit of {report.max_leaked_bytes:,} "
            "(gate.max_leaked_bytes)"
        )
    if report.unsized_storages:
        found.append(f"{report.unsized_storages} leaked storage(s) of unknown size")
    if report.leaked_process_groups:
        found.append(f"{report.leaked_process_groups} process group(s) still alive (destroy_process_group)")
    growth, limit = report.nvml_growth_bytes, report.max_nvml_growth_bytes
    if growth is not None and limit is not None and growth > limit:
        found.append(f"NVML growth {format_delta(growth)} is over its limit {format_bytes(limit)}")
    found += [note for note in report.notes if note.startswith("gate.require_proven")]
    return found


def holder_lines(report: Report, limit: int = HOLDERS) -> list[str]:
    """One line per holder a developer can release: path, kind, bytes, first example path."""
    holders = [o for o in report.owners if o.kind not in FREED_BY_COLLECTOR and not o.allowed]
    shown, left_out = limits.first(holders, limit)
    lines = []
    for owner in shown:
        line = (
            f"{clip(owner.path)} ({owner.kind}): reaches {format_bytes(owner.reachable_bytes)}, "
            f"retains {format_bytes(owner.retained_bytes)}"
        )
        if owner.examples:
            line += f"; e.g. {clip(owner.examples[0])}"
        lines.append(line)
    more = limits.more(left_out, "holders")
    return lines + ([more] if more else [])


def suggested_lines(report: Report) -> list[str]:
    """The lines shutdown() should gain, capped as every renderer caps them."""
    shown, left_out = limits.first(report.release, limits.RELEASE_LINES)
    more = limits.more(left_out, "suggested lines")
    return [clip(line) for line in shown] + ([f"# {more}"] if more else [])


def details(report: Report) -> str:
    """The full plain-text body: headline, reasons, holders, suggested lines (and for an
    error, its message and traceback)."""
    lines = [f"leakcheck {report.name} on {report.device}: {report.verdict.upper()}: {headline(report)}"]
    error = report.error
    if error is not None:
        lines += ["", f"{error.type} during {error.phase} (cycle {error.cycle}):", clip(error.message, 4000)]
        if error.stuck_at:
            lines.append(f"stuck at {clip(error.stuck_at)}")
        if error.traceback:
            lines += ["", clip(error.traceback.rstrip(), 20000)]
    found = reasons(report)
    if found:
        lines += ["", "Failed because:", *(f"  {reason}" for reason in found)]
    holders = holder_lines(report)
    if holders:
        lines += ["", "Holders, by bytes they reach:", *(f"  {line}" for line in holders)]
    release = suggested_lines(report)
    if release:
        lines += ["", "Suggested lines for shutdown():", *(f"    {line}" for line in release)]
    return "\n".join(lines) + "\n"


def verdict_line(report: Report) -> str:
    """The one line a `--quiet` run ends with: `leakcheck: mrv2-seed: FAIL: 39.4 MiB still ...`."""
    return f"leakcheck: {clip(report.name)}: {report.verdict.upper()}: {headline(report)}"
