"""Library recognisers on the real libraries: build the leak, audit, check the one holder and
its line, then run the line leakcheck would run and check the leaked storages really died
(StorageWeakRef taken by the test, not by leakcheck)."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import weakref

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef

from leakcheck.engine.audit import audit_watching
from leakcheck.engine.release import CPP_STATE, LIBRARY_STATE, LIVE_FRAME, ReleasePlan
from leakcheck.recognisers import Recogniser, registered


def audit_with_plan(runner, baseline):
    gc.collect()  # as the lifecycle does before `collected`: garbage is not what these tests are about
    plan = ReleasePlan()
    result, _ = audit_watching(runner, "cpu", baseline, caller_frames=False, plan=plan)
    return result, plan


def step_for(plan: ReleasePlan, path: str):
    return next(step for step in plan.steps if step.path == path)


def alive(refs: list[StorageWeakRef]) -> int:
    gc.collect()
    return sum(not ref.expired() for ref in refs)


def no_registry_is_cleared(result) -> None:
    """A library's registry is a path to the user's object, never a thing to clear."""
    for owner in result.owners:
        fix = owner.fix or ""
        for registry in (
            "logging.",
            "weakref.finalize._registry",
            "threading._active",
            "torch.optim.optimizer._global",
        ):
            if fix.startswith(registry):
                raise AssertionError(f"{owner.path}: {fix}")
        assert not owner.path.startswith(("logging.Logger.manager", "threading._active")), owner.path


LOGGING_RUNNER = """
    import logging, logging.handlers
    import torch

    logger = logging.getLogger(__name__)

    class Runner:
        def __init__(self):
            self.records = logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL + 1)
            logger.addHandler(self.records)
            logger.setLevel(logging.INFO)
            logger.propagate = False

        def step(self):
            logger.info("activations %s", torch.zeros(1031))
            logger.info("activations %s", torch.zeros(1033))

        def shutdown(self):
            del self.records  # the seed mistake: the handler stays on the module's logger

        def shutdown_fixed(self):
            logger.removeHandler(self.records)
            self.records.close()
            del self.records
"""


def _activations(handler) -> list[StorageWeakRef]:
    return [StorageWeakRef(record.args[0].untyped_storage()) for record in handler.buffer]


def test_logging_handler_is_one_holder_named_from_user_code(baseline, user_module):
    module = user_module("logging_records", LOGGING_RUNNER)
    runner = module.Runner()
    runner.step()
    refs = _activations(runner.records)
    runner.shutdown()
    result, plan = audit_with_plan(runner, baseline)
    assert result.held_bytes == (1031 + 1033) * 4
    holders = [o for o in result.owners if o.reachable_bytes]
    assert [o.path for o in holders] == [f"{module.__name__}.logger.handlers[0]"]
    owner = holders[0]
    assert owner.retained_bytes == (1031 + 1033) * 4
    assert f"logging.getLogger({module.__name__!r}).removeHandler(handler)" in owner.fix
    assert owner.fix.startswith(f"handler = {module.__name__}.logger.handlers[0];")
    no_registry_is_cleared(result)

    step_for(plan, owner.path).release.action()
    assert alive(refs) == 0
    assert not logging.getLogger(module.__name__).handlers


def test_logging_fixed_twin_passes(baseline, user_module):
    module = user_module("logging_records_fixed", LOGGING_RUNNER)
    runner = module.Runner()
    runner.step()
    runner.shutdown_fixed()
    result, _ = audit_with_plan(runner, baseline)
    assert result.held_bytes == 0


FINALIZE_RUNNER = """
    import weakref
    import torch

    def spill(buffer):
        buffer.zero_()

    class Session:
        pass

    SESSIONS = [Session()]  # outlives the runner: the finalizer never runs by itself

    class Runner:
        def __init__(self):
            self.finalizer = weakref.finalize(SESSIONS[0], spill, torch.zeros(2053))

        def shutdown(self):
            del self.finalizer  # the seed mistake: the registry keeps the finalizer, and its buffer

        def shutdown_fixed(self):
            self.finalizer()
            del self.finalizer
"""


def _finalizer_buffers(finalizer) -> list[StorageWeakRef]:
    return [StorageWeakRef(finalizer.peek()[2][0].untyped_storage())]


def test_weakref_finalize_is_called_not_its_registry_cleared(baseline, user_module):
    module = user_module("finalizers", FINALIZE_RUNNER)
    runner = module.Runner()
    refs = _finalizer_buffers(runner.finalizer)
    runner.shutdown()
    result, plan = audit_with_plan(runner, baseline)
    holders = [o for o in result.owners if o.reachable_bytes]
    assert [o.path for o in holders] == ["weakref.finalize of spill"]
    assert holders[0].retained_bytes == 2053 * 4
    assert holders[0].fix.startswith("finalizer()")
    no_registry_is_cleared(result)
    others = len(weakref.finalize._registry)

    step_for(plan, holders[0].path).release.action()
    assert alive(refs) == 0
    assert len(weakref.finalize._registry) == others - 1  # only this finalizer ran


def test_weakref_finalize_fixed_twin_passes(baseline, user_module):
    module = user_module("finalizers_fixed", FINALIZE_RUNNER)
    runner = module.Runner()
    runner.shutdown_fixed()
    result, _ = audit_with_plan(runner, baseline)
    assert result.held_bytes == 0


HOOK_RUNNER = """
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    class Runner:
        def __init__(self, keep_handle):
            model = torch.nn.Linear(8, 8)
            self.optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
            scale = torch.ones(3079)

            def rescale(optimizer, args, kwargs):
                return scale.sum()

            handle = register_optimizer_step_post_hook(rescale)
            if keep_handle:
                self.hook = handle

        def shutdown(self):
            del self.optimizer  # the seed mistake: the global hook (and its tensor) stays

        def shutdown_fixed(self):
            self.hook.remove()
            del self.optimizer, self.hook
"""


def _hook_refs() -> list[StorageWeakRef]:
    from torch.optim.optimizer import _global_optimizer_post_hooks

    hook = list(_global_optimizer_post_hooks.values())[-1]
    return [StorageWeakRef(hook.__closure__[0].cell_contents.untyped_storage())]


@pytest.mark.parametrize("keep_handle", [True, False])
def test_global_optimizer_hook_is_removed_by_its_handle(baseline, user_module, keep_handle):
    from torch.optim.optimizer import _global_optimizer_post_hooks

    before = len(_global_optimizer_post_hooks)
    module = user_module("optimizer_hooks", HOOK_RUNNER)
    runner = module.Runner(keep_handle)
    refs = _hook_refs()
    runner.shutdown()
    result, plan = audit_with_plan(runner, baseline)
    holders = [o for o in result.owners if o.reachable_bytes]
    registry = "torch.optim.optimizer._global_optimizer_post_hooks"
    # The runner's own handle, where it kept one, is the holder a person acts on; else the
    # hook in torch's registry, with the handle that registering it returned as the fix.
    assert [o.path for o in holders] == (
        ["runner.hook"] if keep_handle else [f"hook Runner.__init__.<locals>.rescale in {registry}"]
    )
    assert holders[0].fix.startswith("self.hook.remove()" if keep_handle else "handle.remove()")
    assert registry in (holders[0].detail or "")
    no_registry_is_cleared(result)

    step_for(plan, holders[0].path).release.action()
    assert alive(refs) == 0
    assert len(_global_optimizer_post_hooks) == before


def test_global_optimizer_hook_fixed_twin_passes(baseline, user_module):
    module = user_module("optimizer_hooks_fixed", HOOK_RUNNER)
    runner = module.Runner(True)
    runner.shutdown_fixed()
    result, _ = audit_with_plan(runner, baseline)
    assert result.held_bytes == 0


class _Worker(threading.Thread):
    """A worker whose frames (two of them) and own attribute hold tensors."""

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.staging = torch.zeros(4099)
        self.refs: list[StorageWeakRef] = [StorageWeakRef(self.staging.untyped_storage())]

    def run(self) -> None:
        batch = torch.zeros(4091)
        self.refs.append(StorageWeakRef(batch.untyped_storage()))
        self._serve(batch)

    def _serve(self, batch: torch.Tensor) -> None:
        scratch = torch.zeros(4093)
        self.refs.append(StorageWeakRef(scratch.untyped_storage()))
        self.ready.set()
        self.stop.wait(30)


THREAD_LOCAL_RUNNER = """
    import threading
    import torch

    SCRATCH = threading.local()

    class Runner:
        def run(self):
            SCRATCH.workspace = torch.zeros(5003)
            SCRATCH.calls = 3  # a number pins nothing: not part of the fix

        def shutdown(self):
            pass
"""


def test_thread_local_attributes_are_deleted_never_the_local(baseline, user_module):
    module = user_module("scratch_runner", THREAD_LOCAL_RUNNER)
    runner = module.Runner()
    runner.run()
    refs = [StorageWeakRef(module.SCRATCH.workspace.untyped_storage())]
    runner.shutdown()
    result, plan = audit_with_plan(runner, baseline)
    holders = [o for o in result.owners if o.reachable_bytes]
    name = module.__name__
    assert [(o.path, o.fix) for o in holders] == [(f"{name}.SCRATCH", f"del {name}.SCRATCH.workspace")]

    step_for(plan, f"{name}.SCRATCH").release.action()
    assert alive(refs) == 0
    assert module.SCRATCH.calls == 3  # the local and its other attributes are left for their users


def test_another_threads_slot_is_not_deleted_from_this_thread(baseline, user_module):
    """Only the thread that set a threading.local attribute can delete it: a slot that belongs
    to a live worker gets no `del` line run from the main thread."""
    module = user_module("worker_scratch", THREAD_LOCAL_RUNNER)
    runner, done, stop = module.Runner(), threading.Event(), threading.Event()

    def serve():
        runner.run()
        done.set()
        stop.wait(30)

    worker = threading.Thread(target=serve, name="scratch-worker", daemon=True)
    worker.start()
    try:
        assert done.wait(10)
        result, _ = audit_with_plan(runner, baseline)
    finally:
        stop.set()
        worker.join(10)
    fixes = [o.fix or "" for o in result.owners if o.reachable_bytes]
    assert fixes and not any(fix.startswith(f"del {module.__name__}.SCRATCH.") for fix in fixes), fixes


def test_a_thread_is_one_holder_never_threading_active(baseline):
    worker = _Worker("worker-1")
    worker.start()
    try:
        assert worker.ready.wait(10)
        result, plan = audit_with_plan(None, baseline)
    finally:
        worker.stop.set()
        worker.join()
    holders = [o for o in result.owners if o.reachable_bytes]
    assert [o.path for o in holders] == ["thread 'worker-1'"]
    assert holders[0].reachable_bytes == (4099 + 4091 + 4093) * 4
    assert holders[0].fix.startswith("# stop thread 'worker-1' and join it")
    assert step_for(plan, "thread 'worker-1'").release.not_tried == LIVE_FRAME
    no_registry_is_cleared(result)
    refs = worker.refs
    del worker
    assert alive(refs) == 0  # the truth: stopping and joining the thread (and dropping it) frees all


COMPILE_RUNNER = """
    import torch

    class Runner:
        def __init__(self, backend):
            self.model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU()).eval()
            self.compiled = torch.compile(self.model, backend=backend)

        def step(self):
            with torch.no_grad():
                return self.compiled(torch.randn(2, 64))

        def shutdown(self):
            del self.model, self.compiled
"""


def test_torch_compile_aot_eager_state_is_one_holder_and_reset_is_its_release(baseline, user_module):
    from leakcheck.engine import torch_internals
    from leakcheck.recognisers.torch_compile import LABEL

    module = user_module("compiled_runner", COMPILE_RUNNER)
    runner = module.Runner("aot_eager")
    runner.step()
    refs = [StorageWeakRef(p.untyped_storage()) for p in runner.model.parameters()]
    runner.shutdown()
    result, plan = audit_with_plan(runner, baseline)
    # The truth on torch 2.13: dynamo keeps no weights of a compiled module once it is dropped.
    assert alive(refs) == 0
    assert result.held_bytes == 0
    compiled = [o for o in result.owners if o.path == LABEL]
    assert len(compiled) <= 1  # dynamo's roots (generated globals, its modules) are one holder
    no_registry_is_cleared(result)
    # Its release is exactly torch._dynamo.reset(): after it, dynamo has compiled nothing.
    assert torch_internals.dynamo_has_compiled()
    remedy = next(r.cpp_remedy() for r in registered() if r.name == "torch.compile")
    assert (remedy.label, remedy.fix) == (LABEL, "torch._dynamo.reset()")
    remedy.release.action()
    assert not torch_internals.dynamo_has_compiled()


def test_storages_inductor_code_allocated_are_torch_compile_state(user_module):
    """On CUDA, CUDA-graph trees keep outputs of inductor's generated `call` (int64 counters,
    seen on an H200) from C++: with no named holder, they belong to torch.compile's state and
    its reset(), as one holder, not one untracked pseudo-holder each. Sites from the allocator
    are recorded data here (CPU); the recogniser is the real one."""
    import numpy as np

    from leakcheck.engine.inventory import TENSOR, Item, known_cpp_states
    from leakcheck.engine.owners import Holder, Ownership, one_per_release
    from leakcheck.engine.roots import Handle
    from leakcheck.recognisers.torch_compile import LABEL

    module = user_module("compiled_for_sites", COMPILE_RUNNER)
    runner = module.Runner("eager")
    runner.step()  # dynamo has compiled something: its state is in use
    generated = "/tmp/torchinductor_root/hv/chvdpzaa5f44grqtqq.py:139 in call"
    items = [
        Item(kind=TENSOR, device="cuda:0", address=0x7F00, nbytes=8, allocated_at=generated),
        Item(kind=TENSOR, device="cuda:0", address=0x7F40, nbytes=8, allocated_at="runner.py:12 in step"),
        Item(kind=TENSOR, device="cuda:0", address=0x7F80, nbytes=8, allocated_at=generated),
    ]
    states = known_cpp_states(items, None)
    assert sorted(states) == [0, 2] and states[0] is states[2]
    assert (states[0].path, states[0].fix) == (LABEL, "torch._dynamo.reset()")

    # The heap's torch.compile holder and this one are the same release: one row, both storages.
    heap = Holder(Handle(LABEL, "closure", None, fix="torch._dynamo.reset()"), np.array([1]), 1)
    ownership = Ownership(
        holders=[heap, Holder(states[0], np.array([0, 2]), 2)],
        owner_sets=[[1], [0], [1]],
        example=[None, None, None],
    )
    one_per_release(ownership)
    assert [h.handle.kind for h in ownership.holders] == ["closure"]
    assert ownership.holders[0].storages.tolist() == [0, 1, 2]
    assert ownership.owner_sets == [[0], [0], [0]]
    torch._dynamo.reset()
    assert known_cpp_states(items, None) == {}  # nothing compiled: no state to charge


def test_inductor_frozen_constants_are_one_holder_with_no_safe_line(baseline, user_module):
    import torch._inductor.config as inductor_config

    from leakcheck.recognisers.torch_compile import GENERATED_LABEL, LABEL

    module = user_module("frozen_runner", COMPILE_RUNNER)
    previous = inductor_config.freezing
    inductor_config.freezing = True
    try:
        runner = module.Runner("inductor")
        runner.step()
        runner.shutdown()
        result, plan = audit_with_plan(runner, baseline)
    finally:
        inductor_config.freezing = previous
    holders = {o.path: o for o in result.owners if o.reachable_bytes}
    # Two holders, whatever dynamo's and inductor's roots are: the compiled graph (dynamo's
    # generated `__compiled_fn_*` global keeps the original weights) and inductor's
    # generated module (the weights freezing folded in, MKLDNN-packed).
    assert set(holders) == {GENERATED_LABEL, LABEL}
    assert sum(o.reachable_bytes for o in holders.values()) >= result.held_bytes  # they share the bias
    assert holders[GENERATED_LABEL].retained_bytes > 64 * 64 * 4
    assert holders[GENERATED_LABEL].fix.startswith("# no public release")
    assert step_for(plan, GENERATED_LABEL).release.not_tried == LIBRARY_STATE
    assert holders[LABEL].fix == "torch._dynamo.reset()"
    no_registry_is_cleared(result)
    # The torch.compile step is exactly torch._dynamo.reset(): dynamo's generated globals go.
    import torch._dynamo.external_utils as external_utils

    step_for(plan, LABEL).release.action()
    assert not [name for name in vars(external_utils) if name.startswith("__compiled_fn")]
    # The truth behind "no safe line": torch._dynamo.reset() leaves the constants alive.
    generated = [name for name in sys.modules if name.startswith("torch._inductor.runtime.compile_tasks.")]
    constants = [
        weakref.ref(value)
        for name in generated
        for value in vars(sys.modules[name]).values()
        if isinstance(value, torch.Tensor)
    ]
    assert constants
    torch._dynamo.reset()
    gc.collect()
    assert all(ref() is not None for ref in constants)
    for name in generated:  # leave no generated module behind for other tests' audits
        del sys.modules[name]


def test_torchscript_cpp_remedy_says_no_safe_line(baseline):
    from leakcheck.recognisers.torchscript import LABEL

    model = torch.nn.Sequential(torch.nn.Linear(16, 16)).eval()
    frozen = torch.jit.freeze(torch.jit.script(model))
    frozen(torch.randn(1, 16))
    remedy = next(r.cpp_remedy() for r in registered() if r.name == "torchscript")
    assert remedy.label == LABEL
    assert remedy.release.not_tried == CPP_STATE
    assert remedy.fix.startswith("# no safe release")


def test_lru_cache_remedy_clears_the_cache(user_module):
    module = user_module(
        "rope_cache",
        """
        import functools
        import torch

        @functools.lru_cache(maxsize=None)
        def cos_sin(n):
            return torch.zeros(n)
        """,
    )
    refs = [StorageWeakRef(module.cos_sin(4111).untyped_storage())]
    recogniser = next(r for r in registered() if r.name == "functools.lru_cache")
    remedy = recogniser.object_remedy(module.cos_sin, f"{module.__name__}.cos_sin")
    assert remedy.fix == f"{module.__name__}.cos_sin.cache_clear()"
    remedy.release.action()
    assert alive(refs) == 0
    assert recogniser.object_remedy(print, "print") is None


def test_accelerate_free_memory_releases_what_prepare_kept(baseline):
    from accelerate import Accelerator

    class Runner:
        pass

    runner = Runner()
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    accelerator.prepare(model, optimizer)
    refs = [StorageWeakRef(p.untyped_storage()) for p in model.parameters()]
    runner.accelerator = accelerator
    del accelerator, model, optimizer
    result, plan = audit_with_plan(runner, baseline)
    owner = result.owner("runner.accelerator")
    assert owner.retained_bytes == (64 * 64 + 64) * 4
    assert owner.fix == "self.accelerator.free_memory(); del self.accelerator"
    release = step_for(plan, "runner.accelerator").release
    release.action()
    assert alive(refs) == 0
    assert not hasattr(runner, "accelerator") or release.caveat  # the del ran too, where known


def test_lightning_trainer_is_detached_from_the_module_it_trained(baseline):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 1)

        def training_step(self, batch, index):
            return self.layer(batch[0]).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    class Runner:
        pass

    runner = Runner()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 32)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    module = Tiny()
    trainer.fit(module, data)
    momentum = [StorageWeakRef(s["momentum_buffer"].untyped_storage()) for s in trainer.optimizers[0].state.values()]
    runner.trainer, runner.model = trainer, module
    del trainer, module, data
    result, plan = audit_with_plan(runner, baseline)
    owner = result.owner("runner.trainer")
    assert "Lightning Trainer" in owner.detail
    assert owner.fix.startswith("self.trainer.lightning_module.trainer = None")
    step_for(plan, "runner.trainer").release.action()
    if hasattr(runner, "trainer"):  # the holder's own `del` had no executable form: do it as written
        del runner.trainer
    assert alive(momentum) == 0  # runner.model is kept, and no longer pins the optimizer state
    assert runner.model._trainer is None


def test_transformers_cache_is_described_and_dropped(baseline):
    from transformers.cache_utils import DynamicCache

    class Runner:
        pass

    runner = Runner()
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8), 0)
    refs = [StorageWeakRef(cache.layers[0].keys.untyped_storage())]
    runner.past_key_values = cache
    del cache
    result, _ = audit_with_plan(runner, baseline)
    owner = result.owner("runner.past_key_values")
    assert owner.fix == "del self.past_key_values"
    assert "past_key_values" in owner.detail
    del runner.past_key_values
    assert alive(refs) == 0


class _Broken(Recogniser):
    name = "broken"

    def object_remedy(self, obj, path):
        raise RuntimeError("plugin bug")

    def root_remedy(self, path, module):
        raise RuntimeError("plugin bug")


def test_a_failing_plugin_is_a_note_and_a_raising_one_is_ignored(monkeypatch, baseline, user_module):
    import importlib.metadata

    import leakcheck.recognisers as recognisers

    class Point:
        name, value = "bad", "nowhere:make"

        def load(self):
            raise ImportError("no module named nowhere")

    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [Point()] if group == recognisers.ENTRY_POINT_GROUP else []
    )
    found = recognisers.registered(refresh=True)
    try:
        assert [r.name for r in found][:2] == ["torch.compile", "torchscript"]
        assert recognisers.load_notes == [
            "recogniser plugin 'bad' (nowhere:make) not loaded: ImportError: no module named nowhere"
        ]
    finally:
        monkeypatch.undo()
        recognisers.registered(refresh=True)
    # A recogniser that raises is skipped: the audit still names the logging handler.
    monkeypatch.setattr(recognisers, "_cache", [_Broken(), *recognisers.registered()])
    module = user_module("logging_records_plugin", LOGGING_RUNNER)
    runner = module.Runner()
    runner.step()
    runner.shutdown()
    result, _ = audit_with_plan(runner, baseline)
    assert [o.path for o in result.owners if o.reachable_bytes] == [f"{module.__name__}.logger.handlers[0]"]
