"""What `--baseline` decided, in words the terminal and Markdown renderers share."""

from __future__ import annotations

from leakcheck.renderers import limits
from leakcheck.renderers.limits import clip
from leakcheck.report.model import ACCEPTED, NEW, OVER_CEILING, Owner, Report
from leakcheck.sizes import format_bytes

_MARKS = {ACCEPTED: " (baseline)", OVER_CEILING: " (over baseline)", NEW: " (new)"}


def owner_mark(owner: Owner) -> str:
    """Beside a holder's path: why it counts, or that the baseline accepted it."""
    return _MARKS.get(owner.baseline or "", "")


def summary(report: Report) -> str | None:
    """One line for the verdict panel: what the baseline accepted, and what it did not."""
    check = report.baseline
    if check is None:
        return None
    over = [entry for entry in check.entries if entry.status not in (ACCEPTED, "unused")]
    parts = [f"{format_bytes(check.accepted_bytes)} accepted by the baseline"]
    if check.new:
        parts.append(f"{len(check.new)} new holder(s)")
    if over:
        parts.append(f"{len(over)} over their ceiling")
    return ", ".join(parts) + (" (just written)" if check.updated else "")


def lines(report: Report) -> list[str]:
    """Entries that did not hold (over their ceiling, or of unknown size) and entries nothing
    matched any more (candidates to delete), one line each, capped."""
    check = report.baseline
    if check is None:
        return []
    found = []
    for entry in check.entries:
        where = f" (line {entry.line})" if entry.line else ""
        if entry.status == OVER_CEILING:
            found.append(
                f"baseline entry {clip(entry.path)}{where} grew past its ceiling: "
                f"{format_bytes(entry.bytes)} > {format_bytes(entry.max_bytes)}"
            )
        elif entry.status == "unsized":
            found.append(f"baseline entry {clip(entry.path)}{where} holds a storage of unknown size: not accepted")
        elif entry.status == "unused":
            found.append(f"baseline entry {clip(entry.path)}{where} matched no holder: fixed? it can go")
    shown, left_out = limits.first(found, limits.NOTES)
    return [*shown, *([limits.more(left_out, "baseline entries") or ""] if left_out else [])]
