"""The terminal report at 80, 120 and 200 columns: nothing wider than the terminal, no path cut
inside a name, no number cut short. On a real report of the shipped MRV2 example (run once,
through the CLI, with its proof) and on a recorded H200 report (every NVML and allocator column)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import leakcheck
from leakcheck.renderers import limits
from leakcheck.renderers.memory_columns import measured_columns
from leakcheck.renderers.terminal import render
from leakcheck.renderers.widths import break_points, fold_path
from leakcheck.report.model import Report
from leakcheck.sizes import format_bytes, format_delta

WIDTHS = (80, 120, 200)
EXAMPLES = Path(leakcheck.__file__).parent / "examples"
H200_REPORT = Path(__file__).parent / "fixtures" / "h200-hf-llama-seed.report.json"


def cli(*args: str, columns: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "leakcheck", *args], capture_output=True, text=True, env=env, timeout=300, **kwargs
    )


@pytest.fixture(scope="module")
def mrv2_report(tmp_path_factory) -> Path:
    """The seed MRV2 example, run once for real (with --prove, so the proof panel is there)."""
    out = tmp_path_factory.mktemp("mrv2") / "report.json"
    result = cli("run", str(EXAMPLES / "mrv2-seed.yaml"), "--json", str(out), cwd=tmp_path_factory.getbasetemp())
    assert result.returncode == 1, result.stderr[-2000:]
    return out


def shown(report_path: Path, width: int) -> str:
    """`leakcheck show` as a person runs it in a terminal this wide."""
    result = cli("show", str(report_path), columns=width)
    assert result.stdout, result.stderr
    return result.stdout


def rendered(report: Report, width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=open(os.devnull, "w"))  # noqa: SIM115
    render(report, console)
    return console.export_text()


def assert_path_shown(text: str, path: str, width: int) -> None:
    """The path on one line when it fits a line; otherwise split only at break points, its
    pieces on consecutive lines."""
    lines = [line.rstrip() for line in text.splitlines()]
    stripped = [line.strip(" │") for line in lines]
    if len(path) + 2 <= width - 4:  # room for the holder indent (or a panel's border)
        assert path in stripped, f"{path!r} not whole on one line at {width} columns"
        return
    starts = [i for i, line in enumerate(stripped) if path.startswith(line) and line]
    for start in starts:
        pieces, joined = [], ""
        for line in stripped[start:]:
            if path.startswith(joined + line + " ") and joined + line != path:
                line += " "  # the space a piece ended with, stripped with the line's padding
            if not path.startswith(joined + line):
                break
            pieces.append(line)
            joined += line
            if joined == path:
                offsets = [sum(map(len, pieces[: i + 1])) for i in range(len(pieces) - 1)]
                assert set(offsets) <= set(break_points(path)), f"{path!r} cut inside a name: {pieces}"
                return
    pytest.fail(f"{path!r} not found, whole or split at separators, at {width} columns")


@pytest.mark.parametrize("width", WIDTHS)
def test_mrv2_report_fits_and_keeps_paths_and_numbers_whole(mrv2_report, width):
    text = shown(mrv2_report, width)
    report = Report.from_dict(json.loads(mrv2_report.read_text()))
    assert report.owners and report.proof is not None

    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text  # nothing truncated: not a number, not a path
    for owner in report.owners[: limits.HOLDERS]:
        holder_line = next(line for line in text.splitlines() if line.startswith(owner.path + " "))
        for figure in (format_bytes(owner.reachable_bytes), format_bytes(owner.retained_bytes), str(owner.tensors)):
            assert f" {figure}" in holder_line, (figure, holder_line)
        for example in owner.examples[: limits.EXAMPLES]:
            assert_path_shown(text, example, width)
    for line in report.release:
        assert_path_shown(text, line, width)
    # The CPU run measures RSS alone: a one-column table whose title stays on one line.
    assert any(line.rstrip() == "Memory by phase (change since baseline)" for line in text.splitlines())


def test_a_path_longer_than_the_line_is_split_at_a_separator(mrv2_report):
    """At 80 columns the rope cache's example (81 characters) cannot fit: it is split before
    `.cos_sin_cache`, never inside `_ROPE_DICT` or the key."""
    text = shown(mrv2_report, 80)
    rope = "leakcheck.examples.mrv2._ROPE_DICT[(64, 256, 'cpu', torch.float32)].cos_sin_cache"
    report = Report.from_dict(json.loads(mrv2_report.read_text()))
    assert rope in [e for o in report.owners for e in o.examples]
    assert_path_shown(text, rope, 80)
    assert rope not in text
    assert rope in shown(mrv2_report, 120)


@pytest.mark.parametrize("width", WIDTHS)
def test_cuda_memory_table_falls_back_to_deltas_and_never_truncates(width):
    report = Report.from_dict(json.loads(H200_REPORT.read_text()))
    text = rendered(report, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    columns = measured_columns(report.memory)
    assert len(columns) == 5  # NVML process and device, torch allocated and reserved, RSS
    base = report.memory[0]
    for sample in report.memory[1:]:
        for _, attr in columns:
            assert format_delta(getattr(sample, attr) - getattr(base, attr)) in text
    loaded = report.memory[1]
    growth = loaded.nvml_process_bytes - base.nvml_process_bytes
    full = f"{format_bytes(loaded.nvml_process_bytes)} {format_delta(growth)}"
    if width >= 120:
        assert full in text and "Memory by phase (change since baseline)" in text
    else:
        assert full not in text and "Memory by phase (baseline, then the change since it)" in text
    for owner in report.owners:
        for example in owner.examples[: limits.EXAMPLES]:
            assert_path_shown(text, example, width)


def test_a_very_narrow_terminal_drops_whole_columns_and_says_which():
    report = Report.from_dict(json.loads(H200_REPORT.read_text()))
    text = rendered(report, 50)
    memory_part = text.split("Holders")[0]
    assert "…" not in memory_part
    assert max(len(line) for line in memory_part.splitlines()) <= 50
    caption = " ".join(memory_part.split("not shown at this width (in the JSON report):")[1].split())
    assert caption.endswith("RSS")  # columns go from the right; the phase and NVML stay
    assert "+690 MiB" in memory_part  # NVML process, loaded: still there, whole


@pytest.mark.parametrize(
    ("path", "width", "pieces"),
    [
        ("runner.model_state.model.layers[0].kv", 20, ["runner.model_state", ".model.layers[0].kv"]),
        ("a._CACHE[(64, 'cpu')].x", 14, ["a._CACHE[(64, ", "'cpu')].x"]),
        ("/usr/lib/python3/site.py:10 in f", 18, ["/usr/lib/python3/", "site.py:10 in f"]),
        ("x" * 30, 10, ["x" * 10, "x" * 10, "x" * 10]),  # one name longer than a line: cut, nothing else to do
    ],
)
def test_fold_path_breaks_at_separators(path, width, pieces):
    assert fold_path(path, width, width) == pieces


names = st.text(alphabet="abcdefghij_0123456789", min_size=1, max_size=12)
parts = st.one_of(
    names.map(lambda n: "." + n),
    names.map(lambda n: f"['{n}']"),
    st.tuples(names, names).map(lambda t: f"[({t[0]}, {t[1]})]"),
)


@given(head=names, tail=st.lists(parts, max_size=12), width=st.integers(min_value=8, max_value=80))
def test_fold_path_keeps_every_character_and_cuts_a_name_only_when_it_must(head, tail, width):
    path = head + "".join(tail)
    pieces = fold_path(path, width, width - 4)
    assert "".join(pieces) == path
    assert len(pieces[0]) <= width and all(len(piece) <= width - 4 for piece in pieces[1:])
    points = set(break_points(path))
    start = 0
    for piece in pieces[:-1]:
        end = start + len(piece)
        if end not in points:  # cut inside a name: only where no separator was in reach
            assert not any(start < point <= end for point in points), (path, pieces)
        start = end
