"""`leakcheck run` end to end, on CPU: the shipped MRV2 example, the gate, errors and the JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.examples import mrv2

from conftest import assert_paths_resolve, run_audit

EXAMPLES = Path(leakcheck.__file__).parent / "examples"
SEED = EXAMPLES / "mrv2-seed.yaml"
FIXED = EXAMPLES / "mrv2-fixed.yaml"
WRAPPERS = ["runner.model_state", "runner.speculator", "runner.pooling_runner", "runner.cudagraph_manager"]
LEAKING = WRAPPERS + ["runner.intermediate_tensors", "runner.encoder_cache", "leakcheck.examples.mrv2._ROPE_DICT"]


pytestmark = pytest.mark.usefixtures("fresh_rope_registry")


def invoke(*args: str):
    return CliRunner().invoke(app, ["run", *args, "--device", "cpu"])


def run_json(tmp_path: Path, config: Path, *extra: str) -> tuple[int, dict, str]:
    out = tmp_path / "report.json"
    result = invoke(str(config), "--json", str(out), *extra)
    return result.exit_code, json.loads(out.read_text()), result.output


def test_seed_example_names_every_leaking_holder_and_fails(tmp_path):
    code, report, output = run_json(tmp_path, SEED)
    assert code == 1
    assert report["verdict"] == "fail"
    paths = {o["path"]: o for o in report["owners"]}
    assert set(paths) == set(LEAKING)
    assert {paths[p]["kind"] for p in LEAKING[:-1]} == {"attribute"}
    assert paths["leakcheck.examples.mrv2._ROPE_DICT"]["kind"] == "global"
    assert report["leaked_bytes"] == report["held_bytes"] > 20 * 2**20
    for path in LEAKING:
        assert path in output
    assert "del self.model_state" in output and "leakcheck.examples.mrv2._ROPE_DICT.clear()" in output


def test_seed_example_shared_model_is_retained_by_no_single_wrapper(tmp_path):
    _, report, _ = run_json(tmp_path, SEED)
    model = next(g for g in report["shared"] if set(g["owners"]) == set(WRAPPERS))
    weights = sum(
        s["nbytes"] for s in report["storages"] if ".model.layers[" in s["example"] or "embed_tokens" in s["example"]
    )
    assert model["bytes"] >= 0.9 * weights
    paths = {o["path"]: o for o in report["owners"]}
    assert paths["runner.pooling_runner"]["retained_bytes"] == 0
    for wrapper in WRAPPERS:
        owner = paths[wrapper]
        assert owner["reachable_bytes"] - owner["retained_bytes"] >= model["bytes"]
    for wrapper in WRAPPERS:
        assert f"del self.{wrapper.split('.')[1]}" in report["release"]


def test_fixed_example_reports_nothing_and_passes(tmp_path):
    code, report, output = run_json(tmp_path, FIXED)
    assert code == 0, output
    assert report["verdict"] == "pass"
    assert report["owners"] == [] and report["leaked_bytes"] == 0 and report["storages"] == []
    assert "PASS" in output


def test_json_contract(tmp_path):
    _, report, _ = run_json(tmp_path, SEED)
    assert report["schema_version"] == 1
    assert report["name"] == "mrv2-seed" and report["device"] == "cpu"
    assert isinstance(report["leaked_bytes"], int) and report["error"] is None
    for owner in report["owners"]:
        assert {"path", "kind", "reachable_bytes", "retained_bytes", "tensors", "examples"} <= set(owner)
        assert owner["examples"] and all(e.startswith(owner["path"]) for e in owner["examples"])
    phases = [m["phase"] for m in report["memory"]]
    assert phases == ["baseline", "loaded", "warmed", "shutdown", "collected"]
    for sample in report["memory"]:
        assert set(sample) >= {
            "phase",
            "nvml_process_bytes",
            "nvml_device_bytes",
            "torch_allocated_bytes",
            "torch_reserved_bytes",
            "rss_bytes",
        }
        assert sample["nvml_process_bytes"] is None and sample["rss_bytes"] > 0
    assert report["timings"]["audit_s"] > 0
    assert any("NVML" in note for note in report["notes"])


def test_example_paths_evaluate_to_the_leaked_storages():
    from leakcheck import take_baseline

    baseline = take_baseline("cpu")
    runner = mrv2.build(variant="seed", device="cpu")
    runner.execute_model(steps=2)
    runner.shutdown()
    result = run_audit(runner, baseline, caller_frames=False)
    assert {o.path for o in result.owners} == set(LEAKING)
    assert assert_paths_resolve(result, runner) >= len(result.storages)


def test_cli_limit_overrides_the_gate(tmp_path):
    code, report, _ = run_json(tmp_path, SEED, "--max-leaked-bytes", "1 GiB")
    assert code == 0 and report["verdict"] == "pass" and report["max_leaked_bytes"] == 2**30


def test_allowed_owners_are_reported_but_not_counted(tmp_path):
    config = tmp_path / "allow.yaml"
    config.write_text(
        SEED.read_text().replace("max_leaked_bytes: 0", 'max_leaked_bytes: 0\n  allow: ["runner.*", "*._ROPE_DICT"]')
    )
    code, report, _ = run_json(tmp_path, config)
    assert code == 0
    assert report["leaked_bytes"] == 0 and report["allowed_bytes"] == report["held_bytes"] > 0
    assert all(o["allowed"] for o in report["owners"])


def test_allowing_one_of_several_holders_frees_nothing_shared(tmp_path):
    config = tmp_path / "allow.yaml"
    config.write_text(
        SEED.read_text().replace("max_leaked_bytes: 0", 'max_leaked_bytes: 0\n  allow: ["runner.speculator"]')
    )
    code, report, _ = run_json(tmp_path, config)
    speculator = next(o for o in report["owners"] if o["path"] == "runner.speculator")
    assert code == 1
    assert report["allowed_bytes"] == speculator["retained_bytes"]
    assert report["leaked_bytes"] == report["held_bytes"] - speculator["retained_bytes"]


FAILING_RUNNERS = """
import torch

class Runner:
    def __init__(self, fail_in):
        self.fail_in = fail_in
        self.weights = torch.zeros(4096)
    def execute_model(self):
        if self.fail_in == "warmup":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    def shutdown(self):
        if self.fail_in == "shutdown":
            raise ValueError("shutdown is not implemented")
        del self.weights

def build(fail_in):
    if fail_in == "load":
        half_built = torch.zeros(2048)
        raise OSError("weights file is truncated")
    return Runner(fail_in)
"""


@pytest.mark.parametrize(
    "phase,error_type", [("load", "OSError"), ("warmup", "RuntimeError"), ("shutdown", "ValueError")]
)
def test_runner_errors_exit_3_with_the_report(tmp_path, phase, error_type):
    (tmp_path / "failing.py").write_text(FAILING_RUNNERS)
    config = tmp_path / "failing.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        device: cpu
        runner:
          factory: failing:build
          args: {{fail_in: {phase}}}
        warmup:
          - call: execute_model
        """)
    )
    code, report, output = run_json(tmp_path, config)
    assert code == 3, output
    assert report["verdict"] == "error"
    assert report["error"]["phase"] == phase and report["error"]["type"] == error_type
    assert "Traceback" not in output and f"{error_type}" in output
    phases = ["baseline", "loaded", "warmed", "shutdown", "collected"]
    if phase == "load":
        phases.remove("warmed")  # no runner to warm up
    assert [m["phase"] for m in report["memory"]] == phases
    if phase == "shutdown":
        assert [o["path"] for o in report["owners"]] == ["runner.weights"]
        assert report["leaked_bytes"] == 4096 * 4
    if phase == "load":
        assert report["owners"] == []


def test_verbose_error_shows_the_runner_traceback(tmp_path):
    (tmp_path / "failing.py").write_text(FAILING_RUNNERS)
    config = tmp_path / "failing.yaml"
    config.write_text("device: cpu\nrunner:\n  factory: failing:build\n  args: {fail_in: shutdown}\n")
    result = invoke(str(config), "--verbose")
    assert result.exit_code == 3
    assert "Traceback" in result.output and "shutdown is not implemented" in result.output


def test_console_script_runs_the_shipped_example(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run(
        [sys.executable, "-m", "leakcheck", "run", str(SEED), "--device", "cpu", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "runner.model_state" in done.stdout
    assert json.loads(out.read_text())["verdict"] == "fail"


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"leakcheck {leakcheck.__version__}"


def test_show_renders_a_saved_report(tmp_path):
    code, report, output = run_json(tmp_path, SEED)
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "report.json")])
    assert shown.exit_code == 1  # the report's own exit code: it failed the gate
    for text in ("FAIL", "runner.model_state", "What shutdown() must release", "del self.speculator"):
        assert text in shown.output


def test_show_rejects_what_is_not_a_report(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 99}')
    result = CliRunner().invoke(app, ["show", str(bad)])
    assert result.exit_code == 2 and "not a leakcheck JSON report: schema_version 99" in result.output
    result = CliRunner().invoke(app, ["show", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_show_renders_a_recorded_cuda_report():
    """A report recorded on an H200: the CUDA sections render from JSON alone."""
    recorded = Path(__file__).parent / "fixtures" / "h200-hf-llama-seed.report.json"
    shown = CliRunner().invoke(app, ["show", str(recorded)], env={"COLUMNS": "150"})
    assert shown.exit_code == 1, shown.output  # a failing report
    for text in (
        "NVIDIA H200",
        "Where the leaked bytes were allocated",
        "hf_llama.py:75 in load_model",
        "Where the memory went",
        "cuBLAS workspaces",
        "graph",
    ):
        assert text in shown.output, text


def test_markdown_summary_for_a_pull_request(tmp_path):
    markdown = tmp_path / "summary.md"
    result = invoke(str(SEED), "--markdown", str(markdown))
    assert result.exit_code == 1
    text = markdown.read_text()
    assert text.startswith("### leakcheck · mrv2-seed · cpu: **FAIL**")
    assert "| holder | kind | reachable | retained | example |" in text
    assert "| `runner.model_state` | attribute |" in text
    assert "```python\ndel self.speculator" in text
    assert "`runner.model_state`, `runner.speculator`, `runner.pooling_runner`, `runner.cudagraph_manager`" in text


def test_show_markdown_of_a_recorded_cuda_report():
    recorded = Path(__file__).parent / "fixtures" / "h200-hf-llama-seed.report.json"
    shown = CliRunner().invoke(app, ["show", str(recorded), "--markdown"])
    assert shown.exit_code == 1  # a failing report
    assert "| phase | NVML process | torch allocated | torch reserved | RSS |" in shown.output
    assert "| `hf_llama.py:75 in load_model` | 297 MiB |" in shown.output
