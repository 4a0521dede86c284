"""The report as GitHub-flavoured Markdown, for a CI job to post on a pull request."""

from __future__ import annotations

from leakcheck.renderers.memory_columns import measured_columns
from leakcheck.report.model import FREED_BY_COLLECTOR, Report
from leakcheck.sizes import format_bytes, format_delta

MAX_OWNERS = 15


def to_markdown(report: Report) -> str:
    lines = [f"### leakcheck · {report.name} · {report.device}: **{report.verdict.upper()}**", ""]
    if report.error is not None:
        lines += [f"The runner raised `{report.error.type}` during {report.error.phase}: {report.error.message}", ""]
    lines.append(
        f"{format_bytes(report.leaked_bytes)} still held after `shutdown()` (limit "
        f"{format_bytes(report.max_leaked_bytes)})"
        + (f"; NVML growth {format_delta(report.nvml_growth_bytes)}" if report.nvml_growth_bytes is not None else "")
        + "."
    )
    lines += ["", *_memory(report)]
    holders = [o for o in report.owners if o.kind not in FREED_BY_COLLECTOR]
    if holders:
        lines += ["", "| holder | kind | reachable | retained | example |", "| --- | --- | ---: | ---: | --- |"]
        for owner in holders[:MAX_OWNERS]:
            example = f"`{owner.examples[0]}`" if owner.examples else ""
            allowed = " (allowed)" if owner.allowed else ""
            lines.append(
                f"| `{owner.path}`{allowed} | {owner.kind} | {format_bytes(owner.reachable_bytes)} | "
                f"{format_bytes(owner.retained_bytes)} | {example} |"
            )
        if len(holders) > MAX_OWNERS:
            lines.append(f"\n{len(holders) - MAX_OWNERS} more holder(s) in the JSON report.")
    for group in report.shared[:5]:
        names = ", ".join(f"`{o}`" for o in group.owners)
        lines += ["", f"{format_bytes(group.bytes)} is held by {names} together: all must go before it is freed."]
    if report.release:
        lines += ["", "Suggested lines for `shutdown()`:", "", "```python", *report.release, "```"]
    if report.sites:
        lines += ["", "| allocated at | bytes |", "| --- | ---: |"]
        lines += [f"| `{site.site}` | {format_bytes(site.bytes)} |" for site in report.sites[:10]]
    return "\n".join(lines) + "\n"


def _memory(report: Report) -> list[str]:
    samples = report.memory
    if not samples:
        return []
    present = measured_columns(samples, skip=("nvml_device_bytes",))  # the process figure is what a PR needs
    lines = ["| phase | " + " | ".join(title for title, _ in present) + " |"]
    lines.append("| --- |" + " ---: |" * len(present))
    for sample in samples:
        phase = sample.phase if sample.cycle == 1 else f"{sample.phase} #{sample.cycle}"
        lines.append(f"| {phase} | " + " | ".join(format_bytes(getattr(sample, attr)) for _, attr in present) + " |")
    return lines
