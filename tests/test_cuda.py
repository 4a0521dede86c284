"""GPU behaviour, run by scripts/gpu_check.sh on a CUDA machine; skipped elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import leakcheck
from leakcheck import audit, take_baseline
from leakcheck.cli import app
from leakcheck.examples import mrv2
from leakcheck.probes.nvml import NvmlProbe

from conftest import assert_paths_resolve

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
EXAMPLES = Path(leakcheck.__file__).parent / "examples"


class Runner:
    pass


def test_audit_on_cuda_finds_cuda_storages_only():
    baseline = take_baseline("cuda:0")
    runner = Runner()
    runner.weights = torch.zeros(1 << 20, device="cuda:0")
    runner.host = torch.zeros(1 << 10)
    result = audit(runner, "cuda:0", baseline)
    assert [o.path for o in result.owners] == ["runner.weights"]
    assert result.owners[0].reachable_bytes == 4 << 20
    assert result.storages[0].device == "cuda:0"
    assert_paths_resolve(result, runner)


def test_audit_allocates_no_device_memory():
    baseline = take_baseline("cuda:0")
    runner = mrv2.build(variant="seed", device="cuda:0")
    runner.execute_model(steps=1)
    runner.shutdown()
    torch.cuda.synchronize()
    probe = NvmlProbe.open(0)
    before = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved(), probe.sample())
    result = audit(runner, "cuda:0", baseline, caller_frames=False)
    torch.cuda.synchronize()
    after = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved(), probe.sample())
    assert before == after
    assert result.owner("runner.model_state") is not None
    mrv2._ROPE_DICT.clear()


@pytest.mark.parametrize("variant,code", [("seed", 1), ("fixed", 0)])
def test_cli_on_cuda_moves_nvml_between_phases(tmp_path, variant, code):
    mrv2._ROPE_DICT.clear()
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(EXAMPLES / f"mrv2-{variant}-cuda.yaml"), "--json", str(out)])
    assert result.exit_code == code, result.output
    report = json.loads(out.read_text())
    memory = {m["phase"]: m for m in report["memory"]}
    assert report["device"] == "cuda:0"
    assert memory["loaded"]["nvml_process_bytes"] - memory["baseline"]["nvml_process_bytes"] > 1 << 30
    held = memory["collected"]["torch_allocated_bytes"] - memory["baseline"]["torch_allocated_bytes"]
    categories = {c["name"]: c["bytes"] for c in report["reconciliation"]["categories"]}
    if variant == "seed":
        assert report["leaked_bytes"] > 1 << 30
        assert held >= report["leaked_bytes"] - sum(s["nbytes"] for s in report["storages"] if s["kind"] != "tensor")
    else:
        assert report["leaked_bytes"] == 0
        assert categories["leaked tensors"] == 0 and categories["CUDA graph and memory pools"] == 0
        freed = memory["loaded"]["nvml_process_bytes"] - memory["collected"]["nvml_process_bytes"]
        assert freed > 1 << 30
    mrv2._ROPE_DICT.clear()


def run_json(tmp_path, config: Path, *extra: str) -> tuple[int, dict, str]:
    mrv2._ROPE_DICT.clear()
    out = tmp_path / f"{config.stem}.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out), *extra])
    mrv2._ROPE_DICT.clear()
    return result.exit_code, json.loads(out.read_text()), result.output


def test_pools_sites_and_reconciliation_on_the_transformers_example(tmp_path):
    pytest.importorskip("transformers")
    code, report, output = run_json(tmp_path, EXAMPLES / "hf-llama-seed.yaml")
    assert code == 1, output
    owners = {o["path"]: o for o in report["owners"]}
    assert {"runner.model_state", "runner.pooling_runner", "runner.cudagraph_manager"} <= set(owners)
    pools = [s for s in report["storages"] if s["kind"] == "graph_pool"]
    assert pools and pools[0]["owners"] == ["runner.cudagraph_manager"] and pools[0]["nbytes"] > 0
    assert pools[0]["allocated_at"] and "hf_llama.py" in pools[0]["allocated_at"]
    weights = [s for s in report["storages"] if s["kind"] == "tensor" and s["nbytes"] >= 1 << 20]
    assert weights and all(s["allocated_at"] and "hf_llama.py" in s["allocated_at"] for s in weights)
    assert report["sites"] and not report["sites"][0]["site"].startswith("<unknown")
    rec = report["reconciliation"]
    assert rec["reserved_named_share"] >= 0.95
    names = {c["name"]: c["bytes"] for c in rec["categories"]}
    assert names["leaked tensors"] >= 0.9 * report["leaked_bytes"] - sum(p["nbytes"] for p in pools)


def test_audit_itself_allocates_nothing(tmp_path):
    _, report, _ = run_json(tmp_path, EXAMPLES / "mrv2-seed-cuda.yaml")
    before, after = report["audit_memory"]
    assert after["nvml_process_bytes"] == before["nvml_process_bytes"]
    assert after["torch_allocated_bytes"] == before["torch_allocated_bytes"]
    assert after["torch_reserved_bytes"] == before["torch_reserved_bytes"]


@pytest.mark.parametrize("name", ["mrv2", "hf-llama"])
def test_cycles_growth_per_later_cycle(tmp_path, name):
    if name == "hf-llama":
        pytest.importorskip("transformers")
    suffix = "-cuda" if name == "mrv2" else ""
    code, seed, output = run_json(tmp_path, EXAMPLES / f"{name}-seed{suffix}.yaml", "--cycles", "3")
    assert code == 1, output
    later = [c for c in seed["cycles"] if c["cycle"] > 1]
    for cycle in later:
        assert cycle["nvml_growth_bytes"] == pytest.approx(cycle["leaked_reserved_bytes"], rel=0.05)
    code, fixed, output = run_json(tmp_path, EXAMPLES / f"{name}-fixed{suffix}.yaml", "--cycles", "3")
    assert code == 0, output
    model_bytes = seed["cycles"][-1]["leaked_bytes"]
    assert abs(fixed["nvml_growth_bytes"]) < 0.01 * model_bytes


def test_pinned_host_memory_is_its_own_category():
    baseline = take_baseline("cuda:0")
    runner = Runner()
    runner.staging = torch.empty(1 << 20, dtype=torch.uint8, pin_memory=True)
    result = audit(runner, "cuda:0", baseline)
    pinned = [s for s in result.storages if s.pinned]
    assert len(pinned) == 1 and pinned[0].nbytes == 1 << 20 and pinned[0].device == "cpu"
    assert result.pinned_bytes == 1 << 20 and result.held_bytes == 0
    assert result.owner("runner.staging").pinned_bytes == 1 << 20


def test_an_idle_mem_pool_is_flagged():
    baseline = take_baseline("cuda:0")
    runner = Runner()
    runner.pool = torch.cuda.MemPool()
    with torch.cuda.use_mem_pool(runner.pool):
        scratch = torch.empty(8 << 20, dtype=torch.uint8, device="cuda:0")
    del scratch
    result = audit(runner, "cuda:0", baseline)
    pools = [s for s in result.storages if s.kind == "mem_pool"]
    assert len(pools) == 1 and pools[0].idle and pools[0].nbytes >= 8 << 20
    assert pools[0].owners == ["runner.pool"]


CUDA_FAILURES = """
import torch


class Runner:
    def __init__(self, how):
        self.how = how
        self.weights = torch.zeros(1 << 20, device="cuda:0")

    def shutdown(self):
        if self.how == "assert":
            index = torch.tensor([1 << 30], device="cuda:0")
            self.weights[index] = 1.0  # a device-side assert: the CUDA context is lost
        elif self.how == "stuck":
            torch.cuda._sleep(1 << 62)  # a kernel that never ends; synchronize() waits in C
        torch.cuda.synchronize()


def build(how):
    return Runner(how)
"""


def cuda_failing(folder: Path, how: str) -> Path:
    from process_runs import write_runner

    config = f"runner: {{factory: 'cuda_failing:build', args: {{how: {how}}}}}\n"
    return write_runner(folder, "cuda_failing", CUDA_FAILURES, config)


def test_a_device_side_assert_in_an_isolated_run_is_a_shutdown_error_with_memory(tmp_path):
    """CPU twin: tests/test_isolate.py's segfault in shutdown."""
    from process_runs import run_process

    done = run_process(cuda_failing(tmp_path, "assert"), "--isolate")
    assert done.code == 3, done.stderr
    report = done.report()
    assert report["verdict"] == "error" and report["error"]["phase"] == "shutdown"
    assert [m["phase"] for m in report["memory"]][:4] == ["baseline", "loaded", "warmed", "shutdown"]
    assert report["memory"][1]["nvml_process_bytes"] > report["memory"][0]["nvml_process_bytes"]


def test_a_kernel_that_never_ends_is_stopped_at_the_time_limit(tmp_path):
    """CPU twin: tests/test_timeouts.py's shutdown that swallows the interruption."""
    from process_runs import run_process

    done = run_process(cuda_failing(tmp_path, "stuck"), "--timeout", "3")
    assert done.code == 3, done.stderr
    report = done.report()
    assert (report["error"]["phase"], report["error"]["type"]) == ("shutdown", "Timeout")
    assert report["error"]["stuck_at"].startswith("cuda_failing.py:")
