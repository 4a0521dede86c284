"""`--snapshot`: on the CPU the flag is accepted and the report says snapshots need CUDA; its
path is checked before the runner loads. (The snapshots themselves: scripts/gpu_snapshot_check.sh.)"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.outputs import snapshot_path

FIXED = Path(leakcheck.__file__).parent / "examples" / "mrv2-fixed.yaml"
CUDA_NOTE = "--snapshot: allocator snapshots need CUDA"


pytestmark = pytest.mark.usefixtures("fresh_rope_registry")


def _marker_runner(folder: Path) -> tuple[Path, Path]:
    """A config whose factory leaves a file behind: proof of whether the runner loaded."""
    marker = folder / "loaded.txt"
    (folder / "marker_runner.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            class Runner:
                def shutdown(self):
                    pass

            def build():
                Path({str(marker)!r}).write_text("loaded")
                return Runner()
            """
        )
    )
    config = folder / "marker.yaml"
    config.write_text("name: marker\ndevice: cpu\nrunner:\n  factory: marker_runner:build\n")
    return config, marker


def test_snapshot_files_are_the_path_with_the_phase_before_its_suffix():
    assert snapshot_path(Path("out/snap.pickle"), "shutdown") == Path("out/snap.shutdown.pickle")
    assert snapshot_path(Path("out/snap.pickle"), "collected") == Path("out/snap.collected.pickle")
    assert snapshot_path(Path("snap"), "shutdown") == Path("snap.shutdown.pickle")
    assert snapshot_path(Path("snap.pkl"), "collected", cycle=2) == Path("snap.cycle2.collected.pkl")


@pytest.mark.parametrize("isolate", ["--no-isolate", "--isolate"])
def test_on_cpu_the_flag_is_accepted_and_the_report_says_snapshots_need_cuda(tmp_path, isolate):
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(FIXED),
            "--device",
            "cpu",
            isolate,
            "--json",
            str(report_path),
            "--snapshot",
            str(tmp_path / "s.pickle"),
        ],
    )
    assert result.exit_code == 0, result.output  # the fixed runner still passes
    report = json.loads(report_path.read_text())
    notes = [n for n in report["notes"] if n.startswith(CUDA_NOTE)]
    assert len(notes) == 1  # in an isolated run, the child (where the runner runs) was told
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no snapshot on the CPU


def test_without_the_flag_there_is_no_snapshot_note(tmp_path):
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(FIXED), "--device", "cpu", "--json", str(report_path)])
    assert result.exit_code == 0
    assert not [n for n in json.loads(report_path.read_text())["notes"] if "--snapshot" in n]


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_a_snapshot_path_that_cannot_be_written_stops_before_the_runner_loads(tmp_path, where):
    config, marker = _marker_runner(tmp_path)
    target = tmp_path / "nowhere" / "s.pickle"
    if where == "a folder":
        target = tmp_path / "s.pickle"
        (tmp_path / "s.shutdown.pickle").mkdir()
    report_path = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(report_path), "--snapshot", str(target)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("leakcheck: error: --snapshot:")
    assert not marker.exists() and not report_path.exists()


def test_the_marker_runner_does_load_with_a_good_snapshot_path(tmp_path):
    """The twin of the test above: the marker does prove a load."""
    config, marker = _marker_runner(tmp_path)
    result = CliRunner().invoke(app, ["run", str(config), "--snapshot", str(tmp_path / "s.pickle")])
    assert result.exit_code == 0, result.output
    assert marker.read_text() == "loaded"
