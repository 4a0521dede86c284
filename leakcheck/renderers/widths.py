"""Fitting the terminal report to the console: 80 columns on a laptop, 200 in a CI log.

A path such as `runner.model_state.model.layers[0].self_attn.kv_cache` is something a person
copies into an editor, so it is never cut inside a name: it gets a line of its own, and only
a path longer than the whole line is broken, after a separator (`.`, `[`, `/`, `, `), with
the rest indented under it. Numbers are never cut either: a table that cannot show every
figure with its change since baseline shows the changes alone, then drops whole columns
(saying which), before rich would print `1.18 GiB +6…`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

from leakcheck.renderers import baseline_text, limits, proof_text
from leakcheck.renderers.limits import clip
from leakcheck.report.model import FREED_BY_COLLECTOR, PROOF_FREED, PROOF_SHARED, MemorySample, Owner
from leakcheck.sizes import format_bytes, format_delta

EXAMPLE_INDENT = 2  # an example path sits under its holder
CONTINUATION = 4  # the rest of a path too long for one line
GAP = 2  # between the holder column and the figures


def break_points(path: str) -> list[int]:
    """Offsets where `path` may be split: before `.` and `[`, after `/`, `, ` and a space."""
    points = []
    for index in range(1, len(path)):
        if path[index] in ".[" or path[index - 1] in "/ " or (path[index - 1] == "," and path[index] != " "):
            points.append(index)
    return points


def fold_path(path: str, first: int, rest: int) -> list[str]:
    """`path` as lines of at most `first` (then `rest`) characters, split only at break points.

    A single name longer than a whole line (a 300-character key, say) is the one thing cut
    mid-name: there is no line it could stay whole on.
    """
    lines: list[str] = []
    start, width = 0, max(first, 1)
    points = [*break_points(path), len(path)]
    while len(path) - start > width:
        fitting = [p for p in points if start < p <= start + width]
        end = fitting[-1] if fitting else start + width
        lines.append(path[start:end])  # a space it ends with is invisible; the pieces join to the path
        start, width = end, max(rest, 1)
    lines.append(path[start:])
    return lines


def indented(path: str, width: int, indent: int, style: str | None = None) -> list[Text]:
    """A path's lines at `indent`, continuations deeper, none wider than `width`."""
    pieces = fold_path(path, width - indent, width - indent - CONTINUATION)
    pads = [" " * indent] + [" " * (indent + CONTINUATION)] * (len(pieces) - 1)
    return [Text(pad + piece, style=style or "", no_wrap=True, overflow="ignore") for pad, piece in zip(pads, pieces)]


def prose(text: str, width: int, indent: int, style: str | None = None) -> list[Text]:
    """Running text wrapped at spaces, hanging under its first line."""
    pad = " " * indent
    lines = textwrap.wrap(text, max(width, indent + 10), initial_indent=pad, subsequent_indent=pad + "  ",
                          break_on_hyphens=False) or [pad]
    return [Text(line, style=style or "", no_wrap=True, overflow="ignore") for line in lines]


@dataclass(frozen=True)
class Figure:
    """One right-aligned column of the holders list."""

    title: str
    cell: Callable[[Owner], str]


FIGURES = (
    Figure("kind", lambda owner: owner.kind),
    Figure("reachable", lambda owner: format_bytes(owner.reachable_bytes)),
    Figure("retained", lambda owner: format_bytes(owner.retained_bytes)),
    Figure("tensors", lambda owner: str(owner.tensors)),
)


def _figures(owners: Sequence[Owner]) -> tuple[list[int], Callable[[list[str]], str]]:
    widths = [max([len(f.title), *(len(f.cell(o)) for o in owners)]) for f in FIGURES]

    def line(cells: list[str]) -> str:
        kind, *numbers = cells
        return "  ".join([kind.ljust(widths[0]), *(c.rjust(w) for c, w in zip(numbers, widths[1:]))])

    return widths, line


def holder_name(owner: Owner) -> str:
    return clip(owner.path) + (" (allowed)" if owner.allowed else "") + baseline_text.owner_mark(owner)


def holders_lines(owners: Sequence[Owner], left_out: int, width: int) -> list[Text]:
    """The holders, largest first: the holder and its figures on one line, each example path
    on a line of its own under it (the whole width is there for it)."""
    _, figures_line = _figures(owners)
    block = len(figures_line([f.title for f in FIGURES]))
    longest = max((len(holder_name(o)) for o in owners), default=0)
    column = max(min(longest, width - block - GAP), 0)
    header = "holder (example paths under it)"
    header = header if len(header) <= column else "holder"
    lines = [
        Text("Holders, by bytes they reach", style="bold"),
        Text(header.ljust(column + GAP) + figures_line([f.title for f in FIGURES]), style="bold", no_wrap=True),
        Text("─" * min(column + GAP + block, width), style="dim", no_wrap=True, overflow="ignore"),
    ]
    for owner in owners:
        style = "dim" if owner.allowed or owner.kind in FREED_BY_COLLECTOR else None
        name = holder_name(owner)
        figures = figures_line([f.cell(owner) for f in FIGURES])
        if len(name) <= column:
            line = Text(name.ljust(column + GAP), style=style or "bold", no_wrap=True)
            line.append(figures, style=style or "")
            lines.append(line)
        else:
            lines += indented(name, width, 0, style or "bold")
            lines.append(Text(" " * (column + GAP) + figures, style=style or "", no_wrap=True))
        for example in owner.examples[: limits.EXAMPLES]:
            lines += indented(clip(example), width, EXAMPLE_INDENT, "dim")
        if owner.detail:
            lines += prose(clip(owner.detail), width, EXAMPLE_INDENT, "italic dim")
        proven = proof_text.holder_line(owner)
        if proven:
            good = owner.proof in (PROOF_FREED, PROOF_SHARED)
            lines += prose(clip(proven), width, EXAMPLE_INDENT, "green" if good else "yellow")
    more = limits.more(left_out, "holders")
    if more:
        lines.append(Text(more, style="dim"))
    return lines


def names_lines(paths: Sequence[str], width: int, indent: int) -> list[Text]:
    """Holder paths one per line (never a comma-joined line that wraps inside a name), capped."""
    shown, left_out = limits.first(paths, limits.NAMES_PER_GROUP)
    lines = [line for path in shown for line in indented(clip(path), width, indent)]
    if left_out:
        lines.append(Text(" " * indent + f"and {left_out:,} more", style="dim"))
    return lines


@dataclass(frozen=True)
class MemoryLayout:
    """How the memory table shows each figure: with its change since baseline or as the change
    alone, headers on one line or two, and which columns did not fit at all."""

    deltas_only: bool
    stacked_headers: bool
    columns: list[tuple[str, str]]
    left_out: list[str]


def memory_layouts(columns: list[tuple[str, str]]) -> list[MemoryLayout]:
    """Widest first; the last ones drop columns from the right (the phase column stays)."""
    layouts = [MemoryLayout(d, s, columns, []) for d in (False, True) for s in (False, True)]
    for keep in range(len(columns) - 1, 0, -1):
        layouts.append(MemoryLayout(True, True, columns[:keep], [name for name, _ in columns[keep:]]))
    return layouts


def memory_table(samples: list[MemorySample], columns: list[tuple[str, str]], console: Console) -> Table:
    """The first layout whose every number fits whole in the console's width."""
    layouts = memory_layouts(columns)
    for layout in layouts:
        table = _memory_table(samples, layout)
        # Measured as if the console were unbounded: rich clamps a measurement to the width it
        # is given, and a table it would squeeze reads as one that fits.
        unbounded = console.options.update_width(10_000)
        if console.measure(table, options=unbounded).maximum <= console.width:
            return table
    return _memory_table(samples, layouts[-1])


def _memory_table(samples: list[MemorySample], layout: MemoryLayout) -> Table:
    title = "Memory by phase (change since baseline)"
    if layout.deltas_only:
        title = "Memory by phase (baseline, then the change since it)"
    # min_width: a table of one narrow column (RSS alone, on a CPU) must not wrap its title.
    table = Table(title=title, title_justify="left", title_style="bold", min_width=len(title))
    table.add_column("phase", no_wrap=True)
    cycles = len({s.cycle for s in samples}) > 1
    for name, _ in layout.columns:
        table.add_column(name.replace(" ", "\n", 1) if layout.stacked_headers else name, justify="right", no_wrap=True)
    base = samples[0] if samples else None
    for sample in samples:
        row: list[Text | str] = [
            f"{sample.phase} #{sample.cycle}" if cycles and sample.phase != "baseline" else sample.phase
        ]
        for _, attr in layout.columns:
            value = getattr(sample, attr)
            start = getattr(base, attr) if base else None
            changed = value is not None and start is not None and sample is not base
            if layout.deltas_only and changed:
                row.append(Text(format_delta(value - start)))
                continue
            cell = Text(format_bytes(value))
            if changed:
                cell.append(f" {format_delta(value - start)}", style="dim")
            row.append(cell)
        table.add_row(*row)
    if layout.left_out:
        table.caption = f"not shown at this width (in the JSON report): {', '.join(layout.left_out)}"
    return table
