"""`--prove`: leakcheck runs its own suggested lines on real runners and measures what dies.

Each runner's truth is known without leakcheck: which object holds which tensor, and
whether deleting it frees the bytes. The tests check the proof against that truth, through
the real CLI (in-process, or in a child process for --isolate) and the real heap walker.
"""

from __future__ import annotations

import json
import sys
import textwrap

from typer.testing import CliRunner

from leakcheck.cli import app
from leakcheck.config import load_config
from leakcheck.engine.audit import audit_watching
from leakcheck.engine.release import LIVE_FRAME, ReleasePlan
from leakcheck.lifecycle.phases import run_lifecycle
from leakcheck.lifecycle.prove import prove_release
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.renderers.markdown import to_markdown
from leakcheck.report.build import build_report
from leakcheck.report.model import Report

from process_runs import run_process, write_unique_runner

SEED = """
import functools
import torch

CACHE = {}
LAST = None


@functools.lru_cache(maxsize=None)
def table(n):
    return torch.ones(n)


class Node:
    pass


class Runner:
    def __init__(self):
        self.weights = torch.zeros(1000)          # 4,000 bytes, one holder
        self.first = [torch.zeros(300)]           # 1,200 bytes, held by two attributes
        self.second = self.first
        global LAST
        LAST = torch.zeros(700)                   # 2,800 bytes, a module global
        CACHE["k"] = torch.zeros(500)             # 2,000 bytes, a dict global: .clear()
        table(250)                                # 1,000 bytes, an lru_cache: .cache_clear()
        node = Node()
        node.self, node.t = node, torch.zeros(900)  # 3,600 bytes, garbage only gc.collect() frees

    def shutdown(self):
        pass


def build():
    return Runner()
"""

FIXED = """
import torch


class Runner:
    def __init__(self):
        self.weights = torch.zeros(1000)

    def shutdown(self):
        del self.weights


def build():
    return Runner()
"""

# `del self.box` runs Box.__del__, which keeps the tensor in a global: the audit's claim for
# runner.box is wrong (its release does not free the bytes), and the proof must say so.
RESURRECTING = """
import torch

SAVED = []


class Box:
    def __init__(self):
        self.t = torch.zeros(1500)

    def __del__(self):
        SAVED.append(self.t)


class Runner:
    def __init__(self):
        self.box = Box()
        self.plain = torch.zeros(100)

    def shutdown(self):
        pass


def build():
    return Runner()
"""

# A worker thread whose frame holds the same tensor as runner.batch: leakcheck must not touch
# another thread's frame, so the bytes stay and the frame is "not tried".
THREADED = """
import threading
import torch

STOP = threading.Event()


def work(batch, ready):
    ready.set()
    STOP.wait(60)


class Runner:
    def __init__(self):
        self.batch = torch.zeros(2000)
        ready = threading.Event()
        self.thread = threading.Thread(target=work, args=(self.batch, ready), name="worker-1", daemon=True)
        self.thread.start()
        ready.wait(10)

    def shutdown(self):
        pass


def build():
    return Runner()
"""

# A holder whose line raises: the step's error is recorded and the plan goes on.
RAISING = """
import torch


class Stubborn:
    def __init__(self):
        self.locked = torch.zeros(400)
        self.loose = torch.zeros(600)

    def __delattr__(self, name):
        if name == "locked":
            raise RuntimeError("locked cannot be deleted")
        object.__delattr__(self, name)

    def shutdown(self):
        pass


def build():
    return Stubborn()
"""


def run(tmp_path, source: str, *extra: str, gate: str = "") -> tuple[int, dict, str, str]:
    config, module = write_unique_runner(tmp_path, "prove", source)
    if gate:
        config.write_text(config.read_text() + "gate:\n" + textwrap.indent(textwrap.dedent(gate), "  "))
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out), *extra])
    return result.exit_code, json.loads(out.read_text()), result.output, module


def owners(report: dict) -> dict[str, dict]:
    return {o["path"]: o for o in report["owners"]}


def test_every_seed_holder_is_proven_by_its_own_line(tmp_path):
    code, report, output, module = run(tmp_path, SEED)
    assert code == 1
    proof = report["proof"]
    assert proof["claimed_bytes"] == report["leaked_bytes"] == 4000 + 1200 + 2800 + 2000 + 1000
    assert proof["freed_bytes"] == proof["claimed_bytes"] and proof["unfreed_bytes"] == 0
    found = owners(report)
    for path, nbytes in [("runner.weights", 4000), (f"{module}.LAST", 2800), (f"{module}.CACHE", 2000)]:
        assert (found[path]["proof"], found[path]["expected_bytes"], found[path]["freed_bytes"]) == (
            "freed",
            nbytes,
            nbytes,
        )
    assert found[f"{module}.table"]["freed_bytes"] == 1000
    lines = [step["line"] for step in proof["steps"]]
    assert f"{module}.table.cache_clear()" in lines and f"{module}.CACHE.clear()" in lines
    assert f"{module}.LAST = None" in lines
    # The truth, without leakcheck: the lines really ran on the runner's module.
    runner_module = sys.modules[module]
    assert runner_module.LAST is None and runner_module.CACHE == {} and runner_module.table.cache_info().currsize == 0
    assert "proven: 10.7 KiB of 10.7 KiB freed by the suggested lines" in output


def test_a_shared_hold_is_expected_at_the_step_of_its_last_holder(tmp_path):
    _, report, _, _ = run(tmp_path, SEED)
    steps = {step["line"]: step for step in report["proof"]["steps"]}
    first, second = steps["del self.first"], steps["del self.second"]
    assert (first["expected_bytes"], first["freed_bytes"]) == (0, 0)
    assert (second["expected_bytes"], second["freed_bytes"]) == (1200, 1200)
    found = owners(report)
    assert found["runner.first"]["proof"] == "shared"
    assert "del self.second" in found["runner.first"]["proof_note"]
    assert found["runner.second"]["proof"] == "freed" and found["runner.second"]["freed_bytes"] == 1200


def test_garbage_cycles_are_proven_by_leakcheck_s_own_collection(tmp_path):
    _, report, _, _ = run(tmp_path, SEED)
    cycle = next(o for o in report["owners"] if o["kind"] == "cycle")
    assert cycle["proof"] == "freed" and cycle["expected_bytes"] == 0
    assert report["cycle_bytes"] == 3600  # not counted, and not claimed by the proof
    assert sum(1 for step in report["proof"]["steps"] if step["line"].startswith("gc.collect()")) == 1


def test_a_claim_a_finalizer_defeats_is_flagged_with_what_stayed(tmp_path):
    code, report, output, module = run(tmp_path, RESURRECTING)
    assert code == 1
    box = owners(report)["runner.box"]
    assert box["proof"] == "not_freed" and box["expected_bytes"] == 6000 and box["freed_bytes"] == 0
    assert box["proof_note"].startswith("claimed but not freed: 5.86 KiB in 1 storage(s) stayed after `del self.box`")
    proof = report["proof"]
    assert (proof["claimed_bytes"], proof["freed_bytes"], proof["unfreed_bytes"]) == (6400, 400, 6000)
    assert "claimed by runner.box, but still alive after `del self.box`" in proof["unfreed"][0]
    assert owners(report)["runner.plain"]["proof"] == "freed"
    assert len(sys.modules[module].SAVED) == 1  # the truth: the finalizer kept the tensor
    assert "claimed but not freed" in output and "no suggested line freed these" in output


def test_another_thread_s_frame_is_not_tried_and_its_bytes_stay(tmp_path):
    config, module = write_unique_runner(tmp_path, "prove", THREADED)
    out = tmp_path / "report.json"
    try:
        result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    finally:
        sys.modules[module].STOP.set()
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    frames = [o for o in report["owners"] if o["kind"] == "frame"]
    assert frames and all(o["proof"] == "not_tried" and o["proof_note"] == LIVE_FRAME for o in frames)
    batch = owners(report)["runner.batch"]
    frame = frames[0]["path"]
    assert batch["proof"] == "shared" and batch["proof_note"] == f"held also by {frame}: {LIVE_FRAME}"
    proof = report["proof"]
    assert proof["claimed_bytes"] == 8000 and proof["unfreed_bytes"] == 8000
    assert "not tried:" in result.output


def test_a_line_that_raises_is_recorded_and_the_plan_goes_on(tmp_path):
    code, report, _, _ = run(tmp_path, RAISING)
    assert code == 1 and report["error"] is None
    steps = {step["line"]: step for step in report["proof"]["steps"]}
    assert steps["del self.locked"]["error"] == "RuntimeError: locked cannot be deleted"
    assert steps["del self.loose"]["freed_bytes"] == 2400
    assert owners(report)["runner.locked"]["proof"] == "not_freed"
    assert report["proof"]["unfreed_bytes"] == 1600


def test_a_fixed_twin_has_nothing_to_prove_and_passes(tmp_path):
    code, report, output, _ = run(tmp_path, FIXED, gate="require_proven: true\n")
    assert code == 0 and report["verdict"] == "pass"
    assert report["proof"]["claimed_bytes"] == 0 and report["proof"]["steps"] == []
    assert "proven: nothing counted was left to free" in output


def test_require_proven_fails_what_the_lines_cannot_free(tmp_path):
    roomy = "max_leaked_bytes: 1 GiB\nrequire_proven: true\n"
    code, report, _, _ = run(tmp_path, SEED, gate=roomy)
    assert code == 0 and report["require_proven"] is True
    sub = tmp_path / "wrong"
    sub.mkdir()
    code, report, _, _ = run(sub, RESURRECTING, gate=roomy)
    assert code == 1 and report["verdict"] == "fail"
    assert any("6,000 of 6,400 counted bytes were not freed" in note for note in report["notes"])


def test_require_proven_without_the_proof_fails(tmp_path):
    code, report, _, _ = run(tmp_path, SEED, "--no-prove", gate="max_leaked_bytes: 1 GiB\nrequire_proven: true\n")
    assert code == 1 and report["proof"] is None
    assert any("the proof did not run" in note for note in report["notes"])


def test_no_prove_leaves_the_runner_s_objects_alone(tmp_path):
    code, report, output, module = run(tmp_path, SEED, "--no-prove")
    assert code == 1 and report["proof"] is None
    assert all(o["proof"] is None and o["freed_bytes"] is None for o in report["owners"])
    assert sys.modules[module].LAST is not None and "k" in sys.modules[module].CACHE
    assert "proven:" not in output


def test_the_proof_round_trips_through_json_and_show(tmp_path):
    _, data, _, _ = run(tmp_path, RESURRECTING)
    report = Report.from_dict(data)
    assert report.proof is not None and report.proof.unfreed_bytes == 6000
    assert [s.line for s in report.proof.steps] == [s["line"] for s in data["proof"]["steps"]]
    box = next(o for o in report.owners if o.path == "runner.box")
    assert (box.proof, box.freed_bytes, box.expected_bytes) == ("not_freed", 0, 6000)
    assert report.to_dict() == data
    markdown = to_markdown(report)
    assert "**proven: 400 B of 6.25 KiB freed by the suggested lines" in markdown
    assert "No suggested line freed these (5.86 KiB)" in markdown
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "report.json")], env={"COLUMNS": "80"})
    assert shown.exit_code == 1 and "Proof: the suggested lines" in shown.output  # a failing report
    assert max(len(line) for line in shown.output.splitlines()) <= 80


def test_the_journal_carries_the_proof_to_a_replayed_lifecycle(tmp_path):
    config, module = write_unique_runner(tmp_path, "prove", RESURRECTING)
    events: list[dict] = []
    lifecycle = Lifecycle(device="cpu", journal=events.append)
    run_lifecycle(load_config(config), into=lifecycle, prove=True)
    replayed = Lifecycle.replay(json.loads(json.dumps(events)))
    assert replayed.proof == lifecycle.proof and replayed.proof is not None
    assert [(o.proof, o.freed_bytes) for o in replayed.audit.owners] == [
        (o.proof, o.freed_bytes) for o in lifecycle.audit.owners
    ]


def test_the_api_proves_only_when_asked(tmp_path):
    config, module = write_unique_runner(tmp_path, "prove", SEED)
    lifecycle = run_lifecycle(load_config(config))
    assert lifecycle.proof is None and sys.modules[module].LAST is not None
    report = build_report(load_config(config), lifecycle)
    assert report.proof is None


def test_prove_release_on_a_plain_audit(baseline):
    """The API: audit_watching fills a plan, prove_release runs it on the caller's objects."""
    import torch

    class Holder:
        pass

    runner = Holder()
    runner.a = torch.zeros(321)
    plan = ReleasePlan()
    result, _ = audit_watching(runner, "cpu", baseline, caller_frames=False, plan=plan)
    proof = prove_release(plan, result)
    assert (proof.claimed_bytes, proof.freed_bytes) == (1284, 1284)
    assert not hasattr(runner, "a")
    assert result.owner("runner.a").proof == "freed"


def test_isolate_runs_the_proof_in_the_child(tmp_path):
    config, _ = write_unique_runner(tmp_path, "prove", SEED)
    finished = run_process(config, "--isolate")
    assert finished.code == 1, finished.stderr
    proof = finished.report()["proof"]
    assert proof is not None and proof["freed_bytes"] == proof["claimed_bytes"] == 11000


def test_a_bad_require_proven_is_a_config_error_with_its_line(tmp_path):
    config, _ = write_unique_runner(tmp_path, "prove", FIXED)
    config.write_text(config.read_text() + "gate:\n  require_proved: true\n")
    result = CliRunner().invoke(app, ["run", str(config)])
    assert result.exit_code == 2
    assert f"{config}:4" in result.output and "require_proven" in result.output
