"""Load, warm, shut down and collect a runner in this process, measuring memory at each phase.

Phases, in order: the factory's module is imported (under the load phase's limit, so what
it creates at import belongs to the baseline and is reported apart as `import_time`),
`baseline` (device initialised, before the factory), `loaded`, `warmed`,
`shutdown` (right after `shutdown()` returns), then the heap audit, then `collected`
(after our own `gc.collect()` and `torch.cuda.empty_cache()`).

A runner that raises does not end the run: the error is kept as text (never the exception,
whose traceback would pin the runner's frames) and the remaining phases still run, because
the memory a failed load or warm-up leaves behind is exactly what the user needs to see.
The same holds for a call that runs out of time (`timeout:`), calls `os._exit()`, or raises
any BaseException but KeyboardInterrupt: each runner call goes through `limits.call_runner`.
"""

from __future__ import annotations

import difflib
import gc
import importlib
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from leakcheck.config import Config, ConfigError
from leakcheck.distributed.group import join_launched_group, rank_arguments
from leakcheck.engine import torch_internals
from leakcheck.engine.libraries import mark_user_code
from leakcheck.engine.allocator import HISTORY_ENTRIES, AllocatorState, start_history, stop_history
from leakcheck.engine.audit import audit_watching
from leakcheck.engine.survivors import CollectableWatch, storage_key
from leakcheck.engine.import_time import import_time, loaded_modules
from leakcheck.engine.reconcile import cycle_split, pinned_by_leaks, reconcile
from leakcheck.engine.release import ReleasePlan
from leakcheck.engine.seen_storages import SeenStorages, new_seen, take_snapshot
from leakcheck.engine.tensors import take_baseline
from leakcheck.lifecycle.errors import LeakcheckStop, RunnerExit, describe, type_name
from leakcheck.lifecycle.limits import (
    Abandon,
    RunnerCall,
    call_runner,
    exit_attempts,
    exit_attempts_since,
    exits_contained,
)
from leakcheck.lifecycle.record import Lifecycle
from leakcheck.lifecycle.source_line import method_source
from leakcheck.lifecycle.stops import raise_if_requested
from leakcheck.outputs import snapshot_path, write_atomic
from leakcheck.probes import MemoryProbes
from leakcheck.report.model import CYCLE, FREED_BY_COLLECTOR, Audit, Reconciliation, RunError, SharedHold, Storage

__all__ = ["Lifecycle", "load_factory", "resolve_device", "run_lifecycle"]

Progress = Callable[[str], None]


def resolve_device(requested: str, where: str) -> str:
    if requested == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{where}: device: {requested} but torch.cuda.is_available() is False "
                f"(torch {torch.__version__}); use device: cpu or auto"
            )
        index = int(requested.split(":")[1]) if ":" in requested else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{where}: device: {requested} but only {torch.cuda.device_count()} CUDA device(s) exist")
        return f"cuda:{index}"
    return "cpu"


def _initialise(device: str) -> None:
    """Create the CUDA context before baseline, so its cost is not charged to the runner, and
    give back what the allocator caches, so earlier work in this process does not hide growth."""
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
        torch.cuda.init()
        torch.cuda.synchronize(device)
        gc.collect()
        torch.cuda.empty_cache()


def load_factory(config: Config) -> Callable[..., Any]:
    """Import `module:callable` with the config's folder first on sys.path."""
    spec = config.runner.factory
    module_name, _, attr_path = spec.partition(":")
    folder = config.import_folder
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    where = config.where("runner", "factory")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{where}: runner.factory: no module named {exc.name!r} (looked in {folder} and sys.path)"
            ) from None
        raise
    # The factory's package is the user's code even when pip-installed (vllm in site-packages):
    # its globals are holders to release, not a library's registries to leave alone.
    mark_user_code(module_name)
    target: Any = module
    for part in attr_path.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            hint = difflib.get_close_matches(part, names, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{where}: runner.factory: {module_name} has no attribute {attr_path!r}{suggestion}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{where}: runner.factory: {spec} is a {type(target).__name__}, not a callable")
    return target


def _check_methods(config: Config, runner: object) -> None:
    """A misspelt warm-up or shutdown method is a config error, found before anything runs."""
    wanted: list[tuple[tuple[Any, ...], str]] = [(("runner", "shutdown"), config.runner.shutdown)]
    wanted += [(("warmup", i, "call"), call.call) for i, call in enumerate(config.warmup)]
    for loc, name in wanted:
        if not callable(getattr(runner, name, None)):
            methods = [n for n in dir(runner) if callable(getattr(runner, n, None)) and not n.startswith("__")]
            hint = difflib.get_close_matches(name, methods, n=1)
            suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
            key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
            raise ConfigError(
                f"{config.where(*loc)}: {key}: {type(runner).__name__} has no method {name!r}{suggestion}"
            )
    for index, call in enumerate(config.warmup):
        _check_arguments(
            getattr(runner, call.call),
            call.args,
            config.where("warmup", index, "args"),
            f"warmup[{index}].args",
            call.call,
        )


def _check_arguments(function: Callable[..., Any], kwargs: dict[str, Any], where: str, key: str, name: str) -> None:
    """Arguments that cannot bind are the config's fault: say so before calling anything."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {key}: {name}{signature} cannot take these arguments: {exc}") from None


def _factory_kwargs(factory: Callable[..., Any], args: dict[str, Any], device: str) -> dict[str, Any]:
    """Pass the audited device to factories that take a `device` argument, unless args set it."""
    kwargs = dict(args)
    if "device" not in kwargs:
        try:
            takes_device = "device" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            takes_device = False
        if takes_device:
            kwargs["device"] = device
    kwargs.update(rank_arguments(factory, kwargs))  # a rank of `--nproc`: rank and world_size
    return kwargs


def run_lifecycle(
    config: Config,
    progress: Progress | None = None,
    *,
    into: Lifecycle | None = None,
    on_abandon: Abandon | None = None,
    prove: bool = False,
    snapshot: Path | None = None,
) -> Lifecycle:
    """Run every phase of `config` (`cycles` times) and audit what each shutdown() left behind.

    Raises ConfigError for problems the user fixes in the config; runner exceptions, time
    limits and a failing audit are recorded in `Lifecycle.error` instead, and the remaining
    phases still run. KeyboardInterrupt and leakcheck's stops (SIGTERM) propagate: `into`,
    when given, then holds everything measured so far. Every shut-down runner stays alive
    until the end, as the worker that owns it would keep it: `shutdown()` must free memory
    while the object still exists.

    on_abandon: called from the watchdog thread when a runner call ignores its time limit
        (the Lifecycle already holds the error); the CLI writes the report and ends the process.
    prove: after everything is measured, run the last audit's suggested lines and measure
        what each frees (see `lifecycle/prove.py`). It mutates the runner and the modules it
        names, so it is off unless asked for (the CLI asks by default).
    snapshot: `--snapshot`: on CUDA, record every allocator event from before `baseline` and
        write the allocator's snapshot at `shutdown` and at `collected` (outputs.snapshot_path);
        on the CPU, a note.
    """
    say = progress or (lambda _message: None)
    result = into if into is not None else Lifecycle(device=config.device)
    with exits_contained():
        exits_at_start = exit_attempts()
        result.enter("starting")
        device = resolve_device(config.device, config.where("device"))
        result.set_device(device)
        on_cuda = device.startswith("cuda")
        # Plain str: torch.__version__ is a TorchVersion, which the report's JSON does not know.
        versions = {"python": sys.version.split()[0], "torch": str(torch.__version__), "cuda": torch.version.cuda}
        for name, value in versions.items():
            result.set_environment(name, value)
        say(f"initialising {device}")
        _initialise(device)
        for key, number in join_launched_group(device, config.timeout.load, result.note).items():
            result.set_environment(key, number)  # a rank of `--nproc`: the default group, before baseline
        probes = MemoryProbes.for_device(device)
        if probes.nvml and probes.nvml.name:
            result.set_environment("gpu", probes.nvml.name)
        if on_cuda and config.history:
            why = start_history()
            if why:
                result.note(why)
        elif on_cuda and snapshot is None:
            result.note("allocation history is off (history: false): no allocation sites")
        snapshot = _start_snapshots(snapshot, on_cuda, result)
        abandon = _abandoner(result, probes, on_abandon)
        before_import, modules = take_baseline(device), loaded_modules()
        imported = _import_runner(config, result, say, abandon)
        result.add_sample(probes.sample("baseline"))

        runners: list[object] = []
        states: list[AllocatorState] = []  # the allocator at each `collected`, on CUDA
        # Filled by every audit: its weak references tell what died in our collection, and
        # its steps are what --prove runs.
        plan = ReleasePlan()
        for cycle in range(1, config.cycles + 1):
            result.enter("baseline", cycle)
            baseline = take_baseline(device)
            seen = new_seen(device, baseline)
            if cycle == 1:
                result.set_import_time(import_time(before_import, baseline, modules))
                del before_import
            runner = _one_cycle(config, device, cycle, probes, result, say, abandon, imported, seen=seen)
            _write_snapshot(snapshot, "shutdown", cycle, result, say)
            if runner is not None:
                runners.append(runner)
                result.set_environment("runner", type_name(type(runner)))
            result.enter("audit", cycle)
            say("auditing the heap")
            before = probes.sample("audit:before", cycle)
            found, watch = _audit(runner, device, baseline, cycle, result, say, plan, seen=seen)
            result.set_audit_memory([before, probes.sample("audit:after", cycle)])
            if found is not None:
                result.add_audit(found)
            del found
            result.enter("collect", cycle)
            say("collecting")
            gc.collect()
            if on_cuda:
                torch.cuda.empty_cache()
            result.add_sample(probes.sample("collected", cycle))
            _write_snapshot(snapshot, "collected", cycle, result, say)
            _died_in_collection(plan, result)
            _recheck_collected(watch, runner, device, baseline, cycle, result, say, plan, seen=seen)
            del runner, baseline, watch, seen
            if on_cuda:
                states.append(AllocatorState.capture(device))
                result.add_pinned_segments(pinned_by_leaks(states[-1], result.storages()))
            _stray_exits(result, exits_at_start)
            if result.error is not None:
                break

        if on_cuda:
            result.enter("reconcile")
            say("reconciling with the allocator")
            reconciliation, workspaces = _reconcile(device, result)
            result.set_reconciliation(reconciliation)
            _split_cycles(states, workspaces, result)
            if config.history or snapshot is not None:
                stop_history()
        if prove:
            _prove(plan, config, device, probes, result, say)
        del plan
        for note in probes.all_notes():
            result.note(note)
        del runners, states
    return result


def _start_snapshots(path: Path | None, on_cuda: bool, result: Lifecycle) -> Path | None:
    """`--snapshot`: record the allocator's events from here, before `baseline`; the path to
    write to, or None (with a note) where no snapshot can be taken."""
    if path is None:
        return None
    if not on_cuda:
        result.note("--snapshot: allocator snapshots need CUDA; this run is on the CPU, so none was written")
        return None
    why = torch_internals.record_allocator_history(HISTORY_ENTRIES, events=True)
    if why:
        result.note(f"--snapshot: {why}; no snapshot was written")
        return None
    return path


def _write_snapshot(path: Path | None, phase: str, cycle: int, result: Lifecycle, say: Progress) -> None:
    """The allocator's snapshot and history, as memory_viz opens it; read on the host, so it
    allocates nothing on the device. Taken outside the heap audit, which it cannot disturb:
    the snapshot's objects are gone before the audit starts."""
    if path is None:
        return
    target = snapshot_path(path, phase, cycle)
    say(f"writing the allocator snapshot at {phase}")
    started = time.perf_counter()
    try:
        write_atomic(target, torch_internals.allocator_snapshot_pickle())
    except Exception as exc:  # noqa: BLE001 - a snapshot lost is a note, never the run
        result.note(f"--snapshot: could not write {target}: {type(exc).__name__}: {exc}")
        return
    result.set_timing("snapshot_s", result.timings.get("snapshot_s", 0.0) + time.perf_counter() - started)
    when = phase + (f" of cycle {cycle}" if cycle > 1 else "")
    result.note(f"--snapshot: the allocator at {when} is in {target} (open it at https://pytorch.org/memory_viz)")


@dataclass
class Imported:
    """The import of the factory's module, done before `baseline`: its error (the load
    phase's, as when the factory's own call fails) and the seconds it took of that phase."""

    error: RunError | None = None
    seconds: float = 0.0


def _import_runner(config: Config, result: Lifecycle, say: Progress, abandon: Abandon | None) -> Imported:
    """Import the factory's module now, so what its import creates is in the baseline.

    Module code is runner code: it runs under the load phase's limit (the factory's call
    gets what is left of it), and its exceptions are the load phase's error of cycle 1.
    A module that cannot be found is still a ConfigError, raised before anything loads.
    """
    limit = config.timeout.load
    result.enter("load", 1, limit)
    say(f"importing {config.runner.factory.partition(':')[0]}")
    started = time.perf_counter()
    call = RunnerCall("load", f"the factory {config.runner.factory}", 1, limit, abandon)
    outcome = call_runner(call, lambda: load_factory(config))
    raise_if_requested()
    imported = Imported(outcome.error, time.perf_counter() - started)
    del outcome
    result.set_timing("import_s", imported.seconds)
    return imported


def _split_cycles(states: list[AllocatorState], workspaces: set[int] | None, result: Lifecycle) -> None:
    """Each later cycle's NVML growth by category, from the allocator at each `collected`.

    Done after the last phase, when clearing torch's workspaces has told which blocks are
    workspaces (they live until cleared, so one told now was one at every cycle it was alive).
    """
    collected = [m for m in result.memory if m.phase == "collected"]
    for index in range(1, min(len(states), len(result.audits), len(collected))):
        start, end = collected[index - 1].nvml_process_bytes, collected[index].nvml_process_bytes
        growth = None if start is None or end is None else end - start
        earlier = [s for audit in result.audits[:index] for s in audit.storages]
        now = earlier + list(result.audits[index].storages)
        categories, share = cycle_split(states[index - 1], states[index], earlier, now, growth, workspaces)
        result.set_cycle_categories(index + 1, categories, share)


def _abandoner(result: Lifecycle, probes: MemoryProbes, on_abandon: Abandon | None) -> Abandon | None:
    """What the watchdog does with a runner call that ignored its limit: record the error and
    the memory at that moment, then hand over to the caller (which ends the process)."""
    if on_abandon is None:
        return None
    sample_names = {"load": "loaded", "warmup": "warmed", "shutdown": "shutdown"}

    def abandon(error: RunError) -> None:
        result.fail(error)
        try:
            result.add_sample(probes.sample(sample_names.get(error.phase, error.phase), error.cycle))
        except Exception:  # the report matters more than one more sample
            pass
        on_abandon(error)

    return abandon


def _audit(
    runner: object | None,
    device: str,
    baseline: Any,
    cycle: int,
    result: Lifecycle,
    say: Progress,
    plan: ReleasePlan | None = None,
    seen: SeenStorages | None = None,
) -> tuple[Audit | None, CollectableWatch | None]:
    """The heap audit; if it fails, the run keeps what it measured and reports the failure.
    `plan`, when given, is refilled with this audit's release plan (for `--prove`); `seen`:
    storages watched since `loaded`, so those only C++ still holds are counted."""
    try:
        return audit_watching(runner, device, baseline, caller_frames=False, progress=say, plan=plan, seen=seen)
    except (KeyboardInterrupt, LeakcheckStop):
        raise
    except BaseException as exc:  # noqa: B036 - a RecursionError or a RunnerExit from a __del__ too
        result.fail(describe("audit", exc, cycle, "the heap audit"))
        return None, None


def _recheck_collected(
    watch: CollectableWatch | None,
    runner: object | None,
    device: str,
    baseline: Any,
    cycle: int,
    result: Lifecycle,
    say: Progress,
    plan: ReleasePlan | None = None,
    seen: SeenStorages | None = None,
) -> None:
    """Storages the audit called collectable must really have died in our gc.collect().

    A finalizer run by that collection can resurrect what it frees (store `self.weights` in
    a global); counting those bytes as freed would pass a leak. When any survived, the cycle
    is audited again, now that the collection is over, and that audit replaces the first:
    it names where the survivors went, and counts them.
    """
    survivors = watch.survivors() if watch is not None else set()
    if not survivors or result.audit is None:
        return
    first = result.audit
    kept = [s for s in first.storages if storage_key(s) in survivors]
    say("auditing again: storages survived the collection")
    again, _ = _audit(runner, device, baseline, cycle, result, say, plan, seen=seen)
    if again is None:
        return
    for storage in again.storages:
        if storage.collectable and storage_key(storage) in survivors:
            # Collectable again after surviving a collection: it will survive the next one too.
            storage.collectable = False
            again.cycle_bytes -= storage.nbytes
            again.held_bytes += storage.nbytes
    again.notes.append(
        f"{len(kept)} storage(s) ({sum(s.nbytes for s in kept):,} bytes) that only garbage cycles held survived "
        "leakcheck's gc.collect(): a finalizer (__del__) kept them alive, so they count as leaked; this audit was "
        "taken after the collection, to name who holds them now"
    )
    result.add_audit(again, replaces_last=True)


def _died_in_collection(plan: ReleasePlan, result: Lifecycle) -> None:
    """Counted storages that died in leakcheck's own gc.collect() were garbage: not leaked.

    The audit proves garbage from the heap graph alone; a cycle that runs through an object
    whose references the graph cannot see (a C++ object owned by a garbage Python object,
    such as TorchScript's resolution callbacks) looks held from outside, and a correct
    shutdown() would fail. Their death in the collection is the measurement that settles
    it: they are reported as collectable, with the holders that held nothing else.
    """
    audit = result.audit
    if audit is None or not len(plan.watch):
        return
    alive = plan.watch.survivors()
    watched = plan.watch.alive
    died = [
        s
        for s in audit.storages
        if not (s.collectable or s.pinned) and storage_key(s) in watched and storage_key(s) not in alive
    ]
    if not died:
        return
    for storage in died:
        storage.collectable = True
    moved = sum(s.nbytes for s in died)
    audit.held_bytes -= moved
    audit.cycle_bytes += moved
    still_held = {path for s in audit.storages if not s.collectable for path in s.owners}
    for owner in audit.owners:
        if owner.path not in still_held and owner.kind not in FREED_BY_COLLECTOR:
            owner.detail = f"died in leakcheck's gc.collect(): only garbage held it ({owner.detail or owner.kind})"
            owner.kind = CYCLE
            owner.fix = "gc.collect()  # it was garbage: nothing to release"
    shared: dict[tuple[str, ...], list[Storage]] = {}
    for storage in audit.storages:
        if not storage.collectable and not storage.pinned and len(storage.owners) > 1:
            shared.setdefault(tuple(sorted(storage.owners)), []).append(storage)
    audit.shared = sorted(
        (SharedHold(list(k), sum(s.nbytes for s in v), len(v)) for k, v in shared.items()), key=lambda g: -g.bytes
    )
    audit.notes.append(
        f"{len(died)} storage(s) ({moved:,} bytes) died in leakcheck's gc.collect() although the heap graph "
        "could not show them to be garbage (a reference from C++ inside a garbage cycle): they are not counted"
    )
    result.add_audit(audit, replaces_last=True)


def _prove(
    plan: ReleasePlan, config: Config, device: str, probes: MemoryProbes, result: Lifecycle, say: Progress
) -> None:
    """Run the last audit's suggested lines and measure what each frees.

    It runs last, after `reconcile`: every phase, the audit and the reconciliation describe
    the process as shutdown() left it, and the proof then destroys exactly what they named
    (it cannot be undone, so nothing may be measured after it). A proof that fails is a note:
    the audit and its verdict stand without it, and `gate.require_proven` fails the gate.
    """
    from leakcheck.lifecycle.prove import prove_release

    if result.audit is None:
        return
    result.enter("prove")
    try:
        proof = prove_release(plan, result.audit, device, allow=config.gate.allow, probes=probes, progress=say)
    except (KeyboardInterrupt, LeakcheckStop):
        raise
    except BaseException as exc:  # noqa: B036 - leakcheck's own failure must not lose the report
        result.note(f"the proof (--prove) failed: {describe('prove', exc).message}")
        return
    finally:
        plan.replace([], CollectableWatch())
    result.set_proof(proof)


def _stray_exits(result: Lifecycle, since: int) -> None:
    """`os._exit` from a runner thread outside the runner's calls still makes the run an error."""
    stray = exit_attempts_since(since)
    if stray and result.error is None:
        result.fail(
            RunError(
                phase=result.phase,
                type=type_name(RunnerExit),
                message=f"runner code called {stray[0]} during {result.phase}: leakcheck stopped it"
                " from ending the process",
                cycle=result.cycle,
            )
        )


def _one_cycle(
    config: Config,
    device: str,
    cycle: int,
    probes: MemoryProbes,
    result: Lifecycle,
    say: Progress,
    abandon: Abandon | None,
    imported: Imported | None = None,
    seen: SeenStorages | None = None,
) -> object | None:
    """Load, warm up and shut down one runner, sampling memory after each phase.

    seen: after `loaded` and after `warmed`, every storage then alive is watched (weakly),
    so what only C++ holds after shutdown() is still counted (engine/seen_storages.py).

    imported: the import of the factory's module (cycle 1): its error is this load's, and
    the factory's call gets what the import left of the load phase's limit.
    """
    limits = config.timeout
    factory_spec = config.runner.factory
    spent = imported.seconds if imported is not None and cycle == 1 else 0.0
    limit = None if limits.load is None else max(limits.load - spent, 0.001)
    result.enter("load", cycle, limit)
    say(f"cycle {cycle}: loading {factory_spec}" if config.cycles > 1 else f"loading {factory_spec}")
    started = time.perf_counter()
    error: RunError | None
    if cycle == 1 and imported is not None and imported.error is not None:
        runner, error = None, imported.error  # the module's import failed: no factory to call
    else:
        call = RunnerCall("load", f"the factory {factory_spec}", cycle, limit, abandon, budget=limits.load)
        loaded = call_runner(call, lambda: _load(config, device))
        raise_if_requested()
        runner, error = loaded.value, loaded.error
        del loaded
    if error is None and runner is None:
        error = RunError(
            phase="load",
            type="NoRunner",
            message=f"the factory {factory_spec} returned None: there is no runner to warm up, shut down or audit",
            cycle=cycle,
        )
    if error is not None:
        result.fail(error)
    result.set_timing("load_s", time.perf_counter() - started + spent)
    result.add_sample(probes.sample("loaded", cycle))
    if seen is not None:
        take_snapshot(seen)
    if runner is None:
        result.add_sample(probes.sample("shutdown", cycle))
        return None
    if result.shutdown_source is None:
        source = method_source(runner, config.runner.shutdown)
        if source is not None:
            result.set_shutdown_source(*source)

    result.enter("warmup", cycle, limits.warmup)
    started = time.perf_counter()
    deadline = None if limits.warmup is None else started + limits.warmup
    for step in config.warmup:
        if result.error:
            break
        for _ in range(step.repeat):
            say(f"warm-up: {step.call}")
            left = None if deadline is None else max(deadline - time.perf_counter(), 0.001)
            call = RunnerCall("warmup", f"warm-up call {step.call}()", cycle, left, abandon, budget=limits.warmup)
            warmed = call_runner(call, lambda step=step: getattr(runner, step.call)(**step.args))  # type: ignore[misc]
            raise_if_requested()
            error = warmed.error
            del warmed  # the return value is dropped at once
            if error is not None:
                result.fail(error)
                break
    result.set_timing("warmup_s", time.perf_counter() - started)
    result.add_sample(probes.sample("warmed", cycle))
    if seen is not None:
        take_snapshot(seen)

    result.enter("shutdown", cycle, limits.shutdown)
    say(f"calling {config.runner.shutdown}()")
    started = time.perf_counter()

    def shut_down() -> None:
        getattr(runner, config.runner.shutdown)()
        if device.startswith("cuda"):  # a sticky CUDA error or a stuck kernel shows here
            torch.cuda.synchronize(device)

    call = RunnerCall("shutdown", f"{config.runner.shutdown}()", cycle, limits.shutdown, abandon)
    shut = call_runner(call, shut_down)
    raise_if_requested()
    if shut.error is not None:
        result.fail(shut.error)
    del shut
    result.set_timing("shutdown_s", time.perf_counter() - started)
    result.add_sample(probes.sample("shutdown", cycle))
    return runner


def _load(config: Config, device: str) -> object | None:
    """Look the factory up, call it, and check the runner has the methods the config names:
    all runner code, so all under the load phase's limit (the module is imported already,
    before `baseline`, by `_import_runner`)."""
    factory = load_factory(config)
    kwargs = _factory_kwargs(factory, config.runner.args, device)
    _check_arguments(factory, kwargs, config.where("runner", "args"), "runner.args", config.runner.factory)
    runner = factory(**kwargs)
    del kwargs
    if runner is not None:
        _check_methods(config, runner)
    return runner


def _reconcile(device: str, result: Lifecycle) -> tuple[Reconciliation | None, set[int] | None]:
    """After the last `collected`: name every reserved byte, then free cuBLAS workspaces to tell them.

    Clearing the workspaces changes nothing measured (every phase is sampled already); torch
    allocates them again on the next matrix product. Also returns the workspaces' addresses
    (None where they could not be told), for the per-cycle split.
    """
    if result.audit is None:
        return None, None
    state = AllocatorState.capture(device)
    workspaces = None
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        before = {b.address for b in state.active_blocks()}
        clear()
        after = {b.address for b in AllocatorState.capture(device).active_blocks()}
        workspaces = before - after
        result.note("leakcheck freed torch's cuBLAS workspaces after the last phase, to tell them apart")
    baseline = next(m for m in result.memory if m.phase == "baseline")
    return reconcile(state, result.storages(), baseline, result.memory[-1], workspaces), workspaces
