"""The gate on NVML growth and the per-cycle figures, on memory recorded on an H200."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

import leakcheck
from leakcheck.cli import app
from leakcheck.config import load_config
from leakcheck.lifecycle.phases import Lifecycle
from leakcheck.report.build import build_report
from leakcheck.report.model import Audit, MemorySample, Storage

# NVML process bytes at each `collected`, from `leakcheck run mrv2-seed-cuda.yaml --cycles 3`
# on an NVIDIA H200 (torch 2.11.0+cu130); baseline is the CUDA context.
BASELINE = 543_162_368
COLLECTED = [2_378_170_368, 3_856_662_528, 5_358_223_360]


def recorded_lifecycle(collected: list[int]) -> Lifecycle:
    memory = [MemorySample("baseline", 1, nvml_process_bytes=BASELINE, torch_reserved_bytes=0)]
    for cycle, nvml in enumerate(collected, start=1):
        memory.append(MemorySample("collected", cycle, nvml_process_bytes=nvml, torch_reserved_bytes=nvml - BASELINE))
    audits = [nothing_found("cuda:0") for _ in collected]
    return Lifecycle(device="cuda:0", memory=memory, audit=audits[-1], audits=audits)


def nothing_found(device: str) -> Audit:
    """An audit that found no storage: only an audited run can pass the gate."""
    return Audit(device, [], [], [], held_bytes=0, cycle_bytes=0, baseline_storages=0, heap_objects=0, heap_edges=0)


def config(tmp_path, gate: str):
    path = tmp_path / "c.yaml"
    path.write_text(f"runner:\n  factory: x:y\ngate:\n{textwrap.indent(gate, '  ')}\n")
    return load_config(path)


def test_growth_per_later_cycle_is_gated(tmp_path):
    report = build_report(config(tmp_path, "max_nvml_growth_bytes: 1 GiB"), recorded_lifecycle(COLLECTED))
    assert [c.nvml_growth_bytes for c in report.cycles] == [1_835_008_000, 1_478_492_160, 1_501_560_832]
    assert report.nvml_growth_bytes == (1_478_492_160 + 1_501_560_832) // 2  # the first cycle's one-time costs aside
    assert report.verdict == "fail"
    roomy = build_report(config(tmp_path, "max_nvml_growth_bytes: 2 GiB"), recorded_lifecycle(COLLECTED))
    assert roomy.verdict == "pass"


def test_single_cycle_gates_growth_since_baseline(tmp_path):
    report = build_report(config(tmp_path, "max_nvml_growth_bytes: 1.5 GiB"), recorded_lifecycle(COLLECTED[:1]))
    assert report.nvml_growth_bytes == 1_835_008_000 and report.verdict == "fail"


def test_no_nvml_means_no_growth_gate(tmp_path):
    lifecycle = Lifecycle(device="cpu", memory=[MemorySample("baseline"), MemorySample("collected")])
    lifecycle.add_audit(nothing_found("cpu"))
    report = build_report(config(tmp_path, "max_nvml_growth_bytes: 0"), lifecycle)
    assert report.nvml_growth_bytes is None and report.verdict == "pass"


def test_cycles_on_cpu_audit_each_runner(tmp_path):
    out = tmp_path / "r.json"
    seed = Path(leakcheck.__file__).parent / "examples" / "mrv2-seed.yaml"
    result = CliRunner().invoke(app, ["run", str(seed), "--device", "cpu", "--cycles", "2", "--json", str(out)])
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert [c["cycle"] for c in report["cycles"]] == [1, 2]
    assert all(c["leaked_bytes"] > 20 * 2**20 for c in report["cycles"])
    assert [m["cycle"] for m in report["memory"] if m["phase"] == "collected"] == [1, 2]
    assert report["leaked_bytes"] == report["cycles"][-1]["leaked_bytes"]
    assert "Cycles" in result.output


def storage(nbytes: int, unknown: bool, owners: list[str]) -> Storage:
    return Storage("cpu", 0, nbytes, "float32", [], "", owners, 1, unknown=unknown, layout="?")


def test_a_leaked_storage_of_unknown_size_fails_whatever_the_limit(tmp_path):
    found = nothing_found("cpu")
    found.storages = [storage(0, True, ["runner.opaque"]), storage(64, True, ["runner.estimated"])]
    lifecycle = Lifecycle(device="cpu", memory=[MemorySample("baseline")], audit=found, audits=[found])
    report = build_report(config(tmp_path, "max_leaked_bytes: 1 MiB"), lifecycle)
    assert (report.verdict, report.leaked_bytes, report.unsized_storages) == ("fail", 64, 1)
    assert any("could not be read or sized" in note for note in report.notes)
    found.storages = [storage(64, True, ["runner.estimated"])]  # an estimate is judged like any size
    assert build_report(config(tmp_path, "max_leaked_bytes: 1 MiB"), lifecycle).verdict == "pass"


def test_an_allowed_storage_of_unknown_size_does_not_fail(tmp_path):
    found = nothing_found("cpu")
    found.storages = [storage(0, True, ["runner.tokenizer"])]
    lifecycle = Lifecycle(device="cpu", memory=[MemorySample("baseline")], audit=found, audits=[found])
    report = build_report(config(tmp_path, 'allow: ["runner.tokenizer"]'), lifecycle)
    assert (report.verdict, report.unsized_storages) == ("pass", 0)
