"""Thousands of holders and huge names: the terminal and Markdown stay readable, the JSON keeps all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leakcheck.cli import app

from process_runs import write_unique_runner

HOLDERS = 3000
HUGE_KEY = 20 * 2**20  # a 20 MB string key

RUNNER = f"""
import torch

class Runner:
    def shutdown(self):
        pass

def build():
    module = globals()
    for index in range({HOLDERS}):
        module[f"leak_{{index}}"] = torch.zeros(1)
    module["BY_PROMPT"] = {{"x" * {HUGE_KEY}: torch.zeros(3)}}
    return Runner()
"""


@pytest.fixture
def many_holders(tmp_path: Path):
    config, module = write_unique_runner(tmp_path, "many_holders", RUNNER)
    yield config
    sys.modules.pop(module, None)


def test_thousands_of_holders_are_capped_in_text_and_kept_in_json(tmp_path, many_holders):
    report_path, markdown_path = tmp_path / "report.json", tmp_path / "summary.md"
    args = ["run", str(many_holders), "--json", str(report_path), "--markdown", str(markdown_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output[-2000:]
    report = json.loads(report_path.read_text())
    assert len(report["owners"]) == HOLDERS + 1
    assert len(report["release"]) == HOLDERS + 1
    assert report["leaked_bytes"] == 4 * HOLDERS + 12

    terminal = result.stdout
    assert f"and {HOLDERS + 1 - 25:,} more holders in the JSON report" in terminal
    assert f"and {HOLDERS + 1 - 20:,} more suggested lines in the JSON report" in terminal
    assert len(terminal) < 30_000
    # The suggested lines and the proof's lines run, each list capped at 20.
    assert terminal.count("= None") <= 2 * 20

    markdown = markdown_path.read_text()
    assert len(markdown) < 65_536  # GitHub's limit for one comment
    assert f"And {HOLDERS + 1 - 15:,} more holders in the JSON report." in markdown
    assert f"And {HOLDERS + 1 - 20:,} more suggested lines in the JSON report." in markdown


def test_a_huge_key_is_clipped_where_people_read_it(tmp_path, many_holders):
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["run", str(many_holders), "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    owner = next(o for o in report["owners"] if o["path"].endswith(".BY_PROMPT"))
    assert owner["reachable_bytes"] == 12
    assert len(owner["examples"][0]) < 200 and not owner["evaluable"]  # shortened at the source, not pasted
    assert len(report_path.read_text()) < 5 * 2**20
    assert all(len(line) < 1000 for line in result.stdout.splitlines())
