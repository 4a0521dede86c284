"""The report a developer reads in a terminal: verdict first, then memory, holders, and the fix."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from leakcheck.renderers import baseline_text, limits, proof_text, widths
from leakcheck.renderers.limits import clip
from leakcheck.renderers.memory_columns import measured_columns
from leakcheck.report.model import FREED_BY_COLLECTOR, Report
from leakcheck.sizes import format_bytes, format_delta

_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold magenta"}


def render(report: Report, console: Console, verbose: bool = False) -> None:
    console.print(_summary(report))
    if report.error is not None:
        console.print(_error(report, verbose))
    if report.memory:  # an API audit (`Audit.to_report()`, the pytest marker) measures no phases
        console.print(widths.memory_table(report.memory, measured_columns(report.memory), console))
    if len(report.cycles) > 1:
        console.print(_cycles_table(report))
        if any(cycle.categories for cycle in report.cycles):
            console.print(_cycle_categories_table(report))
    if report.owners:
        owners, left_out = limits.first(report.owners, limits.HOLDERS)
        for line in widths.holders_lines(owners, left_out, console.width):
            console.print(line, highlight=False)
        console.print(_release(report, console.width))
    if report.proof is not None:
        console.print(_proof(report, console.width))
    if report.sites:
        console.print(_sites_table(report))
    if report.reconciliation is not None:
        console.print(_reconciliation_table(report))
    notes = list(report.notes) + baseline_text.lines(report)
    if report.import_time is not None and report.import_time.storages:
        notes.insert(0, import_time_line(report))
    audit_s = report.timings.get("audit_s")
    if audit_s is not None:
        notes.append(f"heap audit: {audit_s:.2f} s over {report.heap_objects:,} objects")
    if len(report.audit_memory) == 2:
        before, after = report.audit_memory
        deltas = [
            f"{label} {format_delta(getattr(after, attr) - getattr(before, attr))}"
            for label, attr in (("NVML process", "nvml_process_bytes"), ("torch allocated", "torch_allocated_bytes"))
            if getattr(before, attr) is not None and getattr(after, attr) is not None
        ]
        if deltas:
            notes.append("device memory across the heap audit itself: " + ", ".join(deltas))
    if report.pinned_bytes:
        notes.append(
            f"{format_bytes(report.pinned_bytes)} of pinned host memory still held (not counted as device bytes)"
        )
    if notes:
        console.print(Text("Notes", style="bold"))
        shown, left_out = limits.first(notes, limits.NOTES)
        for note in [*map(clip, shown), limits.more(left_out, "notes")]:
            if note:  # hanging under its bullet, so a wrapped note still reads as one
                for line in widths.prose(f"• {note}", console.width, 2):
                    console.print(line, highlight=False)


def _summary(report: Report) -> Panel:
    verdict = Text(report.verdict.upper(), style=_VERDICT_STYLE[report.verdict])
    line = Text.assemble(verdict, "  ")
    holders = [o for o in report.owners if o.kind not in FREED_BY_COLLECTOR]
    if report.verdict == "error" and report.error is not None:
        line.append(f"{clip(report.error.type)} in {report.error.phase}: {clip(report.error.message)}")
        line.append(f"\n{format_bytes(report.leaked_bytes)} still held after shutdown()")
    elif report.leaked_bytes:
        line.append(f"{format_bytes(report.leaked_bytes)} still held after shutdown()", style="bold")
    elif report.baseline is not None and report.baseline.accepted_bytes:
        line.append("only holders the baseline accepts still hold device memory")
    else:
        line.append("shutdown() released everything it allocated on the device")
    line.append(f"   limit {format_bytes(report.max_leaked_bytes)}")
    details = []
    if report.leaked_reserved_bytes > report.leaked_bytes:
        details.append(f"{format_bytes(report.leaked_reserved_bytes)} of allocator segments the device cannot get back")
    if holders:
        details.append(f"{len(holders)} holder(s), {len(report.storages)} storage(s)")
    if report.allowed_bytes:
        details.append(f"{format_bytes(report.allowed_bytes)} allowed by the gate")
    if report.baseline is not None:
        details.append(baseline_text.summary(report) or "")
    if report.cycle_bytes:
        details.append(f"{format_bytes(report.cycle_bytes)} held only by garbage cycles (gc.collect() frees it)")
    if details:
        line.append("\n" + " · ".join(details), style="dim")
    if report.proof is not None:
        line.append("\n" + proof_text.headline(report.proof), style="green" if report.proof.complete else "yellow")
    env = report.environment
    title = f"leakcheck · {report.name} · {report.device}" + (f" · {env['gpu']}" if env.get("gpu") else "")
    return Panel(line, title=title, title_align="left", border_style=_VERDICT_STYLE[report.verdict].split()[-1])


def _error(report: Report, verbose: bool) -> Panel:
    error = report.error
    assert error is not None
    body = Text(f"{clip(error.type)}: {clip(error.message)}")
    if verbose and error.traceback:
        body = Text(error.traceback.rstrip())
    elif error.traceback:
        body.append("\n(run with --verbose for the traceback)", style="dim")
    return Panel(body, title=f"the runner raised during {error.phase}", title_align="left", border_style="magenta")


def _cycles_table(report: Report) -> Table:
    table = Table(title="Cycles (load, warm-up, shutdown in one process)", title_justify="left", title_style="bold")
    table.add_column("cycle", justify="right")
    table.add_column("NVML growth", justify="right")
    table.add_column("torch reserved growth", justify="right")
    table.add_column("leaked (audited)", justify="right")
    table.add_column("as reserved segments", justify="right")
    for cycle in report.cycles:
        table.add_row(
            str(cycle.cycle),
            format_delta(cycle.nvml_growth_bytes),
            format_delta(cycle.torch_reserved_growth_bytes),
            format_bytes(cycle.leaked_bytes),
            format_bytes(cycle.leaked_reserved_bytes),
        )
    table.caption = f"growth per later cycle: {format_delta(report.nvml_growth_bytes)}" + (
        f" (limit {format_bytes(report.max_nvml_growth_bytes)})" if report.max_nvml_growth_bytes is not None else ""
    )
    return table


def import_time_line(report: Report) -> str:
    """One line for storages the runner's module created when imported (not counted)."""
    found = report.import_time
    assert found is not None
    examples = f": {', '.join(found.examples)}" if found.examples else ""
    return (
        f"importing the runner's module created {found.storages} storage(s), {format_bytes(found.bytes)}, before "
        f"baseline{examples}; not counted (what the run adds to them is)"
    )


CYCLE_COLUMNS = 4  # later cycles shown side by side; the JSON report keeps them all


def _cycle_categories_table(report: Report) -> Table:
    """Each later cycle's NVML growth by category, cycles side by side (the latest ones)."""
    split = [cycle for cycle in report.cycles if cycle.categories]
    shown = split[-CYCLE_COLUMNS:]
    table = Table(title="Growth per later cycle, by category", title_justify="left", title_style="bold")
    table.add_column("category", overflow="fold")
    for cycle in shown:
        table.add_column(f"cycle {cycle.cycle}", justify="right", no_wrap=True)
    latest = shown[-1]
    for position, category in enumerate(latest.categories):
        name = Text(category.name)
        if category.detail:
            name.append(f"\n  {clip(category.detail)}", style="dim")
        row: list[Text | str] = [name]
        for cycle in shown:
            found = cycle.categories[position] if position < len(cycle.categories) else None
            row.append(format_delta(found.bytes) if found is not None else "n/a")
        table.add_row(*row)
    shares = [f"cycle {c.cycle} {c.growth_named_share:.1%}" for c in shown if c.growth_named_share is not None]
    caption = f"of NVML's growth named: {', '.join(shares)}" if shares else ""
    if len(split) > len(shown):
        caption += ("; " if caption else "") + f"{len(split) - len(shown)} earlier cycle(s) in the JSON report"
    table.caption = caption or None
    return table


def _sites_table(report: Report) -> Table:
    table = Table(title="Where the leaked bytes were allocated", title_justify="left", title_style="bold", expand=True)
    table.add_column("allocation site", overflow="fold", ratio=1)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("storages", justify="right", no_wrap=True)
    table.add_column("held by", overflow="fold", ratio=1)
    sites, left_out = limits.first(report.sites, limits.SITES)
    for site in sites:
        held_by = limits.names(site.owners, 4, sep="\n")  # one holder a line: a column wraps inside names
        table.add_row(clip(site.site), format_bytes(site.bytes), str(site.storages), held_by)
    table.caption = limits.more(left_out, "allocation sites")
    return table


def _reconciliation_table(report: Report) -> Table:
    rec = report.reconciliation
    assert rec is not None
    title = "Where the memory went, after collected"
    table = Table(title=title, title_justify="left", title_style="bold")
    table.add_column("category", overflow="fold")
    table.add_column("bytes", justify="right", no_wrap=True)
    for category in rec.categories:
        name = category.name + (f"\n  {category.detail}" if category.detail else "")
        table.add_row(Text(name), format_bytes(category.bytes))
    parts = [f"torch reserved {format_bytes(rec.torch_reserved_bytes)}: {rec.reserved_named_share:.1%} named"]
    if rec.nvml_growth_bytes is not None:
        share = f", {rec.growth_named_share:.1%} named" if rec.growth_named_share is not None else ""
        parts.append(f"NVML growth since baseline {format_delta(rec.nvml_growth_bytes)}{share}")
    table.caption = "; ".join(parts)
    return table


def _proof(report: Report, width: int) -> Panel:
    """Each suggested line leakcheck ran, what it was expected to free and what died after it."""
    proof = report.proof
    assert proof is not None
    line_width = _proof_line_width(report, width)
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("line run", overflow="fold", ratio=1)
    table.add_column("expected", justify="right", no_wrap=True)
    table.add_column("freed", justify="right", no_wrap=True)
    reserved = any(step.torch_reserved_bytes is not None for step in proof.steps)
    nvml = any(step.nvml_process_bytes is not None for step in proof.steps)
    if reserved:
        table.add_column("reserved", justify="right", no_wrap=True)
    if nvml:
        table.add_column("NVML", justify="right", no_wrap=True)
    steps, left_out = limits.first(proof.steps, limits.RELEASE_LINES)
    for number, step in enumerate(steps, start=1):
        pieces = widths.fold_path(clip(step.line), line_width, line_width - widths.CONTINUATION)
        line = Text(("\n" + " " * widths.CONTINUATION).join(pieces), style="cyan")
        if step.error:
            line.append(f"\n  raised {clip(step.error)}", style="red")
        if step.unclaimed_bytes:
            line.append(f"\n  also freed {format_bytes(step.unclaimed_bytes)} it did not claim", style="dim")
        if step.caveat:
            line.append(f"\n  {clip(step.caveat)}", style="dim")
        row: list[Text | str] = [str(number), line, format_bytes(step.expected_bytes), format_bytes(step.freed_bytes)]
        if reserved:
            row.append(format_bytes(step.torch_reserved_bytes))
        if nvml:
            row.append(format_bytes(step.nvml_process_bytes))
        table.add_row(*row)
    parts: list[Text | Table] = [
        Text(proof_text.headline(proof), style="bold green" if proof.complete else "bold yellow")
    ]
    if proof.steps:
        parts.append(table)
    if left_out:
        parts.append(Text(limits.more(left_out, "lines") or "", style="dim"))
    if proof.unfreed:
        stayed = "\n".join(f"    {clip(text)}" for text in proof.unfreed)
        parts.append(
            Text.assemble(
                (f"no suggested line freed these ({format_bytes(proof.unfreed_bytes)}):\n", "bold yellow"), stayed
            )
        )
    for note in proof.notes[: limits.NOTES]:
        parts.append(Text(f"  • {clip(note)}", style="dim"))
    return Panel(Group(*parts), title="Proof: the suggested lines, run one by one", title_align="left")


def _proof_line_width(report: Report, width: int) -> int:
    """The width rich will give the proof's "line run" column (the figures never wrap, it takes
    the rest), so each line is broken at a separator before rich would fold it mid-name."""
    proof = report.proof
    assert proof is not None
    figures = [["#", "expected", "freed"]]
    for number, step in enumerate(proof.steps[: limits.RELEASE_LINES], start=1):
        figures.append([str(number), format_bytes(step.expected_bytes), format_bytes(step.freed_bytes)])
    for title, attr in (("reserved", "torch_reserved_bytes"), ("NVML", "nvml_process_bytes")):
        if any(getattr(step, attr) is not None for step in proof.steps):
            figures[0].append(title)
            for row, step in zip(figures[1:], proof.steps):
                row.append(format_bytes(getattr(step, attr)))
    columns = [max(len(row[i]) for row in figures) for i in range(len(figures[0]))]
    padding = 2 * len(columns)  # one space either side between columns, none at the edges
    return max(width - 4 - sum(columns) - padding, 10)


def _release(report: Report, width: int) -> Panel:
    """Who must go together, then the lines to add; every holder path and line on its own line."""
    inner = width - 4  # the panel's border and padding
    parts: list[Text] = []
    groups, left_out = limits.first(report.shared, limits.SHARED_GROUPS)
    for group in groups:
        parts.append(
            Text.assemble(
                (format_bytes(group.bytes), "bold"),
                f" in {group.storages} storage(s) is held by {len(group.owners)} holders together; "
                "each alone retains none of it, and all must go before a byte is freed:",
            )
        )
        parts += widths.names_lines(group.owners, inner, 4)
    if left_out:
        parts.append(Text(limits.more(left_out, "groups of holders that must all go") or "", style="dim"))
    release, left_out = limits.first(report.release, limits.RELEASE_LINES)
    if release:
        parts.append(Text("Suggested lines for shutdown():", style="bold"))
        parts += [text for line in release for text in widths.indented(clip(line), inner, 4, "cyan")]
        if left_out:
            parts.append(Text(limits.more(left_out, "suggested lines") or "", style="dim"))
    if not parts:
        parts.append(Text("Nothing to release."))
    return Panel(Group(*parts), title="What shutdown() must release", title_align="left")
