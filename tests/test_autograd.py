"""Autograd graphs are ownership: a kept loss or output pins its graph's parameters and saved
activations through C++ references, and leakcheck charges them to the Python holder of the tensor.

Every test establishes its truth without leakcheck: it watches the storages involved with
torch's own `StorageWeakRef` (recorded by a dispatch mode while the forward runs, so saved
activations that never had a Python tensor are watched too), releases the holder, collects,
and asks which storages died. leakcheck's charge must be exactly that set.
"""

from __future__ import annotations

import gc
import sys

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import assert_paths_resolve, run_audit
from leakcheck.engine.paths import AUTOGRAD_GRAPH_NOTE


class Runner:
    pass


class Watched:
    """Weak references to storages, with the address and size each had when first seen."""

    def __init__(self) -> None:
        self.refs: dict[int, tuple[StorageWeakRef, int]] = {}

    def add(self, tensor: torch.Tensor) -> None:
        if tensor.layout is not torch.strided or tensor.is_nested:
            return
        storage = tensor.untyped_storage()
        known = self.refs.get(storage.data_ptr())
        if storage.nbytes() and (known is None or known[0].expired()):  # a freed address is reused
            self.refs[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())

    def alive(self) -> dict[int, int]:
        return {address: size for address, (ref, size) in self.refs.items() if not ref.expired()}


class RecordStorages(TorchDispatchMode):
    """Watches the storage of every tensor an op returns while the mode is on."""

    def __init__(self, watched: Watched) -> None:
        super().__init__()
        self.watched = watched

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.watched.add(tensor)
        return out


def freed_by(release, watched: Watched) -> dict[int, int]:
    """The storages (address -> bytes) that die when `release()` runs and garbage is collected."""
    before = watched.alive()
    release()
    gc.collect()
    after = watched.alive()
    return {address: size for address, size in before.items() if address not in after}


def charged(result, path: str) -> dict[int, int]:
    return {s.address: s.nbytes for s in result.storages if path in s.owners}


def owner_of(result, path: str):
    owner = result.owner(path)
    assert owner is not None, f"no owner {path!r}; got {[o.path for o in result.owners]}"
    return owner


def untracked(result) -> list[str]:
    return [o.path for o in result.owners if o.kind == "untracked"]


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8))


def test_kept_losses_charge_parameters_to_the_list_after_the_model_is_deleted(baseline):
    """The seed mistake: `history.append(loss)` with an optimizer; backward freed the saved
    activations, but every loss keeps its graph's AccumulateGrad nodes, which keep the weights."""
    watched = Watched()
    runner = Runner()
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    runner.history = []
    for _ in range(3):
        with RecordStorages(watched):
            loss = model(torch.randn(16, 64)).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        runner.history.append(loss)
    for parameter in model.parameters():
        watched.add(parameter)
    parameter_bytes = sum(p.untyped_storage().nbytes() for p in model.parameters())
    del model, optimizer, loss, parameter

    result = run_audit(runner, baseline)

    owner = owner_of(result, "runner.history")
    assert untracked(result) == []
    assert assert_paths_resolve(result, runner) > 0  # `runner.history[2].grad_fn...variable`
    truth = freed_by(runner.history.clear, watched)
    assert charged(result, "runner.history") == truth
    assert owner.reachable_bytes == owner.retained_bytes == sum(truth.values()) == parameter_bytes + 3 * 4
    assert result.held_bytes == sum(truth.values())
    assert owner.detail is not None and "loss.item()" in owner.detail and "loss.detach()" in owner.detail
    assert "torch._dynamo" not in (owner.fix or "")


def test_a_fixed_history_of_floats_pins_nothing(baseline):
    runner = Runner()
    model = mlp()
    runner.history = []
    for _ in range(3):
        loss = model(torch.randn(16, 64)).pow(2).mean()
        loss.backward()
        runner.history.append(loss.item())
    del model, loss
    result = run_audit(runner, baseline)
    assert result.owners == [] and result.held_bytes == 0


def test_a_kept_output_requiring_grad_pins_its_saved_activations(baseline):
    """No backward ran: the graph still holds what every op saved (inputs, relu's result)."""
    watched = Watched()
    runner = Runner()
    model = mlp()
    with RecordStorages(watched):
        runner.outputs = [model(torch.randn(32, 64)) for _ in range(2)]
    for parameter in model.parameters():
        watched.add(parameter)
    del model, parameter

    result = run_audit(runner, baseline)
    assert_paths_resolve(result, runner)

    truth = freed_by(runner.outputs.clear, watched)
    saved = {a: n for a, n in truth.items() if n == 32 * 64 * 4 or n == 32 * 96 * 4}
    assert len(saved) == 4, "each output keeps its input and its relu result alive"
    assert charged(result, "runner.outputs") == truth
    owner = owner_of(result, "runner.outputs")
    assert owner.reachable_bytes == owner.retained_bytes == sum(truth.values())
    assert untracked(result) == []


class ScaleByHidden(torch.autograd.Function):
    """A Python Function that saves an intermediate only its graph holds."""

    @staticmethod
    def forward(ctx, x, weight):
        hidden = x.exp()
        ctx.save_for_backward(hidden, weight)
        ctx.table = torch.ones(77)  # a ctx attribute: a plain Python reference
        return hidden * weight

    @staticmethod
    def backward(ctx, grad):
        hidden, weight = ctx.saved_tensors
        return grad * weight * hidden, grad * hidden


def test_a_custom_function_ctx_charges_its_saved_tensors(baseline):
    watched = Watched()
    runner = Runner()
    weight = torch.nn.Parameter(torch.randn(50, 40))
    watched.add(weight)
    with RecordStorages(watched):
        runner.result = ScaleByHidden.apply(torch.randn(50, 40), weight)
    table = runner.result.grad_fn.table
    watched.add(table)
    del weight, table

    result = run_audit(runner, baseline)

    truth = freed_by(lambda: delattr(runner, "result"), watched)
    assert 50 * 40 * 4 in truth.values() and 77 * 4 in truth.values()
    assert charged(result, "runner.result") == truth
    owner = owner_of(result, "runner.result")
    assert owner.retained_bytes == sum(truth.values())
    assert untracked(result) == []


def test_a_long_chain_is_walked_without_recursion(baseline):
    """A 3,000-step recurrence: one node per step, each saving its input; the walk is iterative."""
    watched = Watched()
    runner = Runner()
    weight = torch.nn.Parameter(torch.full((16,), 0.5))
    watched.add(weight)
    with RecordStorages(watched):
        state = torch.ones(16)
        for _ in range(3000):
            state = torch.tanh(state * weight)
    runner.state = state
    del state, weight
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(200, len(__import__("inspect").stack()) + 150))
    try:
        result = run_audit(runner, baseline)
    finally:
        sys.setrecursionlimit(limit)

    truth = freed_by(lambda: delattr(runner, "state"), watched)
    assert len(truth) > 3000
    assert charged(result, "runner.state") == truth
    assert owner_of(result, "runner.state").retained_bytes == sum(truth.values())


def test_saved_tensor_hooks_are_read_as_packed_never_unpacked(baseline):
    """A pack hook's result is what the graph holds; reading it back would run the unpack hook
    (activation checkpointing recomputes the forward there), so the audit never does."""
    calls: list[str] = []

    def pack(tensor):
        calls.append("pack")
        return {"copy": tensor.clone()}

    def unpack(packed):
        calls.append("unpack")
        return packed["copy"]

    runner = Runner()
    weight = torch.nn.Parameter(torch.randn(300))
    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        runner.loss = (torch.randn(300) * weight).exp().sum()
    assert calls == ["pack", "pack"]  # mul saved its input, exp its result
    watched = Watched()
    watched.add(weight)
    node = runner.loss.grad_fn.next_functions[0][0]
    while node is not None:  # exp, then mul: read through torch's own API, not leakcheck's
        for name in dir(node):
            if name.startswith("_raw_saved_") and getattr(node, name).unpack_hook is not None:
                watched.add(getattr(node, name).data["copy"])
        node = node.next_functions[0][0] if node.next_functions else None
    del weight
    calls.clear()

    result = run_audit(runner, baseline)

    assert calls == []
    truth = freed_by(lambda: delattr(runner, "loss"), watched)
    assert len(truth) == 3  # the weight and both packed copies
    assert {a: n for a, n in charged(result, "runner.loss").items() if n > 4} == truth
    assert untracked(result) == []


def test_a_tensor_hook_closure_is_reached_through_the_tensor(baseline):
    runner = Runner()
    runner.weight = torch.nn.Parameter(torch.randn(10))
    watched = Watched()

    def add_hook() -> None:
        scale = torch.full((1237,), 2.0)
        watched.add(scale)
        runner.weight.register_hook(lambda grad: grad * scale[:10])

    add_hook()
    result = run_audit(runner, baseline)
    truth = freed_by(lambda: delattr(runner, "weight"), watched)
    assert set(truth) <= set(charged(result, "runner.weight"))
    assert 1237 * 4 in charged(result, "runner.weight").values()


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = torch.nn.Linear(64, 128)
        self.second = torch.nn.Linear(128, 8)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


def test_a_kept_script_module_retains_its_parameters_with_no_untracked_co_owner(baseline):
    """TorchScript's C++ module keeps its parameters' PyObjects: one reference the heap cannot
    see per parameter, which used to be listed as co-owners and made the holder retain 0."""
    runner = Runner()
    runner.scripted = torch.jit.script(Net())
    runner.scripted(torch.randn(2, 64))
    watched = Watched()
    for parameter in runner.scripted.parameters():
        watched.add(parameter)
    parameter_bytes = sum(p.untyped_storage().nbytes() for p in runner.scripted.parameters())
    del parameter

    result = run_audit(runner, baseline)

    assert untracked(result) == []
    owner = owner_of(result, "runner.scripted")
    assert owner.reachable_bytes == owner.retained_bytes == parameter_bytes
    truth = freed_by(lambda: delattr(runner, "scripted"), watched)
    assert charged(result, "runner.scripted") == truth
    assert sum(truth.values()) == parameter_bytes


def test_an_untracked_reference_no_holder_explains_is_still_reported(baseline):
    """A C extension's reference to a tensor nobody names: the pseudo-owner stays, with a fix
    that no longer suggests torch._dynamo.reset() (nothing was compiled)."""
    import ctypes
    import weakref

    tensor = torch.zeros(1201)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(tensor))
    ref = weakref.ref(tensor)
    del tensor
    try:
        result = run_audit(None, baseline)
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(ref()))
    (owner,) = [o for o in result.owners if o.kind == "untracked"]
    assert owner.retained_bytes == 1201 * 4
    assert "C++" in owner.detail and "dynamo" not in (owner.fix or "")


def test_an_untracked_reference_is_kept_beside_a_garbage_cycle(baseline):
    """A cycle does not explain a C++ reference: dropping the pseudo-owner there would call
    the storage collectable, and a gate would pass bytes gc.collect() cannot free."""
    import ctypes
    import weakref

    class Node:
        pass

    tensor = torch.zeros(1223)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(tensor))
    ref = weakref.ref(tensor)
    node = Node()
    node.me, node.tensor = node, tensor
    del node, tensor
    try:
        result = run_audit(None, baseline)
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(ref()))
        gc.collect()
    (storage,) = [s for s in result.storages if s.nbytes == 1223 * 4]
    assert not storage.collectable
    assert any(path.startswith("<untracked reference") for path in storage.owners)
    assert result.held_bytes >= 1223 * 4


def test_a_graph_is_walked_under_a_tensor_subclass_that_refuses(baseline):
    """A subclass whose __torch_function__ raises still has its graph walked (dispatch off)."""

    class Refusing(torch.Tensor):
        refuse = False

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if cls.refuse:
                raise RuntimeError("refusing")
            return super().__torch_function__(func, types, args, kwargs or {})

    weight = torch.nn.Parameter(torch.randn(1229))
    watched = Watched()
    watched.add(weight)
    runner = Runner()
    runner.kept = (weight * 2).as_subclass(Refusing)
    del weight
    Refusing.refuse = True
    try:
        result = run_audit(runner, baseline)
    finally:
        Refusing.refuse = False
    truth = freed_by(lambda: delattr(runner, "kept"), watched)
    assert 1229 * 4 in truth.values()
    assert set(truth) <= set(charged(result, "runner.kept"))
    assert untracked(result) == []


@pytest.mark.parametrize("retain", [False, True])
def test_after_backward_only_what_the_graph_still_holds_is_charged(baseline, retain):
    """backward() frees saved tensors unless retain_graph: the charge follows what is alive."""
    watched = Watched()
    runner = Runner()
    weight = torch.nn.Parameter(torch.randn(40, 40))
    watched.add(weight)
    with RecordStorages(watched):
        loss = (torch.randn(25, 40) @ weight).exp().sum()
    loss.backward(retain_graph=retain)
    watched.add(weight.grad)
    runner.loss = loss
    del loss, weight
    result = run_audit(runner, baseline)
    truth = freed_by(lambda: delattr(runner, "loss"), watched)
    assert charged(result, "runner.loss") == truth
    owner = owner_of(result, "runner.loss")
    assert owner.retained_bytes == sum(truth.values())
    saved = 25 * 40 * 4  # the input matmul saved and exp's result
    assert (saved in truth.values()) is retain
    assert AUTOGRAD_GRAPH_NOTE in (owner.detail or "")
