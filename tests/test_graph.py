"""`--graph`: the holders of the shipped buggy example as a picture, drawn from the report by
objgraph, through the real CLI, with the real graphviz (and without it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.examples import mrv2
from leakcheck.renderers.graph import MAX_HOLDERS, build_picture, chain_of, segments, to_dot, wrapped
from leakcheck.report.model import Owner, Report, Storage
from leakcheck.sizes import format_bytes

SEED = Path(leakcheck.__file__).parent / "examples" / "mrv2-seed.yaml"
REPO = Path(leakcheck.__file__).resolve().parents[1]
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> tuple[int, Path, Path]:
    """One run of the MRV2 seed with --graph x.dot and --json (a run takes seconds: shared)."""
    folder = tmp_path_factory.mktemp("graph")
    mrv2._ROPE_DICT.clear()
    try:
        result = CliRunner().invoke(
            app,
            ["run", str(SEED), "--device", "cpu", "--json", str(folder / "r.json"), "--graph", str(folder / "g.dot")],
        )
    finally:
        mrv2._ROPE_DICT.clear()
    return result.exit_code, folder / "r.json", folder / "g.dot"


def labels(dot: str) -> list[str]:
    """The text of every box, lines joined by newlines (objgraph writes `label="a\\nb"`)."""
    return [m.replace("\\n", "\n").replace('\\"', '"') for m in re.findall(r'label="((?:[^"\\]|\\.)*)"', dot)]


def edges(dot: str) -> set[tuple[str, str]]:
    return set(re.findall(r"^\s*(o\d+) -> (o\d+)", dot, flags=re.M))


def node_ids(dot: str) -> dict[str, str]:
    """Node id -> label."""
    found = re.findall(r'^\s*(o\d+)\[label="((?:[^"\\]|\\.)*)"', dot, flags=re.M)
    return {node: text.replace("\\n", "\n") for node, text in found}


def test_dot_has_every_holder_path_with_its_sizes(seed_run):
    code, report_path, dot_path = seed_run
    assert code == 1
    report = json.loads(report_path.read_text())
    boxes = labels(dot_path.read_text())
    holders = [b for b in boxes if b.startswith("Holder\n")]
    assert len(holders) == len(report["owners"]) == 7
    for owner in report["owners"]:
        (box,) = [b for b in holders if owner["path"] in b.replace("\n", "")]
        assert f"reaches {format_bytes(owner['reachable_bytes'])}" in box
        assert f"alone frees {format_bytes(owner['retained_bytes'])}" in box
        assert owner["fix"] in box
    (top,) = [b for b in boxes if b.startswith("Run\n")]
    assert f"{report['leaked_bytes']:,} bytes" in top and "FAIL" in top


def test_roots_hang_holders_from_the_runner_and_the_module(seed_run):
    _, _, dot_path = seed_run
    dot = dot_path.read_text()
    nodes = node_ids(dot)
    by_text = {text.split("\n")[-1]: node for node, text in nodes.items() if text.startswith("Root\n")}
    assert set(by_text) == {"runner", "leakcheck.examples.mrv2"}
    below_module = {nodes[b] for a, b in edges(dot) if a == by_text["leakcheck.examples.mrv2"]}
    assert [t.split("\n")[2] for t in below_module] == ["leakcheck.examples.mrv2._ROPE_DICT"]


def test_module_subtree_is_folded_and_the_shared_model_is_one_hold(seed_run):
    _, report_path, dot_path = seed_run
    report = json.loads(report_path.read_text())
    dot = dot_path.read_text()
    boxes = labels(dot)
    wrappers = {"runner.model_state", "runner.speculator", "runner.pooling_runner", "runner.cudagraph_manager"}
    model = [s for s in report["storages"] if set(s["owners"]) == wrappers]
    assert len(model) == 30
    (hold,) = [b for b in boxes if b.startswith("Shared\n") and "held by 4 holders" in b]
    assert f"30 storages, {format_bytes(sum(s['nbytes'] for s in model))}" in hold
    # No box names one layer's weight: the model's 30 storages are one folded box.
    assert not any("layers[2]" in b for b in boxes)
    folded = [b for b in boxes if b.startswith("Folded\n") and "30 storages" in b]
    assert len(folded) == 1 and "runner.model_state.model …" in folded[0]
    # The four wrappers all point at the one shared hold.
    nodes = node_ids(dot)
    hold_id = next(n for n, t in nodes.items() if t == hold)
    pointing = {nodes[a].split("\n")[2] for a, b in edges(dot) if b == hold_id}
    assert pointing == wrappers


def test_small_holds_show_each_storage_with_its_path_and_bytes(seed_run):
    _, report_path, dot_path = seed_run
    report = json.loads(report_path.read_text())
    boxes = [b.replace("\n", "") for b in labels(dot_path.read_text()) if b.startswith("Storage\n")]
    for storage in report["storages"]:
        if storage["owners"] == ["runner.encoder_cache"]:
            assert any(storage["example"] in b and f"{storage['nbytes']:,} bytes" in b for b in boxes)


@needs_dot
def test_saved_report_draws_the_same_picture_as_svg_and_png(seed_run, tmp_path):
    code, report_path, dot_path = seed_run
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    assert CliRunner().invoke(app, ["show", str(report_path), "--graph", str(svg)]).exit_code == code
    assert CliRunner().invoke(app, ["show", str(report_path), "--graph", str(png)]).exit_code == code
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "runner.cudagraph_manager" in text and "del self.pooling_runner" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = to_dot(Report.from_dict(json.loads(report_path.read_text())))
    assert sorted(labels(again)) == sorted(labels(dot_path.read_text()))


def test_without_graphviz_the_dot_is_written_and_the_exit_code_is_the_reports(seed_run, tmp_path):
    code, report_path, _ = seed_run
    target = tmp_path / "picture.svg"
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "leakcheck", "show", str(report_path), "--graph", str(target)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == code == 1
    assert not target.exists()
    written = tmp_path / "picture.dot"
    assert "runner.speculator" in written.read_text()
    lines = [line for line in done.stderr.splitlines() if "graphviz" in line]
    assert len(lines) == 1
    assert "apt install graphviz" in lines[0] and "brew install graphviz" in lines[0] and str(written) in lines[0]
    assert "Traceback" not in done.stderr


def test_a_format_graphviz_is_not_asked_for_is_a_usage_error_before_the_runner_loads(tmp_path):
    report = tmp_path / "r.json"
    result = CliRunner().invoke(
        app, ["run", str(SEED), "--device", "cpu", "--json", str(report), "--graph", str(tmp_path / "g.pdf")]
    )
    assert result.exit_code == 2
    assert "--graph" in result.output and ".dot, .svg or .png" in result.output
    assert not report.exists()  # the placeholder is written when the run starts: it never did


def test_a_missing_folder_for_the_graph_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["run", str(SEED), "--device", "cpu", "--graph", str(tmp_path / "no" / "g.svg")])
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_paths_split_between_segments_never_inside_a_name_or_key():
    path = "pkg.mod._ROPE[(64, 'cpu', torch.float32)].cache['a.b[c]'].weight"
    assert segments(path) == [
        "pkg",
        ".mod",
        "._ROPE",
        "[(64, 'cpu', torch.float32)]",
        ".cache",
        "['a.b[c]']",
        ".weight",
    ]
    lines = wrapped(path, width=12)
    assert "".join(lines) == path and len(lines) > 1
    # Each line is whole segments: split again, the lines give back the path's segments.
    assert [part for line in lines for part in segments(line)] == segments(path)


def _owner(i: int) -> Owner:
    return Owner(f"runner.cache_{i}", "attribute", 1000 + i, 1000 + i, 1, 1, fix=f"del self.cache_{i}")


def _storage(i: int) -> Storage:
    return Storage("cpu", i, 1000 + i, "float32", [250], f"runner.cache_{i}.t", [f"runner.cache_{i}"], 1)


def test_many_holders_are_capped_with_a_more_box_that_says_how_many():
    count = MAX_HOLDERS + 5
    report = Report("many", "cpu", "fail", 0, 0, owners=[_owner(i) for i in range(count)])
    report.storages = [_storage(i) for i in range(count)]
    chain = chain_of(build_picture(report))
    holders = [node for node in chain if type(node).__name__ == "Holder"]
    assert len(holders) == MAX_HOLDERS
    (more,) = [node for node in chain if type(node).__name__ == "More"]
    assert repr(more) == "5 more holders"
    dot = to_dot(report)
    assert "5 more holders" in dot and "\\nrunner.cache_28\\n" in dot  # the largest are drawn
    assert "\\nrunner.cache_4\\n" not in dot and "\\nrunner.cache_5\\n" in dot
    assert "more references" not in dot  # objgraph cut nothing silently
