"""The report as GitHub-flavoured Markdown, for a CI job to post on a pull request."""

from __future__ import annotations

from leakcheck.renderers import baseline_text, limits, proof_text
from leakcheck.renderers.limits import clip
from leakcheck.renderers.memory_columns import measured_columns
from leakcheck.report.model import FREED_BY_COLLECTOR, Report
from leakcheck.sizes import format_bytes, format_delta

MAX_OWNERS = 15


def to_markdown(report: Report) -> str:
    lines = [f"### leakcheck · {clip(report.name)} · {report.device}: **{report.verdict.upper()}**", ""]
    if report.error is not None:
        error = report.error
        lines += [f"The runner raised `{clip(error.type)}` during {error.phase}: {_cell(clip(error.message))}", ""]
    lines.append(
        f"{format_bytes(report.leaked_bytes)} still held after `shutdown()` (limit "
        f"{format_bytes(report.max_leaked_bytes)})"
        + (f"; NVML growth {format_delta(report.nvml_growth_bytes)}" if report.nvml_growth_bytes is not None else "")
        + "."
    )
    if report.proof is not None:
        lines += ["", f"**{proof_text.headline(report.proof)}**"]
    if report.baseline is not None:
        lines += ["", f"Baseline `{_cell(clip(report.baseline.file))}`: {baseline_text.summary(report)}."]
        lines += [f"- {_cell(line)}" for line in baseline_text.lines(report)]
    lines += ["", *_memory(report)]
    lines += _cycle_categories(report)
    found = report.import_time
    if found is not None and found.storages:
        examples = f" ({', '.join(_code(e) for e in found.examples)})" if found.examples else ""
        lines += [
            "",
            f"Importing the runner's module created {found.storages} storage(s), {format_bytes(found.bytes)}"
            f"{examples}, before baseline: not counted.",
        ]
    holders, left_out = limits.first([o for o in report.owners if o.kind not in FREED_BY_COLLECTOR], MAX_OWNERS)
    proven = report.proof is not None
    if holders:
        header, rule = "| holder | kind | reachable | retained | example |", "| --- | --- | ---: | ---: | --- |"
        if proven:
            header, rule = header + " freed by its line |", rule + " --- |"
        lines += ["", header, rule]
        for owner in holders:
            example = _code(owner.examples[0]) if owner.examples else ""
            allowed = (" (allowed)" if owner.allowed else "") + baseline_text.owner_mark(owner)
            line = (
                f"| {_code(owner.path)}{allowed} | {owner.kind} | {format_bytes(owner.reachable_bytes)} | "
                f"{format_bytes(owner.retained_bytes)} | {example} |"
            )
            if proven:
                line += f" {_cell(clip(proof_text.holder_line(owner) or ''))} |"
            lines.append(line)
        lines += _more(left_out, "holders")
    if report.proof is not None and report.proof.unfreed:
        lines += ["", f"No suggested line freed these ({format_bytes(report.proof.unfreed_bytes)}):", ""]
        lines += [f"- {_cell(clip(text))}" for text in report.proof.unfreed]
    groups, left_out = limits.first(report.shared, 5)
    for group in groups:
        shown, hidden = limits.first(group.owners, limits.NAMES_PER_GROUP)
        names = ", ".join(_code(o) for o in shown) + (f" and {hidden:,} more" if hidden else "")
        lines += ["", f"{format_bytes(group.bytes)} is held by {names} together: all must go before it is freed."]
    lines += _more(left_out, "groups of holders that must all go")
    release, left_out = limits.first(report.release, limits.RELEASE_LINES)
    if release:
        code = [limits.clip(line) for line in release]
        lines += ["", "Suggested lines for `shutdown()`:", "", "```python", *code, "```"]
        lines += _more(left_out, "suggested lines")
    sites, left_out = limits.first(report.sites, 10)
    if sites:
        lines += ["", "| allocated at | bytes |", "| --- | ---: |"]
        lines += [f"| {_code(site.site)} | {format_bytes(site.bytes)} |" for site in sites]
        lines += _more(left_out, "allocation sites")
    return "\n".join(lines) + "\n"


def _more(left_out: int, what: str) -> list[str]:
    line = limits.more(left_out, what)
    return ["", line[0].upper() + line[1:] + "."] if line else []


def _cell(text: str) -> str:
    """Text safe inside a table row: a `|` would end the cell, a newline the row."""
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    """Inline code, clipped; a text holding backticks gets a longer fence, as CommonMark allows."""
    text = _cell(clip(text))
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cycle_categories(report: Report) -> list[str]:
    """Each later cycle's NVML growth by category, one column per cycle."""
    split = [cycle for cycle in report.cycles if cycle.categories]
    if not split:
        return []
    lines = ["", "| growth by category | " + " | ".join(f"cycle {c.cycle}" for c in split) + " |"]
    lines.append("| --- |" + " ---: |" * len(split))
    for position, category in enumerate(split[-1].categories):
        cells = [format_delta(c.categories[position].bytes) if position < len(c.categories) else "n/a" for c in split]
        lines.append(f"| {_cell(category.name)} | " + " | ".join(cells) + " |")
    shares = [f"{c.growth_named_share:.1%}" if c.growth_named_share is not None else "n/a" for c in split]
    lines.append("| named share of NVML growth | " + " | ".join(shares) + " |")
    return lines


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
