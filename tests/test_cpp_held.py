"""Memory no Python object points to: storages C++ holds after their last Python tensor died.

The truth for each case is established without leakcheck first (torch's own StorageWeakRef
on the storages, checked after gc.collect()), then leakcheck must count exactly those bytes.
"""

from __future__ import annotations

import gc
import weakref

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from leakcheck import audit
from leakcheck.engine.seen_storages import made_by_leakcheck, new_seen, take_snapshot
from process_runs import run_process, write_runner

FROZEN_RUNNER = """
import torch


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(128, 64)
        self.second = torch.nn.Linear(64, 32)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


class Runner:
    def __init__(self, keep_frozen):
        self.keep_frozen = keep_frozen
        self.model = Model().eval()
        self.frozen = torch.jit.freeze(torch.jit.script(self.model))

    def run(self):
        with torch.no_grad():
            self.frozen(torch.randn(4, 128))

    def shutdown(self):
        del self.frozen
        del self.model


class CleanRunner:
    def __init__(self):
        self.model = Model().eval()

    def run(self):
        with torch.no_grad():
            self.model(torch.randn(4, 128))

    def shutdown(self):
        del self.model


def build(variant="frozen"):
    return CleanRunner() if variant == "clean" else Runner(keep_frozen=False)
"""

MODEL_BYTES = (128 * 64 + 64 + 64 * 32 + 32) * 4


def _frozen_module(width: int) -> tuple[torch.nn.Module, torch.jit.ScriptModule]:
    """A scripted, frozen module: freezing copies each weight into a graph constant that
    shares the weight's storage (a new tensor object, made in C++)."""
    model = torch.nn.Sequential(torch.nn.Linear(width, width)).eval()
    return model, torch.jit.freeze(torch.jit.script(model))


def test_truth_frozen_weights_outlive_every_python_object():
    """Without leakcheck: after deleting the model and the frozen module, the weights'
    storages are still alive (TorchScript's compilation unit holds the frozen graph), and no
    Python tensor on the heap points to them."""
    model, frozen = _frozen_module(48)
    refs = [StorageWeakRef(p.untyped_storage()) for p in model.parameters()]
    addresses = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del model, frozen
    gc.collect()
    assert not any(ref.expired() for ref in refs)
    on_heap = set()
    for obj in gc.get_objects():
        if type(obj) in (torch.Tensor, torch.nn.Parameter):
            try:
                on_heap.add(obj.untyped_storage().data_ptr())
            except (NotImplementedError, RuntimeError):  # MKLDNN (opaque) tensors another test left
                continue
    assert not addresses & on_heap


def test_audit_counts_frozen_weights_as_cpp_held(baseline):
    model, frozen = _frozen_module(40)
    expected = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    seen = take_snapshot(new_seen("cpu", baseline))
    del model, frozen
    gc.collect()

    result = audit(baseline=baseline, seen=seen)

    held = {s.address: s for s in result.storages if s.kind == "cpp_held"}
    assert {a: s.nbytes for a, s in held.items()} == expected
    assert result.held_bytes >= sum(expected.values())
    owners = {path for s in held.values() for path in s.owners}
    assert owners, "a cpp_held storage always has a holder, so the gate counts it"
    for path in owners:
        owner = result.owner(path)
        assert owner is not None and owner.kind == "untracked"
        assert owner.reachable_bytes >= sum(expected.values())
        assert owner.fix
    # The graph constants the snapshot read are leakcheck's own objects: never an owner.
    assert not any(o.path.startswith("<untracked reference") for o in result.owners)


def test_without_the_snapshot_the_heap_walk_alone_misses_them(baseline):
    """What the issue reported: the heap alone sees nothing, so the snapshot is what counts."""
    model, frozen = _frozen_module(24)
    addresses = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del model, frozen
    gc.collect()
    result = audit(baseline=baseline)
    assert not addresses & {s.address for s in result.storages}


def test_snapshot_keeps_nothing_alive(baseline):
    tensor = torch.randn(3000)
    view = tensor[10:]
    tensor_ref = weakref.ref(tensor)
    storage_ref = StorageWeakRef(tensor.untyped_storage())
    seen = take_snapshot(new_seen("cpu", baseline))
    seen = take_snapshot(seen)
    assert (str(tensor.device), tensor.untyped_storage().data_ptr()) in seen.refs
    del tensor, view
    gc.collect()
    assert tensor_ref() is None
    assert storage_ref.expired()
    assert seen.alive() == [] or all(h.nbytes != 3000 * 4 for h in seen.alive())
    assert not any(s.kind == "cpp_held" for s in audit(baseline=baseline, seen=seen).storages)


def test_python_held_storages_are_not_cpp_held(baseline):
    """A storage a Python tensor still reaches is an ordinary leak with its real holder."""

    class Runner:
        pass

    runner = Runner()
    runner.weights = torch.randn(512)
    seen = take_snapshot(new_seen("cpu", baseline))
    result = audit(runner, baseline=baseline, seen=seen)
    kinds = {s.address: s.kind for s in result.storages}
    assert kinds[runner.weights.untyped_storage().data_ptr()] == "tensor"
    assert not any(kind == "cpp_held" for kind in kinds.values())
    assert result.owner("runner.weights") is not None


def test_graph_constants_read_by_a_snapshot_are_left_out(baseline):
    """Reading a frozen graph's constants makes Python tensors torch keeps with the graph;
    the audit knows them as its own."""
    model, frozen = _frozen_module(16)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    take_snapshot(new_seen("cpu", baseline))
    objects = gc.get_objects()
    tensors = [i for i, o in enumerate(objects) if type(o) in (torch.Tensor, torch.nn.Parameter)]
    made = made_by_leakcheck(objects, tensors)
    made_storages = {objects[i].untyped_storage().data_ptr() for i in made}
    assert weights <= made_storages  # the weight and the bias constants
    parameters = {i for i in tensors if type(objects[i]) is torch.nn.Parameter}
    assert not made & parameters  # the module's own tensors are the user's
    del objects, frozen, model


def test_cli_frozen_runner_fails_with_its_cpp_held_bytes(tmp_path):
    config = write_runner(
        tmp_path,
        "frozen_runner",
        FROZEN_RUNNER,
        "device: cpu\nrunner: {factory: 'frozen_runner:build'}\nwarmup: [{call: run}]\n",
    )
    done = run_process(config)
    assert done.code == 1, done.stderr
    report = done.report()
    held = [s for s in report["storages"] if s["kind"] == "cpp_held"]
    assert sum(s["nbytes"] for s in held) == MODEL_BYTES
    assert report["leaked_bytes"] >= MODEL_BYTES
    assert all(s["owners"] for s in held)


def test_cli_clean_runner_has_no_cpp_held_storage(tmp_path):
    config = write_runner(
        tmp_path,
        "clean_runner",
        FROZEN_RUNNER,
        "device: cpu\nrunner: {factory: 'clean_runner:build', args: {variant: clean}}\nwarmup: [{call: run}]\n",
    )
    done = run_process(config)
    assert done.code == 0, done.stderr
    report = done.report()
    assert report["leaked_bytes"] == 0
    assert not [s for s in report["storages"] if s["kind"] == "cpp_held"]
