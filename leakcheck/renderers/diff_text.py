"""`leakcheck diff` in a terminal: one table of the holders that changed, then the verdict."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from leakcheck.renderers import limits
from leakcheck.renderers.limits import clip
from leakcheck.report.diff import APPEARED, GREW, ReportDiff
from leakcheck.report.gate import EXIT_FAIL, EXIT_PASS
from leakcheck.sizes import format_bytes, format_delta

_STYLE = {APPEARED: "bold red", GREW: "red", "shrank": "green", "disappeared": "green"}
ROWS = 50


def render_diff(diff: ReportDiff, console: Console) -> None:
    if diff.changes:
        title = f"Holders that changed, OLD {clip(diff.old)} -> NEW {clip(diff.new)}"
        table = Table(title=title, title_justify="left", title_style="bold", expand=True)
        table.add_column("change", no_wrap=True)
        table.add_column("holder key", overflow="fold", ratio=1)
        table.add_column("OLD", justify="right", no_wrap=True)
        table.add_column("NEW", justify="right", no_wrap=True)
        table.add_column("delta", justify="right", no_wrap=True)
        shown, left_out = limits.first(diff.changes, ROWS)
        for change in shown:
            key = Text(clip(change.key))
            if change.change in (APPEARED, GREW) and not change.counted:
                key.append(" (allowed or accepted in NEW)", style="dim")
            if change.unsized:
                key.append(" (a storage of unknown size)", style="yellow")
            table.add_row(
                Text(change.change, style=_STYLE.get(change.change, "")),
                key,
                format_bytes(change.old_bytes),
                format_bytes(change.new_bytes),
                format_delta(change.delta),
            )
        table.caption = limits.more(left_out, "changed holders", "in --json")
        console.print(table)
    else:
        console.print("No holder changed its bytes.")
    for note in diff.notes:
        console.print(Text(f"  • {clip(note)}", style="dim"))
    console.print(verdict_line(diff), highlight=False)


def verdict_line(diff: ReportDiff) -> Text:
    counts = ", ".join(
        f"{len(diff.of(kind))} {kind}" for kind in (APPEARED, GREW, "shrank", "disappeared") if diff.of(kind)
    )
    counts = f"{counts}; {diff.unchanged} unchanged" if counts else f"{diff.unchanged} unchanged"
    if diff.error is not None:
        return Text.assemble(("ERROR  ", "bold magenta"), clip(diff.error))
    limit = f"limit {format_bytes(diff.limit)}"
    if diff.exit_code == EXIT_FAIL:
        why = f"{format_bytes(diff.regression_bytes)} new or grown ({limit})"
        if diff.unsized:
            why += f", {diff.unsized} holder(s) with a storage of unknown size"
        return Text.assemble(("FAIL  ", "bold red"), why, f" · {counts}")
    assert diff.exit_code == EXIT_PASS
    return Text.assemble(
        ("PASS  ", "bold green"), f"{format_bytes(diff.regression_bytes)} new or grown ({limit})", f" · {counts}"
    )
