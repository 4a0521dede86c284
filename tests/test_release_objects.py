"""The object to release: user code vs library, dominators of library roots, threads.

Real heaps, real modules: stdlib registries (copyreg, threading), a module written to a
temporary folder (user code), and the real audit.
"""

from __future__ import annotations

import copyreg
import gc
import threading

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from leakcheck.engine import libraries
from leakcheck.engine.audit import audit_watching
from leakcheck.engine.libraries import is_library_module, mark_user_code, module_of_path
from leakcheck.engine.release import LIBRARY_STATE, ReleasePlan


def _audit(runner, baseline):
    gc.collect()
    plan = ReleasePlan()
    result, _ = audit_watching(runner, "cpu", baseline, caller_frames=False, plan=plan)
    return result, plan


def test_stdlib_site_packages_and_builtins_are_libraries_user_folders_are_not(user_module):
    module = user_module("plain_user_code", "VALUE = 1\n")
    assert is_library_module("logging.handlers")
    assert is_library_module("torch.optim.optimizer")
    assert is_library_module("sys")  # built in
    assert not is_library_module(module.__name__)
    assert not is_library_module("leakcheck_no_such_module_anywhere")  # no file: generated, user


def test_the_runners_own_package_is_user_code_even_when_installed():
    import accelerate.accelerator  # noqa: F401 - classification reads imported modules' files
    import pytorch_lightning.core  # noqa: F401

    assert is_library_module("accelerate.accelerator")
    assert not is_library_module("accelerate.accelerator", frozenset({"accelerate"}))
    mark_user_code("pytorch_lightning.trainer")
    try:
        assert not is_library_module("pytorch_lightning.core")
    finally:
        libraries._user_packages.discard("pytorch_lightning")
    assert is_library_module("pytorch_lightning.core")


def test_module_of_a_root_path():
    assert module_of_path("logging.Logger.manager") == "logging"
    assert module_of_path("torch.optim.optimizer._global_optimizer_post_hooks") == "torch.optim.optimizer"
    assert module_of_path("logging.__dict__['x']") == "logging"
    assert module_of_path("<frame f at a.py:1>.f_locals['x']") is None


class _Weights:
    def __init__(self):
        self.table = torch.zeros(5003)


def test_user_roots_sharing_a_model_stay_an_all_must_go_set(baseline):
    class Runner:
        pass

    runner = Runner()
    shared = _Weights()
    runner.model_state, runner.speculator = shared, shared
    del shared
    result, _ = _audit(runner, baseline)
    assert sorted(o.path for o in result.owners if o.reachable_bytes) == ["runner.model_state", "runner.speculator"]
    assert [sorted(g.owners) for g in result.shared] == [["runner.model_state", "runner.speculator"]]


class _Packed:
    pass


def test_a_library_registry_with_no_recogniser_names_the_object_and_never_clears(baseline, user_module):
    module = user_module(
        "reducers",
        """
        import torch

        def make_reducer():
            codebook = torch.zeros(5009)

            def reduce_packed(obj):
                return (object, (), codebook)

            return reduce_packed
        """,
    )
    reducer = module.make_reducer()
    refs = [StorageWeakRef(reducer.__closure__[0].cell_contents.untyped_storage())]
    copyreg.pickle(_Packed, reducer)
    del reducer
    try:
        result, plan = _audit(None, baseline)
        holders = [o for o in result.owners if o.reachable_bytes]
        assert len(holders) == 1
        owner = holders[0]
        assert owner.path.startswith("copyreg.dispatch_table[")
        assert owner.fix == f"# release {owner.path} (held by copyreg.dispatch_table)"
        assert "clear()" not in owner.fix and "= None" not in owner.fix
        step = next(s for s in plan.steps if s.path == owner.path)
        assert step.release.not_tried == LIBRARY_STATE
        assert gc.collect() >= 0 and sum(not r.expired() for r in refs) == 1  # nothing ran
    finally:
        del copyreg.dispatch_table[_Packed]
    gc.collect()
    assert sum(not r.expired() for r in refs) == 0  # the truth: the registry entry was the holder


def test_a_thread_the_runner_keeps_is_one_holder_plus_the_runners_reference(baseline):
    stop, ready = threading.Event(), threading.Event()

    class Worker(threading.Thread):
        def __init__(self):
            super().__init__(name="prefetch-1", daemon=True)
            self.queue = [torch.zeros(5011)]

        def run(self):
            pinned = torch.zeros(5021)  # noqa: F841 - held by this live frame
            ready.set()
            stop.wait(30)

    class Runner:
        pass

    runner = Runner()
    runner.worker = Worker()
    runner.worker.start()
    try:
        assert ready.wait(10)
        result, plan = _audit(runner, baseline)
    finally:
        stop.set()
        runner.worker.join()
    paths = sorted(o.path for o in result.owners if o.reachable_bytes)
    assert paths == ["runner.worker", "thread 'prefetch-1'"]
    thread = result.owner("thread 'prefetch-1'")
    assert thread.fix == "# stop thread 'prefetch-1' and join it: signal it to finish, then self.worker.join()"
    assert thread.reachable_bytes == (5011 + 5021) * 4
    assert not any(o.path.startswith("threading.") for o in result.owners)
