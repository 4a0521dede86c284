"""No false pass, no lost report: awkward runners through the real CLI, with their reports on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.config import load_config
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.report.build import build_report, release_lines
from leakcheck.report.model import CYCLE, GLOBAL, MemorySample, Owner

from process_runs import (
    HANG_GUARD_S,
    command,
    finish,
    kill_quietly,
    run_process,
    signal_at,
    start_process,
    wait_for,
    write_runner,
)

SEED = Path(leakcheck.__file__).parent / "examples" / "mrv2-seed.yaml"

AWKWARD = """
import asyncio
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import torch


class Stop(BaseException):
    pass


class Unprintable(RuntimeError):
    def __str__(self):
        raise ValueError("no text for you")


def _exit_from_a_thread():
    os._exit(0)


RAISED = {
    "cancelled": lambda: asyncio.CancelledError("the event loop went away"),
    "generator_exit": lambda: GeneratorExit(),
    "custom": lambda: Stop("a BaseException of the runner's own"),
    "unprintable": lambda: Unprintable(),
}


class Runner:
    def __init__(self, how, marker):
        self.how, self.marker = how, marker
        self.weights = torch.zeros(256)

    def execute_model(self):
        if self.how == "exit_in_warmup":
            os._exit(0)

    def shutdown(self):
        if self.how == "exit_in_shutdown":
            os._exit(0)
        if self.how == "exit_by_keyword":
            os._exit(status=0)  # os._exit's own parameter name: the stand-in must accept it too
        if self.how == "sys_exit":
            sys.exit(0)
        if self.how == "exit_in_thread":
            worker = threading.Thread(target=_exit_from_a_thread, name="dying-worker")
            worker.start()
            worker.join()
        if self.how in RAISED:
            raise RAISED[self.how]()
        if self.how == "value_error":
            raise ValueError("shutdown is not implemented")
        if self.how in ("sleep", "cycle_2") and (self.how == "sleep" or _CYCLE[0] == 2):
            open(self.marker, "w").close()
            time.sleep(3600)
        if self.how == "deaf":
            while True:
                try:
                    open(self.marker, "w").close()
                    time.sleep(3600)
                except KeyboardInterrupt:
                    open(self.marker + ".caught", "w").close()
        if self.how == "peek":
            with open(self.marker) as report, open(self.marker + ".seen", "w") as seen:
                seen.write(report.read())
        if self.how == "leftovers":
            threading.Thread(target=threading.Event().wait, name="forgotten-worker").start()
            # (its own output elsewhere: a child writing to leakcheck's pipes keeps them open for the reader)
            self.child = subprocess.Popen(["sleep", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        del self.weights


_CYCLE = [0]


def _square(x):
    return x * x


def build(how, marker=""):
    _CYCLE[0] += 1
    if how == "none":
        return None
    if how == "exit_in_factory":
        os._exit(0)
    if how == "fork":
        os.fork()  # the child returns too, into leakcheck
    if how == "multiprocessing":
        with multiprocessing.get_context("fork").Pool(2) as pool:
            assert pool.map(_square, [1, 2, 3]) == [1, 4, 9]
    return Runner(how, marker)
"""


def awkward(tmp_path: Path, how: str, extra: str = "") -> Path:
    marker = tmp_path / "marker"
    return write_runner(
        tmp_path,
        "awkward",
        AWKWARD,
        f"device: cpu\nrunner:\n  factory: awkward:build\n  args: {{how: {how}, marker: '{marker}'}}\n"
        f"warmup:\n  - call: execute_model\n{extra}",
    )


def invoke(config: Path, *extra: str) -> tuple[int, dict, str]:
    out = config.parent / "report.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out), *extra])
    return result.exit_code, json.loads(out.read_text()), result.output


# --- no false pass -------------------------------------------------------------------------


def test_a_factory_returning_none_is_a_load_error(tmp_path):
    code, report, output = invoke(awkward(tmp_path, "none"))
    assert code == 3
    assert report["verdict"] == "error"
    assert (report["error"]["phase"], report["error"]["type"]) == ("load", "NoRunner")
    assert output.strip().splitlines()[-1].startswith(
        "leakcheck: error in load: NoRunner: the factory awkward:build returned None"
    )


@pytest.mark.parametrize(
    ("how", "phase", "what"),
    [
        ("exit_in_factory", "load", "the factory awkward:build"),
        ("exit_in_warmup", "warmup", "warm-up call execute_model()"),
        ("exit_in_shutdown", "shutdown", "shutdown()"),
        ("exit_by_keyword", "shutdown", "shutdown()"),
    ],
)
def test_os_exit_in_runner_code_is_an_error_of_its_phase(tmp_path, how, phase, what):
    done = run_process(awkward(tmp_path, how))
    assert done.code == 3, done.stderr
    report = done.report()
    assert (report["verdict"], report["error"]["phase"], report["error"]["type"]) == ("error", phase, "RunnerExit")
    message = f"{what} called os._exit(0): leakcheck stopped it from ending the process"
    assert report["error"]["message"] == message
    assert done.last_line().startswith(f"leakcheck: error in {phase}: RunnerExit: {message}")


def test_os_exit_from_a_runner_thread_is_an_error_too(tmp_path):
    done = run_process(awkward(tmp_path, "exit_in_thread"))
    assert done.code == 3, done.stderr
    error = done.report()["error"]
    assert (error["phase"], error["type"]) == ("shutdown", "RunnerExit")
    assert "os._exit(0) in thread dying-worker" in error["message"]


def test_sys_exit_in_shutdown_is_an_error(tmp_path):
    code, report, output = invoke(awkward(tmp_path, "sys_exit"))
    assert code == 3
    assert (report["error"]["type"], report["error"]["message"]) == ("SystemExit", "shutdown() called sys.exit(0)")


def test_a_forking_factory_prints_one_report(tmp_path):
    done = run_process(awkward(tmp_path, "fork"))
    assert done.code == 0, done.stderr
    assert done.stdout.count("leakcheck · model · cpu") == 1
    assert done.report()["verdict"] == "pass"


def test_multiprocessing_fork_children_still_end_normally(tmp_path):
    done = run_process(awkward(tmp_path, "multiprocessing"))
    assert done.code == 0, done.stderr
    assert done.stdout.count("leakcheck · model · cpu") == 1


def test_a_run_that_audited_nothing_cannot_pass(tmp_path):
    config = load_config(awkward(tmp_path, "fine"))
    lifecycle = Lifecycle(device="cpu", memory=[MemorySample("baseline"), MemorySample("collected")])
    report = build_report(config, lifecycle)
    assert report.verdict == "error" and report.leaked_bytes == 0
    assert (report.error.phase, report.error.type) == ("audit", "NotAudited")


# --- any BaseException is the runner's error -----------------------------------------------


@pytest.mark.parametrize(
    ("how", "error_type", "message"),
    [
        ("cancelled", "CancelledError", "the event loop went away"),
        ("generator_exit", "GeneratorExit", ""),
        ("custom", "Stop", "a BaseException of the runner's own"),
        ("unprintable", "Unprintable", "<Unprintable.__str__ raised ValueError>"),
    ],
)
def test_base_exceptions_from_shutdown_are_runner_errors(tmp_path, how, error_type, message):
    code, report, output = invoke(awkward(tmp_path, how))
    assert code == 3, output
    assert (report["error"]["phase"], report["error"]["type"], report["error"]["message"]) == (
        "shutdown",
        error_type,
        message,
    )
    assert "Traceback" not in output
    assert [o["path"] for o in report["owners"]] == ["runner.weights"]  # the audit ran after it


def test_a_runner_value_error_is_not_blamed_on_the_device_flag(tmp_path):
    code, report, output = invoke(awkward(tmp_path, "value_error"), "--device", "cpu")
    assert code == 3 and "--device" not in output
    assert report["error"]["message"] == "shutdown is not implemented"


def test_a_failing_audit_still_writes_the_report(tmp_path, monkeypatch):
    """The engine is made to fail (a stand-in for a heap it cannot read): the measurements stay."""

    def broken_audit(*_args, **_kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("leakcheck.lifecycle.phases.audit_watching", broken_audit)
    code, report, output = invoke(awkward(tmp_path, "fine"))
    assert code == 3
    assert (report["error"]["phase"], report["error"]["type"]) == ("audit", "RecursionError")
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed", "shutdown", "collected"]
    assert output.strip().splitlines()[-1].startswith("leakcheck: failed during audit: RecursionError")


# --- reports never lost or stale -----------------------------------------------------------


def test_the_report_on_disk_says_error_while_the_runner_runs(tmp_path):
    out = tmp_path / "report.json"
    out.write_text('{"verdict": "pass"}')  # an earlier run's
    config = write_runner(
        tmp_path,
        "awkward",
        AWKWARD,
        f"device: cpu\nrunner:\n  factory: awkward:build\n  args: {{how: peek, marker: '{out}'}}\n",
    )
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    assert result.exit_code == 0, result.output
    seen = json.loads(Path(f"{out}.seen").read_text())  # what shutdown() read from --json
    assert seen["verdict"] == "error" and seen["error"]["phase"] == "running"
    assert "did not finish" in seen["error"]["message"]
    assert json.loads(out.read_text())["verdict"] == "pass"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report.json")) == []  # no temp files


def test_kill_9_leaves_an_error_not_the_previous_pass(tmp_path):
    config = awkward(tmp_path, "sleep")
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"schema_version": 1, "verdict": "pass"}))
    process, _ = start_process(config, report=report)
    wait_for(tmp_path / "marker", process)
    process.kill()
    finish(process, report)
    left = json.loads(report.read_text())
    assert left["verdict"] == "error" and left["error"]["phase"] == "running"


def test_output_paths_are_checked_before_the_runner_loads(tmp_path):
    config = awkward(tmp_path, "fine")
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(folder)])
    assert result.exit_code == 2
    assert result.output.strip() == f"leakcheck: error: --json: {folder} is a folder, not a file"
    assert not (tmp_path / "marker").exists()


def test_a_config_error_replaces_an_earlier_report(tmp_path):
    config = write_runner(tmp_path, "awkward", AWKWARD, "device: cpu\nrunner:\n  factory: awkward:build\ncycles: 0\n")
    out = tmp_path / "report.json"
    out.write_text('{"verdict": "pass"}')
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    assert result.exit_code == 2
    report = json.loads(out.read_text())
    assert report["verdict"] == "error" and report["error"]["phase"] == "config"
    assert report["error"]["message"] == result.output.strip().removeprefix("leakcheck: error: ")


def test_a_closed_stdout_does_not_change_the_exit_code(tmp_path):
    """`leakcheck run ... | head -0`: the reader is gone before the report is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    out = tmp_path / "report.json"
    try:
        done = subprocess.run(
            command(SEED, "--device", "cpu", "--json", str(out)),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=HANG_GUARD_S,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1, done.stderr
    assert json.loads(out.read_text())["verdict"] == "fail"
    assert "BrokenPipe" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize(
    ("signum", "code", "words"),
    [(signal.SIGINT, 130, "interrupted (Ctrl-C)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_a_stopped_run_writes_what_it_has_and_says_where(tmp_path, signum, code, words):
    done = signal_at(awkward(tmp_path, "sleep"), tmp_path / "marker", signum)
    assert done.code == code, done.stderr
    assert done.last_line() == (
        f"leakcheck: {words} during shutdown: the report holds what was measured before (report: {done.report_path})"
    )
    report = done.report()
    assert report["verdict"] == "error"
    assert (report["error"]["phase"], report["error"]["type"]) == (
        "shutdown",
        "Interrupted" if signum == signal.SIGINT else "Terminated",
    )
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed"]


def test_an_interrupted_multi_cycle_run_keeps_the_cycles_it_finished(tmp_path):
    config = awkward(tmp_path, "cycle_2", "cycles: 3\n")
    done = signal_at(config, tmp_path / "marker", signal.SIGINT)
    assert done.code == 130, done.stderr
    report = done.report()
    assert report["error"]["phase"] == "shutdown" and report["error"]["cycle"] == 2
    assert [c["cycle"] for c in report["cycles"]] == [1]
    assert [(m["phase"], m["cycle"]) for m in report["memory"] if m["phase"] == "collected"] == [("collected", 1)]


def test_a_second_ctrl_c_ends_at_once(tmp_path):
    """A runner that catches KeyboardInterrupt keeps running; the second Ctrl-C does not wait for it."""
    process, report = start_process(awkward(tmp_path, "deaf"))
    marker = tmp_path / "marker"
    wait_for(marker, process)
    os.kill(process.pid, signal.SIGINT)
    wait_for(Path(f"{marker}.caught"), process)
    os.kill(process.pid, signal.SIGINT)
    done = finish(process, report)
    assert done.code == 130
    assert done.report()["error"]["phase"] == "running"  # no time taken to write: the placeholder says so


def test_leakcheck_exits_past_threads_and_processes_the_runner_left(tmp_path):
    done = run_process(awkward(tmp_path, "leftovers"))
    note = next((n for n in done.report()["notes"] if n.startswith("the runner left")), "")
    child = note.split("child process(es): ")[1].split(" ")[0] if "child process(es)" in note else ""
    try:
        assert done.code == 0, done.stderr
        assert "1 non-daemon thread(s): forgotten-worker" in note
        assert child.isdigit() and f"{child} (sleep 300)" in note
    finally:
        if child.isdigit():
            kill_quietly(int(child))


# --- the gate's suggested lines ------------------------------------------------------------


def test_release_lines_keep_order_and_suggest_collection_once():
    def owner(path: str, fix: str, kind: str = GLOBAL, allowed: bool = False) -> Owner:
        return Owner(path, kind, 1, 1, 1, 1, fix=fix, allowed=allowed)

    owners = [
        owner("a.x", "a.x.clear()"),
        owner("<cycle 1>", "gc.collect()  # frees 2 cycles", CYCLE),
        owner("b.y", "del b.y"),
        owner("a.x2", "a.x.clear()"),
        owner("<cycle 2>", "gc.collect()  # frees 2 cycles", CYCLE),
        owner("c.z", "del c.z", allowed=True),
    ]
    assert release_lines(owners) == ["a.x.clear()", "gc.collect()  # frees 2 cycles", "del b.y"]
    many = [owner(f"m.g{i}", f"del m.g{i}") for i in range(50_000)] * 2
    assert release_lines(many) == [f"del m.g{i}" for i in range(50_000)]
