"""`--isolate`: a crash of the runner's process is reported by the parent; a normal run reads the same."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import leakcheck
from leakcheck.renderers.progress import PREFIX as PROGRESS

from process_runs import HANG_GUARD_S, run_process, signal_at, write_runner

SEED = Path(leakcheck.__file__).parent / "examples" / "mrv2-seed.yaml"

CRASHING = """
import ctypes
import os
import signal
import time

import torch


class Runner:
    def __init__(self, how, marker):
        self.how, self.marker = how, marker
        self.weights = torch.zeros(1 << 16)

    def execute_model(self):
        if self.how == "oom":
            os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does

    def shutdown(self):
        if self.how == "segfault":
            ctypes.string_at(0)  # @segfault
        if self.how == "sleep":
            open(self.marker, "w").close()
            time.sleep(3600)
        del self.weights


def build(how, marker=""):
    return Runner(how, marker)
"""


def crashing(tmp_path: Path, how: str, isolate: str = "isolate: true\n") -> Path:
    marker = tmp_path / "in-shutdown"
    return write_runner(
        tmp_path,
        "crashing",
        CRASHING,
        f"device: cpu\n{isolate}runner:\n  factory: crashing:build\n  args: {{how: {how}, marker: '{marker}'}}\n"
        "warmup:\n  - call: execute_model\n",
    )


def test_a_segfault_in_shutdown_is_reported_with_its_phase_and_the_memory_before_it(tmp_path):
    done = run_process(crashing(tmp_path, "segfault"), "--markdown", str(tmp_path / "summary.md"))
    assert done.code == 3, done.stderr
    line = next(n for n, text in enumerate(CRASHING.splitlines(), start=1) if "# @segfault" in text)
    assert done.last_line().startswith(
        "leakcheck: error in shutdown: SIGSEGV: the runner's process was killed by SIGSEGV during shutdown"
    )
    assert f"stuck at crashing.py:{line} in shutdown" in done.last_line()
    report = done.report()
    assert report["verdict"] == "error"
    error = report["error"]
    assert (error["phase"], error["type"]) == ("shutdown", "SIGSEGV")
    assert error["stuck_at"] == f"crashing.py:{line} in shutdown"
    assert any(label.startswith("Current thread") for label in error["stacks"])
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed"]
    assert all(m["rss_bytes"] > 0 for m in report["memory"])
    assert "**ERROR**" in (tmp_path / "summary.md").read_text()


def test_a_kill_during_warmup_names_the_signal_and_the_phase(tmp_path):
    done = run_process(crashing(tmp_path, "oom"))
    assert done.code == 3
    report = done.report()
    assert (report["error"]["phase"], report["error"]["type"]) == ("warmup", "SIGKILL")
    assert "OOM killer" in report["error"]["message"] and "OOM killer" in done.last_line()
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded"]


def test_an_isolated_run_reports_exactly_as_a_plain_run(tmp_path):
    plain = run_process(SEED, "--device", "cpu", report=tmp_path / "plain.json")
    isolated = run_process(
        SEED, "--device", "cpu", "--isolate", "--markdown", str(tmp_path / "iso.md"), report=tmp_path / "iso.json"
    )
    assert plain.code == isolated.code == 1, isolated.stderr
    a, b = plain.report(), isolated.report()
    assert a["verdict"] == b["verdict"] == "fail"
    assert [o["path"] for o in a["owners"]] == [o["path"] for o in b["owners"]]
    assert a["leaked_bytes"] == b["leaked_bytes"] and a["release"] == b["release"]
    assert [m["phase"] for m in a["memory"]] == [m["phase"] for m in b["memory"]]
    assert any("child process" in note for note in b["notes"])
    assert "runner.model_state" in isolated.stdout and "FAIL" in isolated.stdout
    assert (tmp_path / "iso.md").read_text().startswith("### leakcheck · mrv2-seed · cpu: **FAIL**")


def test_isolate_in_the_config_and_no_isolate_on_the_command_line(tmp_path):
    config = crashing(tmp_path, "fine")
    isolated = run_process(config)
    assert isolated.code == 0, isolated.stderr
    assert any("child process" in note for note in isolated.report()["notes"])
    plain = run_process(config, "--no-isolate")
    assert plain.code == 0 and not any("child process" in note for note in plain.report()["notes"])


def test_a_config_error_in_the_child_is_one_line_and_exit_2(tmp_path):
    config = write_runner(
        tmp_path, "crashing", CRASHING, "device: cpu\nisolate: true\nrunner:\n  factory: crashing:biuld\n"
    )
    done = run_process(config)
    assert done.code == 2
    assert [line for line in done.stderr.strip().splitlines() if not line.startswith(PROGRESS)] == [
        f"leakcheck: error: {config}:4: runner.factory: crashing has no attribute 'biuld' (did you mean 'build'?)"
    ]
    assert done.report()["error"]["phase"] == "config"


def test_sigterm_to_the_parent_stops_the_child_with_a_report(tmp_path):
    done = signal_at(crashing(tmp_path, "sleep"), tmp_path / "in-shutdown", signal.SIGTERM)
    assert done.code == 143, done.stderr
    report = done.report()
    assert (report["error"]["phase"], report["error"]["type"]) == ("shutdown", "Terminated")
    assert done.last_line().startswith("leakcheck: terminated (SIGTERM) during shutdown")


def test_the_parent_process_imports_no_torch():
    probe = (
        "import sys, leakcheck, leakcheck.cli, leakcheck.lifecycle.isolate, leakcheck.report.build, "
        "leakcheck.renderers.terminal, leakcheck.renderers.markdown, leakcheck.renderers.json_report; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.replace("'", '"')) == []
