"""Each root kind, with a tensor of its own size, found by the real heap walker."""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
import threading
import weakref

import pytest
import torch

from conftest import assert_paths_resolve, resolve, run_audit, storage_address


class Runner:
    pass


def owner_of(result, path):
    owner = result.owner(path)
    assert owner is not None, f"no owner {path!r}; got {[o.path for o in result.owners]}"
    return owner


def test_runner_attribute(baseline):
    runner = Runner()
    runner.buf = torch.zeros(1001)
    result = run_audit(runner, baseline)
    owner = owner_of(result, "runner.buf")
    assert (owner.kind, owner.reachable_bytes, owner.retained_bytes, owner.tensors) == ("attribute", 4004, 4004, 1)
    assert owner.examples == ["runner.buf"]
    assert owner.fix == "del self.buf"
    assert result.held_bytes == 4004
    assert_paths_resolve(result, runner)


def test_module_global(baseline, scratch_module):
    scratch_module._CACHE = {"rope": torch.zeros(1003)}
    result = run_audit(None, baseline)
    owner = owner_of(result, "leakcheck_scratch_module._CACHE")
    assert (owner.kind, owner.reachable_bytes, owner.retained_bytes) == ("global", 4012, 4012)
    assert owner.examples == ["leakcheck_scratch_module._CACHE['rope']"]
    assert owner.fix == "leakcheck_scratch_module._CACHE.clear()"
    assert_paths_resolve(result, None)


def test_class_attribute(baseline, scratch_module):
    Registry = type("Registry", (), {"__module__": scratch_module.__name__, "table": [torch.zeros(1005)]})
    scratch_module.Registry = Registry
    result = run_audit(None, baseline)
    owner = owner_of(result, "leakcheck_scratch_module.Registry.table")
    assert (owner.kind, owner.reachable_bytes) == ("class_attribute", 4020)
    assert owner.examples == ["leakcheck_scratch_module.Registry.table[0]"]
    assert_paths_resolve(result, None)


def test_instance_reaches_class_attribute_only_through_its_own_root(baseline, scratch_module):
    """An instance's type is never shown as the way the instance holds a tensor."""
    Holder = type("Holder", (), {"__module__": scratch_module.__name__, "shared": torch.zeros(1009)})
    scratch_module.Holder = Holder
    runner = Runner()
    runner.instance = Holder()
    result = run_audit(runner, baseline)
    assert [o.path for o in result.owners] == ["leakcheck_scratch_module.Holder.shared"]


def _make_hook():
    weights = torch.zeros(1011)

    def hook():
        return weights

    return hook


def test_closure(baseline, scratch_module):
    scratch_module.hook = _make_hook()
    result = run_audit(None, baseline)
    owner = owner_of(result, "leakcheck_scratch_module.hook")
    assert (owner.kind, owner.reachable_bytes) == ("closure", 4044)
    assert owner.examples == ["leakcheck_scratch_module.hook.__closure__[0].cell_contents"]
    assert "closure variable 'weights' of _make_hook.<locals>.hook" in owner.detail
    assert_paths_resolve(result, None)


def test_closure_reached_from_runner(baseline):
    runner = Runner()
    runner.callbacks = [_make_hook()]
    result = run_audit(runner, baseline)
    owner = owner_of(result, "runner.callbacks")
    assert owner.examples == ["runner.callbacks[0].__closure__[0].cell_contents"]
    assert "closure variable 'weights'" in owner.detail
    assert_paths_resolve(result, runner)


def test_lru_cache_global(baseline, scratch_module):
    @functools.lru_cache(maxsize=None)
    def cos_sin_cache(n):
        return torch.zeros(n)

    scratch_module.cos_sin_cache = cos_sin_cache
    cos_sin_cache(1013)
    result = run_audit(None, baseline)
    owner = owner_of(result, "leakcheck_scratch_module.cos_sin_cache")
    assert (owner.kind, owner.reachable_bytes) == ("global", 4052)
    assert owner.fix == "leakcheck_scratch_module.cos_sin_cache.cache_clear()"
    assert "<lru_cache>" in owner.examples[0] and not owner.evaluable
    assert "lru_cache of" in (owner.detail or "")


def _worker(ready: threading.Event, release: threading.Event) -> None:
    kv_block = torch.zeros(1019)  # noqa: F841 - held by this live frame
    ready.set()
    release.wait(30)


def test_frame_of_another_thread(baseline):
    ready, release = threading.Event(), threading.Event()
    thread = threading.Thread(target=_worker, args=(ready, release), name="engine-worker")
    thread.start()
    try:
        assert ready.wait(10)
        result = run_audit(None, baseline)
    finally:
        release.set()
        thread.join()
    frames = [o for o in result.owners if o.kind == "frame"]
    assert len(frames) == 1
    owner = frames[0]
    assert owner.reachable_bytes == 4076
    # One holder per live thread (issue 8); the frame and its local are named in its detail.
    assert owner.path == "thread 'engine-worker'"
    assert "<frame _worker at test_owner_kinds.py:" in owner.detail
    assert owner.examples[0].endswith("in thread engine-worker>.f_locals['kv_block']")


def _worker_that_lets_go(ready, audited, dropped, finish, watch):
    kv_block = torch.zeros(1019)
    watch.append(weakref.ref(kv_block))
    ready.set()
    audited.wait(30)
    del kv_block
    dropped.set()
    finish.wait(30)  # still running: its frame (and any cached locals) is alive


def test_reading_a_frame_does_not_keep_its_locals_alive(baseline):
    """Python < 3.13 caches f_locals on the frame; the audit must not leave that cache full."""
    ready, audited, dropped, finish = (threading.Event() for _ in range(4))
    watch: list = []
    thread = threading.Thread(target=_worker_that_lets_go, args=(ready, audited, dropped, finish, watch))
    thread.start()
    try:
        assert ready.wait(10)
        result = run_audit(None, baseline)
        assert [o.reachable_bytes for o in result.owners if o.kind == "frame"] == [4076]
        audited.set()
        assert dropped.wait(10)
        gc.collect()
        assert watch[0]() is None
    finally:
        audited.set()
        finish.set()
        thread.join()


def test_caller_frame_for_api_use(baseline):
    local_tensor = torch.zeros(1021)
    result = run_audit(None, baseline)
    owner = next(o for o in result.owners if o.kind == "frame")
    assert owner.path.endswith(".f_locals['local_tensor']")
    assert owner.reachable_bytes == 4084
    del local_tensor


def test_cli_mode_hides_the_callers_frames(baseline):
    local_tensor = torch.zeros(1021)
    result = run_audit(None, baseline, caller_frames=False)
    assert not [o for o in result.owners if o.kind == "frame"]
    del local_tensor


class _Node:
    pass


def test_garbage_cycle(baseline):
    node = _Node()
    node.me = node
    node.buffer = torch.zeros(1031)
    del node
    result = run_audit(None, baseline)
    owner = next(o for o in result.owners if o.kind == "cycle")
    assert owner.reachable_bytes == owner.retained_bytes == 4124
    assert owner.detail == "freed by gc.collect()"
    assert "_Node" in owner.path
    storage = next(s for s in result.storages if s.nbytes == 4124)
    assert storage.collectable
    assert result.cycle_bytes == 4124 and result.held_bytes == 0


def test_untracked_reference_from_c(baseline):
    tensor = torch.zeros(1033)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(tensor))  # what a leaky C extension does
    ref = weakref.ref(tensor)
    del tensor
    try:
        result = run_audit(None, baseline)
    finally:
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(ref()))
    owner = next(o for o in result.owners if o.kind == "untracked")
    assert owner.reachable_bytes == owner.retained_bytes == 4132
    assert owner.path == "<untracked reference to Tensor[1033] float32>"


def test_views_and_tied_weights_count_once(baseline):
    runner = Runner()
    runner.base = torch.zeros(1039)
    runner.view = runner.base[10:]
    runner.linear = torch.nn.Linear(4, 4)
    runner.tied = torch.nn.Linear(4, 4)
    runner.tied.weight = runner.linear.weight
    result = run_audit(runner, baseline)
    assert len([s for s in result.storages if s.nbytes == 4156]) == 1
    assert result.held_bytes == 4156 + 64 + 16 + 16
    # No untracked holder: the C++ reference a view gives its base is explained by `._base`.
    assert not [o for o in result.owners if o.kind == "untracked"]
    assert_paths_resolve(result, runner)


def test_weak_references_never_own(baseline, scratch_module):
    tensor = torch.zeros(1049)
    scratch_module.REGISTRY = weakref.WeakValueDictionary({"k": tensor})
    runner = Runner()
    runner.strong = tensor
    del tensor
    result = run_audit(runner, baseline)
    assert [o.path for o in result.owners] == ["runner.strong"]
    assert result.owners[0].retained_bytes == 4196


def test_gradients_are_found(baseline):
    runner = Runner()
    runner.weight = torch.nn.Parameter(torch.ones(1051))
    (runner.weight * 2).sum().backward()
    result = run_audit(runner, baseline)
    owner = owner_of(result, "runner.weight")
    assert owner.reachable_bytes == 2 * 4204 and owner.storages == 2
    assert "runner.weight.grad" in [s.example for s in result.storages]
    assert not [o for o in result.owners if o.kind == "untracked"]
    assert_paths_resolve(result, runner)


class _Slotted:
    __slots__ = ("buffer", "__weakref__")


def test_slots_and_module_paths(baseline):
    runner = Runner()
    runner.slotted = _Slotted()
    runner.slotted.buffer = torch.zeros(1061)
    runner.model = torch.nn.Sequential(torch.nn.Linear(3, 5, bias=False))
    runner.heads = torch.nn.ModuleDict({"lm": torch.nn.Linear(2, 7, bias=False)})
    runner.table = {("layer", 3): torch.zeros(1063), 7: [torch.zeros(1069)]}
    runner.sampler = functools.partial(print, torch.zeros(1087), scale=torch.zeros(1091))
    result = run_audit(runner, baseline)
    examples = {s.example for s in result.storages}
    assert {
        "runner.slotted.buffer",
        "runner.model[0].weight",
        "runner.heads['lm'].weight",
        "runner.table[('layer', 3)]",
        "runner.table[7][0]",
        "runner.sampler.args[0]",
        "runner.sampler.keywords['scale']",
    } <= examples
    assert assert_paths_resolve(result, runner) >= 7


def test_sys_last_traceback_is_a_global(baseline):
    def failing_forward():
        activations = torch.zeros(1087)  # noqa: F841 - kept alive by the traceback's frame
        raise RuntimeError("CUDA out of memory")

    try:
        failing_forward()
    except RuntimeError:
        sys.last_traceback = sys.exc_info()[2]
    try:
        result = run_audit(None, baseline)
    finally:
        del sys.last_traceback
    owner = owner_of(result, "sys.last_traceback")
    assert owner.kind == "global" and owner.reachable_bytes == 4348
    assert owner.examples == ["sys.last_traceback.tb_next.tb_frame.f_locals['activations']"]


def test_gc_freeze_is_seen(baseline):
    runner = Runner()
    runner.frozen = torch.zeros(1091)
    gc.freeze()
    frozen_before = gc.get_freeze_count()
    try:
        result = run_audit(runner, baseline)
    finally:
        gc.unfreeze()
    owner = owner_of(result, "runner.frozen")
    assert owner.reachable_bytes == 4364
    assert result.frozen_objects == frozen_before > 0
    assert any("gc.freeze() had hidden" in note and "left them unfrozen" in note for note in result.notes)


def test_audit_leaves_the_runners_garbage_collectable(baseline):
    """Refreezing after the scan would freeze the runner too: its garbage would never go."""
    runner = Runner()
    node = _Node()
    node.me = node
    node.weights = torch.zeros(1093)
    runner.node = node
    watch = weakref.ref(node.weights)
    del node
    gc.freeze()
    try:
        run_audit(runner, baseline)
        assert gc.get_freeze_count() == 0
        del runner
        gc.collect()
        assert watch() is None
    finally:
        gc.unfreeze()


def test_frozen_garbage_is_a_leak(baseline):
    node = _Node()
    node.me = node
    node.weights = torch.zeros(1097)
    del node
    gc.freeze()  # freezes the uncollected cycle with everything else
    try:
        result = run_audit(None, baseline)
    finally:
        gc.unfreeze()
        gc.collect()
    owner = next(o for o in result.owners if o.kind == "frozen_garbage")
    assert owner.reachable_bytes == 4388
    assert "gc.collect() never frees it" in owner.detail
    storage = next(s for s in result.storages if s.nbytes == 4388)
    assert not storage.collectable
    assert result.held_bytes >= 4388 and result.cycle_bytes == 0


def test_baseline_tensors_do_not_count():
    runner = Runner()
    runner.before = torch.zeros(1093)
    from leakcheck import take_baseline

    baseline = take_baseline("cpu")
    runner.after = torch.zeros(1097)
    result = run_audit(runner, baseline)
    assert [o.path for o in result.owners] == ["runner.after"]


def test_the_tool_never_owns_anything(baseline):
    runner = Runner()
    runner.buf = torch.zeros(1103)
    result = run_audit(runner, baseline)
    for owner in result.owners:
        assert not owner.path.startswith("leakcheck.") or owner.path.startswith("leakcheck.examples.")
        assert "leakcheck/engine" not in owner.path
    # The tensor found is the runner's own, by address.
    assert result.storages[0].address == storage_address(resolve("runner.buf", runner))


@pytest.mark.parametrize("container", [list, tuple])
def test_sequence_paths(baseline, container):
    runner = Runner()
    runner.items = container([1, torch.zeros(1109)])
    result = run_audit(runner, baseline)
    assert result.storages[0].example == "runner.items[1]"
