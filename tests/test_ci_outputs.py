"""CI outputs through the real CLI: JUnit XML, the GitHub step summary and annotations, plain
progress lines, --quiet, `--json -` and `show`'s exit code, on the shipped MRV2 examples."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.examples import mrv2
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.lifecycle.source_line import method_source
from leakcheck.renderers.github import escape_data, escape_property, workflow_path
from leakcheck.report.model import Report

from process_runs import HANG_GUARD_S, kill_quietly, start_process, wait_for, write_unique_runner

EXAMPLES = Path(leakcheck.__file__).parent / "examples"
SEED = EXAMPLES / "mrv2-seed.yaml"
FIXED = EXAMPLES / "mrv2-fixed.yaml"
REPO = Path(leakcheck.__file__).resolve().parents[1]
SHUTDOWN_LINE = inspect.getsourcelines(mrv2.GPUModelRunner.shutdown)[1]

RAISING_SHUTDOWN = r'''
import torch


class Runner:
    def __init__(self):
        self.weights = torch.zeros(4096)

    def shutdown(self):
        raise RuntimeError("shutdown broke: \x00\x1b <tag> & 100% done,\nsecond line")


def build():
    return Runner()
'''

RAISING_LOAD = """
def build():
    raise ValueError("no weights on this machine")
"""

SLOW_LOAD = """
import pathlib
import time


def build():
    pathlib.Path(__file__).with_name("loading").write_text("yes")
    time.sleep(300)
"""


pytestmark = pytest.mark.usefixtures("fresh_rope_registry")


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["run", *args, "--device", "cpu"], env=env)


def only_case(path: Path):
    """The one test case of a JUnit file, checked to be its file's only one."""
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    cases = list(suites[0])
    assert len(cases) == 1
    return xml, cases[0]


def commands(text: str) -> list[tuple[dict[str, str], str]]:
    """The `::error` workflow commands in `text`, decoded as GitHub decodes them."""
    found = []
    for line in text.splitlines():
        match = re.match(r"^::error (.*?)::(.*)$", line)
        if not match:
            continue
        properties = {}
        for item in match.group(1).split(","):
            key, _, value = item.partition("=")
            properties[key] = _unescape(value)
        found.append((properties, _unescape(match.group(2))))
    return found


def _unescape(text: str) -> str:
    for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, plain)
    return text


# --junit


def test_junit_failure_carries_holders_and_suggested_lines(tmp_path):
    out = tmp_path / "leakcheck.xml"
    result = run(str(SEED), "--no-prove", "--junit", str(out))
    assert result.exit_code == 1, result.output
    xml, case = only_case(out)
    assert (xml.tests, xml.failures, xml.errors) == (1, 1, 0)
    assert case.name == "mrv2-seed" and case.classname == "leakcheck.cpu"
    assert not case.is_passed
    (failure,) = case.result
    assert isinstance(failure, Failure) and failure.type == "leak"
    assert re.match(r"^[\d.]+ MiB still held after shutdown\(\) \(limit 0 B\)$", failure.message)
    for holder in ("runner.model_state", "runner.speculator", "leakcheck.examples.mrv2._ROPE_DICT"):
        assert holder in failure.text
    assert "Suggested lines for shutdown():\n    del self.speculator" in failure.text
    assert "leakcheck.examples.mrv2._ROPE_DICT.clear()" in failure.text


def test_junit_pass_has_no_result(tmp_path):
    out = tmp_path / "leakcheck.xml"
    result = run(str(FIXED), "--no-prove", "--junit", str(out))
    assert result.exit_code == 0, result.output
    xml, case = only_case(out)
    assert (xml.tests, xml.failures, xml.errors) == (1, 0, 0)
    assert case.is_passed and case.name == "mrv2-fixed"


def test_junit_error_is_an_error_element_and_survives_control_characters(tmp_path):
    config, _ = write_unique_runner(tmp_path, "raising", RAISING_SHUTDOWN)
    out = tmp_path / "leakcheck.xml"
    result = run(str(config), "--no-prove", "--junit", str(out))
    assert result.exit_code == 3, result.output
    xml, case = only_case(out)  # a NUL or ESC written raw would make the whole file unparseable
    assert (xml.tests, xml.failures, xml.errors) == (1, 0, 1)
    (error,) = case.result
    assert isinstance(error, Error) and error.type == "RuntimeError"
    assert error.message.startswith("error in shutdown: RuntimeError: shutdown broke: \ufffd\ufffd <tag> & 100% done,")
    assert "second line" in error.text and "Traceback" in error.text


def test_junit_of_a_killed_run_is_an_error_not_the_previous_pass(tmp_path):
    config, _ = write_unique_runner(tmp_path, "slow", SLOW_LOAD)
    out = tmp_path / "leakcheck.xml"
    passing = run(str(FIXED), "--no-prove", "--junit", str(out))
    assert passing.exit_code == 0 and only_case(out)[1].is_passed
    process, _ = start_process(config, "--junit", str(out))
    try:
        wait_for(tmp_path / "loading", process)
        xml, case = only_case(out)
        assert xml.errors == 1
        (error,) = case.result
        assert isinstance(error, Error) and error.type == "Unfinished"
        assert "did not finish" in error.message
    finally:
        kill_quietly(process.pid)
        process.communicate(timeout=HANG_GUARD_S)
    _, case = only_case(out)
    assert isinstance(case.result[0], Error)


def test_junit_from_an_isolated_run_is_written_by_the_parent(tmp_path):
    out = tmp_path / "leakcheck.xml"
    result = run(str(SEED), "--no-prove", "--isolate", "--junit", str(out))
    assert result.exit_code == 1, result.output
    _, case = only_case(out)
    assert isinstance(case.result[0], Failure) and "del self.model_state" in case.result[0].text


def test_junit_folder_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    result = run(str(SEED), "--junit", str(tmp_path / "missing" / "out.xml"))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"leakcheck: error: --junit: folder {tmp_path / 'missing'} does not exist"


# GITHUB_STEP_SUMMARY


def test_step_summary_is_appended_after_what_was_there(tmp_path):
    summary = tmp_path / "step_summary.md"
    summary.write_text("## tests\n\nall green\n")
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    assert run(str(SEED), "--no-prove", env=env).exit_code == 1
    assert run(str(FIXED), "--no-prove", env=env).exit_code == 0
    text = summary.read_text()
    assert text.startswith("## tests\n\nall green\n### leakcheck · mrv2-seed · cpu: **FAIL**")
    assert "| `runner.model_state` | attribute |" in text
    assert "```python\ndel self.speculator" in text
    assert text.index("**FAIL**") < text.index("### leakcheck · mrv2-fixed · cpu: **PASS**")


def test_step_summary_that_cannot_be_written_is_said_and_the_verdict_kept(tmp_path):
    folder = tmp_path / "summary-is-a-folder"
    folder.mkdir()
    result = run(str(SEED), "--no-prove", env={"GITHUB_STEP_SUMMARY": str(folder)})
    assert result.exit_code == 1
    assert f"GITHUB_STEP_SUMMARY: cannot append to {folder}" in result.stderr


# --annotate


def test_annotation_sits_on_shutdown_with_the_suggested_lines(tmp_path):
    result = run(str(SEED), "--no-prove", "--annotate", env={"GITHUB_WORKSPACE": str(REPO)})
    assert result.exit_code == 1
    (properties, message), = commands(result.stdout)
    assert properties == {
        "file": "leakcheck/examples/mrv2.py",
        "line": str(SHUTDOWN_LINE),
        "title": "leakcheck mrv2-seed: FAIL",
    }
    assert (REPO / properties["file"]).read_text().splitlines()[SHUTDOWN_LINE - 1].strip().startswith("def shutdown(")
    assert message.splitlines()[0].endswith("still held after shutdown() (limit 0 B)")
    assert "  runner.model_state (attribute): reaches" in message
    assert "Add to shutdown():\n    del self.speculator\n" in message
    assert message.endswith("    del self.encoder_cache")


def test_annotation_path_is_relative_to_the_working_directory_without_a_workspace(monkeypatch):
    monkeypatch.chdir(REPO / "leakcheck")
    result = run(str(SEED), "--no-prove", "--annotate", env={"GITHUB_WORKSPACE": ""})
    (properties, _), = commands(result.stdout)
    assert properties["file"] == "examples/mrv2.py"


def test_pass_has_no_annotation():
    result = run(str(FIXED), "--no-prove", "--annotate")
    assert result.exit_code == 0
    assert commands(result.output) == []
    assert "::" not in result.output


def test_error_in_shutdown_is_annotated_there_with_its_message_escaped(tmp_path):
    config, module = write_unique_runner(tmp_path, "raising", RAISING_SHUTDOWN)
    result = run(str(config), "--no-prove", "--annotate", env={"GITHUB_WORKSPACE": str(tmp_path)})
    assert result.exit_code == 3
    raw = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(raw) == 1 and "\r" not in raw[0]
    (properties, message), = commands(result.stdout)
    source = (tmp_path / f"{module}.py").read_text().splitlines()
    assert properties["file"] == f"{module}.py"
    assert source[int(properties["line"]) - 1].strip() == "def shutdown(self):"
    assert message.startswith("error in shutdown: RuntimeError: shutdown broke:")
    assert "100% done," in message


def test_error_outside_shutdown_is_annotated_without_a_line(tmp_path):
    config, _ = write_unique_runner(tmp_path, "raising_load", RAISING_LOAD)
    result = run(str(config), "--no-prove", "--annotate")
    assert result.exit_code == 3
    (properties, message), = commands(result.stdout)
    assert set(properties) == {"title"} and properties["title"].endswith(": ERROR")
    assert "error in load: ValueError: no weights on this machine" in message


def test_escaping_follows_githubs_rules():
    assert escape_data("50% of\r\nit") == "50%25 of%0D%0Ait"
    assert escape_data("%0A") == "%250A"  # a literal escape sequence stays literal
    assert escape_property("a: b, c%") == "a%3A b%2C c%25"
    for text in ("x:y,z%0A\n\r%", "plain", "::error::"):
        assert _unescape(escape_property(text)) == text


def test_workflow_path_is_relative_only_inside_the_checkout(tmp_path):
    inside = tmp_path / "repo" / "pkg" / "runner.py"
    assert workflow_path(str(inside), "/elsewhere", str(tmp_path / "repo")) == "pkg/runner.py"
    assert workflow_path(str(inside), str(tmp_path / "repo" / "pkg"), None) == "runner.py"
    assert workflow_path("/usr/lib/python3/site.py", str(tmp_path), str(tmp_path)) == "/usr/lib/python3/site.py"


# the report carries shutdown()'s place


def test_report_records_where_shutdown_is_defined(tmp_path):
    out = tmp_path / "report.json"
    assert run(str(SEED), "--no-prove", "--json", str(out)).exit_code == 1
    data = json.loads(out.read_text())
    assert data["shutdown_file"] == str(Path(mrv2.__file__).resolve())
    assert data["shutdown_line"] == SHUTDOWN_LINE
    del data["shutdown_file"], data["shutdown_line"]  # a report from before these fields
    old = Report.from_dict(data)
    assert old.shutdown_file is None and old.shutdown_line is None and old.verdict == "fail"


def test_shutdowns_place_survives_the_journal_of_a_crashed_child():
    events: list[dict] = []
    lifecycle = Lifecycle(device="cpu", journal=events.append)
    lifecycle.set_shutdown_source("/src/runner.py", 42)
    replayed = Lifecycle.replay(json.loads(json.dumps(events)))
    assert replayed.shutdown_source == ("/src/runner.py", 42)


def test_method_source_runs_no_runner_code():
    calls: list[str] = []

    def logged(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return function(*args, **kwargs)

        return wrapper

    class Watched:
        def __getattribute__(self, name):
            calls.append(name)
            return object.__getattribute__(self, name)

        def __getattr__(self, name):
            calls.append(name)
            raise AttributeError(name)

        @logged
        def shutdown(self):
            pass

        @property
        def close(self):
            calls.append("close")
            return lambda: None

        @staticmethod
        def stop():
            pass

        release = staticmethod(len)

    runner = Watched()
    file, line = method_source(runner, "shutdown")
    assert file == str(Path(__file__).resolve())
    assert Path(file).read_text().splitlines()[line - 1].strip() == "def shutdown(self):"  # the def, not the wrapper
    _, line = method_source(runner, "stop")
    assert Path(file).read_text().splitlines()[line - 1].strip() == "def stop():"
    assert method_source(runner, "close") is None  # a property: reading it would run it
    assert method_source(runner, "release") is None  # a builtin has no file
    assert method_source(runner, "missing") is None
    assert calls == []


# progress, --quiet


def test_progress_is_plain_lines_with_seconds_when_stderr_is_not_a_terminal():
    result = run(str(FIXED), "--no-prove")
    assert result.exit_code == 0
    lines = result.stderr.splitlines()
    progress = [re.match(r"^leakcheck \[ *(\d+\.\d)s\] (.+)$", line) for line in lines]
    assert all(progress), lines
    messages = [match.group(2) for match in progress]
    assert "calling shutdown()" in messages and messages[0] == "starting"
    seconds = [float(match.group(1)) for match in progress]
    assert seconds == sorted(seconds)
    assert "\r" not in result.stderr and not re.search("[\u2800-\u28ff]", result.stderr)  # no spinner frames


def test_quiet_prints_only_the_closing_line():
    failed = run(str(SEED), "--no-prove", "--quiet")
    assert failed.exit_code == 1
    assert failed.stdout == ""
    assert re.fullmatch(
        r"leakcheck: mrv2-seed: FAIL: [\d.]+ MiB still held after shutdown\(\) \(limit 0 B\)\n", failed.stderr
    )
    passed = run(str(FIXED), "--no-prove", "-q")
    assert passed.exit_code == 0 and passed.stdout == ""
    assert passed.stderr == "leakcheck: mrv2-fixed: PASS: 0 B still held after shutdown() (limit 0 B)\n"


def test_quiet_error_is_the_existing_closing_line(tmp_path):
    config, _ = write_unique_runner(tmp_path, "raising_load", RAISING_LOAD)
    result = run(str(config), "--quiet")
    assert result.exit_code == 3 and result.stdout == ""
    assert result.stderr == "leakcheck: error in load: ValueError: no weights on this machine\n"


# --json -


def test_json_dash_writes_the_report_to_stdout_and_the_terminal_report_to_stderr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(str(SEED), "--no-prove", "--json", "-", "--annotate")
    assert result.exit_code == 1
    report = json.loads(result.stdout)  # stdout is the JSON alone
    assert report["verdict"] == "fail" and report["name"] == "mrv2-seed"
    assert not (tmp_path / "-").exists()
    assert "runner.model_state" in result.stderr and "What shutdown() must release" in result.stderr
    assert len(commands(result.stderr)) == 1  # annotations leave stdout to the JSON too


def test_json_dash_with_a_config_error_still_prints_a_report(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("device: cpu\nrunner: {factory: 'no_such_module_here:build'}\n")
    result = CliRunner().invoke(app, ["run", str(config), "--json", "-"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["verdict"] == "error" and report["error"]["phase"] == "config"
    assert result.stderr.splitlines()[-1].startswith("leakcheck: error: ")


def test_json_dash_through_the_console_script_is_valid_json(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "leakcheck", "run", str(SEED), "--device", "cpu", "--no-prove", "--json", "-", "-q"],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=tmp_path,
        env={**os.environ, "GITHUB_STEP_SUMMARY": ""},
    )
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "fail"
    assert done.stderr.startswith("leakcheck: mrv2-seed: FAIL: ") and done.stderr.count("\n") == 1


# show


def test_show_exits_with_the_reports_exit_code(tmp_path):
    config, _ = write_unique_runner(tmp_path, "raising_load", RAISING_LOAD)
    for source, code in ((SEED, 1), (FIXED, 0), (config, 3)):
        out = tmp_path / f"{code}.json"
        assert run(str(source), "--no-prove", "--json", str(out)).exit_code == code
        assert CliRunner().invoke(app, ["show", str(out)]).exit_code == code
        assert CliRunner().invoke(app, ["show", str(out), "--markdown"]).exit_code == code
