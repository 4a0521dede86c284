"""Live torch.distributed process groups as leaked items, with `destroy_process_group` as their fix.

Real gloo groups in this process (a world of one rank over a FileStore), found by the real
heap walker through torch's registry; the proof really destroys them. The tensor-parallel
example runs through the real CLI with two ranks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from leakcheck.engine.audit import audit_watching
from leakcheck.engine.release import ReleasePlan
from leakcheck.engine.tensors import take_baseline
from leakcheck.lifecycle.prove import prove_release
from leakcheck.report.model import PROCESS_GROUP, PROOF_FREED, Report
from process_runs import run_process

EXAMPLES = Path(__file__).resolve().parents[1] / "leakcheck" / "examples"
DESTROY = "torch.distributed.destroy_process_group"

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)


def registered(group: object) -> bool:
    """Whether torch still counts the group as live (its registry of groups)."""
    return any(key is group for key in dist.distributed_c10d._world.pg_map)


@pytest.fixture
def world(tmp_path: Path):
    """A default gloo group of one rank, created before the test's baseline (as leakcheck's own
    group is for `--nproc`); every group is destroyed afterwards."""
    assert not dist.is_initialized(), "another test left a process group behind"
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class Runner:
    pass


def audit_of(runner: object, baseline):
    plan = ReleasePlan()
    found, _ = audit_watching(runner, "cpu", baseline, caller_frames=False, plan=plan)
    return found, plan


def group_storages(found) -> list:
    return [s for s in found.storages if s.kind == "process_group"]


def test_group_kept_in_an_attribute_is_one_leaked_item_and_the_proof_destroys_it(world):
    baseline = take_baseline("cpu")
    runner = Runner()
    runner.group = dist.new_group([0], backend="gloo")
    found, plan = audit_of(runner, baseline)

    groups = group_storages(found)
    assert len(groups) == 1 and groups[0].nbytes == 0
    assert groups[0].owners == ["runner.group"]
    assert "process group" in groups[0].note and "gloo" in groups[0].note and "no device memory" in groups[0].note
    owner = found.owner("runner.group")
    assert owner is not None and owner.kind == PROCESS_GROUP
    assert owner.fix == f"{DESTROY}(self.group)"
    assert "never a thing to clear" in owner.detail
    # 0 bytes, still a leak: the gate fails it, and allowing its holder lets it pass.
    report = found.to_report(max_leaked="1 GiB")
    assert report.leaked_bytes == 0 and report.leaked_process_groups == 1 and report.verdict == "fail"
    assert any("process group(s) still alive" in note for note in report.notes)
    assert f"{DESTROY}(self.group)" in report.release
    allowed = found.to_report(allow=["runner.group"])
    assert allowed.leaked_process_groups == 0 and allowed.verdict == "pass"
    # Read back from JSON, the verdict is the same.
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.leaked_process_groups == 1

    group = runner.group
    assert registered(group)
    proof = prove_release(plan, found, "cpu")
    assert not registered(group), "the proof's release did not destroy the group"
    assert dist.is_initialized(), "destroying the runner's group must leave the default group alone"
    assert proof.steps[0].line == f"{DESTROY}(self.group)" and proof.steps[0].error is None
    assert owner.proof == PROOF_FREED and "left torch's registry" in owner.proof_note


def test_group_in_a_module_global_is_named_by_the_global(world, user_module):
    module = user_module(
        "pg_registry",
        """
        import torch.distributed as dist

        class Coordinator:
            def __init__(self):
                self.group = dist.new_group([0], backend="gloo")

        _TP = None

        def build():
            global _TP
            _TP = Coordinator()
        """,
    )
    baseline = take_baseline("cpu")
    module.build()
    found, _ = audit_of(Runner(), baseline)

    groups = group_storages(found)
    path = f"{module.__name__}._TP.group"
    assert len(groups) == 1 and groups[0].owners == [path]
    owner = found.owner(path)
    assert owner.kind == PROCESS_GROUP and owner.fix == f"{DESTROY}({path})"
    assert found.to_report().verdict == "fail"


def test_group_only_torch_holds_is_still_a_leak_with_no_clearing_of_the_registry(world):
    baseline = take_baseline("cpu")
    dist.new_group([0], backend="gloo")  # the caller dropped it; torch's registry has it
    found, plan = audit_of(Runner(), baseline)

    groups = group_storages(found)
    assert len(groups) == 1
    (owner,) = [o for o in found.owners if o.kind == PROCESS_GROUP]
    assert owner.path.startswith("<process group") and "torch's registry" in owner.path
    assert owner.fix.startswith(f"{DESTROY}(group)")
    assert "_pg_map" not in (owner.fix or "") and ".clear()" not in (owner.fix or "")
    assert found.to_report().verdict == "fail"
    prove_release(plan, found, "cpu")
    assert not any(key is not dist.group.WORLD for key in dist.distributed_c10d._world.pg_map)


def test_a_destroyed_group_is_no_leak(world):
    baseline = take_baseline("cpu")
    runner = Runner()
    runner.group = dist.new_group([0], backend="gloo")
    dist.destroy_process_group(runner.group)  # the reference stays; the group is gone
    found, _ = audit_of(runner, baseline)
    assert group_storages(found) == []
    report = found.to_report()
    assert report.leaked_process_groups == 0 and report.verdict == "pass"


def test_the_default_group_created_before_baseline_is_no_leak(world):
    baseline = take_baseline("cpu")
    runner = Runner()
    runner.world = world  # even held by the runner, it is the process's, not the runner's
    found, _ = audit_of(runner, baseline)
    assert group_storages(found) == []
    assert found.to_report().verdict == "pass"


def test_a_default_group_the_runner_created_is_destroyed_with_no_argument(tmp_path: Path):
    assert not dist.is_initialized()
    baseline = take_baseline("cpu")
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        runner = Runner()
        runner.world = dist.group.WORLD
        found, plan = audit_of(runner, baseline)
        groups = group_storages(found)
        assert len(groups) == 1 and "the default group" in groups[0].note
        owner = found.owner("runner.world")
        assert owner.fix == f"{DESTROY}()"
        prove_release(plan, found, "cpu")
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_tp_seed_names_the_forgotten_group_on_both_ranks(tmp_path: Path):
    done = run_process(EXAMPLES / "tp-seed.yaml", "--nproc", "2", report=tmp_path / "seed.json")
    assert done.code == 1, done.stdout + done.stderr
    report = done.report()
    assert report["leaked_process_groups"] == 2
    for rank in report["ranks"]:
        owners = {o["path"]: o for o in rank["owners"]}
        group = owners["runner.tp_group"]
        assert group["kind"] == "process_group"
        assert group["fix"] == f"{DESTROY}(self.tp_group)"
        assert group["proof"] == "freed", group
        assert [s["owners"] for s in rank["storages"] if s["kind"] == "process_group"] == [["runner.tp_group"]]
        assert f"{DESTROY}(self.tp_group)" in rank["release"]
        assert any(note.startswith(f"rank {rank['rank']} of 2: audited in a child process") for note in rank["notes"])
        assert not any("of leakcheck --isolate" in note for note in rank["notes"])
    assert f"{DESTROY}(self.tp_group)" in done.stdout


def test_a_group_in_an_instance_dict_of_untracked_values_is_still_reached(world):
    """Before Python 3.11 CPython stops tracking a dict whose values are all untracked: an
    object whose only attribute is a group (a pybind11 object gc does not track) has a
    `__dict__` in no gc.get_objects(). The group is still named by that attribute."""
    import gc

    baseline = take_baseline("cpu")
    runner = Runner()
    runner.coordinator = Runner()
    runner.coordinator.group = dist.new_group([0], backend="gloo")
    runner.coordinator.label = "tp"
    if sys.version_info < (3, 11):
        assert not gc.is_tracked(runner.coordinator.__dict__)
    found, _ = audit_of(runner, baseline)
    assert [s.owners for s in group_storages(found)] == [["runner.coordinator.group"]]
