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
    if variant == "seed":
        assert report["leaked_bytes"] > 1 << 30
        assert held >= report["leaked_bytes"]
    else:
        assert report["leaked_bytes"] == 0 and held == 0
        freed = memory["loaded"]["nvml_process_bytes"] - memory["collected"]["nvml_process_bytes"]
        assert freed > 1 << 30
    mrv2._ROPE_DICT.clear()
