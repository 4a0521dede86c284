"""Tensor-parallel runs: `leakcheck run --nproc N` through torch's elastic launcher (gloo, CPU),
the combined report and verdict, ranks that crash or hang, `audit_to_file` and `leakcheck merge`.

Every run here is the real CLI in a process of its own (the launcher starts real rank
processes), on the shipped TP example or on runner modules written to a folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.distributed.merge import merge_reports
from leakcheck.report.model import read_report
from tests.process_runs import run_process, write_runner

EXAMPLES = Path(__file__).resolve().parents[1] / "leakcheck" / "examples"
MRV2_HOLDERS = {"runner.model_state", "runner.pooling_runner", "runner.cudagraph_manager"}

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)


def rank_reports(report: dict) -> dict[int, dict]:
    return {rank["rank"]: rank for rank in report["ranks"]}


def counted_paths(rank: dict) -> set[str]:
    return {o["path"] for o in rank["owners"] if o["reachable_bytes"] > 0 and o["kind"] != "cycle"}


def test_seed_fails_naming_every_holder_on_both_ranks_over_cycles(tmp_path: Path):
    done = run_process(EXAMPLES / "tp-seed.yaml", "--cycles", "2", report=tmp_path / "seed.json")
    assert done.code == 1, done.stderr
    report = done.report()
    assert report["verdict"] == "fail" and report["world_size"] == 2
    ranks = rank_reports(report)
    assert sorted(ranks) == [0, 1]
    for rank in ranks.values():
        assert rank["verdict"] == "fail" and rank["error"] is None
        assert rank["environment"]["world_size"] == 2
        assert MRV2_HOLDERS <= counted_paths(rank), counted_paths(rank)
        assert len(rank["cycles"]) == 2  # the same cycles work on every rank
        assert rank["leaked_bytes"] > 0
    assert report["leaked_bytes"] == sum(r["leaked_bytes"] for r in ranks.values())
    merged = {o["path"]: o for o in report["owners"]}
    for path in MRV2_HOLDERS:
        assert merged[path]["ranks"] == [0, 1]
    assert "runner.model_state" in done.stdout  # the terminal report names the holders
    assert any(note.startswith("rank 1 (cpu): fail") for note in report["notes"])


def test_fixed_passes_on_both_ranks_with_nproc_from_the_flag(tmp_path: Path):
    config = tmp_path / "tp-fixed.yaml"
    text = (EXAMPLES / "tp-fixed.yaml").read_text().replace("distributed: {nproc: 2, backend: gloo}\n", "")
    assert "distributed" not in text
    config.write_text(text)
    done = run_process(config, "--nproc", "2", report=tmp_path / "fixed.json")
    assert done.code == 0, done.stdout + done.stderr
    report = done.report()
    assert report["verdict"] == "pass" and report["leaked_bytes"] == 0
    assert [r["verdict"] for r in report["ranks"]] == ["pass", "pass"]
    assert [r["environment"]["rank"] for r in report["ranks"]] == [0, 1]


MISBEHAVING_RANK = """
    import os, signal, time
    import torch, torch.distributed as dist

    class Runner:
        def __init__(self, rank, world_size, how):
            self.rank, self.how = rank, how
            self.weights = torch.ones(1024)

        def step(self):
            total = torch.ones(1)
            dist.all_reduce(total)  # the ranks really are one group
            self.total = float(total)

        def shutdown(self):
            if self.rank == 1 and self.how == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if self.rank == 1 and self.how == "hang":
                time.sleep(600)
            del self.weights

    def build(rank, world_size, how):
        assert world_size == 2
        return Runner(rank, world_size, how)
"""


@pytest.mark.parametrize(
    ("how", "error_type", "extra"),
    [("crash", "SIGSEGV", ()), ("hang", "Timeout", ("--timeout", "3s"))],
)
def test_a_rank_that_crashes_or_hangs_is_reported_with_rank_and_phase(tmp_path, how, error_type, extra):
    module = f"tp_{how}_{tmp_path.name.replace('-', '_')}"
    config = write_runner(
        tmp_path,
        module,
        MISBEHAVING_RANK,
        f"device: cpu\nrunner: {{factory: '{module}:build', args: {{how: {how}}}}}\n"
        "warmup: [{call: step}]\ndistributed: {nproc: 2}\n",
    )
    done = run_process(config, *extra)
    assert done.code == 3, done.stdout + done.stderr
    report = done.report()
    ranks = rank_reports(report)
    failed = ranks[1]["error"]
    assert failed["phase"] == "shutdown" and failed["type"] == error_type, failed
    assert report["error"]["message"].startswith("rank 1: ")
    assert report["error"]["phase"] == "shutdown"
    # The other rank's report is kept: it audited and passed.
    assert ranks[0]["error"] is None and ranks[0]["verdict"] == "pass"
    assert ranks[0]["memory"], "rank 0's measurements are kept"
    assert "rank 1" in done.stderr


def test_audit_to_file_and_merge_call_out_a_holder_on_one_rank_only(tmp_path, monkeypatch, user_module):
    import leakcheck

    module = user_module(
        "worker",
        """
        import torch
        class Worker:
            def __init__(self, forget):
                self.forget = forget
                self.weights = torch.ones(4096)
            def shutdown(self, path, baseline):
                if not self.forget:
                    del self.weights
                import leakcheck
                return leakcheck.audit_to_file(self, path, baseline=baseline)
        """,
    )
    written = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        baseline = leakcheck.take_baseline("cpu")
        worker = module.Worker(forget=rank == 1)
        report = worker.shutdown(str(tmp_path / "leak-rank{rank}.json"), baseline)
        assert report.rank == rank
        written.append(tmp_path / f"leak-rank{rank}.json")
        del worker, baseline
    assert [read_report(p).verdict for p in written] == ["pass", "fail"]
    assert read_report(written[1]).leaked_bytes == 4096 * 4

    combined = tmp_path / "combined.json"
    result = CliRunner().invoke(app, ["merge", str(written[1]), str(written[0]), "--json", str(combined)])
    assert result.exit_code == 1, result.output
    data = json.loads(combined.read_text())
    assert data["verdict"] == "fail" and data["world_size"] == 2
    assert [r["rank"] for r in data["ranks"]] == [0, 1]  # rank order, whatever the file order
    assert data["owners"][0]["path"] == "runner.weights" and data["owners"][0]["ranks"] == [1]
    assert any("runner.weights leaks on rank 1 only (not on 0)" in note for note in data["notes"])
    assert "runner.weights" in result.output

    passing = CliRunner().invoke(app, ["merge", str(written[0])])
    assert passing.exit_code == 0, passing.output


def test_merge_refuses_a_file_that_is_not_a_report(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    result = CliRunner().invoke(app, ["merge", str(bad)])
    assert result.exit_code == 2
    assert "not a leakcheck JSON report" in result.output
    missing = CliRunner().invoke(app, ["merge", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_an_error_on_any_rank_is_the_combined_verdict(tmp_path):
    reports = []
    for rank, verdict in ((0, "fail"), (1, "pass")):
        reports.append(read_report(_written(tmp_path, rank, verdict)))
    merged = merge_reports(reports)
    assert merged.verdict == "fail"
    reports[1].verdict = "error"
    from leakcheck.report.model import RunError

    reports[1].error = RunError(phase="warmup", type="RuntimeError", message="boom")
    merged = merge_reports(reports)
    assert merged.verdict == "error" and merged.error.message == "rank 1: boom"


def _written(folder: Path, rank: int, verdict: str) -> Path:
    path = folder / f"r{rank}.json"
    from leakcheck.report.model import Report

    report = Report(name="x", device="cpu", verdict=verdict, leaked_bytes=8 if verdict == "fail" else 0,
                    max_leaked_bytes=0, rank=rank)
    path.write_text(json.dumps(report.to_dict()))
    return path


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("distributed: {nproc: 2, backend: mpi}\n", "expected auto, gloo or nccl"),
        ("distributed: {nproc: 2, backend: nccl}\n", "nccl needs CUDA"),
        ("distributed: {nproc: 0}\n", "distributed.nproc"),
    ],
)
def test_bad_distributed_config_is_one_line_and_exit_2(tmp_path, yaml, message):
    if "nccl" in yaml and torch.cuda.is_available():
        pytest.skip("CUDA present")
    config = tmp_path / "model.yaml"
    config.write_text(f"device: cpu\nrunner: {{factory: 'leakcheck.examples.tp:build'}}\n{yaml}")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_files_a_rank_writes_itself_carry_its_rank():
    from leakcheck.distributed.rank import per_rank_files

    flags = ["--cycles", "2", "--snapshot", "/tmp/out/snap.pickle", "--no-prove"]
    assert per_rank_files(flags, 1) == ["--cycles", "2", "--snapshot", "/tmp/out/snap.rank1.pickle", "--no-prove"]
    assert per_rank_files(["--snapshot"], 0) == ["--snapshot"]  # a dangling flag is typer's to refuse
