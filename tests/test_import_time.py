"""The runner's module is imported before `baseline`: what its import creates is not the runner's leak.

Real modules written to a temporary folder, run through the real CLI (in-process with typer's
CliRunner where one interpreter is enough, in a process of its own for a library's import).
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.renderers.markdown import to_markdown
from leakcheck.report.model import ImportTime, Report
from process_runs import run_process, write_runner, write_unique_runner

TABLE = """
import torch

_TABLE = torch.arange(1000, dtype=torch.float32)  # made at import: 4,000 bytes
_CACHE = {"base": torch.zeros(10)}  # a module-level cache, 40 bytes at import


class Runner:
    def __init__(self, keep_in_cache):
        self.weights = torch.ones(256, 256) @ _TABLE[:256].diag()
        if keep_in_cache:
            _CACHE["runner"] = torch.zeros(100)  # added during the run: 400 bytes, the runner's

    def shutdown(self):
        del self.weights


def build(keep_in_cache=False):
    return Runner(keep_in_cache)
"""


def run(tmp_path: Path, config: Path, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out), "--no-prove", *extra])
    return result.exit_code, json.loads(out.read_text()), result.output


def with_args(config: Path, module: str, args: str) -> Path:
    config.write_text(f'device: cpu\nrunner: {{factory: "{module}:build", args: {args}}}\n')
    return config


def test_module_level_tensor_made_at_import_passes_a_zero_byte_gate(tmp_path):
    config, module = write_unique_runner(tmp_path, "import_table", TABLE)
    code, report, output = run(tmp_path, config)
    assert code == 0, output
    assert report["verdict"] == "pass" and report["leaked_bytes"] == 0
    found = report["import_time"]
    assert found["storages"] == 2 and found["bytes"] == 4000 + 40
    assert found["examples"] == [f"{module}._TABLE"]  # a dict entry is no global: only the tensor is named
    assert "importing the runner's module created 2 storage(s)" in output
    assert all(o["path"] != f"{module}._TABLE" for o in report["owners"])


def test_what_a_module_cache_gains_during_the_run_is_counted(tmp_path):
    config, module = write_unique_runner(tmp_path, "import_cache", TABLE)
    code, report, _ = run(tmp_path, with_args(config, module, "{keep_in_cache: true}"))
    assert code == 1
    assert report["leaked_bytes"] == 400  # the new entry, not the 40 bytes already there at import
    assert [o["path"] for o in report["owners"]] == [f"{module}._CACHE"]
    assert report["import_time"]["bytes"] == 4040


def test_an_import_that_raises_is_the_load_phase_error_and_no_factory_runs(tmp_path):
    source = """
    import torch
    MARKER = __import__("pathlib").Path(__file__).with_name("factory-ran")
    raise RuntimeError("no weights file at import")


    def build():
        MARKER.write_text("yes")
    """
    config, _ = write_unique_runner(tmp_path, "import_raises", source)
    code, report, output = run(tmp_path, config)
    assert code == 3, output
    assert report["error"]["phase"] == "load" and report["error"]["type"] == "RuntimeError"
    assert "no weights file at import" in report["error"]["message"]
    assert [m["phase"] for m in report["memory"]][:2] == ["baseline", "loaded"]
    assert not (tmp_path / "factory-ran").exists()


def test_a_module_that_does_not_exist_is_still_a_config_error(tmp_path):
    config = write_runner(tmp_path, "unused", "", 'device: cpu\nrunner: {factory: "no_such_module_xyz:build"}\n')
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert "no module named 'no_such_module_xyz'" in result.output


def test_a_slow_import_runs_under_the_load_time_limit(tmp_path):
    source = """
    import time
    time.sleep(120)


    def build():
        return object()
    """
    config = write_runner(tmp_path, "slow_import", source, 'device: cpu\nrunner: {factory: "slow_import:build"}\n')
    done = run_process(config, "--timeout", "2s", "--no-prove")
    assert done.code == 3, done.stderr
    error = done.report()["error"]
    assert (error["phase"], error["type"]) == ("load", "Timeout")
    assert "slow_import.py" in (error["stuck_at"] or "")


def test_torchmetrics_constant_made_at_import_is_not_the_runners_leak(tmp_path):
    source = """
    import torch
    import torchmetrics  # creates torchmetrics.functional.text.chrf._EPS_SMOOTHING (4 bytes)


    class Runner:
        def __init__(self):
            self.metric = torchmetrics.MeanMetric()
            self.metric.update(torch.ones(8))

        def shutdown(self):
            del self.metric


    def build():
        return Runner()
    """
    config = write_runner(
        tmp_path, "uses_torchmetrics", source, 'device: cpu\nrunner: {factory: "uses_torchmetrics:build"}\n'
    )
    done = run_process(config, "--no-prove")
    report = done.report()
    assert done.code == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert report["leaked_bytes"] == 0
    assert "torchmetrics.functional.text.chrf._EPS_SMOOTHING" in report["import_time"]["examples"]
    assert report["import_time"]["bytes"] >= 4


def test_import_time_survives_the_journal_and_the_json_report():
    events: list[dict] = []
    lifecycle = Lifecycle(device="cpu", journal=events.append)
    lifecycle.set_import_time(ImportTime(storages=1, bytes=4, examples=["pkg.mod._EPS"]))
    replayed = Lifecycle.replay(json.loads(json.dumps(events)))
    assert replayed.import_time == ImportTime(storages=1, bytes=4, examples=["pkg.mod._EPS"])
    report = Report(name="r", device="cpu", verdict="pass", leaked_bytes=0, max_leaked_bytes=0)
    report.import_time = replayed.import_time
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.import_time == report.import_time
    assert "`pkg.mod._EPS`" in to_markdown(again)
