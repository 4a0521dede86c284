"""The report a developer reads in a terminal: verdict first, then memory, holders, and the fix."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from leakcheck.renderers import limits, proof_text
from leakcheck.renderers.limits import clip
from leakcheck.renderers.memory_columns import measured_columns
from leakcheck.report.model import FREED_BY_COLLECTOR, PROOF_FREED, PROOF_SHARED, MemorySample, Report
from leakcheck.sizes import format_bytes, format_delta

_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold magenta"}


def render(report: Report, console: Console, verbose: bool = False) -> None:
    console.print(_summary(report))
    if report.error is not None:
        console.print(_error(report, verbose))
    console.print(_memory_table(report.memory))
    if len(report.cycles) > 1:
        console.print(_cycles_table(report))
        if any(cycle.categories for cycle in report.cycles):
            console.print(_cycle_categories_table(report))
    if report.owners:
        console.print(_owners_table(report))
        console.print(_release(report))
    if report.proof is not None:
        console.print(_proof(report))
    if report.sites:
        console.print(_sites_table(report))
    if report.reconciliation is not None:
        console.print(_reconciliation_table(report))
    notes = list(report.notes)
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
            if note:
                console.print(f"  • {escape(note)}", highlight=False)


def _summary(report: Report) -> Panel:
    verdict = Text(report.verdict.upper(), style=_VERDICT_STYLE[report.verdict])
    line = Text.assemble(verdict, "  ")
    holders = [o for o in report.owners if o.kind not in FREED_BY_COLLECTOR]
    if report.verdict == "error" and report.error is not None:
        line.append(f"{clip(report.error.type)} in {report.error.phase}: {clip(report.error.message)}")
        line.append(f"\n{format_bytes(report.leaked_bytes)} still held after shutdown()")
    elif report.leaked_bytes:
        line.append(f"{format_bytes(report.leaked_bytes)} still held after shutdown()", style="bold")
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
        table.add_row(clip(site.site), format_bytes(site.bytes), str(site.storages), limits.names(site.owners, 4))
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


def _memory_table(samples: list[MemorySample]) -> Table:
    """Each figure with its change since baseline beside it, dimmed."""
    table = Table(title="Memory by phase (change since baseline)", title_justify="left", title_style="bold")
    present = measured_columns(samples)
    table.add_column("phase", no_wrap=True)
    cycles = len({s.cycle for s in samples}) > 1
    for title, _ in present:
        table.add_column(title, justify="right", no_wrap=True)
    base = samples[0] if samples else None
    for sample in samples:
        row: list[Text | str] = [
            f"{sample.phase} #{sample.cycle}" if cycles and sample.phase != "baseline" else sample.phase
        ]
        for _, attr in present:
            value = getattr(sample, attr)
            start = getattr(base, attr) if base else None
            cell = Text(format_bytes(value))
            if value is not None and start is not None and sample is not base:
                cell.append(f" {format_delta(value - start)}", style="dim")
            row.append(cell)
        table.add_row(*row)
    return table


def _owners_table(report: Report) -> Table:
    """One row per holder; example paths sit under the holder, where the width is."""
    table = Table(title="Holders, by bytes they reach", title_justify="left", title_style="bold", expand=True)
    table.add_column("holder  [dim](example paths)[/dim]", overflow="fold", ratio=1)
    table.add_column("kind", no_wrap=True)
    table.add_column("reachable", justify="right", no_wrap=True)
    table.add_column("retained", justify="right", no_wrap=True)
    table.add_column("tensors", justify="right", no_wrap=True)
    owners, left_out = limits.first(report.owners, limits.HOLDERS)
    for owner in owners:
        cell = Text(clip(owner.path), style="bold")
        if owner.allowed:
            cell.append(" (allowed)", style="dim")
        for example in owner.examples[: limits.EXAMPLES]:
            cell.append(f"\n  {clip(example)}", style="dim")
        if owner.detail:
            cell.append(f"\n  {clip(owner.detail)}", style="italic dim")
        proven = proof_text.holder_line(owner)
        if proven:
            good = owner.proof in (PROOF_FREED, PROOF_SHARED)
            cell.append(f"\n  {clip(proven)}", style="green" if good else "yellow")
        style = "dim" if owner.allowed or owner.kind in FREED_BY_COLLECTOR else None
        table.add_row(
            cell,
            owner.kind,
            format_bytes(owner.reachable_bytes),
            format_bytes(owner.retained_bytes),
            str(owner.tensors),
            style=style,
        )
    table.caption = limits.more(left_out, "holders")
    return table


def _proof(report: Report) -> Panel:
    """Each suggested line leakcheck ran, what it was expected to free and what died after it."""
    proof = report.proof
    assert proof is not None
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
        line = Text(clip(step.line), style="cyan")
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


def _release(report: Report) -> Panel:
    parts: list[Text] = []
    groups, left_out = limits.first(report.shared, limits.SHARED_GROUPS)
    for group in groups:
        names = limits.names(group.owners)
        parts.append(
            Text.assemble(
                (format_bytes(group.bytes), "bold"),
                f" in {group.storages} storage(s) is held by {len(group.owners)} holders together; "
                f"each alone retains none of it, and all must go before a byte is freed:\n    {names}",
            )
        )
    if left_out:
        parts.append(Text(limits.more(left_out, "groups of holders that must all go") or "", style="dim"))
    release, left_out = limits.first(report.release, limits.RELEASE_LINES)
    if release:
        code = "\n".join(f"    {clip(line)}" for line in release)
        parts.append(Text.assemble(("Suggested lines for shutdown():\n", "bold"), (code, "cyan")))
        if left_out:
            parts.append(Text(limits.more(left_out, "suggested lines") or "", style="dim"))
    if not parts:
        parts.append(Text("Nothing to release."))
    return Panel(Group(*parts), title="What shutdown() must release", title_align="left")
