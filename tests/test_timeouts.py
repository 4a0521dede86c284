"""Time limits: a stuck factory, warm-up call or shutdown() is stopped, located and reported (exit 3)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.config import load_config
from leakcheck.lifecycle.phases import run_lifecycle

from process_runs import run_process, write_runner

HANGING = """
import threading
import time

import torch


class Runner:
    def __init__(self, how):
        self.how = how
        self.weights = torch.zeros(1024)

    def execute_model(self):
        if self.how == "warmup":
            time.sleep(3600)  # @warmup

    def shutdown(self):
        if self.how == "sleep":
            time.sleep(3600)  # @sleep
        elif self.how == "event":
            threading.Event().wait()  # @event: waits for a worker that is gone
        elif self.how == "stubborn":
            while True:
                try:
                    time.sleep(3600)  # @stubborn
                except BaseException:
                    pass
        elif self.how == "busy":
            while True:  # @busy: pure Python; no signal reaches a thread that is not the main one
                pass
        del self.weights


def build(how):
    if how == "load":
        time.sleep(3600)  # @load
    return Runner(how)
"""


def at(marker: str, function: str) -> str:
    """`hanging.py:LINE in FUNCTION` for the line of HANGING that carries `# @marker`."""
    line = next(n for n, text in enumerate(HANGING.splitlines(), start=1) if f"# @{marker}" in text)
    return f"hanging.py:{line} in {function}"


def hanging(tmp_path: Path, how: str, timeout: str = "") -> Path:
    return write_runner(
        tmp_path,
        "hanging",
        HANGING,
        f"device: cpu\nrunner:\n  factory: hanging:build\n  args: {{how: {how}}}\n"
        f"warmup:\n  - call: execute_model\n{timeout}",
    )


def test_shutdown_sleeping_forever_ends_at_its_limit_with_the_stuck_frame(tmp_path):
    done = run_process(hanging(tmp_path, "sleep"), "--timeout", "2", "--device", "cpu")
    assert done.code == 3, done.stderr
    assert done.last_line().startswith(
        "leakcheck: error in shutdown: Timeout: shutdown() did not return within 2 s (timeout.shutdown);"
        f" stuck at {at('sleep', 'shutdown')}"
    )
    assert f"stuck at {at('sleep', 'shutdown')}" in done.stdout  # the terminal report shows it too
    report = done.report()
    assert report["verdict"] == "error"
    error = report["error"]
    assert (error["phase"], error["type"], error["stuck_at"]) == ("shutdown", "Timeout", at("sleep", "shutdown"))
    main = next(text for label, text in error["stacks"].items() if label.startswith("MainThread"))
    assert "time.sleep(3600)" in main and "in shutdown" in main
    # the audit still ran on the runner that exists: shutdown() never reached `del self.weights`
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed", "shutdown", "collected"]
    assert [o["path"] for o in report["owners"]] == ["runner.weights"] and report["leaked_bytes"] == 4096


def test_a_shutdown_waiting_on_an_event_is_located_in_runner_code_not_in_threading(tmp_path):
    done = run_process(hanging(tmp_path, "event"), "--timeout", "2")
    assert done.code == 3
    error = done.report()["error"]
    assert error["stuck_at"] == at("event", "shutdown")  # the runner's line, not threading.py's
    assert f"stuck at {at('event', 'shutdown')}, inside threading.py:" in done.last_line()  # and what it waits in


def test_a_shutdown_that_swallows_the_interruption_is_ended_by_the_backstop(tmp_path):
    done = run_process(hanging(tmp_path, "stubborn"), "--timeout", "2")
    assert done.code == 3, done.stderr
    assert "still had not ended" in done.last_line() and f"stuck at {at('stubborn', 'shutdown')}" in done.last_line()
    report = done.report()
    assert report["verdict"] == "error"
    assert (report["error"]["phase"], report["error"]["type"]) == ("shutdown", "Timeout")
    assert any("hanging.py" in text for text in report["error"]["stacks"].values())
    # written by the watchdog while shutdown() still runs: memory up to the moment of the limit
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed", "shutdown"]


def test_a_stuck_factory_is_a_load_error_and_nothing_else_runs(tmp_path):
    config = hanging(tmp_path, "load", "timeout: {load: 1}\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    assert result.exit_code == 3, result.output
    report = json.loads(out.read_text())
    assert report["error"]["phase"] == "load" and report["error"]["stuck_at"] == at("load", "build")
    assert "the factory hanging:build did not return within 1 s (timeout.load)" in report["error"]["message"]
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "shutdown", "collected"]
    assert report["owners"] == []


def test_a_stuck_warmup_call_is_stopped_and_shutdown_still_runs(tmp_path):
    config = hanging(tmp_path, "warmup", "timeout: {warmup: 1}\n")
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    assert result.exit_code == 3, result.output
    report = json.loads(out.read_text())
    assert report["error"]["phase"] == "warmup" and report["error"]["stuck_at"] == at("warmup", "execute_model")
    assert report["error"]["message"].startswith("warm-up call execute_model() did not return within 1 s")
    assert [m["phase"] for m in report["memory"]] == ["baseline", "loaded", "warmed", "shutdown", "collected"]
    assert report["leaked_bytes"] == 0  # shutdown() ran after the stuck warm-up and freed the weights


def test_timeout_flag_is_checked_and_none_lifts_the_limits(tmp_path):
    config = hanging(tmp_path, "none")
    result = CliRunner().invoke(app, ["run", str(config), "--timeout", "5 parsecs"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "leakcheck: error: --timeout: invalid duration '5 parsecs': unknown unit 'parsecs' (use s, m or h)"
    )
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(config), "--timeout", "none", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["verdict"] == "pass"


def test_outside_the_main_thread_the_watchdog_stops_the_call(tmp_path):
    """API use from a worker thread: no signal reaches it, so the watchdog raises in it."""
    config = load_config(hanging(tmp_path, "busy", "timeout: {shutdown: 1}\n"))
    found = {}
    worker = threading.Thread(target=lambda: found.setdefault("run", run_lifecycle(config)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    lifecycle = found["run"]
    assert lifecycle.error.phase == "shutdown" and lifecycle.error.type == "Timeout"
    assert lifecycle.error.stuck_at == at("busy", "shutdown")
    assert lifecycle.audit is not None and [o.path for o in lifecycle.audit.owners] == ["runner.weights"]
